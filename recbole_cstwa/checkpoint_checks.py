"""A checkpoint's stored model, dataset and settings, checked before a run, a scorer or an export
uses them.

A checkpoint is a file, maybe one a user was given: what it stores is input like a command line,
and is checked the same way (the known keys, the settings table with its upper bounds on what
allocates memory), plus what only a file can get wrong: the model must be a registered one (its
parameters are checked against the model built, :func:`recbole_cstwa.checkpoint.check_parameters_fit`),
the dataset a plain name, and the stored folders free of ``..`` (caches and logs are written
where they are joined). Settings that switch on integrations (Weights & Biases) are dropped: a
run from a checkpoint uses them only when its own command line says so.
"""

import os

import yaml

from recbole_cstwa.checkpoint import settings_before
from recbole_cstwa.config import dataset_yaml_path
from recbole_cstwa.errors import CheckpointError, ConfigError, UnknownModelError
from recbole_cstwa.keys import check_keys, extra_keys, known_keys
from recbole_cstwa.registry import get_model, is_multitask_model
from recbole_cstwa.setting_checks import check_settings
from recbole_cstwa.settings import RULES, SETTINGS
from recbole_cstwa.values import SettingsYamlLoader

#: Stored settings that would switch on an integration (reaching a service): never taken from a
#: checkpoint.
INTEGRATION_KEYS = ("log_wandb", "wandb_project")
#: Stored folders: joined with the dataset's name to read data and write caches and logs.
FOLDER_KEYS = ("data_path", "checkpoint_dir", "dataset_cache_dir")


def checked_settings(checkpoint, path, overrides=None):
    """The stored settings of ``checkpoint`` (read from ``path``), checked, without the
    integration keys, completed by the settings its format predates at the values it was trained
    with (:func:`~recbole_cstwa.checkpoint.settings_before`); ``overrides`` (the run's own
    settings, which replace stored ones) are not checked here: the run's config checks them as
    given.

    Raises:
        CheckpointError: one line naming the checkpoint, the stored value and the fix.
    """
    overrides = overrides or {}
    where = f"Checkpoint [{path}]"
    settings = checkpoint.get("settings")
    if not isinstance(settings, dict) or not all(isinstance(key, str) for key in settings):
        raise CheckpointError(
            f"{where} holds settings of type {type(settings).__name__}, not a dict of settings: it "
            "was not written by recbole-cstwa's trainers, or was edited. Fix: use the checkpoint a "
            "training run wrote, or retrain."
        )
    model_class = _registered_model(checkpoint.get("model"), where)
    dataset = checkpoint.get("dataset")
    if not _is_plain_name(dataset):
        raise CheckpointError(
            f"{where} names dataset {dataset!r}, which is no plain name (a folder name without "
            "'/' or '..'): it was edited. Fix: use the checkpoint a training run wrote, or retrain."
        )
    for key in FOLDER_KEYS:
        value = settings.get(key)
        if key in overrides or (value is None and key == "dataset_cache_dir"):
            continue
        if not isinstance(value, str) or ".." in value.replace("\\", "/").split("/"):
            raise CheckpointError(
                f"{where} stores {key} {value!r}, which is no folder without '..' parts: caches and "
                f"logs would be written outside it. Fix: give the folder yourself, --{key}=<folder>."
            )
    stored = {key: value for key, value in settings.items() if key not in INTEGRATION_KEYS}
    checked = {key: value for key, value in stored.items() if key not in overrides}
    try:
        known = known_keys() | extra_keys(stored.get("extra_keys")) | _dataset_yaml_keys(stored, dataset)
        check_keys(checked, f"{where}'s stored settings", known)
        check_settings(checked, model_class.__name__, is_multitask_model(model_class), SETTINGS, RULES)
    except ConfigError as error:
        raise CheckpointError(f"{where}'s stored settings: {error}") from None
    return {**settings_before(checkpoint), **stored}  # what its format predates, as trained


def _registered_model(name, where):
    try:
        return get_model(name)
    except UnknownModelError:
        raise CheckpointError(
            f"{where} names model {name!r}, which is no registered model (a recbole-cstwa or RecBole "
            "context-aware model): it was edited. Fix: use the checkpoint a training run wrote, or retrain."
        ) from None


def _is_plain_name(name):
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(char in name for char in ("/", "\\", "\0", os.sep))
    )


def _dataset_yaml_keys(settings, dataset):
    """The keys of the dataset's own YAML, when it is where the settings say (they are stored
    with the others and are known to the run's config)."""
    data_path = settings.get("data_path")
    if not isinstance(data_path, str):
        return set()
    try:
        with open(dataset_yaml_path(data_path, dataset), encoding="utf-8") as file:
            loaded = yaml.load(file.read(), Loader=SettingsYamlLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return set()  # the run's config reports a YAML it cannot read
    return set(loaded) if isinstance(loaded, dict) else set()
