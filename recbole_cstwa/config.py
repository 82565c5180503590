"""RecBole's ``Config``, taught where this plugin's models and YAML defaults are.

Priority stays RecBole's: command line > ``config_dict`` > ``config_file_list`` > the dataset's
own YAML > this plugin's ``properties/`` (overall, model, dataset) > RecBole's own defaults.

The dataset's own YAML is found by convention: ``<data_path>/<dataset>/<dataset>.yaml``, loaded
when present (the importer and the Ali-CCP converter write it beside the atomic files), so that
a dataset's settings travel with it; any config file or command-line key still overrides it.
"""

import os

import yaml
from recbole.config import Config as RecBoleConfig
from recbole.evaluator import metric_types, smaller_metrics

from recbole_cstwa.errors import ConfigError
from recbole_cstwa.evaluator import TASKS as TASK_DEFINITIONS
from recbole_cstwa.registry import get_model, is_multitask_model
from recbole_cstwa.settings import check_settings

#: Task names: the prefixes of every reported metric (``click_auc``, ``cvr_auc``, ...); each is
#: defined in :mod:`recbole_cstwa.evaluator`.
TASKS = tuple(TASK_DEFINITIONS)
#: Tasks a RecBole built-in model trained on one label can be scored on.
SINGLE_LABEL_TASKS = {"click": ("click",), "purchase": ("purchase", "cvr", "ctcvr")}
#: The config key naming each task's label field.
TASK_LABEL_KEYS = {"click": "CLICK_FIELD", "purchase": "PURCHASE_FIELD"}
#: Name of the dataset that ships with the plugin under ``dataset/``.
EMBEDDED_DATASET = "synthetic-ccp"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_REPOSITORY_DIR = os.path.dirname(_PACKAGE_DIR)


def properties_dir():
    """The YAML defaults: inside the installed package, else at the top of a source checkout."""
    for candidate in (
        os.path.join(_PACKAGE_DIR, "properties"),
        os.path.join(_REPOSITORY_DIR, "properties"),
    ):
        if os.path.isfile(os.path.join(candidate, "overall.yaml")):
            return candidate
    raise FileNotFoundError(
        "recbole-cstwa's YAML defaults (properties/overall.yaml) are missing: reinstall with "
        "`pip install -e .` from the repository."
    )


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
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f", line {where.line + 1}" if where is not None else ""
        problem = str(getattr(error, "problem", None) or error).splitlines()[0]
        raise ConfigError(
            f"Config file [{path}]{line} is not plain YAML: {problem}. Fix: write settings as "
            "plain values (numbers, true/false, words, lists); Python tags such as !!python/... "
            "are not read."
        ) from None


class Config(RecBoleConfig):
    """RecBole ``Config`` that finds plugin models and loads the plugin's YAML defaults.

    Besides RecBole's keys it knows ``CLICK_FIELD`` and ``PURCHASE_FIELD`` (the two label columns)
    and ``eval_tasks``: the user lists tasks (``[click, purchase, cvr, ctcvr]``, see
    :mod:`recbole_cstwa.evaluator`), and the config holds ``{task: label field}`` for those the
    model is scored on (all listed for the multi-task models; for a RecBole model trained on
    ``LABEL_FIELD``, that label's task and, trained on purchase, the listed ``cvr`` / ``ctcvr``).
    """

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            try:
                model = self.external_config_dict["model"]
            except KeyError:
                raise KeyError(
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
        for path in file_list or []:
            loaded = _read_yaml(path, self.yaml_loader)
            if loaded is not None and not isinstance(loaded, dict):
                raise ConfigError(
                    f"Config file [{path}] holds {type(loaded).__name__}, not settings: write one "
                    "`key: value` a line."
                )
            settings.update(loaded or {})
        return settings

    def _update_internal_config_dict(self, file):
        loaded = _read_yaml(file, self.yaml_loader)
        if loaded is not None:
            self.internal_config_dict.update(loaded)
        return loaded

    def _load_cmd_line(self):
        try:
            return super()._load_cmd_line()
        except SyntaxError as error:  # RecBole's word for a setting given twice
            raise ConfigError(f"Command line: {error} Fix: give each --key=value once.") from None

    def _convert_config_dict(self, config_dict):
        # RecBole evals every string setting (command line, config_dict); an expression that
        # fails there with anything but a name or syntax error (--learning_rate=1/0) would end
        # in a traceback without the key.
        for key in list(config_dict):
            try:
                super()._convert_config_dict({key: config_dict[key]})
            except Exception as error:
                raise ConfigError(
                    f"Setting {key} = {config_dict[key]!r} cannot be read as a value "
                    f"({type(error).__name__}: {error}). Fix: give a number, true/false, a word or "
                    "a list."
                ) from None
        return super()._convert_config_dict(config_dict)

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
        # Every setting checked once, here, before any data is read (recbole_cstwa.settings).
        check_settings(self.final_config_dict, self.model, is_multitask_model(self.model_class))
        self._resolve_tasks()
        super()._set_default_parameters()
        self.final_config_dict["valid_metric_bigger"] = (
            self.final_config_dict["valid_metric"].split("_", 1)[1].lower() not in smaller_metrics
        )

    @staticmethod
    def _requested_tasks(value):
        """The ``eval_tasks`` setting as a list of task names (YAML list, ``[a,b]`` or ``a,b`` text
        from the command line, or an already resolved ``{task: label}`` dict)."""
        if isinstance(value, dict):
            value = list(value)
        elif isinstance(value, str):
            value = [part.strip(" '\"") for part in value.strip("[] ").split(",") if part.strip(" '\"")]
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(
                f"eval_tasks must list evaluation tasks from {list(TASKS)}, e.g. "
                f"[click, purchase, cvr], got {value!r}."
            )
        unknown = [task for task in value if task not in TASKS]
        if unknown:
            raise ConfigError(f"eval_tasks: unknown task(s) {unknown}; choose from {list(TASKS)}.")
        return list(dict.fromkeys(value))

    def _resolve_tasks(self):
        """Checks the label keys and sets ``eval_tasks`` and a task-prefixed ``valid_metric``."""
        config = self.final_config_dict
        self.notes = []  # messages for the log, written once the logger exists (quick_start)
        labels = {task: config.get(key) for task, key in TASK_LABEL_KEYS.items()}
        for task, key in TASK_LABEL_KEYS.items():
            if not isinstance(labels[task], str) or not labels[task]:
                raise ConfigError(f"{key} must name the {task} label column, got {labels[task]!r}.")
        if labels["click"] == labels["purchase"]:
            raise ConfigError(
                f"CLICK_FIELD and PURCHASE_FIELD are both [{labels['click']}]: name two columns."
            )
        for field in labels.values():
            if field in (config.get("numerical_features") or []):
                raise ConfigError(
                    f"Label [{field}] is listed in numerical_features: a label must never be a "
                    "feature. Remove it from numerical_features."
                )
        if config.get("threshold"):
            raise ConfigError(
                "threshold must be unset (threshold: ~): the click and purchase columns already "
                "hold 0/1 labels."
            )

        # LABEL_FIELD follows PURCHASE_FIELD unless a config file, config_dict, the command line
        # or the dataset's YAML sets it on purpose (the plugin's default is only a default).
        if "LABEL_FIELD" not in self.external_config_dict and "LABEL_FIELD" not in getattr(
            self, "dataset_yaml_keys", ()
        ):
            config["LABEL_FIELD"] = labels["purchase"]
        label_field = config.get("LABEL_FIELD")
        if is_multitask_model(self.model_class):
            if label_field != labels["purchase"]:
                raise ConfigError(
                    f"{self.model} trains on both labels and its predict() gives the purchase "
                    f"head, so LABEL_FIELD must equal PURCHASE_FIELD [{labels['purchase']}], "
                    f"got [{label_field}]. Remove the LABEL_FIELD setting."
                )
            requested = self._requested_tasks(config.get("eval_tasks"))
        else:
            trained = [task for task, field in labels.items() if field == label_field]
            if not trained:
                raise ConfigError(
                    f"LABEL_FIELD [{label_field}] is neither CLICK_FIELD [{labels['click']}] nor "
                    f"PURCHASE_FIELD [{labels['purchase']}]: set --LABEL_FIELD to one of them."
                )
            applicable = SINGLE_LABEL_TASKS[trained[0]]
            listed = self._requested_tasks(config.get("eval_tasks"))
            requested = [trained[0]] + [t for t in listed if t in applicable and t != trained[0]]
        config["eval_tasks"] = {
            task: labels["click" if TASK_DEFINITIONS[task][0] == "CLICK_FIELD" else "purchase"]
            for task in requested
        }
        tasks = config["eval_tasks"]

        metrics = config["metrics"]
        metrics = [metrics] if isinstance(metrics, str) else list(metrics)
        for metric in metrics:
            if metric_types.get(metric.lower()) is None:
                raise ConfigError(f"metrics: there is no RecBole metric named [{metric}].")
        metric_names = [metric.lower() for metric in metrics]
        valid_metric = str(config["valid_metric"]).lower()
        task, _, metric = valid_metric.partition("_")
        if task not in TASKS:
            # A RecBole-style name ("AUC") means that metric on the main task scored.
            task, metric = ("purchase" if "purchase" in tasks else next(iter(tasks))), valid_metric
        if task not in tasks:
            fallback = next(iter(tasks))
            self.notes.append(
                f"valid_metric [{valid_metric}] is not computed for {self.model} trained on "
                f"[{label_field}]: early stopping uses {fallback}_{metric} instead."
            )
            task = fallback
        if metric not in metric_names:
            raise ConfigError(
                f"valid_metric [{config['valid_metric']}] needs metric [{metric}] in metrics "
                f"{metrics}: add it to metrics or choose one of "
                f"{[f'{t}_{m}' for t in tasks for m in metric_names]}."
            )
        config["valid_metric"] = f"{task}_{metric}"
