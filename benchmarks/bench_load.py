"""Dataset load cost: first read (no cache) and cached read, each in a fresh subprocess.

For one dataset folder, runs a child Python process per measurement and reports its wall
seconds, peak RSS (``os.wait4`` of the child, i.e. ``ru_maxrss``), bytes of peak RSS per
impression and impressions per second of ``create_dataset`` (imports excluded), plus "training starts": seconds from the child's start to
the end of the first training step (config, dataset, dataloaders, model, one batch) when the
dataset comes from the cache.

    python benchmarks/bench_load.py --dataset synthetic-ccp
    python benchmarks/bench_load.py --dataset s4m --data-path DATA_ROOT \
        --benchmark-filename train valid test

``--repo`` imports the package from another checkout (to measure the code before a change; that
code may have no cache of its own, then ``--cached`` measures RecBole's ``save_dataset`` reload).
Measure with ``OMP_NUM_THREADS=1`` on an otherwise idle machine for comparable numbers.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, time
start = time.perf_counter()
settings = json.loads(sys.argv[1])
phase = sys.argv[2]
from recbole_cstwa.config import Config
from recbole_cstwa.data import create_dataset
config = Config(model="MLP", config_dict=settings)
dataset_start = time.perf_counter()
dataset = create_dataset(config)
loaded = time.perf_counter()
rows = len(dataset.inter_feat)
result = {"rows": rows, "load_seconds": loaded - start, "dataset_seconds": loaded - dataset_start}
if phase == "train":
    try:
        from recbole_cstwa.data import data_preparation
    except ImportError:
        from recbole.data import data_preparation
    from recbole_cstwa.registry import get_model
    train_data, _, _ = data_preparation(config, dataset)
    model = get_model("MLP")(config, train_data._dataset)
    batch = next(iter(train_data))
    loss = model.calculate_loss(batch)
    (sum(loss) if isinstance(loss, tuple) else loss).backward()
    result["train_start_seconds"] = time.perf_counter() - start
print("RESULT " + json.dumps(result))
"""


def run_child(repo, settings, phase):
    """Runs one measurement in a fresh interpreter; returns its result dict with wall and RSS."""
    env = dict(os.environ, PYTHONPATH=repo)
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(settings), phase],
        cwd=settings["checkpoint_dir"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # wait4 gives this child's own rusage (ru_maxrss in KiB on Linux).
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stdout, stderr = process.stdout.read(), process.stderr.read()
    if status != 0:
        raise SystemExit(f"child failed ({phase}):\n{stderr[-3000:]}")
    line = next(line for line in stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    result.update(wall_seconds=wall, peak_rss_bytes=usage.ru_maxrss * 1024)
    return result


def describe(name, result):
    rows = result["rows"]
    text = (
        f"{name:>8}: rows={rows} create_dataset={result['dataset_seconds']:.1f}s "
        f"with_imports={result['load_seconds']:.1f}s wall={result['wall_seconds']:.1f}s "
        f"peak_rss={result['peak_rss_bytes'] / 2**30:.2f}GiB bytes/row={result['peak_rss_bytes'] / rows:.0f} "
        f"rows/s={rows / result['dataset_seconds']:.0f}"
    )
    if "train_start_seconds" in result:
        text += f" training_starts={result['train_start_seconds']:.1f}s"
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic-ccp")
    parser.add_argument(
        "--data-path",
        default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dataset"),
    )
    parser.add_argument("--benchmark-filename", nargs="*", default=["train", "valid", "test"])
    parser.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser.add_argument(
        "--legacy-cache", action="store_true", help="the code under --repo caches with RecBole's save_dataset"
    )
    parser.add_argument(
        "--skip-train", action="store_true", help="do not measure the time to the first training step"
    )
    parser.add_argument(
        "--cached-repeats", type=int, default=1, help="cached loads to time (each in a fresh process)"
    )
    args = parser.parse_args(argv)

    work = tempfile.mkdtemp(prefix="bench-load-")
    settings = {
        "dataset": args.dataset,
        "data_path": os.path.abspath(args.data_path),
        "benchmark_filename": args.benchmark_filename or None,
        "checkpoint_dir": work,
        "state": "WARNING",
        "show_progress": False,
        "use_gpu": False,
    }
    if args.legacy_cache:
        settings["save_dataset"] = True
    try:
        results = {"first": run_child(args.repo, settings, "load")}
        print(describe("first", results["first"]), flush=True)
        for repeat in range(max(args.cached_repeats, 1)):
            name = "cached" if repeat == 0 else f"cached{repeat + 1}"
            results[name] = run_child(args.repo, settings, "load")
            print(describe(name, results[name]), flush=True)
        if not args.skip_train:
            results["train"] = run_child(args.repo, settings, "train")
            print(describe("train", results["train"]), flush=True)
        print(json.dumps(results))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
