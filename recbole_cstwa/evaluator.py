"""Multi-task evaluation with RecBole's own metrics, calibration, the truth and a cold-start slice.

Each task (defined in :mod:`recbole_cstwa.tasks`) gets RecBole's ``Collector`` and ``Evaluator``,
built from a view of the config whose ``LABEL_FIELD`` is that task's label, so every metric in
``metrics`` is RecBole's own code. Results are merged with the task as prefix: ``click_auc``,
``purchase_logloss``, ``cvr_auc``, ...

Besides them (docs/evaluation.md has every formula):

- calibration on any data (``calibration_metrics``): ``<task>_pcoc`` (predicted over observed)
  and ``<task>_ece`` over ``calibration_bins`` equal-count bins of the predictions;
- on a split whose rows carry the generator's true probabilities (the dataset's truth fields,
  ``truth_metrics``), against each task's :data:`~recbole_cstwa.tasks.TRUTH_TARGETS`:
  ``<task>_truth_kl`` (mean KL(truth || prediction), nats), ``<task>_truth_auc`` (soft-label
  AUC), ``<task>_truth_ece`` and, for a :data:`~recbole_cstwa.tasks.DIVISION` score,
  ``<task>_truth_clipped`` (the share of rows where its clip binds);
- on the rows whose user or item was seen fewer than ``cold_start_count`` times in the training
  split (:meth:`TaskEvaluator.count_training_rows`), every metric again as ``<metric>_cold``,
  and the slice's size as ``cold_rows``.

The plugin's metrics are computed with numpy, vectorised, in O(n log n) at most (one sort a task
for the soft AUC; the bins need a partition, not a sort), and rounded as RecBole rounds its own
(``metric_decimal_place``).
"""

import copy
from collections import OrderedDict

import numpy as np
import torch
from recbole.evaluator import Collector, Evaluator
from recbole.evaluator.collector import DataStruct

from recbole_cstwa.tasks import (
    COLD_ROWS,
    COLD_SUFFIX,
    DIVISION,
    TASKS,
    TRUTH_FIELDS,
    TRUTH_TARGETS,
    metric_key,
)

#: The division is clipped to [DIVISION_CLIP, 1 - DIVISION_CLIP]: a post-click probability in (0, 1).
DIVISION_CLIP = 1e-7
#: Both sides of the truth KL are clipped to [KL_CLIP, 1 - KL_CLIP] (a finite log).
KL_CLIP = 1e-7
#: The bounds as a float32 prediction holds them: 1 - 1e-7 is no float32, and a probability
#: clipped there in float32 (the DIVISION pCVR) sits at 1 - 1.19e-7. Read at these values, a
#: prediction counts as the bound itself, so the KL of a clipped row is the one the definition
#: gives (with 1 - p = 1e-7, not 1.19e-7: 0.17 nats more a fully clipped row).
_KL_BOUNDS_IN_FLOAT32 = (float(np.float32(KL_CLIP)), float(np.float32(1 - KL_CLIP)))
#: Rows a vectorised step handles at once: temporaries stay bounded on 43M-row splits.
CHUNK_ROWS = 1 << 22


def division_cvr(p_purchase, p_click):
    """``pCTCVR / pCTR`` clipped to ``(0, 1)``: the post-click conversion probability a model
    with an impression-level purchase head implies (the ESMM paper's DIVISION baseline)."""
    ratio = p_purchase / p_click.clamp_min(DIVISION_CLIP)
    return ratio.clamp(DIVISION_CLIP, 1 - DIVISION_CLIP)


def division_clip_binds(p_purchase, p_click):
    """Where :func:`division_cvr`'s clip changes the ratio (it then sits at a bound)."""
    ratio = p_purchase / p_click.clamp_min(DIVISION_CLIP)
    return (ratio < DIVISION_CLIP) | (ratio > 1 - DIVISION_CLIP)


def _score(scores, name):
    """Model output ``name`` (or the derived :data:`DIVISION`) of one batch, None when missing."""
    if name == DIVISION:
        return (
            division_cvr(scores["purchase"], scores["click"])
            if {"purchase", "click"} <= set(scores)
            else None
        )
    return scores.get(name)


# ----- the plugin's metrics, on numpy arrays ------------------------------------------------------
def pcoc(p, y):
    """Predicted over observed: ``sum p / sum y``; NaN without a positive."""
    observed = float(np.sum(y, dtype=np.float64))
    return float(np.sum(p, dtype=np.float64)) / observed if observed > 0 else float("nan")


def truth_kl(p, q):
    """Mean over rows of KL(q || p) = q log(q/p) + (1-q) log((1-q)/(1-p)), both clipped to
    [:data:`KL_CLIP`, 1 - :data:`KL_CLIP`], in nats a row: the excess log loss over the truth. A
    prediction at a bound's float32 value counts as the bound (:data:`_KL_BOUNDS_IN_FLOAT32`)."""
    if len(p) == 0:
        return float("nan")
    low, high = _KL_BOUNDS_IN_FLOAT32
    total = 0.0
    for start in range(0, len(p), CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        p_part = np.asarray(p[rows], dtype=np.float64)
        p_part = np.where(p_part >= high, 1 - KL_CLIP, np.where(p_part <= low, KL_CLIP, p_part))
        q_part = np.clip(np.asarray(q[rows], dtype=np.float64), KL_CLIP, 1 - KL_CLIP)
        total += float(
            np.sum(q_part * np.log(q_part / p_part) + (1 - q_part) * np.log((1 - q_part) / (1 - p_part)))
        )
    return total / len(p)


def soft_auc(s, q):
    """Soft-label AUC: sum over pairs i != j of q_i (1 - q_j) [s_i > s_j] (ties count 1/2),
    over sum over i != j of q_i (1 - q_j). With 0/1 labels it is the usual AUC.

    One sort of the scores; tied scores form groups, each pair inside a group counting half.
    """
    s = np.asarray(s)
    if len(s) < 2 or np.isnan(s).any() or np.isnan(q).any():
        return float("nan")
    order = np.argsort(s)  # tie groups are summed whole: no stable order needed
    s_sorted = s[order]
    q_sorted = np.asarray(q, dtype=np.float64)[order]
    del order
    starts = np.flatnonzero(np.concatenate(([True], s_sorted[1:] != s_sorted[:-1])))
    sizes = np.diff(np.append(starts, len(s_sorted)))
    del s_sorted
    positive = np.add.reduceat(q_sorted, starts)  # Q_g: the soft positives of each tie group
    negative = sizes - positive  # N_g
    self_pairs = q_sorted * (1 - q_sorted)  # the pairs (i, i), which do not count
    within = positive * negative - np.add.reduceat(self_pairs, starts)
    below = np.cumsum(negative) - negative  # soft negatives of the lower-scored groups
    numerator = float(np.sum(positive * below) + 0.5 * np.sum(within))
    denominator = float(positive.sum() * negative.sum() - self_pairs.sum())
    return numerator / denominator if denominator > 0 else float("nan")


def equal_count_bin_sums(p, columns, bins):
    """Per equal-count bin of ``p`` (sorted ascending): the sums of each of ``columns``.

    Bin b holds the rows of sorted positions ``[b n // bins, (b + 1) n // bins)``. Rows tied at a
    bin edge are shared between the bins in proportion, at their mean values, so the bins do not
    depend on the rows' order. The edges come from a partition (O(n)), the rows from a search
    among the ``bins - 1`` edge values.

    Returns:
        list: one ``(bins,)`` float64 array a column.
    """
    p = np.asarray(p)
    n = len(p)
    bounds = (np.arange(bins + 1, dtype=np.int64) * n) // bins
    inner = np.unique(bounds[(bounds > 0) & (bounds < n)])
    edge_values = np.partition(p, inner)[inner] if len(inner) else np.empty(0, dtype=p.dtype)
    distinct = np.unique(edge_values)
    # Groups in value order: below distinct[0] (code 0), equal to it (1), between it and the next
    # (2), ...: a row's code is 2 * (edges below it) + (it equals an edge).
    groups = 2 * len(distinct) + 1
    counts = np.zeros(groups)
    sums = [np.zeros(groups) for _ in columns]
    for start in range(0, n, CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        part = p[rows]
        if len(distinct):
            below = np.searchsorted(distinct, part, side="left")
            code = 2 * below + (distinct[np.minimum(below, len(distinct) - 1)] == part)
        else:
            code = np.zeros(len(part), dtype=np.int64)
        counts += np.bincount(code, minlength=groups)
        for total, column in zip(sums, columns):
            total += np.bincount(code, weights=column[rows], minlength=groups)
    before_count = np.concatenate(([0.0], np.cumsum(counts)))
    edge_codes = 2 * np.searchsorted(distinct, edge_values) + 1
    results = []
    for total in sums:
        before_sum = np.concatenate(([0.0], np.cumsum(total)))
        # The sum over the k smallest rows: the groups wholly below the edge value, then a
        # share of the rows equal to it.
        taken = inner - before_count[edge_codes]
        at_edges = before_sum[edge_codes] + taken * total[edge_codes] / counts[edge_codes]
        cumulative = np.zeros(bins + 1)
        cumulative[-1] = before_sum[-1]
        positions = {int(k): value for k, value in zip(inner, at_edges)}
        for b, k in enumerate(bounds):
            if 0 < k < n:
                cumulative[b] = positions[int(k)]
            elif k == n:
                cumulative[b] = before_sum[-1]
        results.append(np.diff(cumulative))
    return results


def expected_calibration_errors(p, targets, bins):
    """``sum_b (n_b / n) |mean_b p - mean_b target|`` for each of ``targets`` (observed labels,
    true probabilities), over the same equal-count bins of ``p``."""
    n = len(p)
    if n == 0 or np.isnan(p).any():
        return [float("nan")] * len(targets)
    predicted, *observed = equal_count_bin_sums(p, [p, *targets], bins)
    return [float(np.abs(predicted - total).sum() / n) for total in observed]


def plugin_metrics(p, y, calibration_bins=None, truth=None, clipped=None):
    """The plugin's metrics of one task on one slice: ``{name: value}`` in the order
    ``pcoc, ece, truth_kl, truth_auc, truth_ece, truth_clipped``.

    Args:
        p, y: predictions and 0/1 labels.
        calibration_bins: bins of the ECEs; None: no calibration metric (the truth ECE then uses
            10 bins).
        truth: the task's true probabilities (None: no truth metric).
        clipped: where a DIVISION score's clip binds (None: not a DIVISION score).
    """
    result = OrderedDict()
    bins = calibration_bins or 10
    targets = [y] if calibration_bins else []
    if truth is not None:
        targets.append(truth)
    errors = expected_calibration_errors(p, targets, bins) if targets else []
    if calibration_bins:
        result["pcoc"] = pcoc(p, y)
        result["ece"] = errors[0]
    if truth is not None:
        result["truth_kl"] = truth_kl(p, truth)
        result["truth_auc"] = soft_auc(p, truth)
        result["truth_ece"] = errors[-1]
        if clipped is not None:
            result["truth_clipped"] = float(np.mean(clipped)) if len(clipped) else float("nan")
    return result


class _TaskConfig:
    """Read-only view of a ``Config`` with some keys overridden (RecBole reads ``config[key]``)."""

    def __init__(self, config, **overrides):
        self._config = config
        self._overrides = overrides

    def __getitem__(self, key):
        return self._overrides[key] if key in self._overrides else self._config[key]

    def __contains__(self, key):
        return key in self._overrides or key in self._config


def _numpy(tensor):
    return tensor.detach().cpu().numpy()


class TaskEvaluator:
    """Collects each task's scores over an evaluation set and scores them with RecBole metrics,
    and with the plugin's calibration, truth and cold-start metrics (see the module docstring).

    Args:
        config: the run's config.
        tasks (dict): task name (a key of :data:`recbole_cstwa.tasks.TASKS`) -> label field, e.g. ``{"click":
            "click", "purchase": "purchase", "cvr": "purchase"}`` (``config["eval_tasks"]``).
        metrics (list, optional): RecBole metric names to compute instead of ``config["metrics"]``,
            and nothing else (no calibration, truth or cold-start metric).
        gather (callable, optional): applied to each task's collected ``DataStruct`` (and to one
            of the rows' truth and cold-start marks) before the metrics; under DDP it gathers
            every rank's rows (:func:`recbole_cstwa.distributed.gather_data_struct`).
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
        # The plugin's own metrics; none when the caller names its metrics (CSTWA's pre-training
        # logs a click AUC alone), whose settings are then not read.
        own = metrics is None
        self.calibration_bins = config["calibration_bins"] if own and config["calibration_metrics"] else None
        self.truth_metrics = bool(own and config["truth_metrics"])
        self.cold_start_count = int(config["cold_start_count"] or 0) if own else 0
        self.id_fields = [config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]] if own else []
        self.id_fields = [field for field in self.id_fields if field]
        self.decimal_place = config["metric_decimal_place"] if own else None
        self.training_counts = {}  # id field -> (ids,) training rows of each id
        # Batches are kept here and handed to the collector once (its eval_collect): RecBole's
        # per-batch collection concatenates everything collected so far at every batch, which is
        # quadratic (minutes for Ali-CCP's 42.8M test impressions).
        self._batches = {task: ([], [], []) for task in self.tasks}  # scores, labels, clip binds
        self._rows = {}  # per-row marks every task shares: truth, cold, clicked

    def count_training_rows(self, train_dataset):
        """Counts the training split's rows of each user and item id (a bincount): rows of an
        id seen fewer than ``cold_start_count`` times form the cold-start slice."""
        self.training_counts = {}
        if not self.cold_start_count:
            return
        for field in self.id_fields:
            if field not in train_dataset.inter_feat:
                continue
            ids = np.asarray(_numpy(train_dataset.inter_feat[field]), dtype=np.int64)
            counts = np.bincount(ids, minlength=train_dataset.num(field))
            self.training_counts[field] = torch.from_numpy(counts)

    def _cold_rows(self, interaction):
        """Where a row's user or item was seen fewer than ``cold_start_count`` times in training."""
        cold = None
        for field, counts in self.training_counts.items():
            if field not in interaction:
                continue
            ids = interaction[field].long()
            if counts.device != ids.device:
                counts = self.training_counts[field] = counts.to(ids.device)
            known = ids < len(counts)  # an id past the training vocabulary: never seen there
            seen = torch.zeros_like(ids)
            seen[known] = counts[ids[known]]
            mark = seen < self.cold_start_count
            cold = mark if cold is None else cold | mark
        return cold

    def _keep_row_marks(self, interaction):
        marks = {}
        if self.truth_metrics and all(field in interaction for field in TRUTH_FIELDS.values()):
            for label, field in TRUTH_FIELDS.items():
                marks[f"truth.{label}"] = interaction[field].float()
        cold = self._cold_rows(interaction) if self.training_counts else None
        if cold is not None:
            marks["cold"] = cold.to(torch.uint8)  # gathered under DDP: gloo has no bool
        if marks and any(TASKS[task][2] for task in self.tasks):
            marks["clicked"] = (interaction[self.click_field] > 0.5).to(torch.uint8)
        for name, value in marks.items():
            self._rows.setdefault(name, []).append(value)

    def collect(self, interaction, scores):
        """Adds one batch: ``scores`` maps model outputs (``click``, ``purchase``, optionally
        ``cvr``) to their ``(B,)`` predicted probabilities."""
        clicked = None
        for task in self.collectors:
            _, sources, clicked_only = TASKS[task]
            name, score = next(
                (
                    (name, s)
                    for name, s in ((name, _score(scores, name)) for name in sources)
                    if s is not None
                ),
                (None, None),
            )
            if score is None:
                raise KeyError(
                    f"task {task} needs one of the model outputs {list(sources)}, got {list(scores)}."
                )
            label = interaction[self.tasks[task]]
            binds = division_clip_binds(scores["purchase"], scores["click"]) if name == DIVISION else None
            if clicked_only:
                if clicked is None:
                    clicked = interaction[self.click_field] > 0.5
                score, label = score[clicked], label[clicked]
                binds = None if binds is None else binds[clicked]
            scores_so_far, labels_so_far, binds_so_far = self._batches[task]
            scores_so_far.append(score.detach().clone())  # as RecBole's collector: no view kept
            labels_so_far.append(label)
            if binds is not None:
                binds_so_far.append(binds.to(torch.uint8))
        self._keep_row_marks(interaction)

    def _gathered_rows(self):
        """The per-row marks of every batch (every rank's, under DDP), as numpy arrays."""
        rows, self._rows = self._rows, {}
        if not rows:
            return {}
        struct = DataStruct()
        for name, parts in rows.items():
            struct.set(f"rows.{name}", torch.cat(parts))
        if self.gather is not None:
            struct = self.gather(struct)
        return {name: _numpy(struct.get(f"rows.{name}")) for name in rows}

    def _round(self, value):
        return round(float(value), self.decimal_place) if self.decimal_place is not None else float(value)

    def collected_rows(self):
        """``{task: rows collected since the last evaluate}``."""
        return {task: sum(len(score) for score in batches[0]) for task, batches in self._batches.items()}

    def evaluate(self, tasks=None):
        """Scores everything collected since the last call and starts afresh; ``tasks``: only
        these (default: every task; the others' rows are dropped)."""
        result, cold_result = OrderedDict(), OrderedDict()
        rows = self._gathered_rows()
        truth = None
        if "truth.click" in rows and not (
            np.isnan(rows["truth.click"]).any() or np.isnan(rows["truth.purchase"]).any()
        ):  # a split without truth (the training file's rows) gets no truth metric
            truth = {"click": rows["truth.click"], "purchase": rows["truth.purchase"]}
        cold = rows["cold"].astype(bool) if "cold" in rows else None
        if cold is not None and cold.any():
            cold_result[COLD_ROWS] = int(cold.sum())
        for task, collector in self.collectors.items():
            scores, labels, binds = self._batches[task]
            if tasks is not None and task not in tasks:
                self._batches[task] = ([], [], [])
                continue
            if scores:
                collector.eval_collect(torch.cat(scores), torch.cat(labels))
            struct = collector.get_data_struct()
            if binds:
                struct.set("plugin.clip_binds", torch.cat(binds))
            self._batches[task] = ([], [], [])
            if self.gather is not None:
                struct = self.gather(struct)
            for metric, value in self.evaluators[task].evaluate(struct).items():
                result[metric_key(task, metric)] = value
            if self.calibration_bins is None and truth is None and cold is None:
                continue
            selected = rows["clicked"].astype(bool) if TASKS[task][2] and "clicked" in rows else None
            p, y = _numpy(struct.get("rec.score")), _numpy(struct.get("data.label"))
            clip_binds = _numpy(struct.get("plugin.clip_binds")) if binds else None
            target = self._truth_target(task, truth, selected)
            for metric, value in plugin_metrics(p, y, self.calibration_bins, target, clip_binds).items():
                result[metric_key(task, metric)] = self._round(value)
            if COLD_ROWS in cold_result:
                task_cold = cold if selected is None else cold[selected]
                for metric, value in self._cold_metrics(task, struct, task_cold, p, y, target, clip_binds):
                    cold_result[metric_key(task, metric) + COLD_SUFFIX] = value
        result.update(cold_result)
        return result

    @staticmethod
    def _truth_target(task, truth, selected):
        """The true probability ``task`` is scored against, on its rows (None without truth)."""
        if truth is None:
            return None
        kind = TRUTH_TARGETS[task]
        p_click, p_purchase = truth["click"], truth["purchase"]
        if selected is not None:
            p_click, p_purchase = p_click[selected], p_purchase[selected]
        if kind == "cvr":
            return (p_purchase.astype(np.float64) / p_click).astype(np.float32)
        return p_click if kind == "click" else p_purchase

    def _cold_metrics(self, task, struct, mask, p, y, target, clip_binds):
        """Every metric of ``task`` on its cold-start rows ``mask``: RecBole's through its own
        evaluator on the slice, then the plugin's. NaN on fewer than 2 rows (RecBole's AUC and
        LogLoss need 2)."""
        own = plugin_metrics(
            p[mask],
            y[mask],
            self.calibration_bins,
            None if target is None else target[mask],
            None if clip_binds is None else clip_binds[mask],
        )
        if int(mask.sum()) < 2:
            names = [metric.lower() for metric in self.evaluators[task].metrics]
            return [(name, float("nan")) for name in [*names, *own]]
        rows = len(mask)
        selector = torch.from_numpy(mask)
        sliced = copy.copy(struct)
        sliced._data_dict = {
            key: value[selector.to(value.device)]
            if isinstance(value, torch.Tensor) and value.dim() >= 1 and len(value) == rows
            else value
            for key, value in struct._data_dict.items()
        }
        found = list(self.evaluators[task].evaluate(sliced).items())
        return found + [(metric, self._round(value)) for metric, value in own.items()]
