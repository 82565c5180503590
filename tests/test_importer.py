"""The generic importer (``recbole_cstwa.tools.importer``) on small AliExpress-like tables."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import read_table

from recbole_cstwa.commands.import_dataset import main
from recbole_cstwa.errors import InputFileError
from recbole_cstwa.tools.aliexpress_sample import HEADER, write_sample
from recbole_cstwa.tools.importer import StratifiedSplitter, format_summary, import_dataset

# AliExpress' schema (categorical_*, numerical_*, click, conversion) plus optional id columns.
COLUMNS = [
    "search_id",
    "user",
    "item",
    "categorical_1",
    "categorical_2",
    "numerical_1",
    "numerical_2",
    "age",
    "shop",
    "click",
    "conversion",
]
TRAIN = [
    "1,u1,i1,a,x,0.5,1.25,30,s1,1,0",
    "1,u2,i2,b,,0.1,2,40,s2,0,0",  # categorical_2 absent: an empty cell
    "2,u1,i2,a,y,0.0,3.5,30,s2,1,1",
    "2,u3,i1,c,x,1,,50,s1,0,1",  # purchase without click: dropped; numerical_2 missing
    "3,u2,i3,b,y,0.25,0,41,s3,1,0",  # u2's age differs from its first row: a profile conflict
]
VALID = ["4,u1,i3,a,x,0.2,1,30,s3,1,1", "4,u3,i1,c,y,0.3,1,50,s1,0,0"]
TEST = ["5,u2,i1,b,x,0.4,2,40,s1,1,1", "5,u4,i2,d,y,0.6,3,20,s2,1,0"]


def write_csv(path, rows, columns=COLUMNS, separator=","):
    path.write_text(
        separator.join(columns) + "\n" + "".join(row.replace(",", separator) + "\n" for row in rows)
    )
    return str(path)


def with_ids(tmp_path, **overrides):
    arguments = dict(
        output=tmp_path / "out",
        name="ae",
        click="click",
        purchase="conversion",
        train=write_csv(tmp_path / "train.csv", TRAIN),
        valid=write_csv(tmp_path / "valid.csv", VALID),
        test=write_csv(tmp_path / "test.csv", TEST),
        user_id="user",
        item_id="item",
        user_fields=["age"],
        item_fields=["shop"],
        context_fields=["categorical_*", "numerical_*"],
        numerical=["numerical_*", "age"],
    )
    arguments.update(overrides)
    return import_dataset(**arguments)


def test_split_files_with_ids_give_the_exact_rows_and_yaml(tmp_path):
    summary = with_ids(tmp_path)
    folder = tmp_path / "out" / "ae"
    header = [
        "user:token",
        "item:token",
        "categorical_1:token",
        "categorical_2:token",
        "numerical_1:float",
        "numerical_2:float",
        "click:float",
        "conversion:float",
    ]
    assert read_table(folder / "ae.train.inter") == [
        header,
        ["u1", "i1", "a", "x", "0.5", "1.25", "1", "0"],
        ["u2", "i2", "b", "", "0.1", "2", "0", "0"],
        ["u1", "i2", "a", "y", "0.0", "3.5", "1", "1"],
        ["u2", "i3", "b", "y", "0.25", "0", "1", "0"],
    ]
    assert read_table(folder / "ae.valid.inter")[1:] == [
        ["u1", "i3", "a", "x", "0.2", "1", "1", "1"],
        ["u3", "i1", "c", "y", "0.3", "1", "0", "0"],
    ]
    assert read_table(folder / "ae.test.inter")[1:] == [
        ["u2", "i1", "b", "x", "0.4", "2", "1", "1"],
        ["u4", "i2", "d", "y", "0.6", "3", "1", "0"],
    ]
    # One profile an id, the first seen (u3's first row was the dropped one: its valid row counts).
    assert read_table(folder / "ae.user") == [
        ["user:token", "age:float"],
        ["u1", "30"],
        ["u2", "40"],
        ["u3", "50"],
        ["u4", "20"],
    ]
    assert read_table(folder / "ae.item") == [
        ["item:token", "shop:token"],
        ["i1", "s1"],
        ["i2", "s2"],
        ["i3", "s3"],
    ]
    assert (folder / "ae.yaml").read_text() == (
        "# RecBole dataset settings for ae, written by recbole_cstwa.tools.importer.\n"
        "# Loaded by convention from <data_path>/ae/ae.yaml when a run names dataset ae.\n"
        'field_separator: "\\t"\n'
        "USER_ID_FIELD: user\n"
        "ITEM_ID_FIELD: item\n"
        "CLICK_FIELD: click\n"
        "PURCHASE_FIELD: conversion\n"
        "benchmark_filename: [train, valid, test]\n"
        "load_col:\n"
        "  inter: [user, item, categorical_1, categorical_2, numerical_1, numerical_2, click, conversion]\n"
        "  user: [user, age]\n"
        "  item: [item, shop]\n"
        "numerical_features: [numerical_1, numerical_2, age]\n"
    )
    assert summary["counts"] == {
        "train": {"rows": 4, "clicks": 3, "purchases": 1},
        "valid": {"rows": 2, "clicks": 1, "purchases": 1},
        "test": {"rows": 2, "clicks": 2, "purchases": 1},
    }
    assert summary["dropped_purchase_without_click"] == {"train": 1, "valid": 0, "test": 0}
    assert summary["profile_conflicts"] == {"user": 1, "item": 0}
    assert summary["columns"]["ignored"] == ["search_id"]


def test_without_ids_the_yaml_says_so_and_no_profile_files(tmp_path):
    with_ids(
        tmp_path,
        user_id=None,
        item_id=None,
        user_fields=[],
        item_fields=[],
        context_fields=["categorical_1,categorical_2", "numerical_*"],
        numerical=["numerical_*"],
    )
    folder = tmp_path / "out" / "ae"
    assert sorted(os.listdir(folder)) == [
        "ae.meta.json",
        "ae.test.inter",
        "ae.train.inter",
        "ae.valid.inter",
        "ae.yaml",
    ]
    assert read_table(folder / "ae.train.inter")[:2] == [
        [
            "categorical_1:token",
            "categorical_2:token",
            "numerical_1:float",
            "numerical_2:float",
            "click:float",
            "conversion:float",
        ],
        ["a", "x", "0.5", "1.25", "1", "0"],
    ]
    text = (folder / "ae.yaml").read_text()
    assert "USER_ID_FIELD: ~\nITEM_ID_FIELD: ~\n" in text and "  user:" not in text


def test_parquet_and_tsv_inputs_give_the_same_files(tmp_path):
    with_ids(tmp_path)
    tsv = {
        split: write_csv(tmp_path / f"{split}.tsv", rows, separator="\t")
        for split, rows in (("train", TRAIN), ("valid", VALID), ("test", TEST))
    }
    with_ids(tmp_path, output=tmp_path / "tsv", **tsv)
    parquet = {}
    for split, rows in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        values = list(zip(*[row.split(",") for row in rows]))
        table = pa.table({name: pa.array(column) for name, column in zip(COLUMNS, values)})
        table = table.set_column(COLUMNS.index("click"), "click", pa.array([int(v) for v in values[-2]]))
        parquet[split] = str(tmp_path / f"{split}.parquet")
        pq.write_table(table, parquet[split])
    with_ids(tmp_path, output=tmp_path / "pq", **parquet)
    for suffix in ("train.inter", "valid.inter", "test.inter", "user", "item", "yaml"):
        expected = (tmp_path / "out" / "ae" / f"ae.{suffix}").read_text()
        assert (tmp_path / "tsv" / "ae" / f"ae.{suffix}").read_text() == expected
        assert (tmp_path / "pq" / "ae" / f"ae.{suffix}").read_text() == expected


def stratified_rows():
    """40 rows: 10 purchases, 10 clicks without purchase, 20 neither, interleaved."""
    labels = ["1,1"] * 10 + ["1,0"] * 10 + ["0,0"] * 20
    order = [labels[i] for i in sorted(range(40), key=lambda i: (i * 7) % 40)]
    return [f"{i},u{i % 5},i{i % 3},c{i % 4},x,{i / 10},1,30,s1,{label}" for i, label in enumerate(order)]


def test_one_file_is_split_stratified_and_seeded(tmp_path):
    path = write_csv(tmp_path / "all.csv", stratified_rows())
    common = dict(
        name="one",
        click="click",
        purchase="conversion",
        input=path,
        context_fields=["categorical_*", "numerical_*"],
        numerical=["numerical_*"],
    )
    summary = import_dataset(output=tmp_path / "a", **common)
    # Blocks of 10 rows a stratum, 8/1/1 each: exact shares of purchases, clicks and the rest.
    assert summary["counts"] == {
        "train": {"rows": 32, "clicks": 16, "purchases": 8},
        "valid": {"rows": 4, "clicks": 2, "purchases": 1},
        "test": {"rows": 4, "clicks": 2, "purchases": 1},
    }
    again = import_dataset(output=tmp_path / "b", batch_rows=7, **common)  # other batches, same split
    other = import_dataset(output=tmp_path / "c", seed=1, **common)
    texts = {run: (tmp_path / run / "one" / "one.valid.inter").read_text() for run in "abc"}
    assert texts["a"] == texts["b"] and texts["a"] != texts["c"]
    assert again["counts"] == summary["counts"] and other["counts"] == summary["counts"]
    assert "benchmark_filename: [train, valid, test]" in (tmp_path / "a" / "one" / "one.yaml").read_text()


def test_splitter_blocks_hold_the_ratios_exactly():
    splitter = StratifiedSplitter([0.7, 0.15, 0.15], seed=3)
    assert splitter.block == 20
    strata = [0] * 45 + [2] * 40
    assigned = list(splitter.assign(__import__("numpy").array(strata[:30]))) + list(
        splitter.assign(__import__("numpy").array(strata[30:]))
    )
    purchases = [split for split, stratum in zip(assigned, strata) if stratum == 2]
    assert [purchases.count(s) for s in range(3)] == [28, 6, 6]


def test_too_few_purchases_for_the_split_is_refused(tmp_path):
    rows = [f"{i},u1,i1,a,x,0.1,1,30,s1,{i % 2},{int(i == 1)}" for i in range(20)]
    path = write_csv(tmp_path / "few.csv", rows)
    with pytest.raises(InputFileError, match="valid holds .* 0 purchases|test holds .* 0 purchases"):
        import_dataset(
            tmp_path / "out", "few", "click", "conversion", input=path, context_fields=["categorical_1"]
        )
    assert not os.path.exists(tmp_path / "out" / "few")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(purchase="purchase"), r"train\.csv: column \[purchase\] \(--purchase\) is not in the file"),
        (
            dict(context_fields=["categorical_*", "colour"]),
            r"train\.csv: --context-fields names \[colour\], which matches no column",
        ),
        (
            dict(user_fields=["age", "categorical_1"]),
            r"train\.csv: column \[categorical_1\] is in two groups",
        ),
        (dict(user_fields=["click"]), r"train\.csv: column \[click\] is both --click and a user field"),
        (dict(user_id=None), r"train\.csv: user fields \['age'\] need --user-id"),
        (
            dict(numerical=["shop_*"]),
            r"train\.csv: --numerical names \[shop_\*\], which matches no feature column",
        ),
    ],
)
def test_bad_arguments_give_one_line_errors_naming_file_and_column(tmp_path, change, message):
    with pytest.raises(InputFileError, match=message) as error:
        with_ids(tmp_path, **change)
    assert "\n" not in str(error.value)
    assert not os.path.exists(tmp_path / "out" / "ae")


@pytest.mark.parametrize(
    "row, message",
    [
        ("3,u2,i3,b,y,0.25,0,41,s3,2,0", r"train\.csv, line 6: label column \[click\] holds '2'"),
        ("3,u2,i3,b,y,0.25,0,41,s3,1,", r"train\.csv, line 6: label column \[conversion\] holds ''"),
        ("3,u2,i3,b,y,abc,0,41,s3,1,0", r"train\.csv, line 6: numerical column \[numerical_1\] holds 'abc'"),
        ('3,u2,i3,"b\tq",y,0.25,0,41,s3,1,0', r"train\.csv, line 6: column \[categorical_1\] holds a tab"),
    ],
)
def test_bad_values_give_one_line_errors_with_file_line_and_column(tmp_path, row, message):
    train = write_csv(tmp_path / "bad_train.csv", TRAIN[:4] + [row])
    with pytest.raises(InputFileError, match=message) as error:
        with_ids(tmp_path, train=train)
    assert "\n" not in str(error.value)
    assert not os.path.exists(tmp_path / "out" / "ae")


def test_a_file_lacking_a_column_of_the_first_is_named(tmp_path):
    test = write_csv(
        tmp_path / "bad_test.csv",
        [row.rsplit(",", 2)[0] + ",1" for row in TEST],
        columns=COLUMNS[:-2] + ["click"],
    )
    with pytest.raises(InputFileError, match=r"test\.csv: column \[conversion\] is missing"):
        with_ids(tmp_path, test=test)


def test_cli_prints_counts_and_errors(tmp_path, capsys):
    paths = write_sample(tmp_path / "raw", rows=3000, seed=5)
    arguments = [
        "--train",
        paths["train"],
        "--test",
        paths["test"],
        "--output",
        str(tmp_path / "data"),
        "--name",
        "aliexpress",
        "--click",
        "click",
        "--purchase",
        "conversion",
        "--context-fields",
        "categorical_*",
        "numerical_*",
        "--numerical",
        "numerical_*",
    ]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["split", "rows", "clicks", "purchases"]
    assert "ignored columns: [search_id]" in out and "context 79 (63 numerical)" in out
    assert main(arguments[:-2] + ["--numerical", "numeric_*"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert HEADER[1:3] == ["categorical_1", "categorical_2"]


def test_no_split_writes_one_inter_file_for_eval_args(tmp_path):
    path = write_csv(tmp_path / "all.csv", stratified_rows())
    summary = import_dataset(
        tmp_path / "out",
        "whole",
        "click",
        "conversion",
        input=path,
        split=False,
        user_id="user",
        item_id="item",
        context_fields=["categorical_1"],
    )
    folder = tmp_path / "out" / "whole"
    assert sorted(os.listdir(folder)) == [
        "whole.inter",
        "whole.item",
        "whole.meta.json",
        "whole.user",
        "whole.yaml",
    ]
    assert summary["counts"] == {"all": {"rows": 40, "clicks": 20, "purchases": 10}}
    assert "benchmark_filename: ~\n" in (folder / "whole.yaml").read_text()
    assert len(read_table(folder / "whole.inter")) == 41


def test_missing_value_strings_are_imported_and_read_as_tokens(tmp_path):
    """NA, null, None, ... in a category or id column are tokens through the importer and the
    run's reader; only an empty cell is the padding id."""
    from recbole_cstwa.config import Config
    from recbole_cstwa.data import create_dataset

    strings = ["NA", "null", "None", "N/A", "NaN", "nan", "#N/A"]
    rows = [
        f"1,u{i % 5},{'NA' if i % 4 == 0 else f'i{i % 7}'},{strings[i % 7]},x,0.5,1,30,s1,{i % 2},{int(i % 6 == 1)}"
        for i in range(60)
    ]
    cells = rows[3].split(",")
    rows[3] = ",".join(cells[:3] + [""] + cells[4:])  # the one empty cell
    train = write_csv(tmp_path / "na_train.csv", rows)
    valid = write_csv(tmp_path / "na_valid.csv", rows[20:40])
    test = write_csv(tmp_path / "na_test.csv", rows[40:])
    with_ids(
        tmp_path,
        train=train,
        valid=valid,
        test=test,
        user_fields=[],
        item_fields=[],
        numerical=["numerical_*"],
    )
    inter = read_table(tmp_path / "out" / "ae" / "ae.train.inter")
    written = {row[inter[0].index("categorical_1:token")] for row in inter[1:]}
    assert set(strings) <= written and "" in written  # as found in the input
    config = Config(
        model="MLP",
        dataset="ae",
        config_dict={
            "data_path": str(tmp_path / "out"),
            "state": "ERROR",
            "checkpoint_dir": str(tmp_path / "saved"),
            "cache_dataset": False,
        },
    )
    dataset = create_dataset(config)
    assert set(strings) <= set(dataset.field2id_token["categorical_1"])
    assert "NA" in dataset.field2token_id["item"]
    assert int((np.asarray(dataset.inter_feat["item"]) == 0).sum()) == 0


def test_a_repeated_column_name_is_refused(tmp_path):
    """The importer silently read the first of two columns with one name."""
    columns = COLUMNS[:4] + ["categorical_1"] + COLUMNS[5:]
    train = write_csv(tmp_path / "dup.csv", TRAIN, columns=columns)
    with pytest.raises(
        InputFileError, match=r"dup\.csv: column \[categorical_1\] appears 2 times in the header"
    ):
        with_ids(tmp_path, train=train)
    assert not os.path.exists(tmp_path / "out" / "ae")


@pytest.mark.parametrize("cell", ["NA", "nan", "inf", "-inf"])
def test_a_numerical_column_holds_finite_numbers_or_empty_cells(tmp_path, cell):
    train = write_csv(tmp_path / "bad_train.csv", TRAIN[:4] + [f"3,u2,i3,b,y,{cell},0,41,s3,1,0"])
    with pytest.raises(
        InputFileError, match=rf"line 6: numerical column \[numerical_1\] holds '{cell}', not a finite number"
    ):
        with_ids(tmp_path, train=train)


def test_a_reimport_keeps_the_users_own_files_subfolders_and_links(tmp_path, capsys):
    """Re-importing into an existing dataset folder deleted the user's own subfolders and
    symbolic links there (``notes/n.txt`` gone, no message): they are carried over as they
    were (links not followed) and the summary says so."""
    with_ids(tmp_path)
    folder = tmp_path / "out" / "ae"
    (folder / "notes").mkdir()
    (folder / "notes" / "n.txt").write_text("my notes\n")
    (folder / "notes" / "deeper").mkdir()
    (folder / "notes" / "deeper" / "d.txt").write_text("deeper\n")
    (folder / "README.mine").write_text("mine\n")
    outside = tmp_path / "outside.txt"
    outside.write_text("elsewhere\n")
    (folder / "linked.txt").symlink_to(outside)
    (folder / "notes" / "inner-link").symlink_to("n.txt")
    (folder / "dangling").symlink_to("no-such-file")
    before = (folder / "ae.train.inter").read_text()

    summary = with_ids(tmp_path)

    assert (folder / "ae.train.inter").read_text() == before
    assert (folder / "notes" / "n.txt").read_text() == "my notes\n"
    assert (folder / "notes" / "deeper" / "d.txt").read_text() == "deeper\n"
    assert (folder / "README.mine").read_text() == "mine\n"
    for link, target in (
        ("linked.txt", str(outside)),
        ("notes/inner-link", "n.txt"),
        ("dangling", "no-such-file"),
    ):
        assert os.path.islink(folder / link) and os.readlink(folder / link) == target, link
    assert outside.read_text() == "elsewhere\n"  # the link's target is not touched
    assert summary["kept"] == [
        "README.mine",
        "dangling -> no-such-file",
        f"linked.txt -> {outside}",
        "notes/",
    ]
    printed = format_summary(summary)
    assert "kept in the folder, as they were (not the importer's): README.mine, dangling" in printed
