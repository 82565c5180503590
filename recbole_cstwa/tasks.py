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

:func:`resolve_tasks` checks the label keys, ``eval_tasks``, ``metrics`` and ``valid_metric``
once, when the config is built; the evaluator and the trainers then read them unchecked.
"""

from collections import OrderedDict

from recbole.evaluator import metric_types
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
)

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
            f"[click, purchase, cvr], got {value!r}."
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
    ``ctcvr``), ``valid_metric`` a task-prefixed key. ``LABEL_FIELD`` follows ``PURCHASE_FIELD``
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
    task, _, metric = valid_metric.partition("_")
    if task not in TASKS:
        # A RecBole-style name ("AUC") means that metric on the main task scored.
        task, metric = ("purchase" if "purchase" in tasks else next(iter(tasks))), valid_metric
    if task not in tasks:
        fallback = next(iter(tasks))
        notes.append(
            f"valid_metric [{valid_metric}] is not computed for {model_name} trained on "
            f"[{label_field}]: early stopping uses {metric_key(fallback, metric)} instead."
        )
        task = fallback
    if metric not in metric_names:
        raise ConfigError(
            f"valid_metric [{config['valid_metric']}] needs metric [{metric}] in metrics "
            f"{metrics}: add it to metrics or choose one of "
            f"{[metric_key(t, m) for t in tasks for m in metric_names]}."
        )
    config["valid_metric"] = metric_key(task, metric)
    return notes
