"""Checks of a dataset against the run's settings, made before any training work.

* :func:`check_dataset_settings` (before the dataset is read): the id fields the settings name
  exist in the atomic files (RecBole would end in a bare ``KeyError: 'user_id'``), CSTWA's
  Structure Migrator has the user and item ids it needs, and ``float`` columns that no setting
  uses are named in a warning (RecBole's context models ignore a float field unless it is in
  ``numerical_features``).
* :func:`check_evaluation_splits` (once the splits exist): the validation split can give
  ``valid_metric`` (an AUC needs both labels in the split); otherwise every epoch would score
  NaN, no checkpoint would be kept and the run would fail after all training.
"""

import os
from logging import getLogger

import numpy as np

from recbole_cstwa.data.atomic_files import read_header
from recbole_cstwa.errors import ConfigError, DataFormatError
from recbole_cstwa.tasks import (
    TRUTH_FIELDS,
    TRUTH_METRICS,
    label_fields,
    metric_key,
    split_metric_key,
    task_label,
)

#: Metrics undefined on a split whose label takes a single value.
RANKING_METRICS = ("auc", "gauc")


def _header_types(path, separator, encoding):
    """``{field: type}`` of an atomic file's header (:func:`read_header`, the dataset's reader),
    or None when the file is not there. Undecodable bytes are replaced: the checks read the
    names, the dataset reports what cannot be read."""
    if not os.path.isfile(path):
        return None
    return {
        field: ftype.value for _, field, ftype in read_header(path, separator, encoding, errors="replace")
    }


def _inter_files(config):
    folder, token = config["data_path"], config["dataset"]
    names = config["benchmark_filename"]
    if names:
        return [os.path.join(folder, f"{token}.{name}.inter") for name in names]
    return [os.path.join(folder, f"{token}.inter")]


def _loaded(config, source, header):
    """The fields of ``header`` that ``load_col`` lets RecBole read for ``source``."""
    load_col = config["load_col"]
    if not load_col:
        return list(header)
    wanted = load_col.get(source) or []
    return [field for field in header if field in wanted]


def check_dataset_settings(config):
    """Checks the settings against the atomic files' headers (see the module docstring)."""
    separator, encoding = config["field_separator"], config["encoding"] or "utf-8"
    inter_headers = [(path, _header_types(path, separator, encoding)) for path in _inter_files(config)]
    inter_headers = [(path, header) for path, header in inter_headers if header is not None]
    for key, fix in (("USER_ID_FIELD", "USER_ID_FIELD: ~"), ("ITEM_ID_FIELD", "ITEM_ID_FIELD: ~")):
        field = config[key]
        if field is None:
            continue
        for path, header in inter_headers:
            if field not in header:
                raise DataFormatError(
                    f"[{path}] has no column [{field}] named by {key} (columns: {list(header)[:8]}). "
                    f"Set {key} to the id column, or `{fix}` (command line: --{key}=None) when the "
                    "data has no such id."
                )

    model = config["model"]
    if model == "CSTWA" and config["use_sm"]:
        missing = [key for key in ("USER_ID_FIELD", "ITEM_ID_FIELD") if config[key] is None]
        if missing:
            raise ConfigError(
                f"CSTWA's Structure Migrator (use_sm: True) builds user and item graphs and needs user "
                f"and item ids, but {' and '.join(missing)} is unset for dataset [{config['dataset']}]. "
                "Set use_sm: False (--use_sm=False) to run CSTWA without it, or give the dataset its "
                "id columns."
            )

    labels = {config["CLICK_FIELD"], config["PURCHASE_FIELD"], config["LABEL_FIELD"]}
    numerical = set(config["numerical_features"] or [])
    folder, token = config["data_path"], config["dataset"]
    headers = [("inter", path, header) for path, header in inter_headers[:1]]
    for source in ("user", "item"):
        path = os.path.join(folder, f"{token}.{source}")
        header = _header_types(path, separator, encoding)
        if header is not None:
            headers.append((source, path, header))
    for source, path, header in headers:
        unused = [
            field
            for field in _loaded(config, source, header)
            if header[field] == "float" and field not in labels and field not in numerical
        ]
        if unused:
            getLogger().warning(
                f"[{path}] has float columns {unused[:8]}{' ...' if len(unused) > 8 else ''} "
                f"({len(unused)}) that no setting uses: RecBole's models ignore a float field unless it "
                "is listed in numerical_features; list them there to use them as features."
            )


def _label_counts(split_data, field):
    dataset = getattr(split_data, "_dataset", split_data)
    values = dataset.inter_feat[field]
    values = values.cpu().numpy() if hasattr(values, "cpu") else np.asarray(values)
    return len(values), int((values == 1).sum())


def _check_truth_to_select(config, valid_data):
    """A truth metric selects the model only on a validation split whose rows all carry truth."""
    dataset = getattr(valid_data, "_dataset", valid_data)
    field = TRUTH_FIELDS["click"]
    values = dataset.inter_feat[field] if field in dataset.inter_feat else None
    if values is not None and not bool(np.isnan(np.asarray(values)).any()):
        return
    raise DataFormatError(
        f"valid_metric [{config['valid_metric']}] needs the true probabilities of the validation "
        f"split, but dataset [{config['dataset']}] has none there (no truth file beside its "
        "validation file, e.g. <name>.valid.truth.gz with its meta.json, or its split is made by "
        "eval_args from files without one). Fix: choose another valid_metric, e.g. "
        "--valid_metric=purchase_auc."
    )


def check_evaluation_splits(config, valid_data, test_data):
    """Refuses a validation split on which ``valid_metric`` is undefined (an AUC without both
    labels, a truth metric without truth); warns for the test split."""
    task, metric = split_metric_key(config["valid_metric"])
    if metric in TRUTH_METRICS:
        _check_truth_to_select(config, valid_data)
        return
    if metric not in RANKING_METRICS:
        return
    tasks = config["eval_tasks"]
    labels = label_fields(config)
    for split, data in (("valid", valid_data), ("test", test_data)):
        # Both labels, whichever tasks are scored: cvr's rows are the clicked ones.
        counts = {name: _label_counts(data, field) for name, field in labels.items()}
        rows = counts["click"][0]
        # cvr is scored on the clicked rows, ctcvr on all rows: both need purchases and non-purchases.
        label_task = task_label(task)
        positives = counts[label_task][1]
        negatives = (counts["click"][1] if task == "cvr" else rows) - positives
        if positives > 0 and negatives > 0:
            continue
        described = ", ".join(f"{positive} {name}s" for name, (_, positive) in counts.items())
        if task == "cvr":
            described += f" (cvr is scored on the {counts['click'][1]} clicked rows)"
        message = (
            f"The {split} split of dataset [{config['dataset']}] holds {rows} impressions with "
            f"{described}: valid_metric [{config['valid_metric']}] (an AUC) is undefined on it."
        )
        if split == "test":
            getLogger().warning(message + " The test metrics of that task will be NaN.")
            continue
        others = [metric_key(name, metric) for name in tasks if name != task]
        raise DataFormatError(
            f"{message} Split the data so that valid and test hold both labels (the importer's "
            "stratified split: recbole-cstwa-import), or choose another "
            f"valid_metric (e.g. {', '.join(others + [f'{task}_logloss'])})."
        )
