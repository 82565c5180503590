"""Bad input gets a clear error naming the file, field and fix; labels are never features."""

import shutil

import pandas as pd
import pytest
import torch

from recbole_cstwa.data import create_dataset, data_preparation
from recbole_cstwa.errors import ConfigError, DataFormatError
from recbole_cstwa.model.layers import group_fields

TINY = "tiny-ccp"  # the dataset name conftest.py generates


@pytest.fixture
def editable_data(tiny_data_path, tmp_path):
    """A private copy of the tiny dataset, with a helper to rewrite one split's .inter file."""
    root = tmp_path / "data"
    shutil.copytree(f"{tiny_data_path}/{TINY}", root / TINY)

    def rewrite(split, edit):
        path = root / TINY / f"{TINY}.{split}.inter"
        frame = pd.read_csv(path, sep="\t", dtype=str)
        frame = edit(frame)
        frame.to_csv(path, sep="\t", index=False)
        return str(path)

    return str(root), rewrite


def _load(make_config, data_path, **overrides):
    config = make_config("ESMM", data_path=data_path, **overrides)
    return config, create_dataset(config)


def test_missing_label_column(make_config, editable_data):
    data_path, rewrite = editable_data
    path = rewrite("valid", lambda f: f.drop(columns=["purchase:float"]))
    with pytest.raises(DataFormatError, match=r"no label column \[purchase\]") as error:
        _load(make_config, data_path)
    assert path in str(error.value) and "purchase:float" in str(error.value)


def test_label_value_other_than_zero_or_one(make_config, editable_data):
    data_path, rewrite = editable_data

    def edit(frame):
        frame.loc[3, "click:float"] = "2"
        return frame

    path = rewrite("train", edit)
    with pytest.raises(DataFormatError, match=r"label \[click\] must be 0 or 1, found \[2.0\]") as error:
        _load(make_config, data_path)
    assert path in str(error.value) and "lines 5" in str(error.value)  # header + 1-based row


def test_nan_label(make_config, editable_data):
    data_path, rewrite = editable_data

    def edit(frame):
        frame.loc[0, "purchase:float"] = ""
        return frame

    path = rewrite("test", edit)
    with pytest.raises(
        DataFormatError, match=r"label \[purchase\] is missing in 1 rows \(lines 2\)"
    ) as error:
        _load(make_config, data_path)
    assert path in str(error.value)


def test_label_declared_as_token(make_config, editable_data):
    data_path, rewrite = editable_data
    rewrite("train", lambda f: f.rename(columns={"click:float": "click:token"}))
    with pytest.raises(DataFormatError, match=r"declares label \[click\] as token"):
        _load(make_config, data_path)


def test_non_numeric_label(make_config, editable_data):
    data_path, rewrite = editable_data

    def edit(frame):
        frame.loc[1, "click:float"] = "yes"
        return frame

    path = rewrite("train", edit)
    with pytest.raises(DataFormatError, match="Cannot read") as error:
        _load(make_config, data_path)
    assert path in str(error.value)


def test_empty_benchmark_split(make_config, editable_data):
    data_path, rewrite = editable_data
    path = rewrite("valid", lambda f: f.iloc[:0])
    with pytest.raises(DataFormatError, match="holds no impressions") as error:
        _load(make_config, data_path)
    assert path in str(error.value)


def test_empty_ratio_split(make_config, editable_data, tmp_path):
    data_path, _ = editable_data
    # One small .inter file split by eval_args ratios: a zero test ratio leaves the split empty.
    frame = pd.read_csv(f"{data_path}/{TINY}/{TINY}.test.inter", sep="\t", dtype=str)
    frame.to_csv(f"{data_path}/{TINY}/{TINY}.inter", sep="\t", index=False)
    eval_args = {"split": {"RS": [0.9, 0.1, 0.0]}, "order": "RO", "group_by": None, "mode": "labeled"}
    config, dataset = _load(make_config, data_path, benchmark_filename=None, eval_args=eval_args)
    with pytest.raises(DataFormatError, match="The test split of dataset"):
        data_preparation(config, dataset)


def test_ratio_split_without_benchmark_files(make_config, editable_data):
    data_path, _ = editable_data
    frame = pd.read_csv(f"{data_path}/{TINY}/{TINY}.train.inter", sep="\t", dtype=str)
    frame.to_csv(f"{data_path}/{TINY}/{TINY}.inter", sep="\t", index=False)
    config, dataset = _load(make_config, data_path, benchmark_filename=None)
    train, valid, test = data_preparation(config, dataset)
    sizes = [len(d._dataset) for d in (train, valid, test)]
    assert sum(sizes) == len(frame) and sizes[0] == pytest.approx(0.8 * len(frame), abs=2)


def _add_purchase_without_click(frame):
    rows = frame.index[frame["click:float"] == "0"][:3]
    frame.loc[rows, "purchase:float"] = "1"
    return frame


def test_purchase_without_click_is_dropped_and_counted(make_config, editable_data, caplog):
    data_path, rewrite = editable_data
    before = len(pd.read_csv(f"{data_path}/{TINY}/{TINY}.train.inter", sep="\t"))
    rewrite("train", _add_purchase_without_click)
    config, dataset = _load(make_config, data_path, state="INFO")
    assert dataset.dropped_invalid_purchases == 3
    train, _, _ = data_preparation(config, dataset)
    assert len(train._dataset) == before - 3
    assert any("dropped 3 rows with purchase=1 and click=0" in r.getMessage() for r in caplog.records)


def test_purchase_without_click_is_an_error_when_asked(make_config, editable_data):
    data_path, rewrite = editable_data
    path = rewrite("train", _add_purchase_without_click)
    with pytest.raises(DataFormatError, match="3 rows with purchase=1 and click=0") as error:
        _load(make_config, data_path, invalid_purchase="error")
    assert path in str(error.value)


def test_labels_are_never_features(make_config):
    config = make_config("ESMM")
    dataset = create_dataset(config)
    groups = group_fields(dataset, config)
    fields = [field for group in groups.values() for field, _ in group]
    assert "click" not in fields and "purchase" not in fields
    assert [f for f, _ in groups["user"]][0] == "user_id"
    assert "item_id" in [f for f, _ in groups["item"]]
    assert "position" in [f for f, _ in groups["context"]]


def test_label_as_numerical_feature_is_refused(make_config):
    with pytest.raises(ConfigError, match=r"Label \[purchase\] is listed in numerical_features"):
        make_config("DeepFM", LABEL_FIELD="click", numerical_features=["purchase"])


def test_batch_rows_are_gathered_as_recbole_indexes_them(make_config):
    """The dataset gathers a batch's rows with one index_select a column; the batch equals
    RecBole's list indexing for every kind of index the loaders pass."""
    import numpy as np
    from recbole.data.interaction import Interaction

    from recbole_cstwa.data.dataset import _take_rows

    config = make_config("MLP")
    dataset = create_dataset(config)
    feat = dataset.inter_feat
    order = np.random.default_rng(0).permutation(len(feat))[:37]
    for index in (order, torch.from_numpy(order), torch.from_numpy(order).int(), slice(3, 40)):
        ours = _take_rows(feat, index)
        reference = Interaction.__getitem__(feat, index.tolist() if hasattr(index, "tolist") else index)
        assert set(ours.interaction) == set(reference.interaction)
        for field in reference.interaction:
            assert torch.equal(ours[field], reference[field]), field
    joined = dataset[order]
    assert torch.equal(joined[config["USER_ID_FIELD"]], feat[config["USER_ID_FIELD"]][torch.from_numpy(order)].long())


def test_average_actions_equal_recboles(make_config):
    from recbole.data.dataset import Dataset

    dataset = create_dataset(make_config("MLP"))
    for name in ("avg_actions_of_users", "avg_actions_of_items"):
        assert getattr(dataset, name) == getattr(Dataset, name).fget(dataset)
