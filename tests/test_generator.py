"""Tests of the synthetic Ali-CCP-like generator and its oracle metrics.

Small datasets in tmp folders keep the whole file fast (a few seconds).
"""

import gzip
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from recbole_cstwa.commands.generate import main as generate_main
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
# BLAKE2b-128 of generate(n_impressions=SMALL, seed=11), recorded before the knobs
# clickbait_share, selection_bias, new_user_share and new_item_share existed: their defaults
# must keep these bytes (and those of the embedded dataset).
SMALL_SEED_11_DIGESTS = {
    f"{NAME}.item": "c8e6786b5e88b00275fb7efc8a23dee2",
    f"{NAME}.user": "162ab44544b021d0500ecb0eaa9cd671",
    f"{NAME}.train.inter": "48c5845f0b5ae9e9619c330257b596d2",
    f"{NAME}.train.truth.gz": "e57bac2a212cc3104b04ce80975b99de",
    f"{NAME}.valid.inter": "9257c3da666703468928feac40c9bcfe",
    f"{NAME}.valid.truth.gz": "f8a319f2f6a6cd8d67e5879eeffe54e4",
    f"{NAME}.test.inter": "c541f511caf143e6428ac88952ac394d",
    f"{NAME}.test.truth.gz": "e1a367efbd9ef9ccb0069f5d9e75b8ea",
}
KNOB_DEFAULTS = {
    "clickbait_share": 0.12,
    "selection_bias": 0.0,
    "new_user_share": 0.0,
    "new_item_share": 0.0,
}
KNOBS_SET = {
    "clickbait_share": 0.4,
    "selection_bias": 1.5,
    "new_user_share": 0.2,
    "new_item_share": 0.1,
}


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


def _digest(data):
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _meta(dataset_dir, name=NAME):
    return json.loads((dataset_dir / f"{name}.meta.json").read_text())


@pytest.fixture(scope="module")
def small_default_bytes(tmp_path_factory):
    """The files of the default-knob small dataset, shared by the knob tests."""
    return _file_bytes(generate(tmp_path_factory.mktemp("default"), n_impressions=SMALL, seed=11))


def test_default_knobs_keep_the_bytes_of_before_the_knobs(tmp_path, small_default_bytes):
    data_files = {name: data for name, data in small_default_bytes.items() if not name.endswith(".json")}
    assert {name: _digest(data) for name, data in data_files.items()} == SMALL_SEED_11_DIGESTS
    # The defaults given explicitly change nothing either, meta.json included.
    explicit = generate(tmp_path, n_impressions=SMALL, seed=11, **KNOB_DEFAULTS)
    assert _file_bytes(explicit) == small_default_bytes
    meta = json.loads(small_default_bytes[f"{NAME}.meta.json"])
    assert {knob: meta["parameters"][knob] for knob in KNOB_DEFAULTS} == KNOB_DEFAULTS


@pytest.mark.parametrize(("knob", "value"), list(KNOBS_SET.items()))
def test_each_knob_changes_the_files_and_is_recorded(tmp_path, small_default_bytes, knob, value):
    dataset_dir = generate(tmp_path, n_impressions=SMALL, seed=11, **{knob: value})
    changed = _file_bytes(dataset_dir)
    # The users and items are the same world; the impressions and their truth are not.
    for unchanged in (f"{NAME}.user", f"{NAME}.item"):
        assert changed[unchanged] == small_default_bytes[unchanged]
    assert changed[f"{NAME}.train.inter"] != small_default_bytes[f"{NAME}.train.inter"]
    assert changed[f"{NAME}.train.truth.gz"] != small_default_bytes[f"{NAME}.train.truth.gz"]
    meta = _meta(dataset_dir)
    assert meta["parameters"][knob] == value
    assert f"--{knob.replace('_', '-')} {value} " in meta["regenerate"]
    for other, default in KNOB_DEFAULTS.items():
        if other != knob:
            assert meta["parameters"][other] == default


def test_all_knobs_set_give_identical_files_and_regenerate_reproduces_them(tmp_path):
    first = generate(tmp_path / "a", n_impressions=SMALL, seed=11, **KNOBS_SET)
    second = generate(tmp_path / "b", n_impressions=SMALL, seed=11, **KNOBS_SET)
    first_bytes = _file_bytes(first)
    assert first_bytes == _file_bytes(second)
    # meta.json's command line gives the same dataset again.
    command = _meta(first)["regenerate"].split()
    assert command[:2] == ["recbole-cstwa-generate", "generate"]
    arguments = command[1:]
    arguments[arguments.index("<dir>")] = str(tmp_path / "c")
    assert generate_main(arguments) == 0
    assert _file_bytes(tmp_path / "c" / NAME) == first_bytes


def test_meta_digests_match_the_written_files(tmp_path, small_default_bytes):
    knobs_dir = generate(tmp_path, n_impressions=SMALL, seed=11, **KNOBS_SET)
    for files in (small_default_bytes, _file_bytes(knobs_dir)):
        digests = json.loads(files[f"{NAME}.meta.json"])["truth"]["digests"]
        assert set(digests) == set(SPLIT_NAMES)
        for split in SPLIT_NAMES:
            assert digests[split] == {
                "inter": _digest(files[f"{NAME}.{split}.inter"]),
                "truth": _digest(files[f"{NAME}.{split}.truth.gz"]),
            }
    # Each split's pair is its own: no two files share a digest.
    assert len({digest for pair in digests.values() for digest in pair.values()}) == 6


def _clicked_over_all_cvr(dataset_dir):
    """Mean true P(purchase | click) of the clicked impressions over that of all impressions."""
    inter, truth = _read_all(dataset_dir)
    conversion = truth["p_purchase"] / truth["p_click"]
    clicked = inter["click:float"].to_numpy() == 1
    return conversion[clicked].mean() / conversion.mean()


def test_selection_bias_makes_clicks_over_represent_conversions(tmp_path, small_default_bytes):
    unbiased_dir = tmp_path / "unbiased" / NAME
    unbiased_dir.mkdir(parents=True)
    for name, data in small_default_bytes.items():
        (unbiased_dir / name).write_bytes(data)
    biased_dir = generate(tmp_path / "biased", n_impressions=SMALL, seed=11, selection_bias=1.0)
    unbiased, biased = _clicked_over_all_cvr(unbiased_dir), _clicked_over_all_cvr(biased_dir)
    # Measured: about 1.05 without selection bias and 1.72 with 1.0.
    assert biased > unbiased + 0.3
    # The calibration still holds: click-weighted mean CVR equals cvr, mean CTR equals ctr.
    _, truth = _read_all(biased_dir)
    assert truth["p_purchase"].sum() / truth["p_click"].sum() == pytest.approx(0.25, rel=1e-4)
    assert truth["p_click"].mean() == pytest.approx(0.04, rel=1e-4)


def test_new_users_and_items_are_held_out_of_train(tmp_path):
    dataset_dir = generate(
        tmp_path / "cold", n_impressions=SMALL, seed=11, new_user_share=0.2, new_item_share=0.1
    )
    meta = _meta(dataset_dir)
    n_users, n_items = meta["parameters"]["n_users"], meta["parameters"]["n_items"]
    cold = meta["cold_start"]
    new_users, new_items = cold["new_users"]["ids"], cold["new_items"]["ids"]
    assert cold["new_users"]["count"] == len(new_users) == round(0.2 * n_users)
    assert cold["new_items"]["count"] == len(new_items) == round(0.1 * n_items)
    assert new_users == sorted(set(new_users)) and 1 <= new_users[0] and new_users[-1] <= n_users
    assert new_items == sorted(set(new_items)) and 1 <= new_items[0] and new_items[-1] <= n_items
    id_text = "".join(f"{user}\n" for user in new_users).encode()
    assert cold["new_users"]["ids_blake2b"] == _digest(id_text)

    train, _ = _read_split(dataset_dir, "train")
    assert not train["user_id:token"].isin(new_users).any()
    assert not train["item_id:token"].isin(new_items).any()
    train_users, train_items = set(train["user_id:token"]), set(train["item_id:token"])
    for split in SPLIT_NAMES:
        inter, _ = _read_split(dataset_dir, split)
        counts = meta["counts"][split]
        assert counts["rows_new_user"] == inter["user_id:token"].isin(new_users).sum()
        assert counts["rows_new_item"] == inter["item_id:token"].isin(new_items).sum()
        assert counts["rows_user_unseen_in_train"] == (~inter["user_id:token"].isin(train_users)).sum()
        assert counts["rows_item_unseen_in_train"] == (~inter["item_id:token"].isin(train_items)).sum()
    assert meta["counts"]["test"]["rows_new_user"] > 0
    assert meta["counts"]["test"]["rows_new_item"] > 0
    assert meta["counts"]["all"]["rows_new_user"] == sum(
        meta["counts"][split]["rows_new_user"] for split in SPLIT_NAMES
    )
    # A larger share holds out a superset, so sweeps over the share nest.
    larger = _meta(
        generate(tmp_path / "larger", n_impressions=2000, n_users=n_users, seed=11, new_user_share=0.4)
    )
    assert set(new_users) < set(larger["cold_start"]["new_users"]["ids"])


def test_clickbait_share_changes_the_category_kinds(tmp_path, small_default_bytes):
    default_kinds = json.loads(small_default_bytes[f"{NAME}.meta.json"])["derived"]["category_kinds"]
    # The small dataset's world (its n_users and n_items) with fewer impressions.
    kinds = {
        share: _meta(
            generate(
                tmp_path / str(share),
                n_impressions=2000,
                n_users=SMALL // 30,
                n_items=SMALL // 30,
                seed=11,
                clickbait_share=share,
            )
        )["derived"]["category_kinds"]
        for share in (0.0, 0.5)
    }
    assert kinds[0.0]["clickbait"] == []
    assert len(kinds[0.5]["clickbait"]) > 2 * len(default_kinds["clickbait"]) > 0
    assert set(default_kinds["clickbait"]) < set(kinds[0.5]["clickbait"])
    # "everyday" keeps its share: the same categories at every clickbait share.
    assert kinds[0.0]["everyday"] == kinds[0.5]["everyday"] == default_kinds["everyday"]


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


@pytest.mark.slow
def test_streamed_blocks_give_the_same_files_with_every_knob_set(tmp_path, monkeypatch):
    """Blocks across the end of train (held-out users and items) change no byte either."""
    import recbole_cstwa.tools.generator as generator

    whole = _file_bytes(generate(tmp_path / "whole", n_impressions=SMALL, seed=11, **KNOBS_SET))
    monkeypatch.setattr(generator, "STREAM_ROWS", 777)  # 16,000 train rows: a block straddles
    blocks = _file_bytes(generate(tmp_path / "blocks", n_impressions=SMALL, seed=11, **KNOBS_SET))
    assert blocks == whole


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
        ({"clickbait_share": 0.9}, "clickbait_share"),
        ({"clickbait_share": -0.1}, "clickbait_share"),
        ({"selection_bias": float("nan")}, "selection_bias"),
        ({"selection_bias": 11.0}, "selection_bias"),
        ({"new_user_share": 1.0}, "new_user_share"),
        ({"new_user_share": 0.0001}, "new_user_share"),  # holds out no user
        ({"new_item_share": -0.1}, "new_item_share"),
        ({"new_item_share": 0.999}, "new_item_share"),  # leaves too few items
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


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--clickbait-share", "0.9"),
        ("--selection-bias", "inf"),
        ("--new-user-share", "1.5"),
        ("--new-item-share", "-0.2"),
    ],
)
def test_command_line_refuses_bad_knobs_with_one_line_and_status_2(tmp_path, capsys, flag, value):
    arguments = ["generate", "--output", str(tmp_path), "--n-impressions", "2000", flag, value]
    with pytest.raises(SystemExit) as stop:
        generate_main(arguments)
    assert stop.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and f"({flag})" in error_lines[0] and value in error_lines[0]
    assert not (tmp_path / NAME).exists()
