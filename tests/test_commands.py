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
    # the test split's grid first: a line a task, a column a metric, then the valid split's
    header = [line.split()[0] if line.split() else "" for line in lines].index("test")
    columns = lines[header].split()[1:]
    assert columns[:4] == ["auc", "logloss", "pcoc", "ece"]
    assert {"truth_kl", "truth_auc", "truth_ece"} <= set(columns)
    tasks = [line.split()[0] for line in lines[header + 1 : header + 5]]
    assert tasks == ["click", "purchase", "cvr", "cvr_all"]
    assert lines[header + 5].split()[0] == "valid"
    purchase = dict(zip(columns, lines[header + 2].split()[1:]))
    assert 0 < float(purchase["auc"]) < 1 and 0 < float(purchase["truth_kl"])
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


@pytest.mark.slow
def test_a_redirected_run_is_quiet_and_names_epoch_checkpoint_and_log(tiny_data_path, tmp_path):
    """stderr is a pipe here: no progress bar, no colour code, none of the known library warnings;
    the final line names the best epoch, the checkpoint and the log file."""
    done = _run(
        "--model=CSTWA",
        "--dataset=tiny-ccp",
        f"--data_path={tiny_data_path}",
        "--benchmark_filename=['train','valid','test']",
        "--epochs=1",
        f"--checkpoint_dir={tmp_path}/saved",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for output in (done.stdout, done.stderr):
        assert "\x1b[" not in output and "\r" not in output
    assert "it/s]" not in done.stderr and "show_progress = False" in done.stderr
    assert "FutureWarning" not in done.stderr and "AVX" not in done.stderr
    last = done.stdout.splitlines()[-1]
    assert last.startswith(f"best epoch: 0; checkpoint: {tmp_path}/saved/CSTWA-")
    log_file = last.split("; log: ")[1]
    assert log_file.startswith("log/CSTWA/CSTWA-tiny-ccp-") and os.path.isfile(tmp_path / log_file)


@pytest.mark.slow
def test_settings_and_data_errors_come_before_the_settings_dump(tiny_data_path, tmp_path):
    """A bad setting and a missing data file are each the run's only output."""
    for arguments in (
        ["--model=MLP", "--dataset=tiny-ccp", f"--data_path={tiny_data_path}", "--epoch=2"],
        ["--model=MLP", "--dataset=no-such-data", f"--data_path={tmp_path}"],
    ):
        done = _run(*arguments, f"--checkpoint_dir={tmp_path}/saved")
        assert done.returncode == 2
        assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert done.stderr.startswith("error: ")


def test_the_final_table_names_the_log_without_a_checkpoint():
    from recbole_cstwa.commands.train import format_results

    result = {
        "best_valid_result": {"click_auc": 0.6},
        "test_result": {"click_auc": 0.7},
        "log_file": "log/x.log",
    }
    assert format_results(result).splitlines()[-1] == "log: log/x.log"
    result.update(model_file="saved/x.pth", best_epoch=2)
    assert format_results(result).splitlines()[-1] == "best epoch: 2; checkpoint: saved/x.pth; log: log/x.log"
