"""Scripted runs for comparisons trained in worker processes (tests/test_compare_workers.py).

Apart from the test module so that a worker process, which imports the runner it is given,
loads neither RecBole nor torch: only this module and the plugin's light experiment modules.
"""

import os
import signal
import time

#: Where the runners note their calls (worker processes inherit it).
CALLS_DIR = "COMPARE_TEST_CALLS"
#: Seconds each call sleeps (default none).
SLEEP = "COMPARE_TEST_SLEEP"
#: The run :func:`killing_runner` kills, the first time: ``MODEL-SEED``.
KILLED = "COMPARE_TEST_KILLED"


def counting_runner(model, dataset, config_file_list, config_dict, saved):
    """A quick scripted run that leaves a file a call in ``$COMPARE_TEST_CALLS`` (any process)."""
    folder = os.environ[CALLS_DIR]
    seed = config_dict["seed"]
    with open(os.path.join(folder, f"{model}-{seed}-{os.getpid()}-{time.time_ns()}"), "w"):
        pass
    time.sleep(float(os.environ.get(SLEEP, "0")))
    value = 0.6 + (seed % 7) / 100 + len(model) / 1000
    metrics = {"click_auc": value, "purchase_auc": value, "click_logloss": 0.5, "purchase_logloss": 0.4}
    return {
        "test_result": metrics,
        "best_valid_result": metrics,
        "best_valid_score": value,
        "fit_seconds": 1.0,
        "epochs_trained": 1,
        "kept_epoch": 0,
        "model_file": os.path.join(folder, f"{model}-{seed}.pth"),
    }


def killing_runner(model, dataset, config_file_list, config_dict, saved):
    """As :func:`counting_runner`, but the run ``$COMPARE_TEST_KILLED`` kills its own process
    (``SIGKILL``) in the middle of its first call."""
    marker = os.path.join(os.environ[CALLS_DIR], "killed-once")
    if f"{model}-{config_dict['seed']}" == os.environ.get(KILLED) and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return counting_runner(model, dataset, config_file_list, config_dict, saved)


def invocation(output_dir, runs):
    """One comparison command's training of ``runs`` into ``output_dir`` with 2 worker processes,
    as ``run_compare --jobs 2`` trains them (started by the test in a process of its own)."""
    from recbole_cstwa.experiments.workers import RunContext, WorkerProcesses, run_all

    context = RunContext("tiny-ccp", [], output_dir, os.path.join(output_dir, "runs.jsonl"), code={})
    todo = [(number, run, f"[{number}] {run['row']}") for number, run in enumerate(runs, start=1)]
    workers = WorkerProcesses(2, context, counting_runner, print)
    assert run_all(todo, workers, context, print, poll_seconds=0.2) == []
