"""Checkpoints hold only tensors and plain data and load with ``weights_only=True``."""

import glob
import os
import re
import shutil
import struct
import zipfile

import pytest
import torch
from conftest import run_command_in_process

from recbole_cstwa.checkpoint import CHECKPOINT_KEYS, load_checkpoint
from recbole_cstwa.errors import CheckpointError


@pytest.mark.slow
def test_checkpoint_round_trip_under_weights_only(run_tiny, tmp_path):
    result = run_tiny("MMoE", epochs=2)
    (checkpoint_file,) = glob.glob(str(tmp_path / "saved" / "MMoE-*.pth"))
    # Plain torch.load with weights_only=True: no pickled objects inside.
    state = torch.load(checkpoint_file, weights_only=True)
    assert set(state) == set(CHECKPOINT_KEYS)
    assert state["model"] == "MMoE" and state["best_valid_score"] == result["best_valid_score"]
    assert all(isinstance(v, torch.Tensor) for v in state["state_dict"].values())


@pytest.mark.slow
def test_builtin_model_checkpoint_round_trip(run_tiny, tmp_path):
    run_tiny("WideDeep", LABEL_FIELD="click")
    (checkpoint_file,) = glob.glob(str(tmp_path / "saved" / "WideDeep-*.pth"))
    assert "state_dict" in torch.load(checkpoint_file, weights_only=True)


@pytest.mark.slow
def test_reloaded_model_gives_the_same_test_result(make_config, run_tiny, tmp_path):
    from recbole_cstwa.data import create_dataset, data_preparation
    from recbole_cstwa.registry import get_model, get_trainer

    result = run_tiny("ESMM", epochs=2)
    (checkpoint_file,) = glob.glob(str(tmp_path / "saved" / "ESMM-*.pth"))
    config = make_config("ESMM")
    _, _, test_data = data_preparation(config, create_dataset(config))
    model = get_model("ESMM")(config, test_data._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], "ESMM")(config, model)
    assert trainer.evaluate(test_data, model_file=checkpoint_file) == result["test_result"]

    # Resuming continues after the saved epoch, with the saved best score.
    saved = torch.load(checkpoint_file, weights_only=True)
    trainer.resume_checkpoint(checkpoint_file)
    assert trainer.start_epoch == saved["epoch"] + 1
    assert trainer.best_valid_score == result["best_valid_score"]


def test_a_recbole_style_checkpoint_is_refused(make_config, tmp_path):
    # RecBole's own trainer pickles its Config object into the checkpoint.
    path = tmp_path / "recbole-style.pth"
    torch.save({"config": make_config("ESMM"), "state_dict": {}}, path)
    with pytest.raises(ValueError, match="is not loaded"):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pth")


# ----- checkpoints verified and validated --------------------------------------------------------
@pytest.fixture(scope="module")
def trained_mlp(tiny_data_path, tmp_path_factory):
    """An MLP checkpoint of one epoch on the tiny dataset (trained once a module, in its own folder)."""
    from conftest import tiny_config

    from recbole_cstwa.quick_start import run_recbole_cstwa

    folder = tmp_path_factory.mktemp("trained-mlp")
    previous = os.getcwd()
    os.chdir(folder)  # RecBole writes log/ into the working directory
    try:
        result = run_recbole_cstwa(model="MLP", config_dict=tiny_config(tiny_data_path, folder))
    finally:
        os.chdir(previous)
    return result["model_file"]


def _edited(model_file, path, change):
    state = torch.load(model_file, weights_only=True)
    change(state)
    torch.save(state, path)
    return str(path)


def _member_data_offset(path, member):
    """Where the bytes of the zip ``member`` start in the file (after its local header)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    with open(path, "rb") as file:
        file.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", file.read(4))
    return info.header_offset + 30 + name_length + extra_length, info.file_size


def test_a_checkpoint_damaged_inside_a_parameter_is_refused(trained_mlp, tmp_path):
    """400 bytes zeroed inside a parameter loaded and scored silently (torch reads zip members
    without their CRC): every member is checked against its CRC-32."""
    from recbole_cstwa.quick_start import evaluate_checkpoint
    from recbole_cstwa.serving.trained import load_trained

    damaged = tmp_path / "damaged.pth"
    shutil.copy(trained_mlp, damaged)
    state = torch.load(damaged, weights_only=True)
    table = state["state_dict"]["click_embedding.token_table.weight"]
    with zipfile.ZipFile(damaged) as archive:  # the table's storage: the member holding its bytes
        (member,) = [
            info.filename
            for info in archive.infolist()
            if "/data/" in info.filename and archive.read(info) == table.numpy().tobytes()
        ]
    start, _ = _member_data_offset(damaged, member)
    with open(damaged, "r+b") as file:
        file.seek(start + 50)
        file.write(bytes(400))
    reloaded = torch.load(damaged, weights_only=True)["state_dict"]["click_embedding.token_table.weight"]
    assert not torch.equal(reloaded, table)  # what loaded silently before: other parameters
    for load in (
        lambda: load_checkpoint(damaged),
        lambda: load_checkpoint(damaged, mmap=True),
        lambda: load_trained(damaged),
        lambda: evaluate_checkpoint(damaged),
    ):
        with pytest.raises(
            CheckpointError, match=rf"is damaged: its member {member} does not match its CRC-32"
        ):
            load()


def test_missing_model_file_or_resume_is_one_line(monkeypatch, capsys):
    for option in ("--model_file", "--resume"):
        status, err = run_command_in_process(monkeypatch, capsys, "run_recbole_cstwa", [f"{option}=none.pth"])
        assert status == 2
        assert err.splitlines() == [
            f"error: {option}: checkpoint file [none.pth] does not exist. Fix: {option}=<the .pth file "
            "a training run wrote: it prints `checkpoint: saved/<Model>-....pth`>."
        ]


def test_a_setting_that_shapes_the_model_is_named(trained_mlp, monkeypatch, capsys):
    """--model_file=X --embedding_size=16 ended in torch's size-mismatch traceback."""
    for option in ("--model_file", "--resume"):
        status, err = run_command_in_process(
            monkeypatch, capsys, "run_recbole_cstwa", [f"{option}={trained_mlp}", "--embedding_size=16"]
        )
        assert status == 2, err
        (line,) = err.splitlines()
        assert line.startswith(
            f"error: Checkpoint [{trained_mlp}]'s parameters do not fit the MLP this run builds"
        )
        assert "(embedding_size 5 -> 16). Fix: drop --embedding_size;" in line


def test_a_pth_that_is_no_checkpoint_is_called_so(trained_mlp, tmp_path):
    """A plain state_dict or CSTWA's cache file was called "written by an earlier recbole-cstwa",
    whose advice (--model=) ended in KeyError: 'state_dict'."""
    from recbole_cstwa.quick_start import evaluate_checkpoint, load_data_and_model, run_recbole_cstwa
    from recbole_cstwa.serving.trained import load_trained

    state = torch.load(trained_mlp, weights_only=True)
    plain = tmp_path / "plain.pth"
    torch.save(state["state_dict"], plain)
    cache = tmp_path / "CSTWA-pretrain-0123.pth"  # as CSTWA's artifact cache writes it
    torch.save({"settings": {"embedding_size": 5}, "embedding": torch.ones(3, 5), "blake2b": {}}, cache)
    for path in (plain, cache):
        for call, arguments in (
            (evaluate_checkpoint, (path,)),
            (evaluate_checkpoint, (path, "MLP")),
            (lambda resume: run_recbole_cstwa(resume=resume), (str(path),)),
            (load_trained, (path,)),
            (load_data_and_model, (path,)),
        ):
            with pytest.raises(
                CheckpointError, match=rf"\[{re.escape(str(path))}\] is not a recbole-cstwa checkpoint"
            ):
                call(*arguments)


HOSTILE = {
    "a dataset name climbing out": (
        lambda state: state.update(dataset="../../escaped"),
        r"names dataset '\.\./\.\./escaped', which is no plain name",
    ),
    "a checkpoint_dir climbing out": (
        lambda state: state["settings"].update(checkpoint_dir="../../escaped"),
        r"stores checkpoint_dir '\.\./\.\./escaped', which is no folder without '\.\.' parts",
    ),
    "settings a list": (lambda state: state.update(settings=[1, 2]), "holds settings of type list"),
    "settings None": (lambda state: state.update(settings=None), "holds settings of type NoneType"),
    "a model path": (
        lambda state: state.update(model="../mlp"),
        "names model '../mlp', which is no registered",
    ),
    "another model over the parameters": (
        lambda state: state.update(model="DeepFM"),
        r"parameters are not those of a DeepFM built from its settings",
    ),
    "an unbounded size": (
        lambda state: state["settings"].update(embedding_size=10**9),
        r"stored settings: embedding_size must be an integer in \[1, 4096\]",
    ),
    "an unknown key": (
        lambda state: state["settings"].update(rm_rf=True),
        r"stored settings: rm_rf is not a setting of RecBole or recbole-cstwa",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_stored_settings_are_refused(trained_mlp, tmp_path, monkeypatch, case):
    """Each ended in a TypeError, ModuleNotFoundError, size-mismatch traceback, an allocation
    until killed, or caches and logs written outside the folders (``../``)."""
    from recbole_cstwa.quick_start import evaluate_checkpoint, load_data_and_model, run_recbole_cstwa
    from recbole_cstwa.serving.trained import load_trained

    change, message = HOSTILE[case]
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    path = _edited(trained_mlp, work / "hostile.pth", change)
    for call in (
        lambda: evaluate_checkpoint(path),
        lambda: run_recbole_cstwa(resume=path),
        lambda: load_trained(path),
        lambda: load_data_and_model(path),
    ):
        with pytest.raises(CheckpointError, match=message):
            call()
    assert sorted(os.listdir(tmp_path)) == ["a"] and sorted(os.listdir(tmp_path / "a")) == ["b"]


def test_an_integration_switched_on_in_a_checkpoint_is_dropped(trained_mlp, tmp_path):
    """log_wandb: true in a checkpoint ended in ImportError (or logged to a service unasked)."""
    from recbole_cstwa.serving.trained import load_trained

    path = _edited(trained_mlp, tmp_path / "wandb.pth", lambda s: s["settings"].update(log_wandb=True))
    assert load_trained(path).config["log_wandb"] is False


def test_the_pickle_refusal_is_one_clean_line(make_config, tmp_path, monkeypatch, capsys):
    """It printed torch's raw ANSI codes and its advice cut mid-sentence."""
    path = tmp_path / "recbole-style.pth"
    torch.save({"config": make_config("ESMM"), "state_dict": {}}, path)
    status, err = run_command_in_process(monkeypatch, capsys, "run_recbole_cstwa", [f"--model_file={path}"])
    assert status == 2
    (line,) = err.splitlines()
    assert "\x1b" not in line and "[1m" not in line
    assert "(loading it could run code; torch: Unsupported global: GLOBAL recbole_cstwa.config.Config" in line
    assert "two options" not in line and line.endswith("retrain with them to get one.")
