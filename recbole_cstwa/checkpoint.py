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

Whatever the format, what is read is verified: the CRC-32 the zip archive holds for every member
(a damaged byte anywhere is found, in the parameters, the optimizer state or the settings; about
0.5 s for a 550 MB checkpoint, see docs/serving.md). A ``.pth`` that is no model
checkpoint (a plain state_dict, CSTWA's cache file) is told apart from an earlier recbole-cstwa
checkpoint (:func:`read_model_checkpoint`), and parameters that do not fit the model a run
builds name the setting that changed (:func:`check_parameters_fit`).
"""

import os
import pickle
import re
import shutil
import uuid
import zipfile

import numpy as np
import torch

import recbole_cstwa
from recbole_cstwa.errors import CheckpointError, ConfigError, DiskFullError, MissingCheckpointError
from recbole_cstwa.file_writes import atomic_file
from recbole_cstwa.optim import SplitOptimizer
from recbole_cstwa.random_state import random_state, restore_random_state
from recbole_cstwa.schema import describe_dataset, stored_settings
from recbole_cstwa.settings import SETTINGS

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
    "best_valid_result",
)
#: What every checkpoint of the plugin's trainers holds, earlier formats too: what tells one from
#: a ``.pth`` that is none (a plain state_dict, CSTWA's cache file).
MODEL_CHECKPOINT_KEYS = ("model", "epoch", "state_dict", "optimizer")
#: Terminal colour codes (torch's messages hold some).
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: Files whose zip CRCs were verified, by identity (device, inode, size, modification time): a
#: checkpoint read several times by one run is verified once.
_VERIFIED = set()


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

    What is read is verified first: every member of the zip archive against its CRC-32. A file written
    by RecBole's own trainer (it pickles the ``Config`` object) is refused with an error that says
    how to get a loadable one, instead of being unpickled; an empty, truncated, damaged or foreign
    file is refused saying so.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise MissingCheckpointError(
            f"Checkpoint file [{path}] does not exist. Fix: give the .pth file a training run wrote "
            "(it prints `checkpoint: saved/<Model>-....pth`)."
        )
    problem = _file_problem(path)
    if problem:
        raise CheckpointError(
            f"Checkpoint [{path}] {problem}: it cannot be loaded. Retrain to write it again."
        )
    try:
        checkpoint = torch.load(
            path, map_location=map_location, weights_only=True, mmap=mmap and _is_zip(path)
        )
    except pickle.UnpicklingError as error:  # what weights_only refuses
        raise CheckpointError(
            f"Checkpoint [{path}] holds Python objects other than tensors and plain data, so it "
            f"is not loaded (loading it could run code; torch: {_unpickler_reason(error)}). "
            "Checkpoints written by recbole-cstwa's trainers load safely; retrain with them to get one."
        ) from None
    except Exception as error:  # torch raises RuntimeError / EOFError / ... by version
        raise CheckpointError(
            f"Checkpoint [{path}] is damaged or not a PyTorch checkpoint ({_first_sentence(error)}): "
            "it cannot be loaded. Retrain to write it again."
        ) from None
    return checkpoint


def read_model_checkpoint(path, option="--model_file", map_location="cpu", mmap=False):
    """The checkpoint at ``path`` (given as ``option``), checked to be one the plugin's trainers
    wrote, of any format: a ``.pth`` that is none (a plain state_dict, CSTWA's cache file) is
    refused as such, not as an earlier checkpoint."""
    path = str(path)
    if not os.path.isfile(path):
        raise MissingCheckpointError(
            f"{option}: checkpoint file [{path}] does not exist. Fix: {option}=<the .pth file a "
            "training run wrote: it prints `checkpoint: saved/<Model>-....pth`>."
        )
    checkpoint = load_checkpoint(path, map_location=map_location, mmap=mmap)
    if (
        not isinstance(checkpoint, dict)
        or any(key not in checkpoint for key in MODEL_CHECKPOINT_KEYS)
        or not isinstance(checkpoint["state_dict"], dict)
        or not isinstance(checkpoint["model"], str)
    ):
        held = (
            f"the keys {_preview(sorted(map(str, checkpoint)))}"
            if isinstance(checkpoint, dict)
            else f"a {type(checkpoint).__name__}"
        )
        raise CheckpointError(
            f"{option}: [{path}] is not a recbole-cstwa checkpoint: it holds {held}, not a "
            f"model's parameters with its training state ({', '.join(MODEL_CHECKPOINT_KEYS)}). "
            f"Fix: {option}=<the .pth file a training run wrote: it prints `checkpoint: "
            "saved/<Model>-....pth`>; a plain state_dict or CSTWA's cache file is no checkpoint."
        )
    return checkpoint


def _preview(names, count=4):
    shown = ", ".join(names[:count])
    return f"[{shown}{', ...' if len(names) > count else ''}] ({len(names)})"


def _first_sentence(error):
    """The first sentence of an error's message, without terminal colour codes."""
    text = _ANSI_ESCAPE.sub("", str(error)).strip()
    first = (text.splitlines() or [type(error).__name__])[0].strip()
    match = re.match(r"(.+?[.!?])(\s|$)", first)
    return (match.group(1) if match else first).rstrip(".")


def _unpickler_reason(error):
    """What torch's ``weights_only`` unpickler refused (its "WeightsUnpickler error" sentence),
    without its advice to turn the check off, its colour codes or a cut sentence."""
    text = _ANSI_ESCAPE.sub("", str(error))
    match = re.search(r"WeightsUnpickler error:\s*(.+?\.)(\s|$)", text)
    return match.group(1).rstrip(".") if match else _first_sentence(error)


def _is_zip(path):
    with open(path, "rb") as file:
        return file.read(2) == b"PK"


def _file_problem(path):
    """What is wrong with the checkpoint file itself (empty, truncated, damaged, not one), or None.

    ``torch.save`` writes a zip archive (a legacy checkpoint is a bare pickle, read as before),
    whose every member is read and checked against its CRC-32: torch itself reads the members
    without checking them, so damaged parameters would load and score silently.
    """
    status = os.stat(path)
    size = status.st_size
    if size == 0:
        return "is empty (0 bytes; a run may have stopped while writing it)"
    with open(path, "rb") as file:
        head = file.read(4)
    if head.startswith(b"PK"):
        identity = (status.st_dev, status.st_ino, size, status.st_mtime_ns)
        if identity in _VERIFIED:
            return None
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            return f"is truncated or damaged ({size} bytes, an incomplete zip archive)"
        if damaged is not None:
            return f"is damaged: its member {damaged} does not match its CRC-32 checksum"
        if len(_VERIFIED) > 64:
            _VERIFIED.clear()
        _VERIFIED.add(identity)
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


#: Settings of the table that size nothing the model holds: never named as the one that made a
#: checkpoint's parameters not fit (every other int, list, choice or bool setting may).
_TRAINING_ONLY = frozenset(
    {
        "epochs",
        "train_batch_size",
        "eval_batch_size",
        "seed",
        "shuffle",
        "stopping_step",
        "eval_step",
        "threads",
        "cache_dataset",
        "invalid_purchase",
        "learner",
        "embedding_update",
        "resume_in_place",
    }
)
#: Dataset settings that decide the fields, so the embedding tables a model holds.
_FIELD_KEYS = ("load_col", "unused_col", "numerical_features", "USER_ID_FIELD", "ITEM_ID_FIELD")


def check_parameters_fit(model, checkpoint, path, config=None):
    """Refuses a checkpoint whose parameters are not those of ``model`` (names and shapes), with
    one line naming the settings this run (``config``) changed from the stored ones that shape
    the model (``--model_file=X --embedding_size=16``), else saying the parameters belong to
    another model (an edited model name)."""
    stored, built = checkpoint["state_dict"], model.state_dict()
    if hasattr(model, "completed_state"):  # what an earlier version's checkpoint does not hold yet
        stored = model.completed_state(dict(stored))
    missing = [name for name in built if name not in stored]
    unexpected = [name for name in stored if name not in built]
    reshaped = [
        f"{name} is {list(stored[name].shape)} in the checkpoint, {list(built[name].shape)} here"
        for name in built
        if name in stored
        and hasattr(stored[name], "shape")
        and tuple(stored[name].shape) != tuple(built[name].shape)
        and not _sized_by_stored_rows(name, stored, built)
    ]
    if not (missing or unexpected or reshaped):
        return
    detail = "; ".join(
        reshaped[:1]
        + ([f"missing {_preview(missing, 2)}"] if missing else [])
        + ([f"not in the model {_preview(unexpected, 2)}"] if unexpected else [])
    )
    changed = _changed_shaping_settings(checkpoint.get("settings"), config)
    model_name = type(model).__name__
    if changed:
        said = ", ".join(f"{key} {before!r} -> {after!r}" for key, before, after in changed)
        raise CheckpointError(
            f"Checkpoint [{path}]'s parameters do not fit the {model_name} this run builds ({detail}): "
            f"this run changes a setting the model was trained with that shapes it ({said}). Fix: "
            f"drop {' '.join('--' + key for key, _, _ in changed)}; the model's settings come from "
            "the checkpoint."
        )
    raise CheckpointError(
        f"Checkpoint [{path}]'s parameters are not those of a {model_name} built from its settings "
        f"({detail}): the file was edited, or its parameters belong to another model. Fix: use the "
        "checkpoint a training run wrote, or retrain."
    )


def _sized_by_stored_rows(name, stored, built):
    """Whether ``name`` is a token table whose size its stored id -> row map decides
    (``min_count`` > 0: a model rebuilt from its checkpoint alone has no training counts, so a
    stand-in map, and adopts the stored one with its size as it loads)."""
    if not name.endswith("token_table.weight"):
        return False
    rows_name = name.removesuffix("token_table.weight") + "token_rows"
    rows, built_rows = stored.get(rows_name), built.get(rows_name)
    if rows is None or built_rows is None or tuple(rows.shape) != tuple(built_rows.shape):
        return False
    table, built_table = stored[name], built[name]
    table_rows = int(rows.max()) + 1 if len(rows) else 1
    return table.shape[1:] == built_table.shape[1:] and table.shape[0] == table_rows


def _changed_shaping_settings(stored, config):
    """``[(key, stored value, this run's value)]`` of the settings that may shape a model (the
    table's int, list, choice and bool rows but training-only ones, and the field settings)
    whose value this run changes."""
    if not isinstance(stored, dict) or config is None:
        return []
    keys = [
        spec.key
        for spec in SETTINGS
        if spec.kind in ("int", "int_list", "choice", "bool") and spec.key not in _TRAINING_ONLY
    ]
    changed = []
    for key in [*keys, *_FIELD_KEYS]:
        if key in stored and key in config and _comparable(stored[key]) != _comparable(config[key]):
            changed.append((key, stored[key], config[key]))
    return changed


def _comparable(value):
    return [_comparable(item) for item in value] if isinstance(value, (list, tuple)) else value


class SafeCheckpointMixin:
    """Trainer mixin: checkpoints with tensors and plain data only, loaded with ``weights_only``.

    Put it before RecBole's ``Trainer`` in the bases. It replaces ``_save_checkpoint``,
    ``resume_checkpoint`` and the best-model loading of ``evaluate``, and checks that
    ``checkpoint_dir`` is writable when the trainer is built.

    Each checkpoint also stores the validation result of the epoch it holds
    (``best_valid_result``). A resumed
    run writes its checkpoints beside the one it resumed, under a new name, unless
    ``resume_in_place`` (then over it); it starts from a copy of the checkpoint it was given, so
    the kept model and its validation result are those of the given checkpoint until an epoch
    beats it, and its epochs count on from the checkpoint's.
    """

    _resumed_from = None  # the checkpoint file a resumed run started from, and its epoch
    _resumed_epoch = None
    _last_valid_result = None  # the latest validation's result (a checkpoint saved after it holds it)

    def __init__(self, config, model):
        check_writable_directory(config["checkpoint_dir"])
        super().__init__(config, model)

    def _valid_epoch(self, valid_data, show_progress=False):
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self._last_valid_result = valid_result
        return valid_score, valid_result

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        if epoch < 0 and self._resumed_epoch is not None:
            # RecBole saves "epoch -1" when a resumed run has no epoch left to train: the model is
            # still the resumed checkpoint's, of its epoch.
            epoch = self._resumed_epoch
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        valid_result = self._last_valid_result
        if valid_result is None:  # not validated since the start: the resumed checkpoint's result
            valid_result = getattr(self, "best_valid_result", None)
        state = {
            "model": str(self.config["model"]),
            "dataset": str(self.config["dataset"]),
            "epoch": int(epoch),
            "cur_step": int(self.cur_step),
            "best_valid_score": float(_plain(self.best_valid_score)),
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            "best_valid_result": _plain_result(valid_result),
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

    def fit(
        self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None
    ):
        self._checkpoint_train_data = train_data  # its dataset and loader go into checkpoints
        pending = getattr(self, "_resumed_loader_state", None)
        if pending is not None and getattr(train_data, "generator", None) is not None:
            train_data.generator.set_state(pending)
            self._resumed_loader_state = None
        resumed = self._resumed_from
        if saved and resumed is not None and resumed != self.saved_model_file:
            # The resumed checkpoint is the kept model until an epoch beats it: the run's own file
            # starts as its copy (RecBole saves one itself when no epoch is left to train).
            if self.start_epoch < self.epochs:
                _copy_file(resumed, self.saved_model_file)
                self.saved_epoch = self.kept_epoch = self._resumed_epoch
            if verbose:
                self.logger.info(
                    f"Resumed from {resumed} (kept as it is); checkpoints go to {self.saved_model_file}"
                )
        best_valid_score, best_valid_result = super().fit(
            train_data, valid_data, verbose, saved, show_progress, callback_fn
        )
        if resumed is not None and not best_valid_result and saved and valid_data:
            # a checkpoint of an earlier version holds no validation result: the kept one's, measured
            best_valid_result = self.best_valid_result = self.evaluate(
                valid_data, load_best_model=True, show_progress=show_progress
            )
        return best_valid_score, best_valid_result

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
        """Continues from ``resume_file``: its parameters, optimizer state, epoch (the run's
        epochs count on from it), best score and validation result, random states. New
        checkpoints go beside it under this run's own name, or over it with ``resume_in_place``."""
        resume_file = str(resume_file)
        if not self.config["resume_in_place"]:
            self.saved_model_file = os.path.join(
                os.path.dirname(resume_file), os.path.basename(self.saved_model_file)
            )
        else:
            self.saved_model_file = resume_file
        checkpoint = read_model_checkpoint(resume_file, "--resume", map_location=self.device)
        self._resumed_from = resume_file
        self.start_epoch = checkpoint["epoch"] + 1
        self.saved_epoch = self.kept_epoch = self._resumed_epoch = checkpoint["epoch"]
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.best_valid_result = checkpoint.get("best_valid_result")
        if checkpoint["model"].lower() != self.config["model"].lower():
            self.logger.warning(
                f"Checkpoint [{resume_file}] was written by model {checkpoint['model']}, "
                f"not {self.config['model']}: loading its parameters may fail."
            )
        check_parameters_fit(self.model, checkpoint, resume_file, self.config)
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
        check_parameters_fit(self.model, checkpoint, checkpoint_file, self.config)
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self._load_saved_graphs(checkpoint)
        self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")


def _plain_result(result):
    """A validation result (metric -> number) as plain data, or None."""
    if not result:
        return None
    return {str(metric): float(_plain(value)) for metric, value in dict(result).items()}


def _copy_file(source, target):
    """``source`` copied whole to ``target`` (written beside it, then renamed)."""
    with open(source, "rb") as reader, atomic_file(target, "wb", needed=os.path.getsize(source)) as writer:
        shutil.copyfileobj(reader, writer, 16 << 20)
