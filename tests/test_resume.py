"""--resume: the vocabularies checked, new checkpoints beside the given one (kept), the kept
epoch's validation result reported, epochs counted on from the checkpoint's."""

import glob
import logging
import os
import shutil
import sys

import pytest
import torch
from conftest import TINY, load_script, tiny_config

from recbole_cstwa.errors import CheckpointError
from recbole_cstwa.quick_start import evaluate_checkpoint, run_recbole_cstwa


@pytest.fixture(scope="module")
def two_epochs(tiny_data_path, tmp_path_factory):
    """An MLP checkpoint after 2 epochs (kept: the better one), trained once a module."""
    folder = tmp_path_factory.mktemp("two-epochs")
    previous = os.getcwd()
    os.chdir(folder)
    try:
        result = run_recbole_cstwa(model="MLP", config_dict=tiny_config(tiny_data_path, folder, epochs=2))
    finally:
        os.chdir(previous)
    return result


def _copy(result, tmp_path, name="given.pth"):
    folder = tmp_path / "given"
    folder.mkdir(exist_ok=True)
    target = folder / name
    shutil.copy(result["model_file"], target)
    return str(target)


def _no_epoch_beats_the_kept_one(monkeypatch):
    """RecBole's early stopping sees no improvement (a new epoch that does not beat the checkpoint)."""
    import recbole.trainer.trainer as recbole_trainer

    def never_better(value, best, cur_step, max_step, bigger=True):
        return best, cur_step + 1, False, False

    monkeypatch.setattr(recbole_trainer, "early_stopping", never_better)


def test_resume_checks_the_vocabularies(two_epochs, tiny_data_path, tmp_path):
    """Other data of the same sizes (user ids permuted) trained on with the wrong embedding rows."""
    source = os.path.join(tiny_data_path, TINY)
    permuted = tmp_path / "permuted" / TINY
    permuted.mkdir(parents=True)
    for name in os.listdir(source):
        shutil.copy(os.path.join(source, name), permuted / name)
    train = permuted / f"{TINY}.train.inter"
    lines = train.read_text().splitlines(keepends=True)
    first, second = (
        lines[1].split("\t")[0],
        next(line.split("\t")[0] for line in lines[2:] if line.split("\t")[0] != lines[1].split("\t")[0]),
    )
    swap = {first: second, second: first}  # the first two users trade ids: same sizes, other order
    train.write_text(
        lines[0]
        + "".join(
            "\t".join([swap.get(line.split("\t")[0], line.split("\t")[0]), *line.split("\t")[1:]])
            for line in lines[1:]
        )
    )
    given = _copy(two_epochs, tmp_path)
    with pytest.raises(CheckpointError, match=r"field \[user_id\] has other tokens or another order"):
        run_recbole_cstwa(resume=given, config_dict={"data_path": str(tmp_path / "permuted"), "epochs": 3})


def test_resume_writes_beside_its_input_and_keeps_it(two_epochs, tmp_path):
    """Every resume rewrote the checkpoint it was given."""
    given = _copy(two_epochs, tmp_path)
    before = open(given, "rb").read()
    result = run_recbole_cstwa(resume=given, config_dict={"epochs": 3, "state": "ERROR"})
    assert open(given, "rb").read() == before
    new = result["model_file"]
    assert os.path.dirname(new) == os.path.dirname(given) and new != given
    assert os.path.basename(new).startswith("MLP-")
    assert torch.load(new, weights_only=True)["epoch"] == result["best_epoch"] >= two_epochs["best_epoch"]


def test_resume_in_place_writes_over_its_input(two_epochs, tmp_path, monkeypatch):
    given = _copy(two_epochs, tmp_path)
    monkeypatch.setattr(
        "recbole.trainer.trainer.early_stopping",
        lambda value, best, step, max_step, bigger: (value, 0, False, True),
    )
    result = run_recbole_cstwa(
        resume=given, config_dict={"epochs": 4, "resume_in_place": True, "state": "ERROR"}
    )
    assert result["model_file"] == given and os.listdir(os.path.dirname(given)) == ["given.pth"]
    assert torch.load(given, weights_only=True)["epoch"] == result["best_epoch"] == 3  # every epoch "beat" it


def _trained_epochs(checkpoint_file):
    """The epochs a checkpoint holds: RecBole's 0-based epoch of the kept model, plus one."""
    return torch.load(checkpoint_file, weights_only=True)["epoch"] + 1


def test_a_new_epoch_that_does_not_beat_the_checkpoint_reports_its_results(two_epochs, tmp_path, monkeypatch):
    """`best valid : {}` and nan for every valid metric: the kept epoch's real metrics now."""
    _no_epoch_beats_the_kept_one(monkeypatch)
    given = _copy(two_epochs, tmp_path)
    result = run_recbole_cstwa(resume=given, config_dict={"epochs": 3, "state": "ERROR"})
    assert result["best_valid_result"] == two_epochs["best_valid_result"]
    assert result["best_epoch"] == result["kept_epoch"] == two_epochs["best_epoch"]
    assert result["test_result"] == two_epochs["test_result"]  # the kept model is the given one
    assert result["epochs_trained"] == 3 - _trained_epochs(given)
    assert torch.load(result["model_file"], weights_only=True)["state_dict"].keys() == (
        torch.load(given, weights_only=True)["state_dict"].keys()
    )


def test_a_checkpoint_without_a_stored_result_has_it_measured(two_epochs, tmp_path, monkeypatch):
    """A checkpoint of an earlier version holds no validation result: the kept one is evaluated."""
    _no_epoch_beats_the_kept_one(monkeypatch)
    state = torch.load(two_epochs["model_file"], weights_only=True)
    del state["best_valid_result"]
    given = tmp_path / "earlier.pth"
    torch.save(state, given)
    result = run_recbole_cstwa(resume=str(given), config_dict={"epochs": 3, "state": "ERROR"})
    assert result["best_valid_result"] == evaluate_checkpoint(str(given))["best_valid_result"]
    assert result["best_valid_result"] == two_epochs["best_valid_result"]


def test_epochs_count_on_from_the_checkpoint(two_epochs, tmp_path, monkeypatch, capsys):
    """--epochs equal to the checkpoint's printed `best epoch: -1` and saved epoch -1, so the next
    resume numbered its epochs from 0 again."""
    given = _copy(two_epochs, tmp_path)
    trained = _trained_epochs(given)
    monkeypatch.setattr(
        sys, "argv", ["run_recbole_cstwa.py", f"--resume={given}", f"--epochs={trained}", "--state=ERROR"]
    )
    load_script("run_recbole_cstwa").main()
    printed = capsys.readouterr().out
    assert f"best epoch: {two_epochs['best_epoch']};" in printed and "best epoch: -1" not in printed
    assert "nan" not in printed
    (written,) = glob.glob(os.path.join(os.path.dirname(given), "MLP-*.pth"))
    assert torch.load(written, weights_only=True)["epoch"] == trained - 1
    monkeypatch.setattr(sys, "argv", ["pytest"])
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh process: RecBole's handlers are the root's
    monkeypatch.setattr(root, "level", root.level)
    result = run_recbole_cstwa(resume=written, config_dict={"epochs": trained + 2, "state": "INFO"})
    for handler in root.handlers:
        handler.close()
    log = open(result["log_file"], encoding="utf-8").read()
    assert f"Resume training from epoch {trained}" in log
    assert f"epoch {trained} training" in log and f"epoch {trained + 1} training" in log
    assert "epoch 0 training" not in log
    assert result["epochs_trained"] == 2
