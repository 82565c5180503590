"""Tests of the Ali-CCP converter (``recbole_cstwa.tools.ali_ccp``).

The real sample (``tests/data/ali-ccp-sample``, torch-rechub's preprocessed rows, see its
SOURCE.txt) checks the csv mode; a small raw-format fixture written here by the format spec
checks AITM's preprocessing row by row, with expected outputs worked out by hand.
"""

import csv
import json
import os
import random

import pytest
from conftest import read_table

from recbole_cstwa.commands.convert_ali_ccp import main
from recbole_cstwa.errors import MalformedLineError
from recbole_cstwa.tools.ali_ccp import (
    AITM_MIN_COUNT,
    BAD_LABEL,
    FEATURE_NUM_MISMATCH,
    UNKNOWN_COMMON_INDEX,
    UNPARSABLE_FEATURE,
    WRONG_COLUMN_COUNT,
    convert_csv,
    convert_raw,
)

SAMPLE_DIR = os.path.join(os.path.dirname(__file__), "data", "ali-ccp-sample")
SAMPLE_FILES = {
    "train": os.path.join(SAMPLE_DIR, "ali_ccp_train_sample.csv"),
    "valid": os.path.join(SAMPLE_DIR, "ali_ccp_val_sample.csv"),
    "test": os.path.join(SAMPLE_DIR, "ali_ccp_test_sample.csv"),
}
INTER_HEADER = [
    "user_id:token",
    "item_id:token",
    "f301:token",
    "f508:token",
    "f509:token",
    "f702:token",
    "f853:token",
    "click:float",
    "purchase:float",
]
USER_HEADER = ["user_id:token"] + [f"f{code}:token" for code in (121, 122, 124, 125, 126, 127, 128, 129)]
ITEM_HEADER = ["item_id:token", "f206:token", "f207:token", "f216:token"]


def header_and_rows(path):
    """(header, rows) of a tab-separated atomic file."""
    lines = read_table(path)
    return lines[0], lines[1:]


def dataset_file(summary, suffix):
    name = os.path.basename(summary["output_dir"])
    return os.path.join(summary["output_dir"], f"{name}.{suffix}")


# ---------------------------------------------------------------------------------------------
# The real sample, csv mode


def test_sample_converts_with_exact_counts_and_headers(tmp_path):
    summary = convert_csv(
        SAMPLE_FILES["train"],
        SAMPLE_FILES["valid"],
        SAMPLE_FILES["test"],
        output=tmp_path,
        name="ali-ccp-sample",
        show_progress=False,
    )
    # The sample holds no click=0/purchase=1 row, so nothing is dropped: 100/50/50.
    assert summary["rows"] == {"train": 100, "valid": 50, "test": 50}
    assert summary["dropped_click0_purchase1"] == {"train": 0, "valid": 0, "test": 0}
    assert summary["skipped_malformed"] == {}

    user_header, users = header_and_rows(dataset_file(summary, "user"))
    item_header, items = header_and_rows(dataset_file(summary, "item"))
    assert user_header == USER_HEADER
    assert item_header == ITEM_HEADER
    user_ids = [row[0] for row in users]
    item_ids = [row[0] for row in items]
    assert len(set(user_ids)) == len(user_ids) and len(set(item_ids)) == len(item_ids)

    expected_items = set()
    for split, source in SAMPLE_FILES.items():
        with open(source, encoding="utf-8") as file:
            source_rows = list(csv.DictReader(file))
        expected_items.update(row["205"] for row in source_rows)
        header, rows = header_and_rows(dataset_file(summary, f"{split}.inter"))
        assert header == INTER_HEADER
        assert len(rows) == len(source_rows)
        for row, source_row in zip(rows, source_rows):
            assert row == [source_row[c] for c in ("101", "205", "301", "508", "509", "702", "853")] + [
                source_row["click"],
                source_row["purchase"],
            ]
            assert row[0] in user_ids and row[1] in item_ids
            assert row[7] in ("0", "1") and row[8] in ("0", "1")
    # One user block in the sample (all user columns constant); one row per distinct item.
    assert users == [["1", "1", "1", "1", "1", "0", "1", "1", "1"]]
    assert set(item_ids) == expected_items

    with open(dataset_file(summary, "meta.json"), encoding="utf-8") as file:
        meta = json.load(file)
    assert meta["rows"] == summary["rows"] and meta["users"] == 1 and meta["items"] == len(expected_items)


# RecBole 1.2.1's own chained fillna warns under pandas 2.3; not this converter's concern.
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_sample_keep_dense_writes_float_columns_and_recbole_reads_it(tmp_path):
    summary = convert_csv(
        SAMPLE_FILES["train"],
        SAMPLE_FILES["valid"],
        SAMPLE_FILES["test"],
        output=tmp_path,
        name="sample-dense",
        keep_dense=True,
        show_progress=False,
    )
    dense = ["D109_14", "D110_14", "D127_14", "D150_14", "D508", "D509", "D702", "D853"]
    header, rows = header_and_rows(dataset_file(summary, "train.inter"))
    assert header == INTER_HEADER + [f"{column}:float" for column in dense]
    assert rows[0][-8:] == [
        "0.4734",
        "0.562",
        "0.0856",
        "0.1902",
        "0.07556",
        "0.0",
        "0.0",
        "0.0",
    ]

    # The written yaml and files load through RecBole itself, split as written.
    from recbole.config import Config
    from recbole.data import create_dataset

    config = Config(
        model="LR",
        dataset="sample-dense",
        config_file_list=[dataset_file(summary, "yaml")],
        config_dict={
            "data_path": str(tmp_path),
            "LABEL_FIELD": "click",
            "state": "ERROR",
        },
    )
    assert config["benchmark_filename"] == ["train", "valid", "test"]
    assert config["numerical_features"] == dense
    dataset = create_dataset(config)
    assert dataset.file_size_list == [100, 50, 50]
    assert {"f121", "f206", "purchase", "D853"} <= set(dataset.field2type)


def test_csv_malformed_line_names_file_and_line(tmp_path):
    with open(SAMPLE_FILES["valid"], encoding="utf-8") as file:
        lines = file.read().splitlines()
    lines[3] = "2," + lines[3].split(",", 1)[1]  # line 4 (header is line 1): click label 2
    broken = tmp_path / "val_broken.csv"
    broken.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(MalformedLineError, match=r"val_broken\.csv, line 4: label not 0/1") as error:
        convert_csv(
            SAMPLE_FILES["train"],
            broken,
            SAMPLE_FILES["test"],
            output=tmp_path,
            show_progress=False,
        )
    assert error.value.line_number == 4
    assert not os.path.exists(tmp_path / "ali-ccp" / "ali-ccp.train.inter")  # nothing half-written

    summary = convert_csv(
        SAMPLE_FILES["train"],
        broken,
        SAMPLE_FILES["test"],
        output=tmp_path,
        skip_malformed=True,
        show_progress=False,
    )
    assert summary["rows"]["valid"] == 49
    assert summary["skipped_malformed"] == {str(broken): {BAD_LABEL: {"count": 1, "first_line": 4}}}


def test_csv_drops_purchases_without_click(tmp_path):
    with open(SAMPLE_FILES["test"], encoding="utf-8") as file:
        lines = file.read().splitlines()
    lines[1] = "0,1," + lines[1].split(",", 2)[2]  # first data row: click=0, purchase=1
    test_file = tmp_path / "test.csv"
    test_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = convert_csv(
        SAMPLE_FILES["train"],
        SAMPLE_FILES["valid"],
        test_file,
        output=tmp_path,
        show_progress=False,
    )
    assert summary["rows"]["test"] == 49
    assert summary["dropped_click0_purchase1"]["test"] == 1


def test_missing_input_file_is_named(tmp_path):
    missing = str(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match=r"--valid .*nope\.csv"):
        convert_csv(SAMPLE_FILES["train"], missing, SAMPLE_FILES["test"], output=tmp_path)
    assert (
        main(
            [
                "csv",
                "--train",
                SAMPLE_FILES["train"],
                "--valid",
                missing,
                "--test",
                missing,
            ]
        )
        == 2
    )


# ---------------------------------------------------------------------------------------------
# A raw-format fixture, built by the format spec


def feature_list(features):
    """``field\\x02id\\x03value`` joined by ``\\x01``; values are dropped by the converter."""
    return "\x01".join(f"{field}\x02{feature_id}\x031.0" for field, feature_id in features)


def skeleton_line(sample_id, click, conversion, block, features):
    return f"{sample_id},{click},{conversion},{block},{len(features)},{feature_list(features)}"


def common_line(block, features):
    return f"{block},{len(features)},{feature_list(features)}"


def user_block(user, profile_121, profile_124, scenario):
    """A common block: user id, profile (121 and 124 vary), scenario 301, a multi-valued field."""
    return [
        ("101", user),
        ("121", profile_121),
        ("122", "1221"),
        ("124", profile_124),
        ("125", "1251"),
        ("126", "1261"),
        ("127", "1271"),
        ("128", "1281"),
        ("129", "1291"),
        ("301", scenario),
        ("109_14", "10901"),  # multi-valued behaviour field: ignored
        ("109_14", "10902"),
        ("150_14", "15001"),
    ]


ITEMS = {  # item id -> (206 category, 207 shop, 216 brand)
    "5001": ("6001", "7001", "8001"),
    "5002": ("6001", "7002", "8002"),
    "5003": ("6003", "7001", "8001"),
    "5004": ("6001", "7004", "8002"),
    "5009": ("6001", "7009", "8009"),
}


def impression(item, cross_508=("50801",), with_853=True, extra=()):
    """Skeleton features of an impression of ``item`` (508 may repeat: the last id wins)."""
    category, shop, brand = ITEMS[item]
    features = [
        ("205", item),
        ("206", category),
        ("207", shop),
        ("210", "21001"),
        ("216", brand),
    ]
    features += [("508", value) for value in cross_508]
    features += [("509", "50901"), ("702", "70201")]
    if with_853:
        features.append(("853", "85301"))
    return features + list(extra)


TRAIN_COMMON = [
    common_line("c1", user_block("1001", "1211", "1241", "3011")),
    common_line("c2", user_block("1002", "1212", "1242", "3011")),
    common_line("c3", user_block("1001", "1211", "1241", "3012")),  # user 1001's second session
    common_line("c4", user_block("1003", "1213", "1241", "3012")),  # a user seen once: OOV
]
TRAIN_SKELETON = [
    skeleton_line("s1", 1, 0, "c1", impression("5001")),
    skeleton_line("s2", 0, 0, "c1", impression("5002")),
    skeleton_line("s3", 1, 1, "c2", impression("5001")),
    skeleton_line("s4", 0, 1, "c2", impression("5003")),  # purchase without click: dropped, not counted
    skeleton_line("s5", 0, 0, "c3", impression("5003")),  # 5003 and 6003 counted once: OOV
    skeleton_line("s6", 0, 0, "c4", impression("5001")),
    skeleton_line("s7", 1, 0, "c1", impression("5002", cross_508=("50801", "50802"))),  # last wins
    skeleton_line("s8", 0, 0, "c3", impression("5001", cross_508=("50802",))),
    skeleton_line("s9", 0, 0, "c1", impression("5001", extra=[("301", "3019")])),  # block's 3011 wins
    skeleton_line("s10", 1, 0, "c2", impression("5002", with_853=False)),  # absent field: OOV
    skeleton_line("s11", 0, 0, "c3", impression("5001")),
    skeleton_line("s12", 0, 0, "c1", impression("5002")),
    skeleton_line("s13", 1, 1, "c3", impression("5001")),
    skeleton_line("s14", 0, 0, "c2", impression("5001")),
    skeleton_line("s15", 0, 0, "c1", impression("5004")),  # 5004 and shop 7004 seen once: OOV
]
TEST_COMMON = [
    common_line("t1", user_block("1001", "1211", "1241", "3012")),
    common_line("t2", user_block("1009", "1219", "1242", "3013")),  # unseen user and scenario
]
TEST_SKELETON = [
    skeleton_line("u1", 1, 0, "t1", impression("5001")),
    skeleton_line("u2", 0, 1, "t2", impression("5002")),  # dropped
    skeleton_line("u3", 0, 0, "t2", impression("5009")),  # unseen item, shop and brand: OOV
    skeleton_line("u4", 1, 1, "t1", impression("5002")),
]

# Worked out by hand with min_count=2 over the 14 kept train rows (s4 dropped). Ids are written
# 1..n per field in order of first appearance, 0 = OOV:
#   101: 1001 -> 1 (10 rows), 1002 -> 2 (3), 1003 -> 0 (1)
#   121: 1211 -> 1, 1212 -> 2, 1213 -> 0; 124: 1241 -> 1, 1242 -> 2; 122,125-129 -> 1
#   205: 5001 -> 1 (8), 5002 -> 2 (4), 5003 -> 0 (1, s4 not counted), 5004 -> 0
#   206: 6001 -> 1, 6003 -> 0; 207: 7001 -> 1, 7002 -> 2, 7004 -> 0; 216: 8001 -> 1, 8002 -> 2
#   301: 3011 -> 1 (s9 too), 3012 -> 2; 508: 50801 -> 1, 50802 -> 2 (s7 and s8)
#   509, 702, 853: their single id -> 1 (853 absent in s10 -> an empty cell, shown as "-")
# Columns: user_id item_id f301 f508 f509 f702 f853 click purchase.
EXPECTED_TRAIN_ROWS = [
    "1 1 1 1 1 1 1 1 0",  # s1
    "1 2 1 1 1 1 1 0 0",  # s2
    "2 1 1 1 1 1 1 1 1",  # s3
    "1 0 2 1 1 1 1 0 0",  # s5
    "0 1 2 1 1 1 1 0 0",  # s6
    "1 2 1 2 1 1 1 1 0",  # s7
    "1 1 2 2 1 1 1 0 0",  # s8
    "1 1 1 1 1 1 1 0 0",  # s9
    "2 2 1 1 1 1 - 1 0",  # s10: 853 absent -> empty cell
    "1 1 2 1 1 1 1 0 0",  # s11
    "1 2 1 1 1 1 1 0 0",  # s12
    "1 1 2 1 1 1 1 1 1",  # s13
    "2 1 1 1 1 1 1 0 0",  # s14
    "1 0 1 1 1 1 1 0 0",  # s15
]
EXPECTED_TEST_ROWS = [
    "1 1 2 1 1 1 1 1 0",  # u1
    "0 0 0 1 1 1 1 0 0",  # u3
    "1 2 2 1 1 1 1 1 1",  # u4
]
EXPECTED_USERS = [  # the OOV user first, its profile all OOV
    "0 0 0 0 0 0 0 0 0",
    "1 1 1 1 1 1 1 1 1",
    "2 2 1 2 1 1 1 1 1",
]
EXPECTED_ITEMS = ["0 0 0 0", "1 1 1 1", "2 1 2 2"]


def write_raw(directory, train_skeleton=TRAIN_SKELETON, train_common=TRAIN_COMMON):
    """Writes the four raw files; returns their paths in ``convert_raw`` order."""
    paths = []
    for file_name, lines in (
        ("sample_skeleton_train.csv", train_skeleton),
        ("common_features_train.csv", train_common),
        ("sample_skeleton_test.csv", TEST_SKELETON),
        ("common_features_test.csv", TEST_COMMON),
    ):
        path = directory / file_name
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        paths.append(str(path))
    return paths


def rows_as_text(rows):
    """Rows as space-joined text; an empty cell (an absent field) shows as ``-``."""
    return [" ".join(cell or "-" for cell in row) for row in rows]


@pytest.mark.parametrize("seed", [2020, 7])
def test_raw_fixture_gives_exactly_the_hand_computed_rows(tmp_path, seed):
    valid_ratio = 0.3
    summary = convert_raw(
        *write_raw(tmp_path),
        output=tmp_path / "out",
        name="fixture",
        min_count=2,
        valid_ratio=valid_ratio,
        seed=seed,
        show_progress=False,
    )
    # AITM's split rule: one draw per kept train row in order, valid when >= 1 - ratio.
    draw = random.Random(seed).random
    goes_to_valid = [draw() >= 1 - valid_ratio for _ in EXPECTED_TRAIN_ROWS]
    assert 0 < sum(goes_to_valid) < len(goes_to_valid)  # both splits are exercised
    expected = {
        "train": [row for row, valid in zip(EXPECTED_TRAIN_ROWS, goes_to_valid) if not valid],
        "valid": [row for row, valid in zip(EXPECTED_TRAIN_ROWS, goes_to_valid) if valid],
        "test": EXPECTED_TEST_ROWS,
    }
    for split, expected_rows in expected.items():
        header, rows = header_and_rows(dataset_file(summary, f"{split}.inter"))
        assert header == INTER_HEADER
        assert rows_as_text(rows) == expected_rows, split
    header, users = header_and_rows(dataset_file(summary, "user"))
    assert header == USER_HEADER and rows_as_text(users) == EXPECTED_USERS
    header, items = header_and_rows(dataset_file(summary, "item"))
    assert header == ITEM_HEADER and rows_as_text(items) == EXPECTED_ITEMS

    assert summary["rows"] == {split: len(rows) for split, rows in expected.items()}
    assert summary["dropped_click0_purchase1"] == {"train_file": 1, "test_file": 1}
    assert summary["vocab_sizes"]["user_id"] == 3 and summary["vocab_sizes"]["item_id"] == 3
    assert summary["raw_vocab_sizes"]["item_id"] == 4  # 5001-5004; s4's 5003 is dropped, s5's counts
    assert summary["raw_vocab_sizes"]["f301"] == 2  # 3019 is overridden by the common block
    assert summary["profile_conflicts"] == {"user": 0, "item": 0}
    assert summary["oov_user_impressions"] == 2 and summary["oov_item_impressions"] == 3
    with open(dataset_file(summary, "yaml"), encoding="utf-8") as file:
        yaml_text = file.read()
    assert "benchmark_filename: [train, valid, test]" in yaml_text
    assert not [name for name in os.listdir(summary["output_dir"]) if name.endswith((".part", ".tmp"))]


def test_raw_default_min_count_is_aitms_twelve(tmp_path):
    assert AITM_MIN_COUNT == 12
    # 508's 50801 occurs exactly 12 times in the kept train rows (all but s7 and s8): AITM keeps
    # it ("counter > 10" from 0), a threshold of 13 does not. Users, items and 301 stay under 12.
    paths = write_raw(tmp_path)
    summary = convert_raw(*paths, output=tmp_path / "out", valid_ratio=0.0, show_progress=False)
    _, rows = header_and_rows(dataset_file(summary, "train.inter"))
    assert {tuple(row[:3]) for row in rows} == {("0", "0", "0")}
    assert [row[3] for row in rows] == ["1"] * 5 + ["0", "0"] + ["1"] * 7
    assert summary["rows"] == {"train": 14, "valid": 0, "test": 3}

    summary = convert_raw(
        *paths,
        output=tmp_path / "out",
        min_count=13,
        valid_ratio=0.0,
        show_progress=False,
    )
    _, rows = header_and_rows(dataset_file(summary, "train.inter"))
    assert {row[3] for row in rows} == {"0"}


def test_raw_keep_210_adds_the_item_intention_column(tmp_path):
    summary = convert_raw(
        *write_raw(tmp_path),
        output=tmp_path / "out",
        min_count=2,
        keep_210=True,
        show_progress=False,
    )
    header, items = header_and_rows(dataset_file(summary, "item"))
    assert header == ITEM_HEADER + ["f210:token"]
    assert rows_as_text(items) == [row + " " + ("0" if row[0] == "0" else "1") for row in EXPECTED_ITEMS]


MALFORMED_TRAIN_LINES = {  # reason -> a replacement for train skeleton line 3
    WRONG_COLUMN_COUNT: "s3,1,1,c2",
    FEATURE_NUM_MISMATCH: skeleton_line("s3", 1, 1, "c2", impression("5001")).replace(",9,", ",8,", 1),
    UNPARSABLE_FEATURE: "s3,1,1,c2,2,205\x025001\x031.0\x01206-6001",
    UNKNOWN_COMMON_INDEX: skeleton_line("s3", 1, 1, "c9", impression("5001")),
    BAD_LABEL: skeleton_line("s3", "yes", 1, "c2", impression("5001")),
}


@pytest.mark.parametrize("reason", sorted(MALFORMED_TRAIN_LINES))
def test_raw_malformed_line_is_reported_with_its_number_or_skipped(tmp_path, reason):
    skeleton = list(TRAIN_SKELETON)
    skeleton[2] = MALFORMED_TRAIN_LINES[reason]
    paths = write_raw(tmp_path, train_skeleton=skeleton)
    with pytest.raises(MalformedLineError) as error:
        convert_raw(*paths, output=tmp_path / "out", min_count=2, show_progress=False)
    assert str(error.value).startswith(f"{paths[0]}, line 3: {reason}")
    assert error.value.line_number == 3 and error.value.reason == reason
    assert not os.path.exists(tmp_path / "out" / "ali-ccp")  # no empty or partial output folder

    summary = convert_raw(
        *paths,
        output=tmp_path / "out",
        min_count=2,
        valid_ratio=0.0,
        skip_malformed=True,
        show_progress=False,
    )
    assert summary["skipped_malformed"] == {paths[0]: {reason: {"count": 1, "first_line": 3}}}
    assert summary["rows"]["train"] == len(EXPECTED_TRAIN_ROWS) - 1


def test_raw_malformed_common_line_is_reported_with_its_number(tmp_path):
    common = list(TRAIN_COMMON)
    common[1] = "c2,3," + feature_list([("101", "1002")])
    paths = write_raw(tmp_path, train_common=common)
    with pytest.raises(ValueError, match=r"common_features_train\.csv, line 2: feature_num mismatch"):
        convert_raw(*paths, output=tmp_path / "out", show_progress=False)
    # Skipping the block leaves its four impressions (s3 s4 s10 s14) naming an unknown block.
    summary = convert_raw(*paths, output=tmp_path / "out", skip_malformed=True, show_progress=False)
    assert summary["skipped_malformed"][paths[1]] == {FEATURE_NUM_MISMATCH: {"count": 1, "first_line": 2}}
    assert summary["skipped_malformed"][paths[0]] == {UNKNOWN_COMMON_INDEX: {"count": 4, "first_line": 3}}


def test_raw_split_is_deterministic_under_a_seed(tmp_path):
    # 400 impressions over the fixture's blocks and items.
    skeleton = [
        skeleton_line(
            f"r{i}",
            i % 2,
            0,
            ("c1", "c2", "c3")[i % 3],
            impression(("5001", "5002")[i % 2]),
        )
        for i in range(400)
    ]
    paths = write_raw(tmp_path, train_skeleton=skeleton)

    def split_files(seed, run):
        summary = convert_raw(
            *paths,
            output=tmp_path / run,
            min_count=2,
            seed=seed,
            valid_ratio=0.25,
            show_progress=False,
        )
        texts = []
        for split in ("train", "valid"):
            with open(dataset_file(summary, f"{split}.inter"), encoding="utf-8") as file:
                texts.append(file.read())
        return texts

    first, again, other_seed = (
        split_files(11, "a"),
        split_files(11, "b"),
        split_files(12, "c"),
    )
    assert first == again
    assert first != other_seed
    valid_rows = first[1].count("\n") - 1
    draw = random.Random(11).random
    assert valid_rows == sum(draw() >= 0.75 for _ in range(400))
    assert 60 < valid_rows < 140


def test_cli_raw_writes_the_dataset(tmp_path, capsys):
    paths = write_raw(tmp_path)
    arguments = ["raw", "--train-skeleton", paths[0], "--train-common", paths[1]]
    arguments += [
        "--test-skeleton",
        paths[2],
        "--test-common",
        paths[3],
        "--output",
        str(tmp_path / "cli"),
    ]
    arguments += [
        "--name",
        "cli",
        "--min-count",
        "2",
        "--valid-ratio",
        "0",
        "--no-progress",
    ]
    assert main(arguments) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == {"train": 14, "valid": 0, "test": 3}
    _, rows = header_and_rows(tmp_path / "cli" / "cli" / "cli.train.inter")
    assert rows_as_text(rows) == EXPECTED_TRAIN_ROWS


@pytest.mark.slow
@pytest.mark.parametrize("model", ["ESMM", "DeepFM"])
def test_converted_sample_trains_one_epoch(tmp_path, model):
    from recbole_cstwa.quick_start import run_recbole_cstwa

    output = tmp_path / "datasets"
    convert_csv(
        SAMPLE_FILES["train"],
        SAMPLE_FILES["valid"],
        SAMPLE_FILES["test"],
        output=str(output),
        name="ali-ccp-sample",
        show_progress=False,
    )
    label = {"LABEL_FIELD": "click"} if model == "DeepFM" else {}
    result = run_recbole_cstwa(
        model=model,
        dataset="ali-ccp-sample",
        config_file_list=[str(output / "ali-ccp-sample" / "ali-ccp-sample.yaml")],
        config_dict={
            "data_path": str(output),
            "epochs": 1,
            "show_progress": False,
            "state": "ERROR",
            "checkpoint_dir": str(tmp_path / "saved"),
            **label,
        },
    )
    task = "click" if label else "purchase"
    assert 0.0 <= result["test_result"][f"{task}_auc"] <= 1.0


def test_raw_non_utf8_line_names_file_and_line_or_is_skipped(tmp_path):
    paths = write_raw(tmp_path)
    with open(paths[0], "rb") as file:
        lines = file.read().split(b"\n")
    lines[4] = lines[4].replace(b"s5,", b"s\xff5,", 1)  # line 5: a byte that is not UTF-8
    with open(paths[0], "wb") as file:
        file.write(b"\n".join(lines))
    with pytest.raises(MalformedLineError) as error:
        convert_raw(*paths, output=tmp_path / "out", min_count=2, show_progress=False)
    assert str(error.value).startswith(f"{paths[0]}, line 5: not UTF-8 text")
    assert not os.path.exists(tmp_path / "out" / "ali-ccp")  # a failed run leaves no folder

    summary = convert_raw(
        *paths,
        output=tmp_path / "out",
        min_count=2,
        valid_ratio=0.0,
        skip_malformed=True,
        show_progress=False,
    )
    assert summary["skipped_malformed"] == {paths[0]: {"not UTF-8 text": {"count": 1, "first_line": 5}}}
    assert summary["rows"]["train"] == len(EXPECTED_TRAIN_ROWS) - 1


def test_cli_failure_leaves_no_output_folder(tmp_path, capsys):
    paths = write_raw(tmp_path, train_skeleton=TRAIN_SKELETON[:2] + ["s3,1,1,c2"] + TRAIN_SKELETON[3:])
    arguments = ["raw", "--train-skeleton", paths[0], "--train-common", paths[1], "--test-skeleton"]
    arguments += [paths[2], "--test-common", paths[3], "--output", str(tmp_path / "cli"), "--no-progress"]
    assert main(arguments) == 2
    assert "line 3: wrong column count" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "cli" / "ali-ccp")


# RecBole 1.2.1's own chained fillna warns under pandas 2.3; not this converter's concern.
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_absent_field_is_padding_and_rare_id_is_the_oov_token(tmp_path):
    """An absent field is not counted in Eq. 7's mean; a rare id is one learned OOV vector."""
    import numpy as np
    import torch
    from recbole.data.interaction import Interaction

    from recbole_cstwa.config import Config
    from recbole_cstwa.data import create_dataset
    from recbole_cstwa.model.layers import FieldEmbedding, group_fields, mean_of_present

    convert_raw(
        *write_raw(tmp_path),
        output=tmp_path / "out",
        name="fixture",
        min_count=2,
        valid_ratio=0.3,
        show_progress=False,
    )
    # The dataset's YAML (benchmark_filename, fields) is found by convention in its folder.
    config = Config(
        model="MLP",
        dataset="fixture",
        config_dict={
            "data_path": str(tmp_path / "out"),
            "state": "ERROR",
            "checkpoint_dir": str(tmp_path / "saved"),
        },
    )
    dataset = create_dataset(config)

    def column(field):
        return torch.as_tensor(np.asarray(dataset.inter_feat[field]))

    f853 = column("f853")
    # Only s10 lacks field 853: RecBole's padding id 0; every other row holds the token "1".
    absent = (f853 == 0).nonzero().flatten().tolist()
    assert len(absent) == 1
    assert set(dataset.field2id_token["f853"][f853[f853 != 0].numpy()].tolist()) == {"1"}
    # Rare or unseen ids are the field's OOV token "0": a real id (its own learned vector), not
    # padding; s5 (rare 5003), s15 (rare 5004) and u3 (unseen 5009) share it.
    oov_item = dataset.field2token_id["item_id"]["0"]
    assert oov_item != 0 and int((column("item_id") == oov_item).sum()) == 3

    groups = group_fields(dataset, config)
    embedding = FieldEmbedding(dataset, groups, embedding_size=4)
    context_fields = [field for field, _ in groups["context"]]
    present_row = 0 if absent[0] != 0 else 1
    rows = torch.tensor([present_row, absent[0]])
    batch = Interaction({field: column(field)[rows] for field in context_fields})
    vectors, present = embedding(batch, "context")
    at = context_fields.index("f853")
    assert present[0, at] and not present[1, at]
    # The context term of s10 is the mean of its other context fields' vectors.
    others = [i for i in range(len(context_fields)) if i != at]
    expected = vectors[1, others].mean(dim=0)
    assert torch.allclose(mean_of_present(vectors, present)[1], expected)
    assert not torch.allclose(vectors[1].mean(dim=0), expected)
