"""Fixes for RecBole 1.2.1 on today's dependencies, in one place.

Each fix is applied by subclassing or by passing our own object to RecBole; no RecBole file is
patched. The breakages (see README, "Dependencies and RecBole work-arounds"):

1. torch >= 2.6 loads with ``weights_only=True``. RecBole pickles the whole ``Config`` object
   into its checkpoints, so ``Trainer.evaluate(load_best_model=True)`` and
   ``Trainer.resume_checkpoint`` fail on RecBole's own files (RecBole issues #2212, #2215).
   Turning ``weights_only`` off would let a checkpoint file run code when loaded. Instead,
   :class:`SafeCheckpointMixin` writes checkpoints that hold only tensors and plain Python data
   and reads them back with ``weights_only=True``.
"""

import os

import numpy as np
import torch

#: Keys of a checkpoint written by :class:`SafeCheckpointMixin`.
CHECKPOINT_KEYS = (
    "model",
    "dataset",
    "epoch",
    "cur_step",
    "best_valid_score",
    "state_dict",
    "other_parameter",
    "optimizer",
)


def _plain(value):
    """Converts numpy scalars to Python numbers, so ``weights_only`` loading accepts them."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_checkpoint(state, path):
    """Writes ``state`` (tensors and plain Python data only) to ``path``."""
    torch.save(state, path)


def load_checkpoint(path, map_location=None):
    """Reads a checkpoint with ``weights_only=True``: loading a file cannot run code.

    A file written by RecBole's own trainer (it pickles the ``Config`` object) is refused with an
    error that says how to get a loadable one, instead of being unpickled.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file [{path}] does not exist.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises UnpicklingError/RuntimeError by version
        raise ValueError(
            f"Checkpoint [{path}] holds Python objects other than tensors and plain data, so it "
            "is not loaded (loading it could run code). Checkpoints written by recbole-cstwa's "
            "trainers load safely; retrain with them to get one. "
            f"Original error: {str(error).splitlines()[0]}"
        ) from None


class SafeCheckpointMixin:
    """Trainer mixin: checkpoints with tensors and plain data only, loaded with ``weights_only``.

    Put it before RecBole's ``Trainer`` in the bases. It replaces ``_save_checkpoint``,
    ``resume_checkpoint`` and the best-model loading of ``evaluate``.
    """

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "model": str(self.config["model"]),
            "dataset": str(self.config["dataset"]),
            "epoch": int(epoch),
            "cur_step": int(self.cur_step),
            "best_valid_score": float(_plain(self.best_valid_score)),
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
        }
        save_checkpoint(state, saved_model_file)
        if verbose:
            self.logger.info(f"Saving current: {saved_model_file}")

    def resume_checkpoint(self, resume_file):
        resume_file = str(resume_file)
        self.saved_model_file = resume_file
        checkpoint = load_checkpoint(resume_file, map_location=self.device)
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        if checkpoint["model"].lower() != self.config["model"].lower():
            self.logger.warning(
                f"Checkpoint [{resume_file}] was written by model {checkpoint['model']}, "
                f"not {self.config['model']}: loading its parameters may fail."
            )
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def load_best_model(self, model_file=None):
        """Loads the parameters saved by ``fit`` (or ``model_file``) into the model."""
        checkpoint_file = model_file or self.saved_model_file
        checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
