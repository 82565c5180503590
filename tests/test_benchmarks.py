"""Every benchmark runs, at a tiny size, and prints the figures it promises, so that none rots
unnoticed. Each script runs as a user runs it: a fresh interpreter, the repository on
``PYTHONPATH``, a temporary working folder; its own size options keep it to seconds."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPOSITORY, TINY, free_port

NUMBER = r"[\d,]+(?:\.\d+)?"


def run_benchmark(script, *arguments, cwd):
    """``benchmarks/<script>`` with ``arguments``; asserts exit status 0, returns its output."""
    environment = dict(os.environ, PYTHONPATH=REPOSITORY, OMP_NUM_THREADS="1")
    command = [sys.executable, os.path.join(REPOSITORY, "benchmarks", script), *map(str, arguments)]
    done = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def test_ali_ccp_converter(tmp_path):
    done = run_benchmark("bench_ali_ccp_converter.py", "--lines", 2000, "--blocks", 50, cwd=tmp_path)
    assert re.search(
        rf"^\s+2,000\s+200\s+\d+\s+{NUMBER}\s+{NUMBER}\s+\d+MB\s+\d+MB\s+-?\d+MB", done.stdout, re.M
    )
    (measured,) = json.loads(done.stderr[done.stderr.rindex("\n[") :])  # the JSON after the stage lines
    converted = sum(measured["rows"].values()) + sum(measured["dropped"].values())
    assert converted == 2000 + 200 and measured["peak_rss_mb"] > 0
    assert os.listdir(tmp_path) == []  # nothing written into the working folder


def test_importer(tmp_path):
    done = run_benchmark("bench_importer.py", "--rows", 2000, cwd=tmp_path)
    assert re.search(rf"^\s+2,000\s+1,000\s+\d+\s+{NUMBER}\s+{NUMBER}\s+\d+MB$", done.stdout, re.M)


@pytest.mark.slow
def test_load(tiny_data_path, tmp_path):
    done = run_benchmark("bench_load.py", "--dataset", TINY, "--data-path", tiny_data_path, cwd=tmp_path)
    for phase in ("first", "cached", "train"):
        assert re.search(rf"{phase}: rows=4000 create_dataset={NUMBER}s .* peak_rss={NUMBER}GiB", done.stdout)
    assert re.search(rf"training_starts={NUMBER}s", done.stdout)
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(results) == {"first", "cached", "train"}
    assert all(result["rows"] == 4000 and result["peak_rss_bytes"] > 0 for result in results.values())


@pytest.mark.slow
def test_step(tiny_data_path, tmp_path):
    done = run_benchmark(
        "bench_step.py",
        f"--data-path={tiny_data_path}",  # the --key=value form reaches no RecBole Config
        f"--dataset={TINY}",
        "--model=MLP",
        "--batches=2",
        "--repeats=1",
        "--compile-backend=eager",  # torch.compile without code generation: seconds
        cwd=tmp_path,
    )
    for width in (128, 64, 32):
        assert re.search(
            rf"2000 x {width} .* nn.Dropout {NUMBER}, layers.Dropout {NUMBER} \({NUMBER}x\)", done.stdout
        )
    assert re.search(rf"^  eager\s+: first 3 steps {NUMBER} s, {NUMBER} rows/s", done.stdout, re.M)
    assert re.search(
        rf"^  compiled \(eager\)\s+: first 3 steps {NUMBER} s, {NUMBER} rows/s", done.stdout, re.M
    )


@pytest.mark.slow
def test_cstwa(tiny_data_path, tmp_path):
    done = run_benchmark(
        "bench_cstwa.py",
        "--nodes",
        2000,
        "--indexes",
        "exact",
        "hnsw",
        "--dataset",
        TINY,
        "--data-path",
        tiny_data_path,
        cwd=tmp_path,
    )
    steps = {
        "graph exact": "edges",
        "graph hnsw": "edge recall",
        f"stage pretrain \\({TINY}\\)": "",
        f"stage graphs \\({TINY}\\)": "",
        "train epoch, sm_mode epoch": "batches",
        "train epoch, sm_mode batch": "batches",
        "train epoch, use_sm False": "batches",
    }
    for step, note in steps.items():
        assert re.search(rf"^{step}.*?\s{NUMBER}\s+{NUMBER}\s+{note}", done.stdout, re.M), step


@pytest.mark.slow
def test_ddp(tiny_data_path, tmp_path):
    done = run_benchmark(
        "bench_ddp.py",
        "--model=MLP",
        "--nproc=2",
        f"--port={free_port()}",
        "--epochs=1",
        f"--dataset={TINY}",
        f"--data_path={tiny_data_path}",
        "--benchmark_filename=['train','valid','test']",
        f"--checkpoint_dir={tmp_path / 'saved'}",
        cwd=tmp_path,
    )
    line = re.search(
        rf"MLP nproc=2: epoch train s \[{NUMBER}\], fit s {NUMBER}, peak RSS MiB a rank \[{NUMBER}, {NUMBER}\], "
        r"PSS at the end MiB a rank \[.*\], test (\{.*?\})",
        done.stdout,
    )
    assert line, done.stdout
    assert "'purchase_auc': " in line.group(1)


@pytest.mark.slow
def test_predict(tmp_path):
    arguments = (
        *("--data-path", tmp_path / "data", "--dataset", "bench", "--n-impressions", 4000),
        *("--n-users", 200, "--n-items", 200, "--repeats", 2, "--runs", 1),
    )
    done = run_benchmark("bench_predict.py", *arguments, cwd=tmp_path)
    assert (tmp_path / "data" / "bench" / "bench.test.inter").is_file()  # generated, as asked
    for figure in ("loop rows/s", "process rows/CPU-s", "process wall s", "peak RSS MiB"):
        assert re.search(rf"^  {re.escape(figure)}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$", done.stdout, re.M)
    exported = ["torchscript", "eager"]
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        exported.append("onnx")
    else:
        assert "ONNX left out" in done.stdout
    for batch in (1, 256, 400):  # 400: the whole test split, under the 4096 asked for
        for name in exported:
            assert re.search(
                rf"^\s+{batch} {name}\s+{NUMBER} / {NUMBER}\s+{NUMBER} / {NUMBER}\s+{NUMBER}$",
                done.stdout,
                re.M,
            )
        for name in set(exported) - {"eager"}:
            assert f"batch {batch}: max |{name} - eager|: p_click" in done.stdout
    # Run again in the same folders: its exports replace the first run's (an export's folder
    # holds only what that export writes, so the ONNX one is not inside the TorchScript one).
    again = run_benchmark("bench_predict.py", *arguments, cwd=tmp_path)
    assert "batch 1: max |torchscript - eager|: p_click" in again.stdout


@pytest.mark.slow
def test_scale(tmp_path):
    done = run_benchmark(
        "bench_scale.py",
        *("--data-path", tmp_path / "data", "--dataset", "big", "--n-impressions", 4000),
        *("--n-users", 200, "--n-items", 300, "--small-vocabulary", 100),
        *("--models", "MLP", "CSTWA", "DeepFM", "--one-process", "--compare-dense", "--compare-columns"),
        *("--max-train-rows", 1000, "--max-eval-rows", 1000, "--bare-batches", 2, "--repeats", 1),
        *("--recall-queries", 50, "--json", tmp_path / "scale.json"),
        cwd=tmp_path,
    )
    with open(tmp_path / "scale.json", encoding="utf-8") as file:
        results = {(result["model"], result["dataset"]): result for result in json.load(file)}
    assert set(results) == {
        (model, dataset) for model in ("MLP", "CSTWA", "DeepFM") for dataset in ("big", "big-smallvocab")
    }
    for result in results.values():
        assert "error" not in result, result  # a failing model is reported, not raised
        assert result["train_rows_s"] > 0 and result["eval_rows_s"] > 0 and result["vs_bare"] > 0
    cstwa = results[("CSTWA", "big")]
    assert cstwa["pretrain_s"] > 0 and cstwa["graph_s"] > 0 and set(cstwa["recall"]) == {"user", "item"}
    assert results[("MLP", "big")]["dense_train_rows_s"] > 0
    for model in ("MLP", "CSTWA"):
        for key in ("index_tables", "columns"):
            assert results[(model, "big")][f"{key}_prebuilt_rows_s"] > 0
            assert results[(model, "big")][f"{key}_eval_rows_s"] > 0
    assert "columns_prebuilt_rows_s" not in results[("DeepFM", "big")]  # RecBole's: no such layers
    assert "index tables" in done.stdout
    for model in ("MLP", "CSTWA", "DeepFM"):
        assert re.search(
            rf"^{model}\s+big\s+{NUMBER}\s+\d+\s+.*{NUMBER}\s+{NUMBER}  1 threads, cpu", done.stdout, re.M
        )
    assert "CSTWA epoch extrapolated" in done.stdout


@pytest.mark.slow
def test_unseen_ids(tmp_path):
    done = run_benchmark(
        "bench_unseen_ids.py",
        *("--data-path", tmp_path / "data", "--dataset", "cold", "--n-impressions", 4000),
        *("--n-users", 300, "--n-items", 300, "--models", "MLP", "--min-counts", 0, 2),
        *("--seeds", 2020, "--epochs", 1, "--json", tmp_path / "unseen.jsonl"),
        cwd=tmp_path,
    )
    assert (tmp_path / "data" / "cold" / "cold.test.inter").is_file()  # generated, as asked
    with open(tmp_path / "unseen.jsonl", encoding="utf-8") as file:
        results = [json.loads(line) for line in file]
    assert [(r["model"], r["min_count"]) for r in results] == [("MLP", 0), ("MLP", 2)]
    for result in results:
        assert set(result["views"]) == {"evaluation", "predict"}
        for groups in result["views"].values():
            assert set(groups) == {"known", "new user", "new item", "both new"}
            assert groups["new user"]["rows"] > 0 and groups["new item"]["rows"] > 0
            assert 0 < groups["known"]["mean_p_purchase"] < 1
        # known rows score alike in both views; new users are scored otherwise at predict time
        evaluation, predict = result["views"]["evaluation"], result["views"]["predict"]
        assert evaluation["known"]["mean_p_click"] == pytest.approx(
            predict["known"]["mean_p_click"], rel=1e-5
        )
        assert evaluation["new user"]["mean_p_click"] != predict["new user"]["mean_p_click"]
    for min_count in (0, 2):
        assert len(re.findall(rf"^MLP\s+{min_count}\s+{NUMBER}\s+{NUMBER} \| ", done.stdout, re.M)) == 2
    assert "groups (test rows, purchases): known" in done.stdout


@pytest.mark.parametrize(
    ("script", "function", "call"),
    [
        ("bench_unseen_ids.py", "base_settings", lambda f, args: f(args, "work")),
        ("bench_scale.py", "_config_dict", lambda f, args: f(args, "data")),
    ],
)
def test_a_benchmarks_set_reads_values_as_the_command_line_does(script, function, call):
    """``--set KEY=VALUE`` is read by the command line's rule (values.parse_assignments): a folder
    named by digits stays text, ``True`` is a bool, a path is its text."""
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location(script[:-3], os.path.join(REPOSITORY, "benchmarks", script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = SimpleNamespace(
        data_path="data", dataset="d", epochs=1, stopping_step=1, cache_dir="cache",
        set=["checkpoint_dir=2024", "use_sm=True", "min_count=2", "model_file=saved/best.pth", "tower_dropout=[0.1,0.3]"],
    )  # fmt: skip
    settings = call(getattr(module, function), args)
    assert settings["checkpoint_dir"] == "2024" and settings["use_sm"] is True
    assert settings["min_count"] == 2 and settings["model_file"] == "saved/best.pth"
    assert settings["tower_dropout"] == [0.1, 0.3]
