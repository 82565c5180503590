"""Tests of the synthetic Ali-CCP-like generator and its oracle metrics.

Small datasets in tmp folders keep the whole file fast (a few seconds).
"""

import gzip
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from recbole_cstwa.experiments.oracle import oracle_metrics
from recbole_cstwa.tools.generator import (
    INTER_COLUMNS,
    SPLIT_NAMES,
    TRUTH_COLUMNS,
    USER_PROFILE_FIELDS,
    generate,
)

NAME = "synthetic-ccp"
SMALL = 20_000
MEDIUM = 60_000


@pytest.fixture(scope="module")
def medium_dir(tmp_path_factory):
    """One moderately sized dataset shared by the read-only tests."""
    return generate(tmp_path_factory.mktemp("medium"), n_impressions=MEDIUM, cvr=0.25, seed=7)


def _read_split(dataset_dir, split, name=NAME):
    inter = pd.read_csv(dataset_dir / f"{name}.{split}.inter", sep="\t")
    truth = pd.read_csv(dataset_dir / f"{name}.{split}.truth.gz", sep="\t")
    return inter, truth


def _read_all(dataset_dir, name=NAME):
    parts = [_read_split(dataset_dir, split, name) for split in SPLIT_NAMES]
    inter = pd.concat([inter for inter, _ in parts], ignore_index=True)
    truth = pd.concat([truth for _, truth in parts], ignore_index=True)
    return inter, truth


def _file_bytes(dataset_dir):
    return {path.name: path.read_bytes() for path in sorted(dataset_dir.iterdir())}


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    first = generate(tmp_path / "a", n_impressions=SMALL, seed=11)
    second = generate(tmp_path / "b", n_impressions=SMALL, seed=11)
    other = generate(tmp_path / "c", n_impressions=SMALL, seed=12)
    first_bytes = _file_bytes(first)
    assert len(first_bytes) == 3 * 2 + 3  # inter + truth per split, user, item, meta
    assert first_bytes == _file_bytes(second)
    other_bytes = _file_bytes(other)
    for split in SPLIT_NAMES:
        assert other_bytes[f"{NAME}.{split}.inter"] != first_bytes[f"{NAME}.{split}.inter"]
        assert other_bytes[f"{NAME}.{split}.truth.gz"] != first_bytes[f"{NAME}.{split}.truth.gz"]


@pytest.mark.slow
def test_streamed_blocks_give_the_same_files(tmp_path, monkeypatch):
    """Drawing and writing in small blocks (as for 85M impressions) changes no byte."""
    import recbole_cstwa.tools.generator as generator

    whole = _file_bytes(generate(tmp_path / "whole", n_impressions=SMALL, seed=11))
    monkeypatch.setattr(generator, "STREAM_ROWS", 777)
    blocks = _file_bytes(generate(tmp_path / "blocks", n_impressions=SMALL, seed=11))
    assert blocks == whole
    # Calibration summed over blocks: the same biases up to rounding.
    monkeypatch.setattr(generator, "CALIBRATION_ROWS", 1000)
    meta = json.loads(
        generate(tmp_path / "calibrated", n_impressions=SMALL, seed=11)
        .joinpath(f"{NAME}.meta.json")
        .read_text()
    )
    reference = json.loads(whole[f"{NAME}.meta.json"])
    for bias in ("click_bias", "conversion_bias"):
        assert meta["derived"][bias] == pytest.approx(reference["derived"][bias], abs=1e-9)


def test_schema_and_label_consistency(medium_dir):
    user_header = (medium_dir / f"{NAME}.user").read_text().splitlines()[0].split("\t")
    assert user_header[0] == "user_id:token"
    assert len(user_header) - 1 >= 5
    assert user_header[1:] == [f"{field}:token" for field, _, _ in USER_PROFILE_FIELDS]
    item_header = (medium_dir / f"{NAME}.item").read_text().splitlines()[0].split("\t")
    assert item_header == [
        "item_id:token",
        "category:token",
        "shop:token",
        "brand:token",
    ]

    meta = json.loads((medium_dir / f"{NAME}.meta.json").read_text())
    assert meta["parameters"]["n_impressions"] == MEDIUM
    total_rows = 0
    for split in SPLIT_NAMES:
        inter_text = (medium_dir / f"{NAME}.{split}.inter").read_text()
        assert inter_text.splitlines()[0].split("\t") == list(INTER_COLUMNS)
        truth_text = gzip.decompress((medium_dir / f"{NAME}.{split}.truth.gz").read_bytes()).decode()
        assert truth_text.splitlines()[0].split("\t") == list(TRUTH_COLUMNS)

        inter, truth = _read_split(medium_dir, split)
        assert len(inter) == len(truth) == meta["counts"][split]["rows"]
        total_rows += len(inter)
        click, purchase = inter["click:float"], inter["purchase:float"]
        # Labels are written as the integers 0 and 1, not 0.0 / 1.0.
        assert set(click.astype(str)) <= {"0", "1"} and set(purchase.astype(str)) <= {
            "0",
            "1",
        }
        assert not ((purchase == 1) & (click == 0)).any()
        assert meta["counts"][split]["clicks"] == click.sum()
        assert meta["counts"][split]["purchases"] == purchase.sum()
        p_click, p_purchase = truth["p_click"], truth["p_purchase"]
        assert ((p_purchase >= 0) & (p_purchase <= p_click) & (p_click <= 1)).all()
    assert total_rows == MEDIUM
    assert [meta["counts"][split]["rows"] for split in SPLIT_NAMES] == [
        48_000,
        6_000,
        6_000,
    ]


def test_click_rate_and_cvr_are_calibrated(medium_dir):
    inter, truth = _read_all(medium_dir)
    clicks = inter["click:float"].sum()
    # Realized click rate: binomial sd at 60k rows is ~0.0008.
    assert inter["click:float"].mean() == pytest.approx(0.04, abs=0.004)
    # The truth itself is calibrated exactly (up to the written precision).
    assert truth["p_click"].mean() == pytest.approx(0.04, rel=1e-4)
    assert truth["p_purchase"].sum() / truth["p_click"].sum() == pytest.approx(0.25, rel=1e-4)
    # Realized CVR on ~2400 clicks: sd ~0.009.
    assert inter["purchase:float"].sum() / clicks == pytest.approx(0.25, abs=0.04)


def test_low_cvr_like_ali_ccp(tmp_path):
    dataset_dir = generate(tmp_path, n_impressions=SMALL, cvr=0.005, seed=3)
    inter, truth = _read_all(dataset_dir)
    assert truth["p_purchase"].sum() / truth["p_click"].sum() == pytest.approx(0.005, rel=1e-3)
    assert inter["purchase:float"].sum() <= 0.03 * inter["click:float"].sum()
    assert (truth["p_purchase"] > 0).all()


def test_oracle_metrics_match_sklearn_on_the_files(medium_dir):
    for split in ("test", "valid"):
        metrics = oracle_metrics(medium_dir, split=split)
        inter, truth = _read_split(medium_dir, split)
        click = inter["click:float"].to_numpy()
        purchase = inter["purchase:float"].to_numpy()
        assert metrics["rows"] == len(inter)
        assert metrics["clicks"] == click.sum() and metrics["purchases"] == purchase.sum()
        assert metrics["click_auc"] == pytest.approx(roc_auc_score(click, truth["p_click"]), abs=1e-12)
        assert metrics["purchase_auc"] == pytest.approx(
            roc_auc_score(purchase, truth["p_purchase"]), abs=1e-12
        )
        assert metrics["click_auc"] > 0.65
        assert metrics["purchase_auc"] > 0.65
        assert 0 < metrics["click_logloss"] < 0.2
        assert 0 < metrics["purchase_logloss"] < metrics["click_logloss"]


def test_click_and_purchase_only_partly_agree(medium_dir):
    inter, truth = _read_all(medium_dir)
    p_click = truth["p_click"]
    p_conversion = truth["p_purchase"] / p_click
    rank_correlation = p_click.rank().corr(p_conversion.rank())
    assert -0.9 < rank_correlation < 0.7

    items = pd.read_csv(medium_dir / f"{NAME}.item", sep="\t").set_index("item_id:token")
    category = items["category:token"].reindex(inter["item_id:token"]).to_numpy()
    by_category = pd.DataFrame({"category": category, "p_click": p_click, "p_conversion": p_conversion})
    means = by_category.groupby("category").mean()
    clickbait = (means["p_click"] >= means["p_click"].quantile(0.75)) & (
        means["p_conversion"] <= means["p_conversion"].quantile(0.25)
    )
    assert clickbait.any()
    # The generator's own labelling agrees: clickbait categories sell worse.
    meta = json.loads((medium_dir / f"{NAME}.meta.json").read_text())
    kinds = meta["derived"]["category_kinds"]
    clickbait_rows = np.isin(category, kinds["clickbait"])
    everyday_rows = np.isin(category, kinds["everyday"])
    assert p_click[clickbait_rows].mean() > p_click[everyday_rows].mean()
    assert p_conversion[clickbait_rows].mean() < p_conversion[everyday_rows].mean()


def test_profiles_and_categories_carry_the_signal(medium_dir):
    """Similar users/items behave alike: fields explain much of the truth."""
    inter, truth = _read_all(medium_dir)
    items = pd.read_csv(medium_dir / f"{NAME}.item", sep="\t").set_index("item_id:token")
    logit = np.log(truth["p_click"] / (1 - truth["p_click"]))
    category = items["category:token"].reindex(inter["item_id:token"]).to_numpy()
    category_means = logit.groupby(category).transform("mean")
    assert np.corrcoef(logit, category_means)[0, 1] > 0.3


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"cvr": 0.0}, "cvr"),
        ({"cvr": 1.5}, "cvr"),
        ({"ctr": 1.0}, "ctr"),
        ({"split": (0.8, 0.1, 0.2)}, "split"),
        ({"split": (0.9, 0.1)}, "split"),
        ({"n_impressions": 10}, "n_impressions"),
        ({"n_users": 1}, "n_users"),
        ({"rho": 2.0}, "rho"),
    ],
)
def test_bad_parameters_raise_value_error_naming_the_argument(tmp_path, kwargs, argument):
    parameters = {"n_impressions": SMALL, **kwargs}
    with pytest.raises(ValueError, match=argument):
        generate(tmp_path, **parameters)
    assert not (tmp_path / NAME).exists()


def test_oracle_rejects_unknown_split(medium_dir):
    with pytest.raises(ValueError, match="split"):
        oracle_metrics(medium_dir, split="holdout")
