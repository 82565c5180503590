"""Ray Tune against an existing cluster: a Ray head started here (``ray start --head``) in its own
process group, a 2-trial search connects to it by ``HOST:PORT`` and writes its results."""

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


@pytest.fixture
def ray_head():
    """``HOST:PORT`` of a 2-CPU Ray head; its processes are stopped by process group afterwards.

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


@pytest.mark.slow
def test_two_trials_on_an_existing_ray_cluster(ray_head, tiny_data_path, tmp_path):
    import ray

    for _ in range(120):  # the head takes a while to come up on a busy machine
        try:
            ray.init(address=ray_head, log_to_driver=False)
            break
        except Exception:
            time.sleep(1)
    else:
        pytest.fail(f"no Ray head at {ray_head}")
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
