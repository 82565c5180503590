"""The command line: results printed for valid and test; bad input gives a message, not a trace."""

import os
import subprocess
import sys

import pytest

RUN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "run_recbole_cstwa.py")


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


@pytest.mark.slow
def test_unknown_model_is_a_message(tmp_path):
    done = _run("--model=NoSuchModel")
    assert done.returncode != 0
    assert "error: Model [NoSuchModel]" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_pre_split_files_without_benchmark_filename(tiny_data_path):
    done = _run("--model=MLP", "--dataset=tiny-ccp", f"--data_path={tiny_data_path}")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "set benchmark_filename: ['train', 'valid', 'test']" in done.stderr


@pytest.mark.slow
def test_missing_dataset_is_a_message(tmp_path):
    done = _run("--model=MLP", "--dataset=absent", f"--data_path={tmp_path}")
    assert done.returncode != 0
    assert f"[{tmp_path}/absent] does not exist" in done.stderr and "Traceback" not in done.stderr
