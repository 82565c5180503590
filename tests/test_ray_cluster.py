"""Ray against an existing cluster: a Ray head started here (``ray start --head``) in its own
process group; a 2-trial search and a 2-run comparison connect to it by ``HOST:PORT`` and write
their results."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import REPOSITORY, free_port, tiny_config

from recbole_cstwa.experiments.hyper import parse_params, run_search


@pytest.fixture(scope="module")
def ray_head():
    """``HOST:PORT`` of a 2-CPU Ray head, shared by the module's tests; its processes are stopped
    by process group afterwards.

    Its own temporary folder and ports, so that it meets no other Ray instance on the machine;
    the workers import this checkout (``PYTHONPATH``), as an installed plugin on a real cluster.
    """
    ray = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a limit
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")]))
    )
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    head = subprocess.Popen(
        [
            ray,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--num-gpus=0",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopped below by that id only
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        time.sleep(1)
        try:
            os.killpg(head.pid, signal.SIGKILL)  # any worker left in the group
        except ProcessLookupError:
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for(address):
    """Returns once the Ray head at ``address`` answers (it takes a while on a busy machine)."""
    import ray

    for _ in range(120):
        try:
            ray.init(address=address, log_to_driver=False)
            break
        except Exception:
            time.sleep(1)
    else:
        pytest.fail(f"no Ray head at {address}")
    ray.shutdown()


@pytest.mark.slow
def test_two_trials_on_an_existing_ray_cluster(ray_head, tiny_data_path, tmp_path):
    import ray

    _wait_for(ray_head)
    ray.init(address=ray_head, log_to_driver=False)
    assert ray.cluster_resources().get("CPU") == 2
    ray.shutdown()  # the search connects by itself, as run_hyper.py --ray_address does

    output = tmp_path / "cluster.json"
    report = run_search(
        parse_params(["learning_rate choice [0.01, 0.001]"]),
        model="MLP",
        overrides=tiny_config(tiny_data_path, tmp_path),
        algo="exhaustive",
        tool="Ray",
        output_file=str(output),
        ray_options={"address": ray_head, "cpus_per_trial": 1},
    )
    written = json.loads(output.read_text())
    assert written["tool"] == "Ray" and len(written["trials"]) == 2
    assert all(trial["status"] == "ok" for trial in written["trials"])
    assert sorted(trial["params"]["learning_rate"] for trial in written["trials"]) == [0.001, 0.01]
    assert all(0 <= trial["test_result"]["purchase_auc"] <= 1 for trial in written["trials"])
    assert written["best"] == report["best"] and written["best"] is not None
    assert not ray.is_initialized()  # the search disconnected; the cluster is still the test's


@pytest.mark.slow
def test_a_comparison_on_an_existing_ray_cluster(ray_head, tiny_data_path, tmp_path):
    """run_compare --tool=Ray --ray_address=HOST:PORT: one Ray task a run, the records appended
    by the driver alone, each run once."""
    import ray

    from recbole_cstwa.experiments.compare import run_comparison

    _wait_for(ray_head)
    settings = tiny_config(tiny_data_path, tmp_path)
    logged = []
    result = run_comparison(
        ["MLP"],
        [2020, 2021],
        dataset=settings.pop("dataset"),
        overrides=settings,
        output_dir=str(tmp_path / "out"),
        oracle=False,
        plotlyjs="cdn",
        log=logged.append,
        tool="Ray",
        ray_options={"address": ray_head, "cpus_per_run": 1},
        poll_seconds=0.5,
    )
    with open(result["files"]["runs"], encoding="utf-8") as file:
        records = [json.loads(line) for line in file]
    assert sorted(record["seed"] for record in records) == [2020, 2021]  # each run once
    assert sorted(record["key"] for record in records) == sorted(run["key"] for run in result["plan"].runs)
    for record in records:
        assert 0 <= record["test_result"]["purchase_auc"] <= 1 and record["valid_metric"] == "purchase_auc"
        assert os.path.isfile(record["model_file"])  # one node: the driver's folders
    assert sum("training (Ray task)" in line for line in logged) == 2
    assert os.listdir(tmp_path / "out" / "claims") == []
    assert result["rows"][0]["n_seeds"] == 2
    assert not ray.is_initialized()  # the comparison disconnected; the cluster is still the test's
