"""The config keys someone reads, so that a misspelled one stops the run instead of being ignored.

A key is known when RecBole or the plugin reads it: it is in a YAML file of RecBole's
``properties/`` (overall, every dataset and model file, the quick-start files) or of the plugin's,
in RecBole's lists of parameters, in the plugin's settings table, among the keys only code reads
(:data:`CODE_KEYS`), or in the dataset's own YAML. A key the user means to pass anyway (read by
their own model, say) is listed in the ``extra_keys`` setting.
"""

import difflib
import functools
import glob
import os

import yaml
from recbole.utils import argument_list

from recbole_cstwa.errors import ConfigError, UnknownSettingError
from recbole_cstwa.setting_checks import properties_dir, recbole_properties_dir
from recbole_cstwa.settings import SETTINGS

#: Keys read by RecBole's or the plugin's code, or set by their command lines, that no YAML file
#: of defaults holds.
CODE_KEYS = frozenset(
    {
        # RecBole's Config and its run_recbole / run_hyper command lines
        "model", "dataset", "config_files", "config_file", "params_file", "output_file",
        "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device", "single_spec", "local_rank",
        "nproc", "world_size", "ip", "port", "offset", "group_offset",
        "valid_neg_sample_args", "test_neg_sample_args", "neg_sampling", "training_neg_sample_num",
        "valid_metric_bigger", "encoding",
        # RecBole models that read a key their YAML file does not set
        "cin", "contrast", "eta", "feature_num", "has_residual", "norm", "sim", "tail_ratio",
        "token_num_threshold", "use_filter", "verbose", "xgb_early_stopping_rounds",
        # the plugin: run_recbole_cstwa.py's options and DDP
        "model_file", "resume", "ddp_timeout", "extra_keys",
    }
)  # fmt: skip


def _yaml_keys(path):
    with open(path, encoding="utf-8") as file:
        loaded = yaml.load(
            file.read(), Loader=yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader
        )
    return set(loaded) if isinstance(loaded, dict) else set()


@functools.cache
def known_keys():
    """Every key RecBole or the plugin reads, whatever the model and dataset."""
    keys = set(CODE_KEYS) | {spec.key for spec in SETTINGS}
    for name in dir(argument_list):
        if name.endswith("_arguments"):
            keys |= set(getattr(argument_list, name))
    for root in (recbole_properties_dir(), properties_dir()):
        for path in glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True):
            keys |= _yaml_keys(path)
    return frozenset(keys)


def extra_keys(value):
    """The ``extra_keys`` setting as a set of keys: a list of names, or a text of them (``my_key``,
    ``[a, b]`` or ``a,b``, as a ``config_dict`` string)."""
    if value is None:
        return set()
    if isinstance(value, str):
        value = [part.strip(" '\"") for part in value.strip("[] ").split(",") if part.strip(" '\"")]
    if not isinstance(value, (list, tuple)) or not all(isinstance(key, str) and key for key in value):
        raise ConfigError(
            f"extra_keys must be a list of key names, got {value!r}. Fix: --extra_keys=[my_key] "
            "or extra_keys: [my_key] in a config file."
        )
    return set(value)


def closest(key, known):
    """The known key ``key`` was most likely meant as, or None."""
    lowered = {name.lower(): name for name in known}
    if key.lower() in lowered:  # another letter case: learning_Rate
        return lowered[key.lower()]
    match = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return match[0] if match else None


def check_keys(keys, where, known):
    """Raises :class:`~recbole_cstwa.errors.UnknownSettingError` for the first of ``keys`` not in
    ``known``, naming ``where`` it was given and the closest known key."""
    for key in keys:
        if key not in known:
            raise UnknownSettingError(key, where, closest(key, known))
