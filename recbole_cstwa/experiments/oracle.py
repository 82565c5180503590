"""The oracle of a generated dataset: each split scored with its own true probabilities.

The generator (:mod:`recbole_cstwa.tools.generator`) writes every row's true click and purchase
probabilities beside the atomic files (``<name>.<split>.truth.gz``, never read by RecBole). Scoring
a split with them gives the ceiling no model can pass; ``run_compare.py`` reports it as the
oracle row.
"""

import math
from pathlib import Path

import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

SPLIT_NAMES = ("train", "valid", "test")


def _dataset_files(dataset_dir, split):
    """The .inter and truth files of a split; the name is the folder's name."""
    name = dataset_dir.name
    inter_path = dataset_dir / f"{name}.{split}.inter"
    if not inter_path.exists():
        candidates = sorted(dataset_dir.glob(f"*.{split}.inter"))
        if len(candidates) != 1:
            raise FileNotFoundError(f"no single *.{split}.inter file in {dataset_dir}")
        inter_path = candidates[0]
        name = inter_path.name[: -len(f".{split}.inter")]
    truth_path = dataset_dir / f"{name}.{split}.truth.gz"
    if not truth_path.exists():
        raise FileNotFoundError(f"truth file {truth_path} is missing")
    return inter_path, truth_path


def _auc_or_nan(labels, scores):
    if labels.min() == labels.max():
        return math.nan  # AUC is undefined with a single class
    return float(roc_auc_score(labels, scores))


def oracle_metrics(dataset_dir, split="test"):
    """Metrics of scoring a split with its own truth: the achievable ceiling.

    Returns counts (rows, clicks, purchases), ``click_auc`` (p_click vs click),
    ``purchase_auc`` (p_purchase vs purchase over all impressions, i.e. the
    CTCVR task), ``cvr_auc`` (P(purchase | click) vs purchase on clicked rows),
    and the oracle ``click_logloss`` and ``purchase_logloss``.
    """
    if split not in SPLIT_NAMES:
        raise ValueError(f"split (--split) must be one of {SPLIT_NAMES}; got {split!r}.")
    inter_path, truth_path = _dataset_files(Path(dataset_dir), split)
    labels = pd.read_csv(inter_path, sep="\t", usecols=["click:float", "purchase:float"])
    truth = pd.read_csv(truth_path, sep="\t")
    if len(labels) != len(truth):
        raise ValueError(f"{truth_path.name} has {len(truth)} rows but {inter_path.name} has {len(labels)}.")
    click = labels["click:float"].to_numpy()
    purchase = labels["purchase:float"].to_numpy()
    p_click = truth["p_click"].to_numpy()
    p_purchase = truth["p_purchase"].to_numpy()
    clicked = click == 1
    return {
        "split": split,
        "rows": len(click),
        "clicks": int(click.sum()),
        "purchases": int(purchase.sum()),
        "click_auc": _auc_or_nan(click, p_click),
        "purchase_auc": _auc_or_nan(purchase, p_purchase),
        "cvr_auc": _auc_or_nan(purchase[clicked], p_purchase[clicked] / p_click[clicked])
        if clicked.any()
        else math.nan,
        "click_logloss": float(log_loss(click, p_click, labels=[0, 1])),
        "purchase_logloss": float(log_loss(purchase, p_purchase, labels=[0, 1])),
    }
