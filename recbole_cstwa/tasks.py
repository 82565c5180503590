"""The two labels, the evaluation tasks scored on them and their metric keys, defined once.

Labels: ``click`` and ``purchase``, each a 0/1 column named by a config key (:data:`LABEL_KEYS`:
``CLICK_FIELD``, ``PURCHASE_FIELD``). A RecBole built-in model trains on one of them
(``LABEL_FIELD``).

Tasks (:data:`TASKS`), each scored with RecBole's metrics under the task's prefix
(:func:`metric_key`: ``click_auc``, ``cvr_logloss``, ...):

- ``click``: the click probability against the click label, over all impressions.
- ``purchase``: the impression-level purchase probability against the purchase label, over all
  impressions (AITM's and the CSTWA paper's "purchase AUC").
- ``cvr``: post-click conversion, over the **clicked** impressions only, against the purchase
  label (the CVR AUC of the ESMM and ESCM2 papers). Scored with the model's pCVR head when it
  has one (``cvr`` in its ``predict_tasks`` output: ESMM, ESCM2, DCMT, DDPO, NISE, the clicked-only MLP); for a
  model whose purchase head is impression-level, with ``pCTCVR / pCTR`` (:data:`DIVISION`, its
  purchase probability over its click probability, clipped to ``(0, 1)``: the DIVISION
  competitor of the ESMM paper's experiments, Ma et al., SIGIR 2018); for a model with a
  purchase score only (a RecBole model trained on the purchase label), that score.
- ``ctcvr``: click-and-conversion, over all impressions, against the purchase label, scored with
  the impression-level purchase probability (pCTR * pCVR for ESMM / ESCM2 / DCMT / DDPO / NISE). Every model here
  already scores ``purchase`` with that probability, so ``ctcvr`` equals ``purchase``: it is
  offered under the literature's name.
- ``cvr_all``: the model's pCVR (its ``cvr`` head, else :data:`DIVISION`) over **every**
  impression, against the purchase label: NISE's protocol (Huang et al., RecSys 2024). A model without
  a pCVR (a RecBole model trained on one label) is not scored on it.

Besides the metrics of ``metrics`` (RecBole's), every task gets the plugin's own
(:data:`CALIBRATION_METRICS`, and :data:`TRUTH_METRICS` on a split with the generator's true
probabilities, against the task's :data:`TRUTH_TARGETS`), and each metric a ``_cold`` twin on
the cold-start slice (docs/evaluation.md).

:func:`resolve_tasks` checks the label keys, ``eval_tasks``, ``metrics`` and ``valid_metric``
once, when the config is built; the evaluator and the trainers then read them unchecked.
"""

from collections import OrderedDict

from recbole.evaluator import metric_types, smaller_metrics
from recbole.utils import EvaluatorType

from recbole_cstwa.errors import ConfigError

#: Label name -> the config key naming its column.
LABEL_KEYS = OrderedDict(click="CLICK_FIELD", purchase="PURCHASE_FIELD")

#: A score derived from the model outputs: pCTCVR / pCTR, the ESMM paper's DIVISION baseline.
DIVISION = "purchase/click"

#: Evaluation tasks: name -> (its label, model outputs read in this order, clicked rows only).
TASKS = OrderedDict(
    click=("click", ("click",), False),
    purchase=("purchase", ("purchase",), False),
    cvr=("purchase", ("cvr", DIVISION, "purchase"), True),
    ctcvr=("purchase", ("purchase",), False),
    cvr_all=("purchase", ("cvr", DIVISION), False),
)

#: The truth columns a dataset adds to rows with a truth file (recbole_cstwa.data.truth): the
#: true P(click | impression) and P(click and purchase | impression), never features.
TRUTH_FIELDS = OrderedDict(click="truth_click", purchase="truth_purchase")
#: What each task's truth metrics score against: ``click`` (p_click), ``purchase`` (p_purchase)
#: or ``cvr`` (q = p_purchase / p_click, the true post-click conversion rate).
TRUTH_TARGETS = {
    "click": "click",
    "purchase": "purchase",
    "ctcvr": "purchase",
    "cvr": "cvr",
    "cvr_all": "cvr",
}

#: The plugin's metrics on any data (``calibration_metrics``): predicted over observed, and the
#: expected calibration error over equal-count bins.
CALIBRATION_METRICS = ("pcoc", "ece")
#: The plugin's metrics against the truth (``truth_metrics``, a split with truth); ``truth_clipped``
#: only for a score made by :data:`DIVISION`.
TRUTH_METRICS = ("truth_kl", "truth_auc", "truth_ece", "truth_clipped")
#: Metrics whose smaller value is better (valid_metric_bigger False).
SMALLER_METRICS = ("kl", "ece")
#: Metrics that describe a run but cannot select a model (valid_metric).
UNSELECTABLE_METRICS = {
    "pcoc": "PCOC is best at 1, neither bigger nor smaller",
    "truth_clipped": "it counts clipped divisions, it does not score a model",
}
#: The suffix of a metric on the cold-start slice, and the key of that slice's row count.
COLD_SUFFIX = "_cold"
COLD_ROWS = "cold_rows"

#: Tasks a RecBole built-in model trained on one label can be scored on.
SINGLE_LABEL_TASKS = {"click": ("click",), "purchase": ("purchase", "cvr", "ctcvr")}


def label_fields(config):
    """``{"click": <click column>, "purchase": <purchase column>}`` of ``config``."""
    return {label: config[key] for label, key in LABEL_KEYS.items()}


def task_label(task):
    """The label (``click`` / ``purchase``) ``task`` is scored against."""
    return TASKS[task][0]


def trained_label(config):
    """The label a single-label model trains on: ``click`` when ``LABEL_FIELD`` is the click
    column, else ``purchase``."""
    return "click" if config["LABEL_FIELD"] == config["CLICK_FIELD"] else "purchase"


def metric_key(task, metric):
    """A reported metric's name: ``click_auc``, ``purchase_logloss``, ..."""
    return f"{task}_{metric.lower()}"


def split_metric_key(key):
    """``(task, metric)`` of a reported metric's name (``cvr_all_truth_kl`` -> ``("cvr_all",
    "truth_kl")``); ``(None, key)`` when no task prefixes it (a RecBole-style ``AUC``)."""
    key = str(key).lower()
    for task in sorted(TASKS, key=len, reverse=True):  # cvr_all before cvr
        if key.startswith(task + "_"):
            return task, key[len(task) + 1 :]
    return None, key


def metric_bigger(key):
    """True when a bigger value of the metric ``key`` is better (RecBole's ``smaller_metrics``
    and the plugin's KL and ECE are smaller-is-better)."""
    _, metric = split_metric_key(key)
    metric = metric.removesuffix(COLD_SUFFIX)
    last = metric.rsplit("_", 1)[-1]
    return metric not in smaller_metrics and last not in SMALLER_METRICS


def requested_tasks(value):
    """The ``eval_tasks`` setting as a list of task names (YAML list, ``[a,b]`` or ``a,b`` text
    from the command line, or an already resolved ``{task: label}`` dict)."""
    if isinstance(value, dict):
        value = list(value)
    elif isinstance(value, str):
        value = [part.strip(" '\"") for part in value.strip("[] ").split(",") if part.strip(" '\"")]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(
            f"eval_tasks must list evaluation tasks from {list(TASKS)}, e.g. "
            f"[click, purchase, cvr, cvr_all], got {value!r}."
        )
    unknown = [task for task in value if task not in TASKS]
    if unknown:
        raise ConfigError(f"eval_tasks: unknown task(s) {unknown}; choose from {list(TASKS)}.")
    return list(dict.fromkeys(value))


def _check_labels(config):
    labels = {label: config.get(key) for label, key in LABEL_KEYS.items()}
    for label, key in LABEL_KEYS.items():
        if not isinstance(labels[label], str) or not labels[label]:
            raise ConfigError(f"{key} must name the {label} label column, got {labels[label]!r}.")
    if labels["click"] == labels["purchase"]:
        raise ConfigError(f"CLICK_FIELD and PURCHASE_FIELD are both [{labels['click']}]: name two columns.")
    for field in labels.values():
        if field in (config.get("numerical_features") or []):
            raise ConfigError(
                f"Label [{field}] is listed in numerical_features: a label must never be a "
                "feature. Remove it from numerical_features."
            )
    for key in ("numerical_features", "normalize_field", "discretization"):
        named = [field for field in TRUTH_FIELDS.values() if field in (config.get(key) or [])]
        if named:
            raise ConfigError(
                f"{key} names {named}, the true probabilities the evaluation scores against: "
                f"they are never features nor transformed. Remove them from {key}."
            )
    if config.get("threshold"):
        raise ConfigError(
            "threshold must be unset (threshold: ~): the click and purchase columns already hold 0/1 labels."
        )
    return labels


def _value_metrics(config, model_name):
    metrics = config["metrics"]
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    for metric in metrics:
        if metric_types.get(metric.lower()) is None:
            raise ConfigError(f"metrics: there is no RecBole metric named [{metric}].")
    kinds = {metric: metric_types[metric.lower()] for metric in metrics}
    ranking = [metric for metric, kind in kinds.items() if kind == EvaluatorType.RANKING]
    if ranking:
        values = [metric for metric, kind in kinds.items() if kind == EvaluatorType.VALUE]
        raise ConfigError(
            f"metrics {metrics} hold top-k ranking metrics {ranking}, which score a ranked list "
            f"of items per user, not one score per impression as {model_name} gives. Fix: "
            f"metrics: {values or ['AUC', 'LogLoss']} (value metrics such as AUC, GAUC, LogLoss, "
            "MAE, RMSE)."
        )
    return metrics


def resolve_tasks(config, model_name, multitask, label_field_set):
    """Checks the label keys, ``eval_tasks``, ``metrics`` and ``valid_metric`` of ``config`` (a
    dict, changed in place) and resolves them: ``eval_tasks`` becomes ``{task: label column}``
    for the tasks ``model_name`` is scored on (all listed for a two-task model; for a model
    trained on ``LABEL_FIELD``, that label's task and, trained on purchase, the listed ``cvr`` /
    ``ctcvr``; ``cvr_all`` needs a pCVR, which such a model has not), ``valid_metric`` a
    task-prefixed key (one of ``metrics``, or of the plugin's calibration and truth metrics
    that can rank models). ``LABEL_FIELD`` follows ``PURCHASE_FIELD``
    unless ``label_field_set`` (the user or the dataset's YAML set it).

    Returns:
        list: notes for the log (a ``valid_metric`` replaced by one the model computes).
    """
    notes = []
    labels = _check_labels(config)
    if not label_field_set:
        config["LABEL_FIELD"] = labels["purchase"]
    label_field = config.get("LABEL_FIELD")
    if multitask:
        if label_field != labels["purchase"]:
            raise ConfigError(
                f"{model_name} trains on both labels and its predict() gives the purchase "
                f"head, so LABEL_FIELD must equal PURCHASE_FIELD [{labels['purchase']}], "
                f"got [{label_field}]. Remove the LABEL_FIELD setting."
            )
        requested = requested_tasks(config.get("eval_tasks"))
    else:
        trained = [label for label, field in labels.items() if field == label_field]
        if not trained:
            raise ConfigError(
                f"LABEL_FIELD [{label_field}] is neither CLICK_FIELD [{labels['click']}] nor "
                f"PURCHASE_FIELD [{labels['purchase']}]: set --LABEL_FIELD to one of them."
            )
        applicable = SINGLE_LABEL_TASKS[trained[0]]
        listed = requested_tasks(config.get("eval_tasks"))
        requested = [trained[0]] + [t for t in listed if t in applicable and t != trained[0]]
    tasks = config["eval_tasks"] = {task: labels[task_label(task)] for task in requested}

    metrics = _value_metrics(config, model_name)
    metric_names = [metric.lower() for metric in metrics]
    valid_metric = str(config["valid_metric"]).lower()
    task, metric = split_metric_key(valid_metric)
    if task is None:
        # A RecBole-style name ("AUC") means that metric on the main task scored.
        task = "purchase" if "purchase" in tasks else next(iter(tasks))
    if task not in tasks:
        fallback = next(iter(tasks))
        notes.append(
            f"valid_metric [{valid_metric}] is not computed for {model_name} trained on "
            f"[{label_field}]: early stopping uses {metric_key(fallback, metric)} instead."
        )
        task = fallback
    _check_selectable(config, metric, metric_names, tasks)
    config["valid_metric"] = metric_key(task, metric)
    return notes


def _check_selectable(config, metric, metric_names, tasks):
    """Stops when ``valid_metric``'s metric is not computed on every validation or cannot rank
    models (see :data:`UNSELECTABLE_METRICS`)."""
    given = config["valid_metric"]
    if metric.endswith(COLD_SUFFIX):
        raise ConfigError(
            f"valid_metric [{given}] is a cold-start slice metric, computed only when the "
            "validation split holds cold rows: it cannot select the model. Fix: "
            f"--valid_metric={metric_key(next(iter(tasks)), metric.removesuffix(COLD_SUFFIX))}."
        )
    if metric in UNSELECTABLE_METRICS:
        raise ConfigError(
            f"valid_metric [{given}] cannot select a model ({UNSELECTABLE_METRICS[metric]}). Fix: "
            "choose an AUC, a LogLoss, an ECE or a truth KL, e.g. --valid_metric=purchase_auc or "
            "--valid_metric=cvr_all_truth_kl."
        )
    switches = {name: "calibration_metrics" for name in CALIBRATION_METRICS}
    switches.update({name: "truth_metrics" for name in TRUTH_METRICS})
    if metric in switches:
        if config.get(switches[metric]) is False:
            raise ConfigError(
                f"valid_metric [{given}] needs {switches[metric]}: True (it is False). Fix: "
                f"--{switches[metric]}=True, or another valid_metric."
            )
        return
    if metric not in metric_names:
        extra = [name for name in (*CALIBRATION_METRICS, *TRUTH_METRICS) if name not in UNSELECTABLE_METRICS]
        raise ConfigError(
            f"valid_metric [{given}] needs metric [{metric}] in metrics "
            f"{config['metrics']}: add it to metrics or choose one of "
            f"{[metric_key(t, m) for t in tasks for m in metric_names + extra]}."
        )
