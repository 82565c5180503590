"""Checkpoints that hold tensors and plain data only, for the plugin's trainers.

torch >= 2.6 loads with ``weights_only=True``. RecBole 1.2.1 pickles the whole ``Config`` object
into its checkpoints, so ``Trainer.evaluate(load_best_model=True)`` and
``Trainer.resume_checkpoint`` fail on RecBole's own files (RecBole issues #2212, #2215). Turning
``weights_only`` off would let a checkpoint file run code when loaded. Instead,
:class:`SafeCheckpointMixin` writes checkpoints that hold only tensors and plain Python data and
reads them back with ``weights_only=True`` (see README, "Dependencies and RecBole work-arounds").
"""

import os
import uuid

import numpy as np
import torch

from recbole_cstwa.errors import ConfigError
from recbole_cstwa.optim import SplitOptimizer

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


def check_writable_directory(path, key="checkpoint_dir"):
    """Creates ``path`` if needed and writes a probe file there, so that a folder the run cannot
    write to stops it before training, not after (with the path and the fix)."""
    probe = os.path.join(path, f".write-test-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(
            f"{key} [{path}] is not a folder this run can write to ({reason}): the best model is "
            f"saved there. Fix: --{key}=<a writable folder>."
        ) from None


class SafeCheckpointMixin:
    """Trainer mixin: checkpoints with tensors and plain data only, loaded with ``weights_only``.

    Put it before RecBole's ``Trainer`` in the bases. It replaces ``_save_checkpoint``,
    ``resume_checkpoint`` and the best-model loading of ``evaluate``, and checks that
    ``checkpoint_dir`` is writable when the trainer is built.
    """

    def __init__(self, config, model):
        check_writable_directory(config["checkpoint_dir"])
        super().__init__(config, model)

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
        torch.save(state, saved_model_file)
        self.kept_epoch = int(epoch)  # the epoch of the checkpoint the test set is scored with
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
        saved_optimizer = checkpoint["optimizer"]
        written_sparse = isinstance(saved_optimizer, dict) and "optimizers" in saved_optimizer
        if written_sparse != isinstance(self.optimizer, SplitOptimizer):
            written = "sparse" if written_sparse else "dense"
            fix = f"--embedding_update={written}"
            if written_sparse:  # where sparse updates give way (optim.sparse_updates)
                fix += " with an adam / adamw learner, without DDP or mixed precision"
            raise ConfigError(
                f"Checkpoint [{resume_file}] was trained with {written} embedding updates (its "
                f"optimizer state) and this run uses the other kind: resume with {fix}."
            )
        self.optimizer.load_state_dict(saved_optimizer)
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def load_best_model(self, model_file=None):
        """Loads the parameters saved by ``fit`` (or ``model_file``) into the model."""
        checkpoint_file = model_file or self.saved_model_file
        checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
