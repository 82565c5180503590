"""RecBole's ``Config``, taught where this plugin's models and YAML defaults are.

Priority stays RecBole's: command line > ``config_dict`` > ``config_file_list`` > the dataset's
own YAML > this plugin's ``properties/`` (overall, model, dataset) > RecBole's own defaults.

The dataset's own YAML is found by convention: ``<data_path>/<dataset>/<dataset>.yaml``, loaded
when present (the importer and the Ali-CCP converter write it beside the atomic files), so that
a dataset's settings travel with it; any config file or command-line key still overrides it.
"""

import contextlib
import os
import sys
from logging import getLogger

import yaml
from recbole.config import Config as RecBoleConfig

from recbole_cstwa.compat import quiet_known_noise
from recbole_cstwa.errors import ConfigError
from recbole_cstwa.keys import check_keys, extra_keys, known_keys
from recbole_cstwa.registry import get_model, is_multitask_model
from recbole_cstwa.setting_checks import check_settings, properties_dir
from recbole_cstwa.settings import RULES, SETTINGS
from recbole_cstwa.tasks import metric_bigger, resolve_tasks
from recbole_cstwa.values import YAML_MAX_NODES, SettingsYamlLoader, parse_literal

#: Name of the dataset that ships with the plugin under ``dataset/``.
EMBEDDED_DATASET = "synthetic-ccp"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_REPOSITORY_DIR = os.path.dirname(_PACKAGE_DIR)


def dataset_yaml_path(data_path, dataset):
    """The dataset's own settings file, found by convention: ``<data_path>/<name>/<name>.yaml``."""
    return os.path.join(data_path, dataset, f"{dataset}.yaml")


def embedded_data_path():
    """The folder holding the embedded dataset (the repository's ``dataset/``)."""
    return os.path.join(_REPOSITORY_DIR, "dataset")


def _read_yaml(path, loader):
    """A YAML settings file, any failure as one line naming the file."""
    try:
        with open(path, encoding="utf-8") as file:
            return yaml.load(file.read(), Loader=loader)
    except FileNotFoundError:
        raise ConfigError(f"Config file [{path}] does not exist (--config_files).") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Config file [{path}] cannot be read: {error}.") from None
    except RecursionError:
        raise ConfigError(f"Config file [{path}] is nested too deeply to hold settings.") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f", line {where.line + 1}" if where is not None else ""
        problem = str(getattr(error, "problem", None) or error).splitlines()[0]
        raise ConfigError(
            f"Config file [{path}]{line} is not plain YAML: {problem}. Fix: write settings as "
            "plain values (numbers, true/false, words, lists); Python tags such as !!python/... "
            "are not read, and aliases (*name) may not expand to more than "
            f"{YAML_MAX_NODES:,} values."
        ) from None


class Config(RecBoleConfig):
    """RecBole ``Config`` that finds plugin models and loads the plugin's YAML defaults.

    Besides RecBole's keys it knows ``CLICK_FIELD`` and ``PURCHASE_FIELD`` (the two label columns)
    and ``eval_tasks``: the user lists tasks (``[click, purchase, cvr, ctcvr]``, see
    :mod:`recbole_cstwa.tasks`), and the config holds ``{task: label field}`` for those the
    model is scored on (all listed for the multi-task models; for a RecBole model trained on
    ``LABEL_FIELD``, that label's task and, trained on purchase, the listed ``cvr`` / ``ctcvr``).
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None):
        quiet_known_noise()  # before any dataset is read (recbole_cstwa.compat)
        super().__init__(model, dataset, config_file_list, config_dict)

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            try:
                model = self.external_config_dict["model"]
            except KeyError:
                raise ConfigError(
                    "model needs to be given in one of: the model argument, a config file, "
                    "config_dict or the command line (--model=CSTWA)."
                ) from None
        if isinstance(model, str):
            final_model_class = get_model(model)
            final_model = final_model_class.__name__
        else:
            final_model_class = model
            final_model = model.__name__
        if dataset is None:
            dataset = self.external_config_dict.get("dataset", EMBEDDED_DATASET)
        return final_model, final_model_class, dataset

    def _load_config_files(self, file_list):
        settings = {}
        self.config_file_keys = []  # (path, keys) of each file, for the check of unknown keys
        for path in file_list or []:
            loaded = _read_yaml(path, self.yaml_loader)
            if loaded is not None and not isinstance(loaded, dict):
                raise ConfigError(
                    f"Config file [{path}] holds {type(loaded).__name__}, not settings: write one "
                    "`key: value` a line."
                )
            self.config_file_keys.append((path, list(loaded or {})))
            settings.update(loaded or {})
        return settings

    def _check_keys(self):
        """Stops at a key no one reads (a misspelled setting), naming where it was given: the
        command line, a config file or ``config_dict``. Known: RecBole's and the plugin's keys
        (:mod:`recbole_cstwa.keys`), the dataset's own YAML keys and ``extra_keys``."""
        known = set(known_keys()) | set(self.internal_config_dict)
        known |= extra_keys(self.external_config_dict.get("extra_keys"))
        self.known_keys = frozenset(known)
        check_keys(self.cmd_config_dict, "command line", known)
        for path, keys in getattr(self, "config_file_keys", ()):
            check_keys(keys, f"Config file [{path}]", known)
        check_keys(self.variable_config_dict, "config_dict", known)

    def _update_internal_config_dict(self, file):
        loaded = _read_yaml(file, self.yaml_loader)
        if loaded is not None:
            self.internal_config_dict.update(loaded)
        return loaded

    def _build_yaml_loader(self):
        # Every YAML file (config files, the dataset's YAML, properties/) as plain values; RecBole's
        # FullLoader would build Python names (!!python/name:os.system) and expand alias bombs.
        return SettingsYamlLoader

    def _load_cmd_line(self):
        """RecBole's ``--key=value`` pairs, each value read by the plugin's literal parser
        (:func:`recbole_cstwa.values.parse_literal`), never by RecBole's ``eval``."""
        settings, ignored = {}, []
        arguments = [] if "ipykernel_launcher" in sys.argv[0] else sys.argv[1:]
        for argument in arguments:
            key, sep, text = argument[2:].partition("=")
            if not argument.startswith("--") or not sep or not key:
                ignored.append(argument)
                continue
            if key in settings and text != settings[key][0]:
                raise ConfigError(
                    f"Command line: --{key} is given twice, as {settings[key][0]!r} and {text!r}. "
                    "Fix: give each --key=value once."
                )
            settings[key] = (text, parse_literal(text, f"--{key}", key=key))
        if ignored:
            getLogger().warning(f"command line args [{' '.join(ignored)}] will not be used in RecBole")
        return {key: value for key, (_, value) in settings.items()}

    def _convert_config_dict(self, config_dict):
        """``config_dict``'s strings read as the command line's values are
        (:func:`recbole_cstwa.values.parse_literal`: ``"[1, 2]"``, ``"1e-3"``, ``"true"``, ``"~"``),
        never by RecBole's ``eval``; a string read as text stays exactly as given (``" "``)."""
        for key, value in config_dict.items():
            if isinstance(value, str):
                parsed = parse_literal(value, f"config_dict, {key}", key=key)
                config_dict[key] = value if parsed == value.strip() else parsed
        return config_dict

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        root = properties_dir()
        for path, is_dataset_file in (
            (os.path.join(root, "overall.yaml"), False),
            (os.path.join(root, "model", model + ".yaml"), False),
            (os.path.join(root, "dataset", dataset + ".yaml"), True),
        ):
            if os.path.isfile(path):
                loaded = self._update_internal_config_dict(path) or {}
                if is_dataset_file:
                    self._add_dataset_keys(loaded)
        self.dataset_yaml_keys = self._load_dataset_yaml(dataset)
        self.internal_config_dict["MODEL_TYPE"] = model_class.type

    def _load_dataset_yaml(self, dataset):
        """Loads ``<data_path>/<dataset>/<dataset>.yaml`` when present, above the plugin's
        defaults and below the user's config files; returns the keys it set."""
        data_path = self.external_config_dict.get("data_path", self.internal_config_dict.get("data_path"))
        if not isinstance(data_path, str):
            return set()
        path = dataset_yaml_path(data_path, dataset)
        if not os.path.isfile(path):
            return set()
        loaded = self._update_internal_config_dict(path) or {}
        self._add_dataset_keys(loaded)
        self.dataset_yaml = path
        return set(loaded)

    def _add_dataset_keys(self, keys):
        """Counts ``keys`` (from a dataset YAML) among the dataset's settings. A new list: ``+=``
        would grow RecBole's module-level ``dataset_arguments`` for every later Config."""
        self.parameters["Dataset"] = self.parameters["Dataset"] + [
            key for key in keys if key not in self.parameters["Dataset"]
        ]

    def _init_device(self):
        # Work-around: RecBole 1.2.1's DDP set-up hard-codes nccl and CUDA; a DDP rank (a
        # ``local_rank`` is set) joins with nccl on CUDA and gloo on CPU instead.
        if "local_rank" not in self.final_config_dict:
            return super()._init_device()
        from recbole_cstwa.distributed import init_rank_device

        init_rank_device(self.final_config_dict)

    def _set_default_parameters(self):
        # The embedded dataset is found wherever the command runs from, unless data_path is set.
        if (
            self.dataset == EMBEDDED_DATASET
            and "data_path" not in self.external_config_dict
            and not os.path.isdir(os.path.join(self.final_config_dict["data_path"], self.dataset))
        ):
            self.final_config_dict["data_path"] = embedded_data_path()
        # Every key and setting checked once, here, before any data is read or logged.
        self._check_keys()
        if "show_progress" not in self.external_config_dict:
            # progress bars only on a terminal: redirected, they fill the file with \r lines
            self.final_config_dict["show_progress"] = sys.stderr.isatty()
        check_settings(
            self.final_config_dict, self.model, is_multitask_model(self.model_class), SETTINGS, RULES
        )
        self._check_paths_and_files()
        self._resolve_tasks()
        super()._set_default_parameters()
        self.final_config_dict["valid_metric_bigger"] = metric_bigger(self.final_config_dict["valid_metric"])

    def _check_paths_and_files(self):
        """Folders and file names RecBole would read without a check: an empty checkpoint_dir
        puts the dataset cache in the current folder, a benchmark_filename text is split into
        its characters."""
        config = self.final_config_dict
        for key in ("checkpoint_dir", "dataset_cache_dir"):
            value = config.get(key)
            if key == "dataset_cache_dir" and value is None:
                continue  # the cache then goes to checkpoint_dir
            if not isinstance(value, str) or not value.strip():
                got = "an empty value" if value is None or not str(value).strip() else repr(value)
                raise ConfigError(
                    f"{key} must name a folder, got {got}. Fix: --{key}=saved (or another folder)"
                    + (", or leave it unset to use checkpoint_dir." if key == "dataset_cache_dir" else ".")
                )
        names = config.get("benchmark_filename")
        if names is not None and (
            not isinstance(names, (list, tuple)) or not all(isinstance(name, str) and name for name in names)
        ):
            raise ConfigError(
                f"benchmark_filename must be a list of split names, got {names!r}. Fix: "
                "benchmark_filename: [train, valid, test] in a config file, or "
                '--benchmark_filename="[train,valid,test]" on the command line.'
            )

    def _resolve_tasks(self):
        """Checks the label keys and sets ``eval_tasks`` and a task-prefixed ``valid_metric``
        (:func:`recbole_cstwa.tasks.resolve_tasks`)."""
        # LABEL_FIELD follows PURCHASE_FIELD unless a config file, config_dict, the command line
        # or the dataset's YAML sets it on purpose (the plugin's default is only a default).
        label_field_set = "LABEL_FIELD" in self.external_config_dict or "LABEL_FIELD" in getattr(
            self, "dataset_yaml_keys", ()
        )
        # messages for the log, written once the logger exists (quick_start)
        self.notes = resolve_tasks(
            self.final_config_dict, self.model, is_multitask_model(self.model_class), label_field_set
        )


@contextlib.contextmanager
def isolated_argv():
    """Hides the command line from RecBole's ``Config``, which reads ``--key=value`` pairs there.

    A run's settings are then exactly its ``config_dict`` and config files: a script's own flags
    cannot leak in, and a fixed ``--key=value`` cannot silently override a searched one.
    """
    saved = sys.argv
    sys.argv = saved[:1] or ["recbole_cstwa"]
    try:
        yield
    finally:
        sys.argv = saved
