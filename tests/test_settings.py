"""The settings table and the bad-input messages: one line naming the key or file and the fix."""

import logging
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPOSITORY, load_script, tiny_arguments

from recbole_cstwa.checkpoint import check_writable_directory
from recbole_cstwa.commands.cli import INPUT_ERROR_STATUS
from recbole_cstwa.data import create_dataset, data_preparation
from recbole_cstwa.errors import ConfigError, DataFormatError, InputError
from recbole_cstwa.model.multitask.cstwa.artifact_cache import CHECKSUMS, tensor_checksums
from recbole_cstwa.registry import plugin_model_names
from recbole_cstwa.setting_checks import (
    ANY_MODEL,
    MULTITASK,
    NO_DEFAULT,
    Setting,
    applies,
    check_value,
    default_source,
    default_value,
    defining_file,
    line_comments,
    parse_setting_comment,
    requirement,
)
from recbole_cstwa.settings import SETTINGS


# ----- the table -----------------------------------------------------------------------------------
def test_every_setting_has_its_default_in_the_yaml_files():
    """Defaults are written once, in properties/; the value a message proposes as the fix
    (default_value) is the value the config really holds by default, for every model reading it."""
    from recbole_cstwa.config import Config

    configs = {}
    for spec in SETTINGS:
        models = [m for m in spec.models if m not in (ANY_MODEL, MULTITASK)] or ["MLP", "DeepFM"]
        for model in models:
            if model not in configs:
                overrides = {"LABEL_FIELD": "click"} if model == "DeepFM" else {}
                configs[model] = Config(model=model, config_dict={"state": "ERROR", **overrides})
            default = default_value(spec.key, model)
            assert default is not NO_DEFAULT, (spec.key, model)
            assert configs[model][spec.key] == default, (spec.key, model)


def test_a_row_written_with_its_default_is_refused():
    """Rows are Setting(key, kind, models=..., ...): a default or a source in the row fails at import."""
    with pytest.raises(TypeError, match="multiple values for argument 'models'"):
        Setting("my_size", "int", 8, "my source", models=("MyModel",), low=1)
    with pytest.raises(TypeError, match="the default goes in properties/"):
        Setting("my_size", "int", 8, "my source")


def test_every_model_yaml_key_is_in_the_table():
    import yaml

    from recbole_cstwa.setting_checks import properties_dir

    described = {spec.key for spec in SETTINGS}
    for model in plugin_model_names():
        path = os.path.join(properties_dir(), "model", f"{model}.yaml")
        if os.path.isfile(path):
            keys = set(yaml.safe_load(open(path, encoding="utf-8")) or {})
            assert keys <= described, (model, keys - described)


#: The ``(type)`` a setting's YAML comment gives, by the table's kind.
YAML_TYPES = {"int": "int", "number": "float", "bool": "bool", "choice": "str", "int_list": "list"}
YAML_TYPES["number_list"] = "list"


def test_every_setting_has_its_yaml_line_with_meaning_and_source():
    """Each setting is described once: the line of properties/ that sets its default, for every
    model reading it, says ``key: default  # (type) meaning: source``; the table does not repeat
    the source."""
    from recbole_cstwa.registry import get_model, is_multitask_model
    from recbole_cstwa.setting_checks import properties_dir

    root = properties_dir()
    checked = 0
    for model in [*plugin_model_names(), "DeepFM"]:
        multitask = is_multitask_model(get_model(model))
        for spec in SETTINGS:
            if not applies(spec.models, model, multitask):
                continue
            path = defining_file(spec.key, model)
            assert path is not None and path.startswith(root), (spec.key, model, path)
            parsed = parse_setting_comment(line_comments(path).get(spec.key))
            assert parsed is not None, f"{path}: {spec.key} needs '# (type) meaning: source'"
            kind, meaning, source = parsed
            assert kind == YAML_TYPES[spec.kind] and meaning and source, (spec.key, model, parsed)
            assert default_source(spec.key, model) == source
            checked += 1
    assert checked > len(SETTINGS)
    assert not any(hasattr(spec, "source") for spec in SETTINGS)


def test_the_fix_names_the_source_written_on_the_default_s_line(tmp_path, monkeypatch):
    import shutil

    from recbole_cstwa import setting_checks

    copy = tmp_path / "properties"
    shutil.copytree(setting_checks.properties_dir(), copy)
    overall = copy / "overall.yaml"
    text = overall.read_text(encoding="utf-8")
    line = "tower_dropout: [0.1, 0.3, 0.3]     # (list) dropout after each tower layer: the CSTWA paper, Section 4.1.4"
    assert line in text
    seed_line = next(row for row in text.splitlines(keepends=True) if row.startswith("seed:"))
    text = text.replace(line, "tower_dropout: [0.2, 0.2, 0.2]  # (list) dropout: my own runs")
    overall.write_text(text.replace(seed_line, ""))
    (copy / "model" / "AITM.yaml").write_text("tower_dropout: [0.5, 0.5, 0.5]\n")
    monkeypatch.setattr(setting_checks, "properties_dir", lambda: str(copy))
    spec = {row.key: row for row in SETTINGS}["tower_dropout"]
    with pytest.raises(ConfigError) as error:
        check_value(spec, [1.5], "MLP")
    assert str(error.value).endswith(
        "Fix: --tower_dropout=[0.2,0.2,0.2] (my own runs) or another such value."
    )
    with pytest.raises(ConfigError) as error:  # a line without a comment: the default alone
        check_value(spec, [1.5], "AITM")
    assert str(error.value).endswith("Fix: --tower_dropout=[0.5,0.5,0.5] or another such value.")
    with pytest.raises(ConfigError) as error:  # set by RecBole's overall.yaml only
        check_value({row.key: row for row in SETTINGS}["seed"], -1, "MLP")
    assert str(error.value).endswith("Fix: --seed=2020 (RecBole's default) or another such value.")


def test_yaml_comments_are_read_line_by_line(tmp_path):
    path = tmp_path / "defaults.yaml"
    path.write_text(
        "# a file comment: not a setting\n"
        "plain: 1  # (int) a number: the source, with: a colon\n"
        "quoted: 'a # b'  # (str) text with a hash: quoted\n"
        'double: "x#y"\n'
        "glued: a#b\n"
        "nested:\n"
        "  inner: 2  # (int) nested: not top level\n"
        "flow: {'RS': [0.8, 0.1]}  # (str) a mapping: RecBole\n"
        "twice: 1  # (int) first: old\n"
        "twice: 2  # (int) second: new\n"
        "bare: 3  # no type or source\n"
    )
    comments = line_comments(str(path))
    assert comments == {
        "plain": "(int) a number: the source, with: a colon",
        "quoted": "(str) text with a hash: quoted",
        "flow": "(str) a mapping: RecBole",
        "twice": "(int) second: new",
        "bare": "no type or source",
    }
    assert parse_setting_comment(comments["plain"]) == ("int", "a number", "the source, with: a colon")
    assert parse_setting_comment(comments["bare"]) is None
    assert parse_setting_comment("(int) no source") is None and parse_setting_comment(None) is None


def test_requirement_words():
    by_key = {spec.key: spec for spec in SETTINGS}
    assert requirement(by_key["epochs"]) == "an integer >= 1"
    # sizes that allocate memory have an upper bound, with its reason (a checkpoint's settings too)
    assert requirement(by_key["embedding_size"]).startswith("an integer in [1, 4096] (far above the papers")
    assert requirement(by_key["sm_lambda"]) == "a number in [0, 1]"
    assert requirement(by_key["learning_rate"]) == "a number > 0"
    assert requirement(by_key["loss_weights"]) == "a list of 3 numbers >= 0"


# ----- bad settings, checked when the config is built ------------------------------------------
BAD_SETTINGS = [
    (
        "MLP",
        {"embedding_size": 0},
        "embedding_size must be an integer in [1, 4096] (far above the papers' 5 to 64; larger only allocates memory), got 0. Fix: --embedding_size=5 (the CSTWA paper, "
        "Section 4.1.4) or another such value.",
    ),
    (
        "MLP",
        {"tower_dropout": [1.5, 0.3, 0.3]},
        "tower_dropout must be a list of numbers in [0, 1) (or one such number), got [1.5, 0.3, 0.3]. "
        "Fix: --tower_dropout=[0.1,0.3,0.3] (the CSTWA paper, Section 4.1.4) or another such value.",
    ),
    (
        "DeepFM",
        {"learning_rate": -1, "LABEL_FIELD": "click"},
        "learning_rate must be a number > 0, got -1. Fix: --learning_rate=0.001 (the CSTWA paper, "
        "Section 4.1.4) or another such value.",
    ),
    (
        "MLP",
        {"tower_hidden_size": [128, 0, 32]},
        "tower_hidden_size must be a list of integers in [1, 65536] (far above the papers' 16 to 512; larger only allocates memory)",
    ),
    # sizes that allocate memory stop at a generous bound instead of allocating until killed
    ("MLP", {"embedding_size": 10**9}, "embedding_size must be an integer in [1, 4096] (far above the"),
    (
        "MLP",
        {"tower_hidden_size": [128, 10**9, 32]},
        "tower_hidden_size must be a list of integers in [1, 65536]",
    ),
    ("MLP", {"eval_batch_size": 10**12}, "eval_batch_size must be an integer in [1, 16777216]"),
    ("MMoE", {"num_experts": 10**6}, "num_experts must be an integer in [1, 1024] (far above the papers' 8"),
    ("PLE", {"ple_shared_experts": 10**6}, "ple_shared_experts must be an integer in [0, 1024]"),
    ("MLP", {"tower_hidden_size": [128, 64]}, "tower_dropout [0.1, 0.3, 0.3] needs one value per layer"),
    ("MLP", {"context_pooling": "sum"}, "context_pooling must be one of 'mean', 'concat', got 'sum'"),
    ("MLP", {"learner": "adamax"}, "learner must be one of 'adam', 'adamw', 'sgd'"),
    ("MLP", {"epochs": 0}, "epochs must be an integer >= 1, got 0"),
    (
        "MLP",
        {"train_batch_size": 2.5},
        "train_batch_size must be an integer in [1, 16777216] (far above the defaults' 2,000 and 4,096; larger only allocates memory), got 2.5",
    ),
    ("MLP", {"invalid_purchase": "keep"}, "invalid_purchase must be one of 'drop', 'error'"),
    ("CSTWA", {"sm_lambda": 1.5}, "sm_lambda must be a number in [0, 1], got 1.5. Fix: --sm_lambda=0.3"),
    ("CSTWA", {"sm_mode": "step"}, "sm_mode must be one of 'epoch', 'batch', 'update', got 'step'"),
    (
        "CSTWA",
        {"sm_layers": 0},
        "sm_layers must be an integer in [1, 64] (far above the papers' 1 to 3; larger only allocates memory), got 0",
    ),
    ("CSTWA", {"graph_top_k": 0}, "graph_top_k must be an integer >= 1, got 0. Fix: --graph_top_k=8"),
    (
        "CSTWA",
        {"graph_index": "annoy"},
        "graph_index must be one of 'auto', 'exact', 'ivf', 'hnsw', got 'annoy'",
    ),
    ("CSTWA", {"graph_nprobe": 0}, "graph_nprobe must be an integer >= 1, got 0"),
    (
        "CSTWA",
        {"graph_index": "hnsw", "graph_top_k": 64},
        "graph_hnsw_ef_search (64) must be at least graph_top_k + 1 (65)",
    ),
    ("CSTWA", {"use_sm": 1}, "use_sm must be True or False, got 1"),
    ("CSTWA", {"ce_low_percentile": 99}, "ce_low_percentile (99) must be below ce_high_percentile (99)"),
    ("CSTWA", {"ce_max_weight": 0.5}, "ce_max_weight must be a number >= 1, got 0.5"),
    (
        "CSTWA",
        {"loss_weights": [1, -1, 0.6]},
        "loss_weights must be a list of 3 numbers >= 0, got [1, -1, 0.6]",
    ),
    ("CSTWA", {"loss_weights": [1, 1]}, "loss_weights must be a list of 3 numbers >= 0"),
    (
        "CSTWA",
        {"info_hidden_size": [0]},
        "info_hidden_size must be a list of integers in [1, 65536] (or empty) (far above the papers' 16 to 512; larger only allocates memory)",
    ),
    ("CSTWA", {"pretrain_learning_rate": 0}, "pretrain_learning_rate must be a number > 0, got 0"),
    ("AITM", {"aitm_l2": -1}, "aitm_l2 must be a number >= 0, got -1"),
    ("ESCM2", {"escm2_mode": "ipw"}, "escm2_mode must be one of 'ips', 'dr', got 'ipw'"),
    ("ESCM2", {"escm2_backbone": "ple"}, "escm2_backbone must be one of 'mlp', 'mmoe'"),
    ("ESCM2", {"escm2_max_weight": 0}, "escm2_max_weight must be a number > 0, got 0"),
    (
        "MMoE",
        {"num_experts": 0},
        "num_experts must be an integer in [1, 1024] (far above the papers' 8; larger only allocates memory), got 0",
    ),
    (
        "PLE",
        {"ple_num_levels": 0},
        "ple_num_levels must be an integer in [1, 64] (far above the papers' 1 to 3; larger only allocates memory), got 0",
    ),
    (
        "PLE",
        {"ple_shared_experts": 0, "ple_specific_experts": 0},
        "ple_shared_experts + ple_specific_experts",
    ),
    # RecBole's training settings the plugin passes through
    (
        "MLP",
        {"clip_grad_norm": {"max_norm": -5}},
        "clip_grad_norm max_norm must be a finite number > 0, got -5",
    ),
    (
        "MLP",
        {"clip_grad_norm": {"max_norm": 0}},
        "clip_grad_norm max_norm must be a finite number > 0, got 0",
    ),
    ("MLP", {"clip_grad_norm": {"norm": 5}}, "clip_grad_norm must be ~ or a dict with max_norm"),
    ("MLP", {"clip_grad_norm": 5}, "clip_grad_norm must be ~ or a dict with max_norm"),
    (
        "MLP",
        {"clip_grad_norm": {"max_norm": 5, "norm_type": -1}},
        "clip_grad_norm norm_type must be a number > 0",
    ),
    ("MLP", {"stopping_step": -1}, "stopping_step must be an integer >= 1"),
    ("MLP", {"stopping_step": 2.5}, "stopping_step must be an integer >= 1"),
    ("MLP", {"eval_step": -1}, "eval_step must be an integer >= 0"),
    ("MLP", {"seed": 1.5}, "seed must be an integer in [0, 4294967295] (numpy's seed range), got 1.5"),
    ("MLP", {"seed": -3}, "seed must be an integer in [0, 4294967295]"),
    ("MLP", {"seed": "abc"}, "seed must be an integer in [0, 4294967295] (numpy's seed range), got 'abc'"),
    ("MLP", {"learning_rate": float("inf")}, "learning_rate must be a number > 0, got inf"),
    ("MLP", {"learning_rate": float("nan")}, "learning_rate must be a number > 0, got nan"),
]


@pytest.mark.parametrize("model, settings, message", BAD_SETTINGS)
def test_a_bad_setting_is_one_line_naming_key_value_and_fix(make_config, model, settings, message):
    with pytest.raises(ConfigError) as error:
        make_config(model, **settings)
    text = str(error.value)
    assert text.startswith(message) and "\n" not in text
    assert "Fix:" in text


def test_settings_a_model_does_not_read_are_not_checked(make_config):
    make_config("MLP", sm_lambda=7)  # CSTWA's setting: MLP ignores it
    make_config("CSTWA", use_sm=False, graph_top_k=0)  # the graphs are not built without use_sm
    make_config("DeepFM", LABEL_FIELD="click", tower_dropout=[2.0])  # RecBole's models have no towers


def test_values_are_normalised(make_config):
    config = make_config("ESCM2", escm2_mode="IPS")
    assert config["escm2_mode"] == "ips"
    assert make_config("CSTWA", info_hidden_size=None)["info_hidden_size"] == []
    assert make_config("MLP", tower_dropout=0.2)["tower_dropout"] == 0.2


# ----- command line ---------------------------------------------------------------------------
def _error_line(monkeypatch, capsys, arguments):
    """Runs run_recbole_cstwa.py's main in this process; returns its one stderr line."""
    monkeypatch.setattr(sys, "argv", ["run_recbole_cstwa.py", *arguments])
    with pytest.raises(SystemExit) as stop:
        load_script("run_recbole_cstwa").main()
    assert stop.value.code == INPUT_ERROR_STATUS
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["--model=MLP", "--embedding_size=0"],
            "error: embedding_size must be an integer in [1, 4096] (far above the papers' 5 to 64; larger only allocates memory), got 0.",
        ),
        (["--model=MLP", "--tower_dropout=[1.5,0.3,0.3]"], "error: tower_dropout must be a list of numbers"),
        (["--model=MLP", "--learning_rate=-1"], "error: learning_rate must be a number > 0, got -1."),
        (["--model=CSTWA", "--sm_lambda=1.5"], "error: sm_lambda must be a number in [0, 1], got 1.5."),
        (["--model=CSTWA", "--graph_top_k=0"], "error: graph_top_k must be an integer >= 1, got 0."),
        (
            ["--model=MLP", "--tower_hidden_size=[64,32]"],
            "error: tower_dropout [0.1, 0.3, 0.3] needs one value",
        ),
        (
            ["--model=MLP", "--learning_rate=1/0"],  # kept as the text: never evaluated
            "error: learning_rate must be a number > 0, got '1/0'.",
        ),
        (
            ["--model=MLP", "--model=ESMM"],
            "error: Command line: --model is given twice, as 'MLP' and 'ESMM'.",
        ),
        (["--model=MLP", "--learning_rate=1e999"], "error: learning_rate must be a number > 0, got inf."),
        (
            ["--model=MLP", "--seed=abc"],
            "error: seed must be an integer in [0, 4294967295] (numpy's seed range), got",
        ),
        (
            ["--model=MLP", "--clip_grad_norm={'max_norm':-5}"],
            "error: clip_grad_norm max_norm must be a finite",
        ),
        (
            ["--model=MLP", "--metrics=[AUC,Recall]"],
            "error: metrics ['AUC', 'Recall'] hold top-k ranking metrics",
        ),
        (["--model=BPR"], "error: Model [BPR] is a RecBole general model"),
    ],
)
def test_cli_prints_one_error_line(monkeypatch, capsys, tiny_data_path, tmp_path, arguments, message):
    line = _error_line(
        monkeypatch, capsys, arguments + tiny_arguments(tiny_data_path, tmp_path, "--state=ERROR")
    )
    assert line.startswith(message)


def test_normal_command_line_values_parse_as_before(monkeypatch, tiny_data_path, tmp_path):
    from recbole_cstwa.config import Config

    arguments = [
        "--learning_rate=1e-3",
        "--train_batch_size=500",
        "--use_sm=False",
        "--cstwa_cache=false",
        "--learner=adam",
        "--tower_hidden_size=[64,32,16]",
        "--eval_tasks=[click,purchase]",
        "--clip_grad_norm={'max_norm': 5}",
        "--USER_ID_FIELD=None",
        "--embedding_size=-1",  # a negative number, refused by the table below, not read as text
    ]
    monkeypatch.setattr(
        sys,
        "argv",
        ["run_recbole_cstwa.py", *arguments, *tiny_arguments(tiny_data_path, tmp_path, "--state=ERROR")],
    )
    config = Config.__new__(Config)
    read = config._load_cmd_line()
    assert read["learning_rate"] == 0.001 and read["train_batch_size"] == 500
    assert read["use_sm"] is False and read["cstwa_cache"] is False
    assert read["learner"] == "adam" and read["tower_hidden_size"] == [64, 32, 16]
    assert read["eval_tasks"] == ["click", "purchase"]
    assert read["clip_grad_norm"] == {"max_norm": 5} and read["USER_ID_FIELD"] is None
    assert read["embedding_size"] == -1
    assert read["benchmark_filename"] == ["train", "valid", "test"]  # "['train','valid','test']"


def test_an_empty_checkpoint_dir_is_refused_before_any_file_is_written(
    monkeypatch, capsys, tiny_data_path, tmp_path
):
    """RecBole joined the dataset cache's folder to '' and wrote it into the current folder."""
    arguments = [
        a
        for a in tiny_arguments(tiny_data_path, tmp_path, "--state=ERROR")
        if not a.startswith("--checkpoint_dir")
    ]
    line = _error_line(monkeypatch, capsys, ["--model=MLP", "--checkpoint_dir=", *arguments])
    assert (
        line
        == "error: checkpoint_dir must name a folder, got an empty value. Fix: --checkpoint_dir=saved (or another folder)."
    )
    assert not [name for name in os.listdir(".") if "dataset" in name]


def test_unquoted_benchmark_filename_is_the_list(monkeypatch, tiny_data_path, tmp_path):
    from recbole_cstwa.config import Config

    arguments = [
        a
        for a in tiny_arguments(tiny_data_path, tmp_path, "--state=ERROR")
        if not a.startswith("--benchmark_filename")
    ]
    monkeypatch.setattr(
        sys, "argv", ["run_recbole_cstwa.py", "--benchmark_filename=[train,valid,test]", *arguments]
    )
    assert Config(model="MLP")["benchmark_filename"] == ["train", "valid", "test"]


def test_benchmark_filename_as_text_is_refused(make_config):
    with pytest.raises(ConfigError, match=r"benchmark_filename must be a list of split names, got 'train'"):
        make_config("MLP", benchmark_filename="train")


def test_a_call_on_the_command_line_never_runs_and_stays_text(monkeypatch, make_config, tmp_path):
    """RecBole's Config evaluated every --key=value text (and the plugin once more): a call there
    ran. Values are read as data, never evaluated: the call is the string as written."""
    marker = tmp_path / "marker"
    call = f"open({str(marker)!r},'a').write('x')"
    monkeypatch.setattr(sys, "argv", ["run_recbole_cstwa.py", f"--note={call}", "--extra_keys=[note]"])
    assert make_config("MLP")["note"] == call
    assert not marker.exists()


def test_a_call_in_config_dict_or_a_config_file_stays_text(make_config, tmp_path):
    marker = tmp_path / "marker"
    call = f"open({str(marker)!r},'a').write('x')"
    assert make_config("MLP", note=call, extra_keys=["note"])["note"] == call
    config_file = tmp_path / "call.yaml"
    config_file.write_text(f'extra_keys: [note]\nnote: "{call}"\n')
    from recbole_cstwa.config import Config

    config = Config(model="MLP", config_file_list=[str(config_file)], config_dict={"state": "ERROR"})
    assert isinstance(config["note"], str) and "write" in config["note"]
    assert not marker.exists()


def test_config_dict_strings_are_read_without_eval(make_config):
    config = make_config(
        "MLP",
        tower_hidden_size="[64, 32, 16]",
        learning_rate="1e-3",
        use_gpu="False",
        note="2**3",
        seed="7",
        extra_keys="[note]",
    )
    assert config["tower_hidden_size"] == [64, 32, 16] and config["learning_rate"] == 0.001
    assert config["use_gpu"] is False and config["seed"] == 7
    assert config["note"] == "2**3"  # RecBole's eval gave 8


@pytest.mark.parametrize(
    "text, message",
    [
        ("extra: !!python/name:os.system\n", "could not determine a constructor for the tag"),
        (
            'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
            + "".join(f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")),
            "its aliases expand to more than 100,000 values",
        ),
        pytest.param("[" * 5000 + "]" * 5000 + "\n", "nested too deeply", marks=pytest.mark.slow),
    ],
)
def test_config_file_yaml_is_plain(monkeypatch, capsys, tiny_data_path, tmp_path, text, message):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(text)
    line = _error_line(
        monkeypatch,
        capsys,
        [
            "--model=MLP",
            f"--config_files={config_file}",
            *tiny_arguments(tiny_data_path, tmp_path, "--state=ERROR"),
        ],
    )
    assert line.startswith(f"error: Config file [{config_file}]") and message in line


def test_dataset_yaml_is_read_plain(tmp_path):
    import shutil

    from recbole_cstwa.config import Config

    shutil.copytree(os.path.join(REPOSITORY, "dataset", "synthetic-ccp"), tmp_path / "synthetic-ccp")
    (tmp_path / "synthetic-ccp" / "synthetic-ccp.yaml").write_text("extra: !!python/name:os.system\n")
    with pytest.raises(ConfigError, match=r"synthetic-ccp.yaml\], line 1 is not plain YAML"):
        Config(model="MLP", config_dict={"data_path": str(tmp_path), "state": "ERROR"})


def test_cli_yaml_python_tag_names_the_file(monkeypatch, capsys, tiny_data_path, tmp_path):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("epochs: 1\nlearner: !!python/object/apply:os.system ['touch marker']\n")
    line = _error_line(
        monkeypatch,
        capsys,
        [
            "--model=MLP",
            f"--config_files={config_file}",
            *tiny_arguments(tiny_data_path, tmp_path, "--state=ERROR"),
        ],
    )
    assert line.startswith(f"error: Config file [{config_file}], line 2 is not plain YAML")
    assert not os.path.exists("marker")


def test_cli_missing_config_file(monkeypatch, capsys, tiny_data_path, tmp_path):
    line = _error_line(
        monkeypatch,
        capsys,
        [
            "--model=MLP",
            f"--config_files={tmp_path}/absent.yaml",
            *tiny_arguments(tiny_data_path, tmp_path, "--state=ERROR"),
        ],
    )
    assert line == f"error: Config file [{tmp_path}/absent.yaml] does not exist (--config_files)."


def test_cli_unwritable_checkpoint_dir_stops_before_training(monkeypatch, capsys, tiny_data_path, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    arguments = [
        "--model=MLP",
        *(
            a
            for a in tiny_arguments(tiny_data_path, tmp_path, "--state=ERROR")
            if not a.startswith("--checkpoint_dir")
        ),
        f"--checkpoint_dir={blocker}/saved",
    ]
    monkeypatch.setattr(
        "recbole_cstwa.trainer.MultiTaskTrainer.fit", lambda *a, **k: pytest.fail("trained anyway")
    )
    line = _error_line(monkeypatch, capsys, arguments)
    assert line.startswith(f"error: checkpoint_dir [{blocker}/saved] is not a folder this run can write to")
    assert line.endswith("Fix: --checkpoint_dir=<a writable folder>.")


def test_writable_directory_is_created(tmp_path):
    check_writable_directory(str(tmp_path / "new" / "saved"))
    assert os.listdir(tmp_path / "new" / "saved") == []


@pytest.mark.slow
def test_cli_process_exit_status_and_no_traceback(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(REPOSITORY, "run_recbole_cstwa.py"),
            "--model=MLP",
            "--embedding_size=0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == INPUT_ERROR_STATUS
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "error: embedding_size must be an integer in [1, 4096] (far above the papers' 5 to 64; larger only allocates memory)"
        )
    )
    assert "Traceback" not in done.stderr


def test_every_input_error_is_a_value_error(make_config):
    # Callers that caught ValueError before keep working: a bad setting, caught as one.
    with pytest.raises(ValueError) as caught:
        make_config("MLP", embedding_size=-1)
    assert isinstance(caught.value, ConfigError) and "embedding_size" in str(caught.value)
    assert issubclass(InputError, ValueError) and issubclass(ConfigError, InputError)
    assert issubclass(DataFormatError, InputError)


# ----- data too small to score ------------------------------------------------------------------------
def test_a_one_row_valid_split_is_refused(tmp_path):
    source = os.path.join(REPOSITORY, "dataset", "synthetic-ccp")
    folder = tmp_path / "data" / "five"
    folder.mkdir(parents=True)
    with open(os.path.join(source, "synthetic-ccp.train.inter"), encoding="utf-8") as file:
        lines = [next(file) for _ in range(6)]  # header + 5 impressions
    (folder / "five.inter").write_text("".join(lines))
    from recbole_cstwa.config import Config

    config = Config(
        model="MLP",
        config_dict={
            "dataset": "five",
            "data_path": str(tmp_path / "data"),
            "state": "ERROR",
            "use_gpu": False,
        },
    )
    with pytest.raises(
        DataFormatError, match=r"The (valid|test) split of dataset \[five\] holds 1 impression"
    ):
        data_preparation(config, create_dataset(config))


# ----- CSTWA's cache -------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_failed_cache_write_warns_and_goes_on(cstwa_stages, monkeypatch, caplog):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("recbole_cstwa.model.multitask.cstwa.artifact_cache.ArtifactCache.save", full_disk)
    with caplog.at_level(logging.WARNING):
        trainer, model = cstwa_stages()
    assert [event[:2] for event in trainer.cache_events] == [("pretrain", "computed"), ("graphs", "computed")]
    assert model.has_graphs()
    warnings = [r.getMessage() for r in caplog.records if "could not cache" in r.getMessage()]
    assert len(warnings) == 2 and "No space left on device" in warnings[0]


@pytest.mark.slow
def test_a_cache_file_of_the_wrong_shape_is_rebuilt(cstwa_stages, caplog):
    first, _ = cstwa_stages()
    for kind, path in (event[::2] for event in first.cache_events):
        artifact = torch.load(path, weights_only=True)
        if kind == "pretrain":
            artifact["embedding"] = {name: tensor[:-1] for name, tensor in artifact["embedding"].items()}
        else:
            artifact["user"] = {
                "indices": torch.zeros(2, 1, dtype=torch.long),
                "values": torch.ones(1),
                "size": [3, 3],
            }
        # Checksums that match the new tensors: the shape checks, not the checksums, must catch it.
        tensors = {name: value for name, value in artifact.items() if name not in ("settings", CHECKSUMS)}
        artifact[CHECKSUMS] = tensor_checksums(tensors)
        torch.save(artifact, path)
    with caplog.at_level(logging.INFO):
        again, model = cstwa_stages()
    assert [event[:2] for event in again.cache_events] == [("pretrain", "computed"), ("graphs", "computed")]
    assert model.has_graphs()
    text = caplog.text
    assert "does not fit this model" in text and "does not fit this dataset (user graph is (3, 3)" in text


@pytest.mark.slow
def test_graph_top_k_above_the_nodes_is_said_once(cstwa_stages, caplog):
    with caplog.at_level(logging.WARNING):
        trainer, model = cstwa_stages(graph_top_k=100000, cstwa_cache=False)
    said = [r.getMessage() for r in caplog.records if "graph_top_k=100000" in r.getMessage()]
    users, items = model.structure["user"].num_entities - 1, model.structure["item"].num_entities - 1
    assert said == [
        f"graph_top_k=100000 is above the nodes of the graph: {users} users (K = {users}) and "
        f"{items} items (K = {items}); each row keeps all of them."
    ]
