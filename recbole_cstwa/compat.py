"""Fixes for RecBole 1.2.1 on today's dependencies, in one place.

Each fix is applied by subclassing or by passing our own object to RecBole; no RecBole file is
patched. The breakages (see README, "Dependencies and RecBole work-arounds"):

1. torch >= 2.6 loads with ``weights_only=True``. RecBole pickles the whole ``Config`` object
   into its checkpoints, so ``Trainer.evaluate(load_best_model=True)`` and
   ``Trainer.resume_checkpoint`` fail on RecBole's own files (RecBole issues #2212, #2215).
   Turning ``weights_only`` off would let a checkpoint file run code when loaded. Instead,
   :class:`SafeCheckpointMixin` writes checkpoints that hold only tensors and plain Python data
   and reads them back with ``weights_only=True``.
2. hyperopt >= 0.2.7 samples with ``rng.integers``; RecBole's exhaustive search hands it a
   ``RandomState`` and fails. :func:`exhaustive_search` (with :func:`grid_size` for
   ``max_evals``) replaces it.
"""

import os
import re

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


# -- 2. hyperopt >= 0.2.7: RecBole's exhaustive search ------------------------------------------
# RecBole's ``exhaustive_search`` (``recbole/trainer/hyper_tuning.py``) samples with
# ``np.random.RandomState``; hyperopt >= 0.2.7 samples with ``rng.integers``, which only
# ``np.random.Generator`` has, so ``algo="exhaustive"`` fails with an AttributeError (RecBole
# issues #1081, #1240, #1320, #1868). It also finds new grid points by drawing at random until an
# untried one comes up (giving up after 1,000 draws), so on a grid of n points the last one is
# missed with probability (1 - 1/n) ** 1000: 37% for n = 1,000. And RecBole's ``_spacesize``
# fails on a choice whose options are lists. The functions below enumerate the grid instead.


def _choice_nodes(space):
    """The ``hp.choice`` nodes of a hyperopt space: ``{label: number of options}``.

    Raises:
        ValueError: for a choice nested in another choice's options (a conditional space): its
            grid points are not a product, and RecBole's params files never write one.
    """
    from hyperopt.pyll import as_apply, dfs

    choices, nested = {}, []
    for node in dfs(as_apply(space)):
        if node.name != "switch" or node.pos_args[0].name != "hyperopt_param":
            continue
        choices[node.pos_args[0].pos_args[0].obj] = len(node.pos_args) - 1
        for option in node.pos_args[1:]:
            nested += [
                inner.pos_args[0].pos_args[0].obj
                for inner in dfs(option)
                if inner.name == "switch" and inner.pos_args[0].name == "hyperopt_param"
            ]
    if nested:
        raise ValueError(
            f"Exhaustive search needs a flat space, but choice(s) {sorted(set(nested))} sit inside "
            "another choice's options. Write every parameter on its own line of the params file."
        )
    return choices


def grid_size(space):
    """Number of grid points of a hyperopt space: the product of its choices' option counts.

    Continuous parameters (uniform, quniform, loguniform) do not count: each grid point gets one
    draw of them, as in RecBole (a space without choices has one grid point).
    """
    return int(np.prod(list(_choice_nodes(space).values()), dtype=np.int64))


def _hyperopt_rng(seed):
    """The random generator type the installed hyperopt samples with (``integers`` from 0.2.7)."""
    import hyperopt

    version = tuple(int(part) for part in re.findall(r"\d+", hyperopt.__version__)[:3])
    return np.random.default_rng(seed) if version >= (0, 2, 7) else np.random.RandomState(seed)


def exhaustive_search(new_ids, domain, trials, seed):
    """A hyperopt ``algo`` that visits every grid point of a flat space exactly once.

    Drop-in for RecBole's ``exhaustive_search``: pass it as ``HyperTuning(algo=...)`` with
    ``max_evals=grid_size(space)``. The untried grid points are taken in a random order drawn
    from ``seed`` (so a search cut short is still spread over the grid); continuous parameters
    are drawn with ``np.random.default_rng(seed)`` (a ``RandomState`` on hyperopt < 0.2.7). Returns no trial once the grid is used up,
    which ends ``fmin``.
    """
    from hyperopt import pyll
    from hyperopt.base import miscs_update_idxs_vals

    choices = _choice_nodes(domain.expr)
    labels = sorted(choices)
    shape = tuple(choices[label] for label in labels)
    tried = {
        tuple(int(trial["misc"]["vals"][label][0]) for label in labels)
        for trial in trials.trials
        if all(trial["misc"]["vals"].get(label) for label in labels)
    }
    size = int(np.prod(shape, dtype=np.int64))
    tried_flat = [int(np.ravel_multi_index(point, shape)) for point in tried] if labels else [0] * len(tried)
    untried = np.setdiff1d(np.arange(size), np.asarray(tried_flat, dtype=np.int64))
    rng = _hyperopt_rng(seed)
    picked = rng.permutation(untried)[: len(new_ids)]

    docs = []
    for new_id, flat_index in zip(new_ids, picked):
        idxs, vals = pyll.rec_eval(domain.s_idxs_vals, memo={domain.s_new_ids: [new_id], domain.s_rng: rng})
        for label, option in zip(labels, np.unravel_index(int(flat_index), shape)):
            idxs[label], vals[label] = [new_id], [int(option)]
        misc = {"tid": new_id, "cmd": domain.cmd, "workdir": domain.workdir}
        miscs_update_idxs_vals([misc], idxs, vals)
        docs += trials.new_trial_docs([new_id], [None], [domain.new_result()], [misc])
    return docs
