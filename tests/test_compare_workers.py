"""A comparison trained by several processes: appends to one runs.jsonl from concurrent writers,
claims (a live one respected, a dead process's taken over), ``--jobs 2`` with a worker killed
mid-run and the resume after it, and two commands (2 workers each) on one output folder at once."""

import json
import multiprocessing
import os
import subprocess
import sys

import pytest
from conftest import REPOSITORY, TINY, tiny_config
from scripted_runs import CALLS_DIR, KILLED, SLEEP, invocation, killing_runner

from recbole_cstwa.errors import CompareError
from recbole_cstwa.experiments.compare import run_comparison
from recbole_cstwa.experiments.run_records import (
    append_record,
    claim_holder,
    claim_path,
    read_runs,
    try_claim,
)
from recbole_cstwa.experiments.workers import RunContext, claim_train_record

SEEDS = [2020, 2021]


def _overrides(tiny_data_path, folder):
    settings = tiny_config(tiny_data_path, folder)
    del settings["dataset"]
    return settings


def _calls(folder):
    return sorted(
        "-".join(name.split("-")[:2]) for name in os.listdir(folder) if name.startswith(("MLP", "ESMM"))
    )


def _lines(path):
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def _compare(tiny_data_path, folder, runner, logged=None, **options):
    return run_comparison(
        ["MLP", "ESMM"],
        SEEDS,
        dataset=TINY,
        overrides=_overrides(tiny_data_path, folder),
        output_dir=str(folder / "out"),
        oracle=False,
        plotlyjs="cdn",
        runner=runner,
        log=(logged.append if logged is not None else lambda message: None),
        poll_seconds=0.2,
        **options,
    )


# ----- appends and claims ------------------------------------------------------------------------
_APPENDER = """
import sys
from recbole_cstwa.experiments.run_records import append_record
path, writer, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
for number in range(count):
    # a line far longer than a pipe's atomic write and an I/O buffer
    append_record(path, {"key": f"{writer}-{number}", "test_result": {}, "payload": writer * 70000})
"""


def _python(code, *arguments, **popen):
    env = dict(os.environ, PYTHONPATH=REPOSITORY, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", code, *map(str, arguments)], env=env, **popen)


def test_two_writers_appending_at_once_leave_every_line_whole_and_every_key_once(tmp_path):
    path = tmp_path / "runs.jsonl"
    writers = [_python(_APPENDER, path, name, 150) for name in ("a", "b")]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0]
    with open(path, encoding="utf-8") as file:
        lines = file.read().split("\n")
    assert lines[-1] == ""  # the file ends with a whole line
    records = [json.loads(line) for line in lines[:-1]]  # every line parses: none interleaved
    keys = [record["key"] for record in records]
    assert sorted(keys) == sorted(f"{writer}-{n}" for writer in "ab" for n in range(150))
    assert all(record["payload"] == record["key"][0] * 70000 for record in records)


def test_a_record_after_a_torn_line_starts_a_line_of_its_own(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text('{"key": "k1", "test_result": {}}\n{"key": "k2", "test_re')  # a killed writer
    append_record(str(path), {"key": "k3", "test_result": {"purchase_auc": 0.7}})
    assert sorted(read_runs(str(path))) == ["k1", "k3"]
    assert path.read_text().endswith('\n{"key": "k3", "test_result": {"purchase_auc": 0.7}}\n')


_CLAIMER = """
import sys, time
from recbole_cstwa.experiments.run_records import try_claim
claim = try_claim(sys.argv[1], "k1")
print("claimed" if claim else "busy", flush=True)
time.sleep(300)
"""


def test_a_live_claim_is_respected_and_a_dead_processs_claim_taken_over(tmp_path):
    holder = _python(_CLAIMER, tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        assert try_claim(str(tmp_path), "k1") is None
        assert claim_holder(str(tmp_path), "k1")["pid"] == holder.pid
    finally:
        holder.kill()  # SIGKILL: no clean-up runs; the claim file stays behind
        holder.wait()
    assert os.path.exists(claim_path(str(tmp_path), "k1"))
    assert claim_holder(str(tmp_path), "k1") is None  # stale
    claim = try_claim(str(tmp_path), "k1")
    assert claim is not None and claim.previous["pid"] == holder.pid
    assert claim_holder(str(tmp_path), "k1")["pid"] == os.getpid()
    claim.release()
    assert not os.path.exists(claim_path(str(tmp_path), "k1"))


def test_a_claimed_run_already_recorded_is_not_trained_again(tmp_path):
    runs = tmp_path / "runs.jsonl"
    context = RunContext(TINY, [], str(tmp_path), str(runs), code={})
    run = {"row": "MLP", "model": "MLP", "seed": 1, "task": "both", "config": {"seed": 1}, "key": "k1"}

    def runner(**kwargs):
        return {"test_result": {"purchase_auc": 0.7}, "best_valid_score": 0.7, "valid_metric": "purchase_auc"}

    assert claim_train_record(run, context, runner) == ("recorded", None)
    assert not os.path.exists(claim_path(str(tmp_path), "k1"))  # removed once recorded
    (record,) = _lines(runs)
    assert record["key"] == "k1" and record["valid_metric"] == "purchase_auc"

    def no_training(**kwargs):
        raise AssertionError("trained twice")

    # A stale claim left by a process killed after it wrote the record: taken over, not re-run.
    with open(claim_path(str(tmp_path), "k1"), "w") as file:
        file.write('{"pid": 999999999, "host": "elsewhere"}')
    assert claim_train_record(run, context, no_training) == ("done", {"pid": 999999999, "host": "elsewhere"})
    assert len(_lines(runs)) == 1


# ----- worker processes --------------------------------------------------------------------------
@pytest.mark.slow
def test_jobs_2_with_a_worker_killed_mid_run_then_resumed(tiny_data_path, tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    calls.mkdir()
    monkeypatch.setenv(CALLS_DIR, str(calls))
    monkeypatch.setenv(KILLED, f"ESMM-{SEEDS[1]}")
    logged = []
    with pytest.raises(CompareError, match=r"1 of 4 runs did not finish .*ESMM seed 2021.*killed by SIGKILL"):
        _compare(tiny_data_path, tmp_path, killing_runner, logged, jobs=2)
    runs = tmp_path / "out" / "runs.jsonl"
    recorded = _lines(runs)
    assert sorted((r["row"], r["seed"]) for r in recorded) == [
        ("ESMM", 2020),
        ("MLP", 2020),
        ("MLP", 2021),
    ]  # the killed run left no record, the others one each
    assert _calls(calls) == ["ESMM-2020", "MLP-2020", "MLP-2021"]
    assert any("training (worker 2)" in line for line in logged)
    (stale,) = os.listdir(tmp_path / "out" / "claims")  # the killed worker's claim stays behind

    logged.clear()
    result = _compare(tiny_data_path, tmp_path, killing_runner, logged, jobs=2)
    keys = [record["key"] for record in _lines(runs)]
    assert len(keys) == 4 and len(set(keys)) == 4  # every key exactly once
    assert sorted(keys) == sorted(run["key"] for run in result["plan"].runs)
    assert stale == f"{result['plan'].runs[3]['key']}.claim"
    assert _calls(calls) == ["ESMM-2020", "ESMM-2021", "MLP-2020", "MLP-2021"]  # only it trained again
    assert any("took over the claim of pid" in line for line in logged)
    assert sum("done before, kept" in line for line in logged) == 3
    assert os.listdir(tmp_path / "out" / "claims") == []
    assert [(row["name"], row["n_seeds"]) for row in result["rows"]] == [("MLP", 2), ("ESMM", 2)]


@pytest.mark.slow
def test_two_commands_at_once_train_every_run_once(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    calls.mkdir()
    monkeypatch.setenv(CALLS_DIR, str(calls))
    monkeypatch.setenv(SLEEP, "0.5")  # long enough for the two to meet
    runs = [
        {
            "row": model,
            "model": model,
            "seed": seed,
            "task": "both",
            "config": {"seed": seed},
            "key": f"{model}-{seed}",
        }
        for seed in SEEDS
        for model in ("MLP", "ESMM")
    ]
    spawn = multiprocessing.get_context("spawn")
    invocations = [spawn.Process(target=invocation, args=(str(tmp_path), runs)) for _ in range(2)]
    for started in invocations:
        started.start()
    for started in invocations:
        started.join(timeout=300)
    assert [started.exitcode for started in invocations] == [0, 0]
    keys = [record["key"] for record in _lines(tmp_path / "runs.jsonl")]
    assert sorted(keys) == sorted(run["key"] for run in runs)  # every key once
    assert _calls(calls) == ["ESMM-2020", "ESMM-2021", "MLP-2020", "MLP-2021"]  # none trained twice


@pytest.mark.slow
def test_a_real_run_in_a_worker_process_gives_the_result_of_the_run_in_process(tiny_data_path, tmp_path):
    def compare(folder, jobs):
        return run_comparison(
            ["MLP"],
            SEEDS[:1],
            dataset=TINY,
            overrides=_overrides(tiny_data_path, tmp_path),
            output_dir=str(tmp_path / folder),
            oracle=False,
            plotlyjs="cdn",
            log=lambda message: None,
            jobs=jobs,
        )

    (in_worker,), (in_process,) = compare("worker", 2)["records"], compare("in-process", 1)["records"]
    assert in_worker["key"] == in_process["key"]
    assert in_worker["test_result"] == in_process["test_result"]  # the same seed, the same run
    assert os.path.isfile(in_worker["model_file"]) and in_worker["model_file"] != in_process["model_file"]
