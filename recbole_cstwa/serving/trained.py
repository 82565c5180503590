"""A trained model rebuilt from its checkpoint alone: settings, data description, parameters.

:func:`load_trained` is what :func:`recbole_cstwa.quick_start.load_data_and_model`, the
predictor (:mod:`recbole_cstwa.serving.predict`) and the exporter
(:mod:`recbole_cstwa.serving.export`) share. Checkpoints are read with
:func:`recbole_cstwa.checkpoint.load_checkpoint` (``weights_only=True``): nothing is unpickled.
"""

import os
from dataclasses import dataclass

import torch
from recbole.utils import init_seed

from recbole_cstwa.checkpoint import (
    SELF_CONTAINED_FORMAT,
    check_parameters_fit,
    read_model_checkpoint,
)
from recbole_cstwa.checkpoint_checks import checked_settings
from recbole_cstwa.config import Config
from recbole_cstwa.errors import CheckpointError, InputError
from recbole_cstwa.registry import get_model, is_multitask_model
from recbole_cstwa.schema import TrainedDataset, encode_tokens


class StoredConfig(Config):
    """The plugin's ``Config`` built from a checkpoint's settings: the command line is not read
    (a script's own options, such as ``--input``, are not settings of the stored model)."""

    def _load_cmd_line(self):
        return {}


@dataclass
class TrainedModel:
    """A model rebuilt from a checkpoint, in eval mode, with what it was trained on."""

    config: Config
    model: torch.nn.Module
    dataset: TrainedDataset
    checkpoint: dict
    model_file: str

    @property
    def is_multitask(self):
        return is_multitask_model(type(self.model))


def read_trained_checkpoint(model_file):
    """The checkpoint at ``model_file``, checked to carry settings and a data description.

    Raises:
        CheckpointError: a missing file, a file holding pickled objects, or a checkpoint of the
            earlier format (parameters only), each with the fix.
    """
    model_file = str(model_file)
    if not os.path.isfile(model_file):
        raise CheckpointError(
            f"Checkpoint file [{model_file}] does not exist. Fix: --model_file=<a .pth file in checkpoint_dir>."
        )
    checkpoint = read_model_checkpoint(model_file, mmap=True)  # refuses pickles and foreign files
    if (
        checkpoint.get("format", 1) < SELF_CONTAINED_FORMAT
        or "settings" not in checkpoint
        or "data" not in checkpoint
    ):
        model = checkpoint.get("model", "<model>")
        raise CheckpointError(
            f"Checkpoint [{model_file}] was written by an earlier recbole-cstwa (format "
            f"{checkpoint.get('format', 1)}): it holds the parameters but not the settings and "
            "vocabularies needed to load it on its own. Fix: evaluate it with "
            f"`python run_recbole_cstwa.py --model={model} --model_file={model_file}` and the "
            "settings it was trained with, or retrain to get a checkpoint that loads alone."
        )
    return checkpoint


def load_trained(model_file, config_dict=None, device="cpu"):
    """Rebuilds the model of ``model_file`` with its stored settings, in eval mode.

    Args:
        config_dict (dict, optional): settings that replace stored ones (``data_path``, ...);
            those that shape the model must not change.
        device: where the model goes (default CPU).
    """
    model_file = str(model_file)
    checkpoint = read_trained_checkpoint(model_file)
    settings = checked_settings(checkpoint, model_file, config_dict)
    settings.update(config_dict or {})
    if device is not None and torch.device(device).type == "cpu":
        settings["use_gpu"] = False
    try:
        config = StoredConfig(model=checkpoint["model"], dataset=checkpoint["dataset"], config_dict=settings)
    except InputError as error:
        raise CheckpointError(f"Checkpoint [{model_file}]'s settings: {error}") from None
    dataset = TrainedDataset(checkpoint["data"], config)
    model = build_model(config, dataset, checkpoint, model_file)
    device = torch.device(device) if device is not None else config["device"]
    return TrainedModel(config, model.to(device).eval(), dataset, checkpoint, model_file)


def build_model(config, dataset, checkpoint, model_file):
    """The checkpoint's model class built on ``dataset`` (the training data or a
    :class:`TrainedDataset`) with the checkpoint's parameters (and CSTWA's graphs)."""
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, dataset)
    check_parameters_fit(model, checkpoint, model_file, config)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(
            f"Checkpoint [{model_file}]'s parameters do not fit the model built from its settings "
            f"({str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else error}). "
            "Fix: do not override settings that shape the model (embedding_size, tower sizes, "
            "fields)."
        ) from None
    model.load_other_parameter(checkpoint.get("other_parameter"))
    if checkpoint.get("graphs") and hasattr(model, "load_graph_state"):
        model.load_graph_state(checkpoint["graphs"])
    return model


def check_vocabularies(checkpoint, dataset, model_file):
    """Stops when ``dataset`` numbers a field's tokens otherwise than the checkpoint's training
    data did: the model would then read other rows of its tables (silently wrong scores)."""
    stored = checkpoint["data"]["vocabularies"]
    for field, tokens in dataset.field2id_token.items():
        if field in stored and not torch.equal(stored[field], encode_tokens(tokens)):
            raise CheckpointError(
                f"Checkpoint [{model_file}]: the dataset's field [{field}] has other tokens or "
                f"another order ({len(tokens)} tokens) than the data the model was trained on. "
                "Fix: point data_path at the training data (--data_path=...), or score new rows "
                "with run_predict.py, which maps them with the stored vocabularies."
            )
