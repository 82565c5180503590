"""Bad input gets a clear error naming the file, field and fix; labels are never features."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY

from recbole_cstwa.data import create_dataset, data_preparation
from recbole_cstwa.errors import ConfigError, DataFormatError
from recbole_cstwa.model.layers import group_fields


@pytest.fixture
def editable_data(tiny_data_path, tmp_path):
    """A private copy of the tiny dataset, with a helper to rewrite one split's .inter file; without
    its truth files, which would no longer match the rewritten files (and stop the run)."""
    root = tmp_path / "data"
    shutil.copytree(f"{tiny_data_path}/{TINY}", root / TINY, ignore=shutil.ignore_patterns("*.truth.gz"))

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
    with pytest.raises(
        DataFormatError, match=r"float column \[click\] holds 'yes' at line 3, not a number"
    ) as error:
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

    from recbole_cstwa.data.dataset import take_rows

    config = make_config("MLP")
    dataset = create_dataset(config)
    feat = dataset.inter_feat
    order = np.random.default_rng(0).permutation(len(feat))[:37]
    for index in (order, torch.from_numpy(order), torch.from_numpy(order).int(), slice(3, 40)):
        ours = take_rows(feat, index)
        reference = Interaction.__getitem__(feat, index.tolist() if hasattr(index, "tolist") else index)
        assert set(ours.interaction) == set(reference.interaction)
        for field in reference.interaction:  # equal, NaN to NaN (the training rows' truth)
            torch.testing.assert_close(ours[field], reference[field], rtol=0, atol=0, equal_nan=True)
    joined = dataset[order]
    assert torch.equal(
        joined[config["USER_ID_FIELD"]], feat[config["USER_ID_FIELD"]][torch.from_numpy(order)].long()
    )


def test_average_actions_equal_recboles(make_config):
    from recbole.data.dataset import Dataset

    dataset = create_dataset(make_config("MLP"))
    for name in ("avg_actions_of_users", "avg_actions_of_items"):
        assert getattr(dataset, name) == getattr(Dataset, name).fget(dataset)


# ----- cells read as written: only an empty cell is missing ---------------------------------------
MISSING_VALUE_STRINGS = ["NA", "null", "None", "N/A", "NaN", "nan", "#N/A", "NULL", "<NA>", "n/a", "-NaN"]


def _edit_lines(path, edit):
    """Rewrites an atomic file line by line (pandas would read NA, null, ... as missing)."""
    with open(path, encoding="utf-8") as file:
        lines = file.read().splitlines()
    header, rows = lines[0].split("\t"), [line.split("\t") for line in lines[1:]]
    header, rows = edit(header, rows)
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join("\t".join(cells) for cells in [header, *rows]) + "\n")
    return str(path)


def test_missing_value_strings_are_tokens_not_padding(make_config, editable_data):
    """pandas' missing-value strings were read as missing: items lost their category, impressions
    their item id, silently."""
    data_path, _ = editable_data
    folder = f"{data_path}/{TINY}"

    def categories(header, rows):
        for row, token in zip(rows, MISSING_VALUE_STRINGS):
            row[header.index("category:token")] = token
        rows[len(MISSING_VALUE_STRINGS)][header.index("category:token")] = ""  # the one missing cell
        return header, rows

    def item_ids(header, rows):
        column = header.index("item_id:token")
        first_item = rows[0][column]
        for row in rows:
            if row[column] == first_item:
                row[column] = "NA"
        return header, rows

    _edit_lines(f"{folder}/{TINY}.item", categories)
    with open(f"{folder}/{TINY}.item", encoding="utf-8") as file:
        first_item = file.read().splitlines()[1].split("\t")[0]
    _edit_lines(
        f"{folder}/{TINY}.item",
        lambda h, r: (h, [["NA", *row[1:]] if row[0] == first_item else row for row in r]),
    )
    for split in ("train", "valid", "test"):
        _edit_lines(
            f"{folder}/{TINY}.{split}.inter",
            lambda h, r: (h, [[row[0], "NA" if row[1] == first_item else row[1], *row[2:]] for row in r]),
        )
    _, dataset = _load(make_config, data_path, cache_dataset=False)
    tokens = list(dataset.field2id_token["category"])
    assert set(MISSING_VALUE_STRINGS) <= set(tokens)
    categories_read = np.asarray(dataset.item_feat["category"])
    assert (categories_read[1:] == 0).sum() == 1  # only the empty cell is the padding id
    na_item = dataset.field2token_id["item_id"]["NA"]
    item_ids_read = np.asarray(dataset.inter_feat["item_id"])
    assert (item_ids_read == na_item).sum() > 0 and (item_ids_read == 0).sum() == 0


@pytest.mark.parametrize(
    "cell, message",
    [
        (
            "NA",
            r"float column \[price\] holds 'NA' at line 4, not a number: .* only an empty cell is a missing value",
        ),
        ("null", r"float column \[price\] holds 'null' at line 4, not a number"),
        ("inf", r"float column \[price\] holds inf at line 4: a float column holds finite numbers"),
        ("nan", r"float column \[price\] holds nan at line 4: a float column holds finite numbers"),
    ],
)
def test_a_float_column_holds_numbers_or_empty_cells(make_config, editable_data, cell, message):
    """inf in a numerical column ended in an anonymous BCE RuntimeError; NA was silently the mean."""
    data_path, _ = editable_data
    folder = f"{data_path}/{TINY}"
    for split in ("train", "valid", "test"):

        def add_price(header, rows, split=split):
            cells = [str(0.5 + index % 3) for index in range(len(rows))]
            cells[1] = ""  # a missing value: filled with the column mean
            if split == "train":
                cells[2] = cell
            return header[:-2] + ["price:float"] + header[-2:], [
                row[:-2] + [c] + row[-2:] for row, c in zip(rows, cells)
            ]

        path = _edit_lines(f"{folder}/{TINY}.{split}.inter", add_price)
        if split == "train":
            train = path
    with pytest.raises(DataFormatError, match=message) as error:
        _load(make_config, data_path, numerical_features=["price"], cache_dataset=False)
    assert train in str(error.value)


def test_an_empty_float_cell_is_missing(make_config, editable_data):
    data_path, _ = editable_data
    folder = f"{data_path}/{TINY}"
    for split in ("train", "valid", "test"):
        _edit_lines(
            f"{folder}/{TINY}.{split}.inter",
            lambda h, r: (
                h[:-2] + ["price:float"] + h[-2:],
                [row[:-2] + ["" if i == 0 else "2"] + row[-2:] for i, row in enumerate(r)],
            ),
        )
    _, dataset = _load(make_config, data_path, numerical_features=["price"], cache_dataset=False)
    assert dataset.inter_feat["price"].shape[0] == len(dataset.inter_feat)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda text: text.replace("user_category:token", "position:token", 1),
            r"names column \[position\] 2 times in its header: each column needs its own name",
        ),
        (
            lambda text: "",
            r"is empty or starts with an empty line: an atomic file's first line is its header",
        ),
        (
            lambda text: text.replace("\t", ","),
            r"header column 'user_id:token,item_id:token,.*' is not name:type .* It looks separated by ',': "
            r"write it with '\\t' between fields, or set field_separator: ','",
        ),
    ],
    ids=["duplicate column", "empty file", "comma separated"],
)
def test_a_malformed_header_names_the_file_and_what_is_wrong(make_config, editable_data, edit, message):
    """A duplicate column raised KeyError; an empty or comma-separated file suggested USER_ID_FIELD: ~."""
    from recbole_cstwa.data.checks import check_dataset_settings

    data_path, _ = editable_data
    path = f"{data_path}/{TINY}/{TINY}.train.inter"
    with open(path, encoding="utf-8") as file:
        text = file.read()
    with open(path, "w", encoding="utf-8") as file:
        file.write(edit(text))
    config = make_config("ESMM", data_path=data_path, cache_dataset=False)
    for read in (check_dataset_settings, create_dataset):  # the run's early check, and the reader
        with pytest.raises(DataFormatError, match=message) as error:
            read(config)
        assert str(error.value).startswith(f"[{path}]") and "USER_ID_FIELD" not in str(error.value)


def test_a_separator_of_several_characters_is_refused(make_config, editable_data):
    data_path, _ = editable_data
    with pytest.raises(DataFormatError, match=r"field_separator must be one character, got '::'"):
        _load(make_config, data_path, field_separator="::", cache_dataset=False)
