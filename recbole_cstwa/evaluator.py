"""Multi-task evaluation with RecBole's own metrics.

Each task (defined in :mod:`recbole_cstwa.tasks`) gets RecBole's ``Collector`` and ``Evaluator``,
built from a view of the config whose ``LABEL_FIELD`` is that task's label, so every metric in
``metrics`` is RecBole's own code. Results are merged with the task as prefix: ``click_auc``,
``purchase_logloss``, ``cvr_auc``, ...
"""

from collections import OrderedDict

import torch
from recbole.evaluator import Collector, Evaluator

from recbole_cstwa.tasks import DIVISION, TASKS, metric_key

#: The division is clipped to [DIVISION_CLIP, 1 - DIVISION_CLIP]: a post-click probability in (0, 1).
DIVISION_CLIP = 1e-7


def division_cvr(p_purchase, p_click):
    """``pCTCVR / pCTR`` clipped to ``(0, 1)``: the post-click conversion probability a model
    with an impression-level purchase head implies (the ESMM paper's DIVISION baseline)."""
    ratio = p_purchase / p_click.clamp_min(DIVISION_CLIP)
    return ratio.clamp(DIVISION_CLIP, 1 - DIVISION_CLIP)


def _score(scores, name):
    """Model output ``name`` (or the derived :data:`DIVISION`) of one batch, None when missing."""
    if name == DIVISION:
        return (
            division_cvr(scores["purchase"], scores["click"])
            if {"purchase", "click"} <= set(scores)
            else None
        )
    return scores.get(name)


class _TaskConfig:
    """Read-only view of a ``Config`` with some keys overridden (RecBole reads ``config[key]``)."""

    def __init__(self, config, **overrides):
        self._config = config
        self._overrides = overrides

    def __getitem__(self, key):
        return self._overrides[key] if key in self._overrides else self._config[key]

    def __contains__(self, key):
        return key in self._overrides or key in self._config


class TaskEvaluator:
    """Collects each task's scores over an evaluation set and scores them with RecBole metrics.

    Args:
        config: the run's config.
        tasks (dict): task name (a key of :data:`recbole_cstwa.tasks.TASKS`) -> label field, e.g. ``{"click":
            "click", "purchase": "purchase", "cvr": "purchase"}`` (``config["eval_tasks"]``).
        metrics (list, optional): RecBole metric names to compute instead of ``config["metrics"]``.
        gather (callable, optional): applied to each task's collected ``DataStruct`` before the
            metrics; under DDP it gathers every rank's scores and labels
            (:func:`recbole_cstwa.distributed.gather_data_struct`).
    """

    def __init__(self, config, tasks, metrics=None, gather=None):
        self.tasks = dict(tasks)  # checked once, by the config (recbole_cstwa.tasks.resolve_tasks)
        self.click_field = config["CLICK_FIELD"]
        self.gather = gather
        self.collectors, self.evaluators = {}, {}
        overrides = {} if metrics is None else {"metrics": list(metrics)}
        for task, label_field in self.tasks.items():
            task_config = _TaskConfig(config, LABEL_FIELD=label_field, **overrides)
            self.collectors[task] = Collector(task_config)
            self.evaluators[task] = Evaluator(task_config)
        # Batches are kept here and handed to the collector once (its eval_collect): RecBole's
        # per-batch collection concatenates everything collected so far at every batch, which is
        # quadratic (minutes for Ali-CCP's 42.8M test impressions).
        self._batches = {task: ([], []) for task in self.tasks}

    def collect(self, interaction, scores):
        """Adds one batch: ``scores`` maps model outputs (``click``, ``purchase``, optionally
        ``cvr``) to their ``(B,)`` predicted probabilities."""
        clicked = None
        for task in self.collectors:
            _, sources, clicked_only = TASKS[task]
            score = next((s for s in (_score(scores, name) for name in sources) if s is not None), None)
            if score is None:
                raise KeyError(
                    f"task {task} needs one of the model outputs {list(sources)}, got {list(scores)}."
                )
            label = interaction[self.tasks[task]]
            if clicked_only:
                if clicked is None:
                    clicked = interaction[self.click_field] > 0.5
                score, label = score[clicked], label[clicked]
            scores_so_far, labels_so_far = self._batches[task]
            scores_so_far.append(score.detach().clone())  # as RecBole's collector: no view kept
            labels_so_far.append(label)

    def collected_rows(self):
        """``{task: rows collected since the last evaluate}``."""
        return {task: sum(len(score) for score in scores) for task, (scores, _) in self._batches.items()}

    def evaluate(self, tasks=None):
        """Scores everything collected since the last call and starts afresh; ``tasks``: only
        these (default: every task; the others' rows are dropped)."""
        result = OrderedDict()
        for task, collector in self.collectors.items():
            scores, labels = self._batches[task]
            if tasks is not None and task not in tasks:
                self._batches[task] = ([], [])
                continue
            if scores:
                collector.eval_collect(torch.cat(scores), torch.cat(labels))
            self._batches[task] = ([], [])
            struct = collector.get_data_struct()
            if self.gather is not None:
                struct = self.gather(struct)
            for metric, value in self.evaluators[task].evaluate(struct).items():
                result[metric_key(task, metric)] = value
        return result
