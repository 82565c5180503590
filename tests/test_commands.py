"""The command line: results printed for valid and test; bad input gives a message, not a trace."""

import os
import subprocess
import sys

import pytest
from conftest import REPOSITORY, run_command_in_process

RUN = os.path.join(REPOSITORY, "run_recbole_cstwa.py")


def _run(*args):
    return subprocess.run([sys.executable, RUN, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_main_job_prints_both_tasks(tiny_data_path, tmp_path):
    done = _run(
        "--model=ESMM",
        "--dataset=tiny-ccp",
        f"--data_path={tiny_data_path}",
        "--benchmark_filename=['train','valid','test']",
        "--epochs=1",
        "--show_progress=False",
        f"--checkpoint_dir={tmp_path}/saved",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[-8].split() == ["metric", "valid", "test"]
    assert [line.split()[0] for line in lines[-7:-1]] == [
        "click_auc",
        "click_logloss",
        "purchase_auc",
        "purchase_logloss",
        "cvr_auc",
        "cvr_logloss",
    ]
    assert lines[-1].startswith(f"best epoch: 0; checkpoint: {tmp_path}/saved/ESMM-")


# Bad input, run in this process (a real process's exit status: test_settings.py).
def test_unknown_model_is_a_message(monkeypatch, capsys):
    status, stderr = run_command_in_process(monkeypatch, capsys, "run_recbole_cstwa", ["--model=NoSuchModel"])
    assert status != 0
    assert "error: Model [NoSuchModel]" in stderr and "Traceback" not in stderr


def test_pre_split_files_without_benchmark_filename(monkeypatch, capsys, tiny_data_path):
    arguments = ["--model=MLP", "--dataset=tiny-ccp", f"--data_path={tiny_data_path}"]
    status, stderr = run_command_in_process(monkeypatch, capsys, "run_recbole_cstwa", arguments)
    assert status != 0 and "Traceback" not in stderr
    assert "set benchmark_filename: ['train', 'valid', 'test']" in stderr


def test_missing_dataset_is_a_message(monkeypatch, capsys, tmp_path):
    arguments = ["--model=MLP", "--dataset=absent", f"--data_path={tmp_path}"]
    status, stderr = run_command_in_process(monkeypatch, capsys, "run_recbole_cstwa", arguments)
    assert status != 0
    assert f"[{tmp_path}/absent] does not exist" in stderr and "Traceback" not in stderr
