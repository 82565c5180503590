"""Checkpoints that hold tensors and plain data only, for the plugin's trainers.

torch >= 2.6 loads with ``weights_only=True``. RecBole 1.2.1 pickles the whole ``Config`` object
into its checkpoints, so ``Trainer.evaluate(load_best_model=True)`` and
``Trainer.resume_checkpoint`` fail on RecBole's own files (RecBole issues #2212, #2215). Turning
``weights_only`` off would let a checkpoint file run code when loaded. Instead,
:class:`SafeCheckpointMixin` writes checkpoints that hold only tensors and plain Python data and
reads them back with ``weights_only=True`` (see docs/recbole-workarounds.md).

Since format 2 a checkpoint also carries what it takes to use the model without the training
run (docs/serving.md): the resolved settings, the fields, vocabularies and
user / item feature tables (:mod:`recbole_cstwa.schema`), the plugin version, CSTWA's
graphs, and the random states at the save (:mod:`recbole_cstwa.random_state`), so that a resumed run continues as the interrupted one
would have. A format-1 checkpoint (parameters only) still loads for training-time use.
"""

import os
import pickle
import uuid
import zipfile

import numpy as np
import torch

import recbole_cstwa
from recbole_cstwa.errors import CheckpointError, ConfigError, DiskFullError
from recbole_cstwa.file_writes import atomic_file
from recbole_cstwa.optim import SplitOptimizer
from recbole_cstwa.random_state import random_state, restore_random_state
from recbole_cstwa.schema import describe_dataset, stored_settings

#: Version of what a checkpoint holds; 1: parameters and training state only; 2: also what it
#: takes to use the model alone (settings, data description); 3: settings added since 2 stored.
CHECKPOINT_FORMAT = 3
#: The first format that holds settings and a data description (loads without its data).
SELF_CONTAINED_FORMAT = 2
#: Settings added after a format, with the value every checkpoint of that format (which stores
#: no such key) was trained with: its model is rebuilt as it was trained.
SETTINGS_BEFORE_FORMAT = {3: {"min_count": 0}}


def settings_before(checkpoint):
    """Settings ``checkpoint``'s format predates, with the values it was trained with (``{}`` for
    the current format)."""
    written = checkpoint.get("format", 1)
    added = {}
    for version, settings in SETTINGS_BEFORE_FORMAT.items():
        if written < version:
            added.update(settings)
    return added


def checkpoint_settings_of(checkpoint):
    """A checkpoint's stored settings, completed by :func:`settings_before`."""
    return {**settings_before(checkpoint), **checkpoint["settings"]}


#: Keys of a checkpoint written by :class:`SafeCheckpointMixin` (CSTWA's add ``graphs``).
CHECKPOINT_KEYS = (
    "model",
    "dataset",
    "epoch",
    "cur_step",
    "best_valid_score",
    "state_dict",
    "other_parameter",
    "optimizer",
    "format",
    "plugin_version",
    "settings",
    "data",
    "random_state",
)


def _plain(value):
    """Converts numpy scalars to Python numbers, so ``weights_only`` loading accepts them."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_checkpoint(path, map_location=None, mmap=False):
    """Reads a checkpoint with ``weights_only=True``: loading a file cannot run code.

    ``mmap=True`` maps the file's tensors (copy on write) instead of reading them: what is never
    touched (a scorer's view of the optimizer state) takes no memory. A legacy (non-zip)
    checkpoint is read whole.

    A file written by RecBole's own trainer (it pickles the ``Config`` object) is refused with an
    error that says how to get a loadable one, instead of being unpickled; an empty, truncated or
    foreign file is refused saying so.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file [{path}] does not exist.")
    problem = _file_problem(path)
    if problem:
        raise CheckpointError(
            f"Checkpoint [{path}] {problem}: it cannot be loaded. Retrain to write it again."
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and _is_zip(path))
    except pickle.UnpicklingError as error:  # what weights_only refuses
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(
            f"Checkpoint [{path}] holds Python objects other than tensors and plain data, so it "
            "is not loaded (loading it could run code). Checkpoints written by recbole-cstwa's "
            "trainers load safely; retrain with them to get one. "
            f"Original error: {first_line}"
        ) from None
    except Exception as error:  # torch raises RuntimeError / EOFError / ... by version
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(
            f"Checkpoint [{path}] is damaged or not a PyTorch checkpoint ({first_line}): it cannot "
            "be loaded. Retrain to write it again."
        ) from None


def _is_zip(path):
    with open(path, "rb") as file:
        return file.read(2) == b"PK"


def _file_problem(path):
    """What is wrong with the checkpoint file itself (empty, truncated, not one), or None.

    ``torch.save`` writes a zip archive (a legacy checkpoint is a bare pickle, read as before).
    """
    size = os.path.getsize(path)
    if size == 0:
        return "is empty (0 bytes; a run may have stopped while writing it)"
    with open(path, "rb") as file:
        head = file.read(4)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return f"is truncated or damaged ({size} bytes, an incomplete zip archive)"
        return None
    if head[:1] == b"\x80":  # a pickle: a legacy checkpoint
        return None
    return f"is not a PyTorch checkpoint (it starts with {head!r})"


def _tensor_bytes(value):
    """The bytes of the tensors in a nested dict / list (a checkpoint's size, nearly)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(item) for item in value)
    return 0


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
        state.update(self._serving_entries())
        folder = os.path.dirname(os.path.abspath(saved_model_file))
        needed = _tensor_bytes(state)
        try:
            # A temporary file renamed at the end: the previous checkpoint stays whole until then.
            with atomic_file(saved_model_file, "wb", needed=needed) as file:
                torch.save(state, file)
        except DiskFullError as error:
            raise ConfigError(
                f"could not save the checkpoint [{saved_model_file}]: {error}; the previous "
                f"checkpoint there is kept. Free space in [{folder}] or choose another folder: "
                "--checkpoint_dir=<a folder with space>."
            ) from None
        self.saved_epoch = int(epoch)
        self.kept_epoch = int(epoch)  # the epoch of the checkpoint the test set is scored with
        if verbose:
            self.logger.info(f"Saving current: {saved_model_file}")

    def fit(self, train_data, *args, **kwargs):
        self._checkpoint_train_data = train_data  # its dataset and loader go into checkpoints
        pending = getattr(self, "_resumed_loader_state", None)
        if pending is not None and getattr(train_data, "generator", None) is not None:
            train_data.generator.set_state(pending)
            self._resumed_loader_state = None
        return super().fit(train_data, *args, **kwargs)

    def _serving_entries(self):
        """What a checkpoint holds besides the training state (format 2, see the module doc)."""
        train_data = getattr(self, "_checkpoint_train_data", None)
        if getattr(self, "_data_description", None) is None and train_data is not None:
            self._data_description = describe_dataset(train_data._dataset)  # once a run
        entries = {
            "format": CHECKPOINT_FORMAT,
            "plugin_version": recbole_cstwa.__version__,
            "settings": stored_settings(self.config),
            "data": getattr(self, "_data_description", None),
            "random_state": random_state(getattr(train_data, "generator", None)),
        }
        if hasattr(self.model, "graph_state") and self.model.graph_state() is not None:
            entries["graphs"] = self.model.graph_state()
        return entries

    def _load_saved_graphs(self, checkpoint):
        """CSTWA's graphs from the checkpoint, for a model that has none yet (a new process)."""
        graphs = checkpoint.get("graphs")
        if graphs and hasattr(self.model, "load_graph_state") and not self.model.has_graphs():
            self.model.load_graph_state(graphs)

    def resume_checkpoint(self, resume_file):
        resume_file = str(resume_file)
        self.saved_model_file = resume_file
        checkpoint = load_checkpoint(resume_file, map_location=self.device)
        self.start_epoch = checkpoint["epoch"] + 1
        self.saved_epoch = checkpoint["epoch"]
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        if checkpoint["model"].lower() != self.config["model"].lower():
            self.logger.warning(
                f"Checkpoint [{resume_file}] was written by model {checkpoint['model']}, "
                f"not {self.config['model']}: loading its parameters may fail."
            )
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self._load_saved_graphs(checkpoint)
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
        if checkpoint.get("random_state"):  # format 2: continue the random streams of the save
            self._resumed_loader_state = restore_random_state(checkpoint["random_state"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def load_best_model(self, model_file=None):
        """Loads the parameters saved by ``fit`` (or ``model_file``) into the model."""
        checkpoint_file = model_file or self.saved_model_file
        checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self._load_saved_graphs(checkpoint)
        self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
