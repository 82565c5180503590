"""The evaluation beyond RecBole's metrics: calibration, the truth of a generated dataset (read,
checked and kept aligned with its rows), the cvr_all task, the cold-start slice and model
selection on these metrics."""

import gzip
import hashlib
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, tiny_config
from recbole.data.interaction import Interaction
from sklearn.metrics import roc_auc_score

from recbole_cstwa.config import Config
from recbole_cstwa.data import create_dataset, data_preparation
from recbole_cstwa.errors import ConfigError, DataFormatError
from recbole_cstwa.evaluator import (
    DIVISION_CLIP,
    TaskEvaluator,
    equal_count_bin_sums,
    expected_calibration_errors,
    pcoc,
    soft_auc,
    truth_kl,
)
from recbole_cstwa.experiments.report import selection_line, shown_metrics
from recbole_cstwa.quick_start import run_recbole_cstwa
from recbole_cstwa.tasks import metric_bigger, split_metric_key
from recbole_cstwa.tools.generator import generate

# ----- the metrics against hand and brute-force computations -----------------------------------


def _brute_force_soft_auc(s, q):
    numerator = denominator = 0.0
    for i in range(len(s)):
        for j in range(len(s)):
            if i != j:
                weight = q[i] * (1 - q[j])
                denominator += weight
                numerator += weight * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
    return numerator / denominator


@pytest.mark.parametrize("n", [2, 3, 17, 200])
def test_soft_auc_equals_the_pairwise_sum_with_ties(n):
    rng = np.random.default_rng(n)
    scores = np.round(rng.random(n), 1).astype(np.float32)  # many ties
    targets = rng.random(n)
    assert soft_auc(scores, targets) == pytest.approx(_brute_force_soft_auc(scores, targets), rel=1e-12)
    labels = (rng.random(n) < 0.5).astype(np.float64)  # 0/1 targets: the usual AUC
    if 0 < labels.sum() < n:
        assert soft_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)
    assert math.isnan(soft_auc(scores[:1], targets[:1]))


def _hand_bins(p, y, bins):
    """Each row spread over the sorted positions of its tie group, in proportion: the reference
    for the bins' sums."""
    n = len(p)
    bounds = [(b * n) // bins for b in range(bins + 1)]
    sums, position = np.zeros(bins), 0
    for value in np.unique(p):
        tied = p == value
        low, high = position, position + int(tied.sum())
        for b in range(bins):
            overlap = max(0, min(high, bounds[b + 1]) - max(low, bounds[b]))
            sums[b] += overlap * y[tied].mean()
        position = high
    return sums


@pytest.mark.parametrize("n, bins", [(1, 3), (5, 4), (10, 10), (23, 4), (100, 7), (9, 20)])
def test_equal_count_bins_share_ties_in_proportion(n, bins):
    rng = np.random.default_rng(n * bins)
    p = np.round(rng.random(n), 1).astype(np.float32)
    y = rng.random(n)
    (sums,) = equal_count_bin_sums(p, [y], bins)
    np.testing.assert_allclose(sums, _hand_bins(p, y, bins), atol=1e-12)
    # The order of the rows does not matter.
    order = rng.permutation(n)
    np.testing.assert_allclose(equal_count_bin_sums(p[order], [y[order]], bins)[0], sums, atol=1e-12)


def test_pcoc_and_ece_by_hand():
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=np.float32)
    y = np.array([0, 0, 1, 0, 1, 1], dtype=np.float32)
    assert pcoc(p, y) == pytest.approx(2.1 / 3)
    # Two bins: {0.1, 0.2, 0.3} (mean p 0.2, mean y 1/3) and {0.4, 0.5, 0.6} (0.5, 2/3).
    (ece,) = expected_calibration_errors(p, [y], 2)
    assert ece == pytest.approx(0.5 * abs(0.2 - 1 / 3) + 0.5 * abs(0.5 - 2 / 3))
    # Three bins of two rows: |0.15 - 0| / 3 + |0.35 - 0.5| / 3 + |0.55 - 1| / 3.
    (ece,) = expected_calibration_errors(p, [y], 3)
    assert ece == pytest.approx((0.15 + 0.15 + 0.45) / 3)
    assert math.isnan(pcoc(p, np.zeros(6)))  # no positive: predicted over nothing observed


def test_truth_kl_is_zero_for_the_truth_and_known_for_a_constant():
    truth = np.array([0.01, 0.2, 0.5, 0.9, 1.0], dtype=np.float32)
    assert truth_kl(truth, truth) == pytest.approx(0.0, abs=1e-12)
    constant = np.full(5, 0.3, dtype=np.float32)
    t = np.clip(truth.astype(np.float64), 1e-7, 1 - 1e-7)
    c = np.float64(np.float32(0.3))
    expected = np.mean(t * np.log(t / c) + (1 - t) * np.log((1 - t) / (1 - c)))
    assert truth_kl(constant, truth) == pytest.approx(expected, rel=1e-9)


def test_a_prediction_clipped_in_float32_counts_as_the_bound():
    """The DIVISION pCVR is clipped in float32, where 1 - 1e-7 rounds to 1 - 1.19e-7: its KL must
    be the definition's, with 1 - p = 1e-7 (as a hand computation from the written scores gives)."""
    import torch

    from recbole_cstwa.evaluator import division_cvr

    q = np.array([0.3, 0.6], dtype=np.float64)
    clipped = division_cvr(torch.tensor([0.2, 1e-12]), torch.tensor([0.1, 0.5])).numpy()
    assert clipped[0] != 1 - 1e-7  # float32 cannot hold the bound
    p = np.array([1 - 1e-7, 1e-7])
    expected = np.mean(q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p)))
    assert truth_kl(clipped, q) == pytest.approx(expected, rel=1e-12)


# ----- the evaluator on crafted batches ----------------------------------------------------------


def _crafted(seed=3, n=3000):
    """Labels drawn from known probabilities, and the truth columns of the rows."""
    rng = np.random.default_rng(seed)
    p_click = rng.uniform(0.02, 0.6, n).astype(np.float32)
    q = rng.uniform(0.05, 0.7, n).astype(np.float32)
    p_purchase = (p_click * q).astype(np.float32)
    click = (rng.random(n) < p_click).astype(np.float32)
    purchase = (click * (rng.random(n) < q)).astype(np.float32)
    return click, purchase, p_click, p_purchase


def _interaction(click, purchase, p_click, p_purchase, rows=slice(None)):
    return Interaction(
        {
            "click": torch.tensor(click[rows]),
            "purchase": torch.tensor(purchase[rows]),
            "truth_click": torch.tensor(p_click[rows]),
            "truth_purchase": torch.tensor(p_purchase[rows]),
        }
    )


def _evaluate(config, scores_of, data, batch=1000, tasks=None):
    evaluator = TaskEvaluator(config, tasks or config["eval_tasks"])
    click, purchase, p_click, p_purchase = data
    for start in range(0, len(click), batch):
        rows = slice(start, start + batch)
        evaluator.collect(_interaction(*data, rows), {k: torch.tensor(v[rows]) for k, v in scores_of.items()})
    return evaluator.evaluate()


def test_scoring_with_the_truth_gives_kl_zero_and_the_truth_s_soft_auc(make_config):
    config = make_config(
        "ESMM", metric_decimal_place=10, eval_tasks=["click", "purchase", "cvr", "ctcvr", "cvr_all"]
    )
    data = click, purchase, p_click, p_purchase = _crafted()
    q = (p_purchase.astype(np.float64) / p_click).astype(np.float32)
    result = _evaluate(config, {"click": p_click, "purchase": p_purchase, "cvr": q}, data)
    clicked = click == 1
    for task, target, rows in (
        ("click", p_click, slice(None)),
        ("purchase", p_purchase, slice(None)),
        ("ctcvr", p_purchase, slice(None)),
        ("cvr", q, clicked),
        ("cvr_all", q, slice(None)),
    ):
        assert result[f"{task}_truth_kl"] == pytest.approx(0.0, abs=1e-9), task
        assert result[f"{task}_truth_auc"] == pytest.approx(soft_auc(target[rows], target[rows]), abs=1e-9), (
            task
        )
        assert result[f"{task}_truth_ece"] == pytest.approx(0.0, abs=1e-9), task
    assert "cvr_truth_clipped" not in result  # a pCVR head: no division to clip
    # cvr_all: every impression, its pCVR against the purchase label
    assert result["cvr_all_auc"] == pytest.approx(roc_auc_score(purchase, q), abs=1e-9)
    assert result["cvr_all_pcoc"] == pytest.approx(q.astype(np.float64).sum() / purchase.sum(), rel=1e-6)
    assert result["cvr_auc"] == pytest.approx(roc_auc_score(purchase[clicked], q[clicked]), abs=1e-9)


def test_a_constant_predictor_scores_its_known_values(make_config):
    config = make_config("ESMM", metric_decimal_place=10)
    data = click, purchase, p_click, p_purchase = _crafted()
    constant = np.full(len(click), 0.25, dtype=np.float32)
    result = _evaluate(config, {"click": constant, "purchase": constant, "cvr": constant}, data)
    c = np.float64(np.float32(0.25))
    t = p_click.astype(np.float64)
    assert result["click_truth_kl"] == pytest.approx(
        np.mean(t * np.log(t / c) + (1 - t) * np.log((1 - t) / (1 - c))), rel=1e-7
    )
    assert result["click_truth_auc"] == pytest.approx(0.5)  # every pair tied
    assert result["click_truth_ece"] == pytest.approx(abs(c - t.mean()), rel=1e-7)  # one tie group
    assert result["click_ece"] == pytest.approx(abs(c - click.mean(dtype=np.float64)), rel=1e-7)
    assert result["click_pcoc"] == pytest.approx(c * len(click) / click.sum(), rel=1e-7)


def test_division_reports_how_often_its_clip_binds(make_config):
    config = make_config("MLP", metric_decimal_place=10)
    data = click, purchase, p_click, p_purchase = _crafted()
    rng = np.random.default_rng(5)
    score_click = rng.uniform(0.05, 0.5, len(click)).astype(np.float32)
    score_purchase = rng.uniform(0.0, 0.3, len(click)).astype(np.float32)
    score_purchase[:7] = 0  # the low bound binds too
    result = _evaluate(config, {"click": score_click, "purchase": score_purchase}, data)
    ratio = score_purchase / score_click
    binds = (ratio > 1 - DIVISION_CLIP) | (ratio < DIVISION_CLIP)
    assert binds[click == 1].any() and not binds.all()
    assert result["cvr_all_truth_clipped"] == pytest.approx(binds.mean(), abs=1e-10)
    assert result["cvr_truth_clipped"] == pytest.approx(binds[click == 1].mean(), abs=1e-10)
    assert "purchase_truth_clipped" not in result


def test_no_truth_metric_without_truth_and_no_extra_with_explicit_metrics(make_config):
    config = make_config("ESMM")
    click, purchase, p_click, p_purchase = _crafted()
    evaluator = TaskEvaluator(config, config["eval_tasks"])
    interaction = Interaction({"click": torch.tensor(click), "purchase": torch.tensor(purchase)})
    evaluator.collect(interaction, {"click": torch.tensor(p_click), "purchase": torch.tensor(p_purchase)})
    result = evaluator.evaluate()
    assert not [key for key in result if "truth" in key or key.endswith("_cold")]
    assert {"click_pcoc", "click_ece", "cvr_all_ece"} <= set(result)
    only_auc = TaskEvaluator(config, {"click": "click"}, metrics=["AUC"])  # CSTWA's pre-training
    only_auc.collect(interaction, {"click": torch.tensor(p_click)})
    assert list(only_auc.evaluate()) == ["click_auc"]
    # NaN truth (a training file's rows) gives no truth metric either
    nan = np.full(len(click), np.nan, dtype=np.float32)
    evaluator.collect(
        _interaction(click, purchase, nan, nan),
        {"click": torch.tensor(p_click), "purchase": torch.tensor(p_purchase)},
    )
    assert not [key for key in evaluator.evaluate() if "truth" in key]


# ----- valid_metric ---------------------------------------------------------------------------------


def test_metric_names_and_directions():
    assert split_metric_key("cvr_all_truth_kl") == ("cvr_all", "truth_kl")
    assert split_metric_key("cvr_auc") == ("cvr", "auc")
    assert split_metric_key("AUC") == (None, "auc")
    assert not metric_bigger("cvr_all_truth_kl") and not metric_bigger("purchase_ece")
    assert not metric_bigger("click_truth_ece") and not metric_bigger("purchase_logloss")
    assert metric_bigger("cvr_all_truth_auc") and metric_bigger("purchase_auc")


def test_valid_metric_on_plugin_metrics(make_config):
    config = make_config("ESMM", valid_metric="cvr_all_truth_kl")
    assert config["valid_metric"] == "cvr_all_truth_kl" and config["valid_metric_bigger"] is False
    config = make_config("ESMM", valid_metric="purchase_truth_auc")
    assert config["valid_metric_bigger"] is True
    assert make_config("ESMM", valid_metric="truth_ece")["valid_metric"] == "purchase_truth_ece"
    assert make_config("ESMM", valid_metric="cvr_ece")["valid_metric_bigger"] is False
    for metric, reason in (
        ("purchase_pcoc", "best at 1"),
        ("cvr_all_truth_clipped", "clipped divisions"),
        ("purchase_auc_cold", "cold-start slice"),
    ):
        with pytest.raises(ConfigError, match=rf"valid_metric \[{metric}\] .*{reason}.* Fix: "):
            make_config("MLP", valid_metric=metric)
    with pytest.raises(ConfigError, match=r"needs truth_metrics: True .* --truth_metrics=True"):
        make_config("ESMM", valid_metric="cvr_all_truth_kl", truth_metrics=False)
    with pytest.raises(ConfigError, match=r"needs calibration_metrics: True"):
        make_config("ESMM", valid_metric="purchase_ece", calibration_metrics=False)


@pytest.mark.slow
def test_a_truth_valid_metric_keeps_the_epoch_of_the_smallest_kl(run_tiny, monkeypatch):
    from recbole_cstwa.trainer import TaskTrainer

    validations = []
    evaluate = TaskTrainer.evaluate

    def recording(self, eval_data, *args, **kwargs):
        result = evaluate(self, eval_data, *args, **kwargs)
        validations.append(dict(result))
        return result

    monkeypatch.setattr(TaskTrainer, "evaluate", recording)
    result = run_tiny("MLP", epochs=4, stopping_step=10, valid_metric="cvr_all_truth_kl", learning_rate=0.01)
    kl = [validation["cvr_all_truth_kl"] for validation in validations[:-1]]  # the last: the test set
    assert len(kl) == 4 and len(set(kl)) > 1
    best = int(np.argmin(kl))
    assert result["valid_score_bigger"] is False and result["valid_metric"] == "cvr_all_truth_kl"
    assert result["best_valid_score"] == min(kl)
    assert result["kept_epoch"] == best and result["best_valid_result"] == validations[best]


# ----- truth files: read, checked, aligned with the rows ----------------------------------------


def _truth_frame(folder, split, name=TINY):
    return pd.read_csv(folder / name / f"{name}.{split}.truth.gz", sep="\t", dtype=np.float64)


def _blake2b(path):
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


@pytest.fixture
def tiny_copy(tiny_data_path, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(f"{tiny_data_path}/{TINY}", root / TINY)
    return root


def _rewrite_truth(path, frame):
    text = frame.to_csv(sep="\t", index=False, lineterminator="\n", float_format="%.6g")
    path.write_bytes(gzip.compress(text.encode("ascii"), mtime=0))


def _vouch(folder, split, name=TINY):
    """Writes the digests of the split's files into meta.json, as the generator would have."""
    meta_path = folder / name / f"{name}.meta.json"
    meta = json.loads(meta_path.read_text())
    meta["truth"]["digests"][split] = {
        "inter": _blake2b(folder / name / f"{name}.{split}.inter"),
        "truth": _blake2b(folder / name / f"{name}.{split}.truth.gz"),
    }
    meta_path.write_text(json.dumps(meta))


def _config(folder, tmp_path, **overrides):
    return Config(model="ESMM", config_dict=tiny_config(str(folder), tmp_path, **overrides))


def test_truth_rows_follow_the_evaluation_order(tiny_data_path, tmp_path):
    config = _config(tiny_data_path, tmp_path)
    _, valid_data, test_data = data_preparation(config, create_dataset(config))
    from pathlib import Path

    for split, data in (("valid", valid_data), ("test", test_data)):
        seen = [batch[0] for batch in data]
        collected = torch.cat([batch["truth_purchase"] for batch in seen]).numpy()
        clicks = torch.cat([batch["click"] for batch in seen]).numpy()
        frame = _truth_frame(Path(tiny_data_path), split)
        inter = pd.read_csv(Path(tiny_data_path) / TINY / f"{TINY}.{split}.inter", sep="\t")
        np.testing.assert_array_equal(collected, frame["p_purchase"].to_numpy(np.float32))
        np.testing.assert_array_equal(clicks, inter["click:float"].to_numpy(np.float32))
    train = create_dataset(config).build()[0]
    assert np.isnan(train.inter_feat["truth_click"].numpy()).all()  # the training file: no truth


def test_the_embedded_test_split_scored_with_its_truth(tmp_path):
    """The lead's check, end to end: the test split scored with the truth file's own
    probabilities, read by pandas in file order, against the truth the dataset carried through
    RecBole's evaluation loader: KL 0 (the rows are aligned) and the truth's soft AUC (purchase
    0.8516, cvr_all 0.7984)."""
    from pathlib import Path

    from recbole_cstwa.config import embedded_data_path

    config = Config(
        model="ESMM",
        config_dict={"checkpoint_dir": str(tmp_path / "saved"), "state": "ERROR", "metric_decimal_place": 10},
    )
    _, _, test_data = data_preparation(config, create_dataset(config))
    truth = _truth_frame(Path(embedded_data_path()), "test", "synthetic-ccp")
    p_click = torch.tensor(truth["p_click"].to_numpy(np.float32))
    p_purchase = torch.tensor(truth["p_purchase"].to_numpy(np.float32))
    evaluator = TaskEvaluator(config, config["eval_tasks"])
    done = 0
    for batch in test_data:
        interaction = batch[0]
        rows = slice(done, done + len(interaction))
        done += len(interaction)
        scores = {"click": p_click[rows], "purchase": p_purchase[rows]}
        evaluator.collect(interaction, {**scores, "cvr": scores["purchase"] / scores["click"]})
    assert done == len(truth) == 30000
    result = evaluator.evaluate()
    assert result["purchase_truth_auc"] == pytest.approx(0.85162, abs=1e-5)
    assert result["cvr_all_truth_auc"] == pytest.approx(0.79836, abs=1e-5)
    for task in ("click", "purchase", "cvr", "cvr_all"):
        assert result[f"{task}_truth_kl"] == pytest.approx(0.0, abs=1e-6)
        assert result[f"{task}_truth_ece"] == pytest.approx(0.0, abs=1e-6)
    assert "cold_rows" not in result  # no training counts given: no cold-start slice


def test_a_shuffled_truth_file_is_refused(tiny_copy, tmp_path):
    path = tiny_copy / TINY / f"{TINY}.test.truth.gz"
    frame = _truth_frame(tiny_copy, "test")
    _rewrite_truth(path, frame.sample(frac=1.0, random_state=0))
    with pytest.raises(
        DataFormatError, match=r"test\.truth\.gz\] is not the file .* vouches for .* --truth_metrics=False"
    ):
        create_dataset(_config(tiny_copy, tmp_path, cache_dataset=False))
    # The fix the message names works.
    dataset = create_dataset(_config(tiny_copy, tmp_path, cache_dataset=False, truth_metrics=False))
    assert "truth_click" not in dataset.inter_feat


def test_truth_of_an_edited_inter_file_or_without_meta_entry_is_refused(tiny_copy, tmp_path):
    inter = tiny_copy / TINY / f"{TINY}.valid.inter"
    lines = inter.read_text().splitlines(keepends=True)
    inter.write_text("".join(lines[:-1]))  # one row less
    with pytest.raises(
        DataFormatError, match=r"valid\.truth\.gz\] is vouched for with another \[tiny-ccp\.valid\.inter\]"
    ):
        create_dataset(_config(tiny_copy, tmp_path, cache_dataset=False))
    _vouch(tiny_copy, "valid")  # meta.json now vouches for the shorter .inter: the counts differ
    with pytest.raises(DataFormatError, match=r"holds 400 rows, \[.*valid\.inter\] 399"):
        create_dataset(_config(tiny_copy, tmp_path, cache_dataset=False))
    meta_path = tiny_copy / TINY / f"{TINY}.meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["truth"]["digests"]["valid"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(
        DataFormatError,
        match=r"has no truth\.digests\.valid in .*regenerate the dataset \(recbole-cstwa-generate",
    ):
        create_dataset(_config(tiny_copy, tmp_path, cache_dataset=False))


def test_dropped_rows_take_their_truth_with_them(tiny_copy, tmp_path):
    """A row with a purchase but no click is dropped when read: the truth after it moves up."""
    inter = tiny_copy / TINY / f"{TINY}.test.inter"
    frame = pd.read_csv(inter, sep="\t", dtype=str)
    unclicked = int(np.flatnonzero(frame["click:float"].to_numpy() == "0")[3])
    frame.loc[unclicked, "purchase:float"] = "1"
    frame.to_csv(inter, sep="\t", index=False, lineterminator="\n")
    _vouch(tiny_copy, "test")
    config = _config(tiny_copy, tmp_path, cache_dataset=False)
    _, _, test = create_dataset(config).build()
    expected = _truth_frame(tiny_copy, "test").drop(index=unclicked)
    np.testing.assert_array_equal(
        test.inter_feat["truth_click"].numpy(), expected["p_click"].to_numpy(np.float32)
    )


def test_a_single_file_split_by_recbole_keeps_each_row_s_truth(tiny_copy, tmp_path):
    """One .inter with a row id, split and shuffled by RecBole (eval_args RS, order RO): every
    row of every split still carries its own truth."""
    folder = tiny_copy / TINY
    frame = pd.read_csv(folder / f"{TINY}.test.inter", sep="\t", dtype=str)
    frame.insert(0, "row:token", [f"r{i}" for i in range(len(frame))])
    frame.to_csv(folder / f"{TINY}.inter", sep="\t", index=False, lineterminator="\n")
    shutil.copy(folder / f"{TINY}.test.truth.gz", folder / f"{TINY}.truth.gz")
    meta_path = folder / f"{TINY}.meta.json"
    meta = json.loads(meta_path.read_text())
    # A single file is vouched for by the entry holding its digest, whatever the entry's name.
    meta["truth"]["digests"]["whole"] = {
        "inter": _blake2b(folder / f"{TINY}.inter"),
        "truth": _blake2b(folder / f"{TINY}.truth.gz"),
    }
    meta_path.write_text(json.dumps(meta))
    config = _config(
        tiny_copy,
        tmp_path,
        benchmark_filename=None,
        cache_dataset=False,
        eval_args={"split": {"RS": [0.6, 0.2, 0.2]}, "order": "RO", "group_by": None, "mode": "labeled"},
    )
    dataset = create_dataset(config)
    truth = _truth_frame(tiny_copy, "test")
    for split in dataset.build():
        rows = np.array(
            [int(token[1:]) for token in dataset.field2id_token["row"][split.inter_feat["row"].numpy()]]
        )
        assert len(rows) > 50 and not np.array_equal(rows, np.sort(rows))  # shuffled
        np.testing.assert_array_equal(
            split.inter_feat["truth_click"].numpy(), truth["p_click"].to_numpy(np.float32)[rows]
        )
        np.testing.assert_array_equal(
            split.inter_feat["truth_purchase"].numpy(), truth["p_purchase"].to_numpy(np.float32)[rows]
        )


def test_truth_is_never_a_feature_nor_transformed(make_config, caplog):
    from recbole.model.context_aware_recommender import DeepFM

    from recbole_cstwa.data.checks import check_dataset_settings
    from recbole_cstwa.model.layers import group_fields

    config = make_config("DeepFM", LABEL_FIELD="click", normalize_all=True)
    train_data, _, test_data = data_preparation(config, create_dataset(config))
    model = DeepFM(config, train_data._dataset)
    assert not [field for field in model.token_field_names + model.float_field_names if "truth" in field]
    esmm_config = make_config("ESMM")
    grouped = group_fields(train_data._dataset, esmm_config)
    assert not [field for fields in grouped.values() for field, _ in fields if "truth" in field]
    # normalize_all left them as read
    plain = make_config("DeepFM", LABEL_FIELD="click")
    _, _, plain_test = data_preparation(plain, create_dataset(plain))
    assert torch.equal(
        test_data._dataset.inter_feat["truth_click"], plain_test._dataset.inter_feat["truth_click"]
    )
    for key, value in (("numerical_features", ["truth_click"]), ("normalize_field", ["truth_purchase"])):
        with pytest.raises(ConfigError, match=rf"{key} names \['truth_"):
            make_config("ESMM", **{key: value})
    check_dataset_settings(esmm_config)
    assert "truth" not in caplog.text  # not among the float columns no setting uses


def test_the_cache_key_covers_the_truth_and_the_setting(tiny_copy, tmp_path):
    from recbole_cstwa.data.cache import cache_key, data_files
    from recbole_cstwa.data.dataset import MultiTaskDataset

    config = _config(tiny_copy, tmp_path)
    assert [path.rsplit("/", 1)[1] for path in data_files(config)][-3:] == [
        f"{TINY}.valid.truth.gz",
        f"{TINY}.test.truth.gz",
        f"{TINY}.meta.json",
    ]
    key, _ = cache_key(config, MultiTaskDataset)
    off = _config(tiny_copy, tmp_path, truth_metrics=False)
    assert cache_key(off, MultiTaskDataset)[0] != key and not any("truth" in p for p in data_files(off))
    cached = create_dataset(config)
    assert "truth_click" in create_dataset(config).inter_feat and "truth_click" in cached.inter_feat
    assert "truth_click" not in create_dataset(off).inter_feat
    meta_path = tiny_copy / TINY / f"{TINY}.meta.json"
    meta_path.write_text(meta_path.read_text() + " ")
    assert cache_key(config, MultiTaskDataset)[0] != key


def test_a_truth_valid_metric_needs_truth_in_the_validation_split(tiny_copy, tmp_path):
    (tiny_copy / TINY / f"{TINY}.valid.truth.gz").unlink()
    settings = tiny_config(str(tiny_copy), tmp_path, valid_metric="cvr_all_truth_kl")
    with pytest.raises(
        DataFormatError, match=r"valid_metric \[cvr_all_truth_kl\] needs the true probabilities"
    ):
        run_recbole_cstwa(model="MLP", config_dict=settings)


# ----- the cold-start slice -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cold_data_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("cold")
    generate(
        root, name="cold-ccp", n_impressions=3000, cvr=0.3, seed=5, new_user_share=0.2, new_item_share=0.1
    )
    return root


@pytest.mark.parametrize("cold_start_count", [1, 3])
def test_the_cold_slice_is_the_rows_of_users_or_items_rarely_seen_in_training(
    cold_data_path, tmp_path, cold_start_count
):
    settings = tiny_config(
        str(cold_data_path), tmp_path, dataset="cold-ccp", cold_start_count=cold_start_count
    )
    settings["metric_decimal_place"] = 10
    config = Config(model="ESMM", config_dict=settings)
    train_data, _, test_data = data_preparation(config, create_dataset(config))
    folder = cold_data_path / "cold-ccp"
    train = pd.read_csv(folder / "cold-ccp.train.inter", sep="\t", dtype=str)
    test = pd.read_csv(folder / "cold-ccp.test.inter", sep="\t", dtype=str)
    users, items = train["user_id:token"].value_counts(), train["item_id:token"].value_counts()
    cold = (test["user_id:token"].map(users).fillna(0).to_numpy() < cold_start_count) | (
        test["item_id:token"].map(items).fillna(0).to_numpy() < cold_start_count
    )
    assert 10 < cold.sum() < len(test)

    evaluator = TaskEvaluator(config, config["eval_tasks"])
    evaluator.count_training_rows(train_data._dataset)
    scores = []
    for batch in test_data:
        interaction = batch[0]
        p_click = torch.sigmoid(interaction["position"].float() - interaction["user_id"].float() / 50)
        output = {"click": p_click, "purchase": p_click * 0.3, "cvr": torch.full_like(p_click, 0.3)}
        evaluator.collect(interaction, output)
        scores.append(p_click)
    result = evaluator.evaluate()
    assert result["cold_rows"] == int(cold.sum())
    score = torch.cat(scores).numpy()
    click = test["click:float"].astype(float).to_numpy()
    assert result["click_auc_cold"] == pytest.approx(roc_auc_score(click[cold], score[cold]), abs=1e-6)
    assert result["click_auc"] == pytest.approx(roc_auc_score(click, score), abs=1e-6)
    assert result["click_pcoc_cold"] == pytest.approx(score[cold].sum() / click[cold].sum(), rel=1e-5)
    truth = _truth_frame(cold_data_path, "test", "cold-ccp")
    expected_kl = truth_kl(score[cold], truth["p_click"].to_numpy(np.float32)[cold])
    assert result["click_truth_kl_cold"] == pytest.approx(expected_kl, rel=1e-6)
    assert {f"{key}_cold" for key in result if not key.endswith("_cold") and key != "cold_rows"} <= set(
        result
    )


# ----- the comparison's summary -----------------------------------------------------------------------


def test_the_summary_adds_the_new_columns_and_says_what_selected():
    rows = [{"cvr_all_truth_kl_mean": 0.1, "purchase_pcoc_mean": math.nan}, {}]
    assert shown_metrics(rows)[-1] == "cvr_all_truth_kl"
    assert "purchase_pcoc" not in shown_metrics(rows)
    assert selection_line({"cvr_all_truth_kl": ["multi-task"]}) == (
        "Kept epoch: the best validation `cvr_all_truth_kl` (valid_metric) of every run."
    )
    assert "`click_auc` (built-in, click label)" in selection_line(
        {"purchase_auc": ["multi-task"], "click_auc": ["built-in, click label"]}
    )


# ----- DDP: every rank's rows gathered before the metrics ---------------------------------------


class _TrainingSplit:
    """What count_training_rows reads of a training split: its ids and their vocabulary sizes."""

    def __init__(self, users, items, sizes):
        self.inter_feat = Interaction({"user_id": torch.tensor(users), "item_id": torch.tensor(items)})
        self.sizes = sizes

    def num(self, field):
        return self.sizes[field]


def _ddp_rows():
    click, purchase, p_click, p_purchase = _crafted(seed=9, n=600)
    rng = np.random.default_rng(9)
    users, items = rng.integers(1, 60, 600), rng.integers(1, 40, 600)
    scores = {
        "click": np.clip(p_click + rng.normal(0, 0.05, 600), 0.01, 0.99).astype(np.float32),
        "purchase": np.clip(p_purchase + rng.normal(0, 0.02, 600), 0.001, 0.99).astype(np.float32),
    }
    return (click, purchase, p_click, p_purchase), users, items, scores


def _evaluate_ddp_rows(rows, gather=None):
    config = Config(model="MLP", config_dict={"metric_decimal_place": 10, "state": "ERROR"})
    evaluator = TaskEvaluator(config, config["eval_tasks"], gather=gather)
    data, users, items, scores = _ddp_rows()
    # users 1..29 and items 1..19 were seen in training: the others are cold
    evaluator.count_training_rows(
        _TrainingSplit(np.arange(1, 30), np.arange(1, 20), {"user_id": 60, "item_id": 40})
    )
    for start in range(rows.start, rows.stop, 100):
        part = slice(start, min(start + 100, rows.stop))
        interaction = _interaction(*data, part)
        interaction.update(
            Interaction({"user_id": torch.tensor(users[part]), "item_id": torch.tensor(items[part])})
        )
        evaluator.collect(interaction, {name: torch.tensor(value[part]) for name, value in scores.items()})
    return dict(evaluator.evaluate())


def _ddp_worker(rank, port, queue):
    import torch.distributed as dist

    from recbole_cstwa.distributed import gather_data_struct

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        device = torch.device("cpu")
        rows = slice(0, 350) if rank == 0 else slice(350, 600)
        queue.put((rank, _evaluate_ddp_rows(rows, gather=lambda struct: gather_data_struct(struct, device))))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gathered_truth_calibration_and_cold_metrics_are_the_whole_set_s():
    import torch.multiprocessing as mp
    from conftest import free_port

    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_ddp_worker, args=(free_port(), queue), nprocs=2, join=True)
    results = dict(queue.get() for _ in range(2))
    whole = _evaluate_ddp_rows(slice(0, 600))
    assert {
        "cvr_all_truth_kl",
        "purchase_ece",
        "cvr_truth_clipped",
        "cold_rows",
        "click_truth_auc_cold",
    } <= set(whole)
    assert whole != _evaluate_ddp_rows(slice(0, 350))  # one rank's rows alone give other numbers
    for rank in (0, 1):
        assert results[rank].keys() == whole.keys()
        for key, value in whole.items():
            assert results[rank][key] == pytest.approx(value, abs=1e-9, nan_ok=True), (rank, key)
