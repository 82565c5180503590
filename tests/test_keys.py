"""Unknown keys: a key no one reads stops the run with one line and the closest known key, on the
command line, in a config file, in a params file and in a --variant; extra_keys lets one through."""

import ast
import os
import re
import sys

import pytest
from conftest import REPOSITORY, TINY, load_script, tiny_arguments, tiny_config

from recbole_cstwa.errors import UnknownSettingError
from recbole_cstwa.keys import closest, known_keys


def _only_error_line(capsys, stop):
    assert stop.value.code == 2
    captured = capsys.readouterr()
    lines = (captured.err + captured.out).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines  # no config dump before it
    return lines[0]


@pytest.mark.parametrize(
    "argument, given, meant",
    [
        ("--learning_rat=0.01", "--learning_rat", "--learning_rate"),
        ("--epoch=2", "--epoch", "--epochs"),
        ("--Embedding_Size=4", "--Embedding_Size", "--embedding_size"),
    ],
)
def test_command_line(monkeypatch, capsys, tiny_data_path, tmp_path, argument, given, meant):
    arguments = ["run_recbole_cstwa.py", "--model=MLP", argument, *tiny_arguments(tiny_data_path, tmp_path)]
    monkeypatch.setattr(sys, "argv", arguments)
    with pytest.raises(SystemExit) as stop:
        load_script("run_recbole_cstwa").main()
    line = _only_error_line(capsys, stop)
    assert line.startswith(f"error: command line: {given} is not a setting of RecBole or recbole-cstwa; ")
    assert f"did you mean {meant}?" in line and "extra_keys" in line
    assert not os.path.exists(tmp_path / "saved")  # stopped before any data was read or cached


def test_config_file(monkeypatch, capsys, tiny_data_path, tmp_path):
    settings = tmp_path / "mine.yaml"
    settings.write_text("learning_rate: 0.01\ntrain_batch_sise: 500\n")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "run_recbole_cstwa.py",
            "--model=ESMM",
            f"--config_files={settings}",
            *tiny_arguments(tiny_data_path, tmp_path),
        ],
    )
    with pytest.raises(SystemExit) as stop:
        load_script("run_recbole_cstwa").main()
    line = _only_error_line(capsys, stop)
    assert line.startswith(f"error: Config file [{settings}]: train_batch_sise is not a setting")
    assert "did you mean train_batch_size?" in line


def test_params_file(capsys, tiny_data_path, tmp_path):
    params_file = tmp_path / "space.hyper"
    params_file.write_text("learning_rate choice [0.01]\ntower_dropuot choice [0.1, 0.2]\n")
    with pytest.raises(SystemExit) as stop:
        load_script("run_hyper").main(
            ["--model=MLP", f"--params_file={params_file}", *tiny_arguments(tiny_data_path, tmp_path)]
        )
    line = _only_error_line(capsys, stop)
    assert line.startswith(f"error: params file [{params_file}]: tower_dropuot is not a setting")
    assert "did you mean tower_dropout?" in line


def test_hyper_fixed_settings_are_the_command_line(capsys, tiny_data_path, tmp_path):
    params_file = tmp_path / "space.hyper"
    params_file.write_text("learning_rate choice [0.01]\n")
    with pytest.raises(SystemExit) as stop:
        load_script("run_hyper").main(
            [
                "--model=MLP",
                f"--params_file={params_file}",
                "--epoch=1",
                *tiny_arguments(tiny_data_path, tmp_path),
            ]
        )
    assert "error: command line: --epoch is not a setting" in _only_error_line(capsys, stop)


def test_run_hyper_without_model_is_one_line(capsys, tmp_path):
    params_file = tmp_path / "space.hyper"
    params_file.write_text("learning_rate choice [0.01]\n")
    with pytest.raises(SystemExit) as stop:
        load_script("run_hyper").main([f"--params_file={params_file}"])
    assert _only_error_line(capsys, stop).startswith("error: model needs to be given")


def test_variant(capsys, tiny_data_path, tmp_path):
    with pytest.raises(SystemExit) as stop:
        load_script("run_compare").main(
            [
                "--models=MLP",
                "--variant",
                "SM=CSTWA:use_sm=True,use_cp=False,use_cee=False",
                f"--output_dir={tmp_path / 'compare'}",
                *[a for a in tiny_arguments(tiny_data_path, tmp_path) if not a.startswith("--dataset")],
                f"--dataset={TINY}",
            ]
        )
    line = _only_error_line(capsys, stop)
    assert line.startswith("error: --variant SM: use_cee is not a setting")
    assert "did you mean use_ce?" in line


def test_compare_fixed_settings_are_the_command_line(tiny_data_path, tmp_path):
    from recbole_cstwa.experiments.compare import make_plan

    overrides = {k: v for k, v in tiny_config(tiny_data_path, tmp_path).items() if k != "dataset"}
    with pytest.raises(
        UnknownSettingError, match="^command line: --stoping_step is not a setting.*stopping_step"
    ):
        make_plan(["MLP"], [1], dataset=TINY, overrides={**overrides, "stoping_step": 2})


def test_extra_keys_let_a_key_of_ones_own_through(make_config, tmp_path):
    config = make_config("MLP", my_key=3, extra_keys=["my_key"])
    assert config["my_key"] == 3
    settings = tmp_path / "mine.yaml"
    settings.write_text("extra_keys: [my_other_key]\nmy_other_key: 1\n")
    from recbole_cstwa.config import Config

    assert (
        Config(model="MLP", config_file_list=[str(settings)], config_dict={"state": "ERROR"})["my_other_key"]
        == 1
    )
    with pytest.raises(UnknownSettingError, match="^config_dict: my_key is not a setting"):
        make_config("MLP", my_key=3)
    with pytest.raises(ValueError, match="extra_keys must be a list of key names"):
        make_config("MLP", extra_keys=[3])


def test_a_dataset_yaml_key_is_known(tmp_path):
    from recbole_cstwa.config import Config
    from recbole_cstwa.tools.generator import generate

    generate(tmp_path / "data", name=TINY, n_impressions=1000, cvr=0.3, seed=1)
    (tmp_path / "data" / TINY / f"{TINY}.yaml").write_text(
        "benchmark_filename: [train, valid, test]\nmy_field_note: 1\n"
    )
    config = Config(
        model="MLP",
        config_dict={
            "dataset": TINY,
            "data_path": str(tmp_path / "data"),
            "state": "ERROR",
            "my_field_note": 2,
        },
    )
    assert config["my_field_note"] == 2


def test_closest():
    known = known_keys()
    assert closest("learning_rat", known) == "learning_rate"
    assert closest("epoch", known) == "epochs"
    assert closest("LEARNING_RATE", known) == "learning_rate"
    assert closest("zzzzzzzzzzzz", known) is None


def _plugin_config_reads():
    """Every ``config["key"]`` / ``config.get("key")`` written in the plugin's code."""
    reads = set()
    for folder, _, files in os.walk(os.path.join(REPOSITORY, "recbole_cstwa")):
        for name in files:
            if not name.endswith(".py"):
                continue
            with open(os.path.join(folder, name), encoding="utf-8") as file:
                tree = ast.parse(file.read())
            for node in ast.walk(tree):
                target = None
                if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                    target, key = node.value, node.slice.value
                elif (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "get"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    target, key = node.func.value, node.args[0].value
                if target is None or not isinstance(key, str):
                    continue
                text = ast.unparse(target)
                if re.search(r"(^|\.|_)config(_dict)?$", text) and text != "self.external_config_dict":
                    reads.add(key)
    return reads


def test_every_key_the_plugin_reads_is_known():
    """A key read in code but missing from the YAML files, the table and keys.CODE_KEYS would be
    refused as unknown when a user sets it."""
    reads = _plugin_config_reads()
    assert {"CLICK_FIELD", "embedding_update", "sm_lambda"} <= reads  # the scan finds reads
    assert reads - known_keys() == set()
