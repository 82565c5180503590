"""Values are read as data, never evaluated and never refused for looking like code: paths stay
the strings written, numbers stay numbers, YAML's implicit types (dates, 1:30, yes) do not apply,
and every entry point (command line, config file, params file, --variant, config_dict) reads a
value the same way."""

import datetime
import os
import random
import sys

import pytest
import yaml

from recbole_cstwa.config import Config
from recbole_cstwa.experiments.compare import parse_variant
from recbole_cstwa.experiments.hyper import parse_params
from recbole_cstwa.values import SettingsYamlLoader, parse_literal

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def trainer_checkpoint_names(count_a_day=3, seed=0):
    """Names as the trainer writes them, ``<Model>-<Mon>-<DD>-<YYYY>_<HH>-<MM>-<SS>-<pid>-<6 hex>.pth``
    (RecBole's ``get_local_time`` and the trainer's suffix), for every day of 2026."""
    rng = random.Random(seed)
    day = datetime.date(2026, 1, 1)
    names = []
    while day.year == 2026:
        for _ in range(count_a_day):
            model = rng.choice(("MLP", "CSTWA", "ESMM", "DeepFM", "WideDeep"))
            clock = f"{rng.randrange(24):02d}-{rng.randrange(60):02d}-{rng.randrange(60):02d}"
            pid = rng.choice((1, 42, 999, 31492, 4194304, rng.randrange(1, 4194304)))
            suffix = f"{rng.getrandbits(24):06x}"
            names.append(
                f"{model}-{MONTHS[day.month - 1]}-{day.day:02d}-{day.year}_{clock}-{pid}-{suffix}.pth"
            )
        day += datetime.timedelta(days=1)
    return names


def command_line_values(monkeypatch, *arguments):
    """What the plugin's Config reads from ``--key=value`` arguments (its ``_load_cmd_line``)."""
    monkeypatch.setattr(sys, "argv", ["run_recbole_cstwa.py", *arguments])
    return Config.__new__(Config)._load_cmd_line()


def test_every_checkpoint_name_the_trainer_writes_comes_back_as_the_same_string(monkeypatch):
    """One name in five was refused as "Python code" (a day 10-31 and a hex suffix starting
    with a letter: ``saved/MLP-Dec-10-2026_16-21-52-31492-ebce0d.pth``)."""
    names = trainer_checkpoint_names()
    assert "saved/MLP-Dec-10-2026_16-21-52-31492-ebce0d.pth" not in names  # added below, as reported
    names.append("MLP-Dec-10-2026_16-21-52-31492-ebce0d.pth")
    for name in names:
        for path in (name, f"saved/{name}", f"./saved.v2/{name}"):
            read = command_line_values(monkeypatch, f"--model_file={path}", f"--resume={path}")
            assert read == {"model_file": path, "resume": path}
            assert parse_literal(path, "config_dict, note") == path  # any key, not only the path keys


@pytest.mark.parametrize(
    "text",
    [
        "best.pth",
        "a.yaml",
        "my.data",
        "data.v2",
        "saved.v2",
        "../x/y-z.pth",
        "/abs/path/with.dots/and-dashes.pth",
        "~/saved",
        "~user/saved",
        "données/été.pth",
        "模型/检查点.pth",
        "a-b_c.d/e",
        "2026-12-10",
        "1:30",
        "yes",
        "off",
        "1/0",
        "__import__('os')",
        "open('x').write('y')",
        "{1, 2}",  # a Python set: RecBole's rule keeps the text
        "[0,inf)",  # RecBole's interval syntax (user_inter_num_interval)
        "[a, b",
    ],
)
def test_text_is_the_string_as_written(monkeypatch, text):
    assert parse_literal(text, "--note") == text
    assert command_line_values(monkeypatch, f"--note={text}") == {"note": text}


@pytest.mark.parametrize(
    "text, value",
    [
        ("1", 1),
        ("-2", -2),
        ("+3", 3),
        ("1e-3", 0.001),
        ("0.5", 0.5),
        (".5", 0.5),
        ("1_000", 1000),
        ("1e999", float("inf")),
        ("True", True),
        ("true", True),
        ("TRUE", True),
        ("fAlSe", False),
        ("None", None),
        ("~", None),
        ("null", None),
        ("'quoted text'", "quoted text"),
        ("[1, 2]", [1, 2]),
        ("(1, 2)", [1, 2]),
        ("[adam, sgd]", ["adam", "sgd"]),
        ("{'max_norm': 5}", {"max_norm": 5}),
        ("{split: {RS: [0.8, 0.1, 0.1]}}", {"split": {"RS": [0.8, 0.1, 0.1]}}),
        # YAML's implicit types do not apply inside flow collections either
        ("[2026-12-10, 1:30, yes, no, on, off]", ["2026-12-10", "1:30", "yes", "no", "on", "off"]),
        (
            "{day: 2026-12-10, n: 1e-3, flag: TRUE, none: ~}",
            {"day": "2026-12-10", "n": 0.001, "flag": True, "none": None},
        ),
        ("[best.pth, 'a b', 007]", ["best.pth", "a b", "007"]),
    ],
)
def test_numbers_booleans_none_lists_and_dicts_are_data(text, value):
    assert parse_literal(text, "--x") == value
    assert type(parse_literal(text, "--x")) is type(value)


def test_a_folder_or_name_setting_keeps_its_text(monkeypatch):
    read = command_line_values(
        monkeypatch, "--dataset=2024", "--checkpoint_dir=1e3", "--data_path='data'", "--dataset_cache_dir=~"
    )
    assert read == {
        "dataset": "2024",
        "checkpoint_dir": "1e3",
        "data_path": "data",
        "dataset_cache_dir": None,
    }
    loaded = yaml.load(
        "dataset: 2024\ncheckpoint_dir: 007\ndataset_cache_dir: ~\n", Loader=SettingsYamlLoader
    )
    assert loaded == {"dataset": "2024", "checkpoint_dir": "007", "dataset_cache_dir": None}


VALUES = [
    "best.pth",
    "2026-12-10",
    "1:30",
    "yes",
    "1e-3",
    "TRUE",
    "~",
    "[a, 2026-12-10, 1e-3]",
    "{k: v}",
    "1/0",
]


@pytest.mark.parametrize("text", VALUES)
def test_every_entry_point_reads_a_value_the_same_way(monkeypatch, tmp_path, text):
    expected = parse_literal(text, "--note")
    assert command_line_values(monkeypatch, f"--note={text}") == {"note": expected}
    assert yaml.load(f"note: {text}\n", Loader=SettingsYamlLoader) == {"note": expected}
    assert parse_variant(f"v=MLP:note={text}").overrides == {"note": expected}
    (param,) = parse_params([f"note choice [{text}]"])
    assert param.values == (expected,)
    monkeypatch.setattr(sys, "argv", ["pytest"])
    config_file = tmp_path / "note.yaml"
    config_file.write_text(f"extra_keys: [note, other]\nnote: {text}\n")
    config = Config(
        model="MLP", config_file_list=[str(config_file)], config_dict={"state": "ERROR", "other": text}
    )
    assert config["note"] == expected and config["other"] == expected


def test_a_config_dict_string_read_as_text_stays_exactly_as_given(make_config):
    config = make_config("MLP", seq_separator=" ", field_separator="\t")
    assert config["seq_separator"] == " " and config["field_separator"] == "\t"


def test_the_reported_paths_reach_the_config_as_written(monkeypatch, tmp_path):
    """Each stopped with `error: ... is Python code`."""
    (tmp_path / "a.yaml").write_text("learning_rate: 0.01\n")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "run_recbole_cstwa.py",
            "--model=MLP",
            "--dataset=my.data",
            "--data_path=data.v2",
            "--checkpoint_dir=saved.v2",
            "--config_files=a.yaml",
            "--model_file=best.pth",
            "--resume=saved/MLP-Dec-10-2026_16-21-52-31492-ebce0d.pth",
        ],
    )
    config = Config(config_file_list=["a.yaml"], config_dict={"state": "ERROR"})
    assert (config["dataset"], config["checkpoint_dir"], config["config_files"]) == (
        "my.data",
        "saved.v2",
        "a.yaml",
    )
    assert config["data_path"] == os.path.join("data.v2", "my.data")  # RecBole joins the dataset's folder
    assert config["model_file"] == "best.pth" and config["learning_rate"] == 0.01
    assert config["resume"] == "saved/MLP-Dec-10-2026_16-21-52-31492-ebce0d.pth"
