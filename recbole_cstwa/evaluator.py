"""Two-task evaluation with RecBole's own metrics.

Each task (click, purchase) gets RecBole's ``Collector`` and ``Evaluator``, built from a view of
the config whose ``LABEL_FIELD`` is that task's label, so every metric in ``metrics`` is RecBole's
own code. Results are merged with the task as prefix: ``click_auc``, ``purchase_logloss``, ...
"""

from collections import OrderedDict

from recbole.evaluator import Collector, Evaluator


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
        tasks (dict): task name -> label field, e.g. ``{"click": "click", "purchase": "purchase"}``.
        metrics (list, optional): RecBole metric names to compute instead of ``config["metrics"]``.
        gather (callable, optional): applied to each task's collected ``DataStruct`` before the
            metrics; under DDP it gathers every rank's scores and labels
            (:func:`recbole_cstwa.distributed.gather_data_struct`).
    """

    def __init__(self, config, tasks, metrics=None, gather=None):
        self.tasks = dict(tasks)
        self.gather = gather
        self.collectors, self.evaluators = {}, {}
        overrides = {} if metrics is None else {"metrics": list(metrics)}
        for task, label_field in self.tasks.items():
            task_config = _TaskConfig(config, LABEL_FIELD=label_field, **overrides)
            self.collectors[task] = Collector(task_config)
            self.evaluators[task] = Evaluator(task_config)

    def collect(self, interaction, scores):
        """Adds one batch: ``scores`` maps each task to its ``(B,)`` predicted probabilities."""
        for task, collector in self.collectors.items():
            collector.eval_batch_collect(scores[task], interaction, None, None)

    def evaluate(self):
        """Scores everything collected since the last call and starts afresh."""
        result = OrderedDict()
        for task, collector in self.collectors.items():
            struct = collector.get_data_struct()
            if self.gather is not None:
                struct = self.gather(struct)
            for metric, value in self.evaluators[task].evaluate(struct).items():
                result[f"{task}_{metric}"] = value
        return result
