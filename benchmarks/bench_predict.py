"""Scoring cost: run_predict.py on a 4M-impression Ali-CCP-shaped dataset's test split, and the
exported TorchScript and ONNX models against eager torch.

1. The dataset (``--dataset``, default ``s4m``: 4M impressions, 0.2M users, 0.5M items, the
   generator's default 80/10/10 split) is generated when its folder is missing
   (``--n-impressions``), as ``bench_scale.py`` does.
2. A model is trained for one epoch (``run_recbole_cstwa.py --epochs=1``), unless
   ``--model_file`` gives a checkpoint.
3. The test split is written as CSV (the header without RecBole's ``:type``, labels kept).
4. ``run_predict.py`` scores that CSV with one thread under ``/usr/bin/time -v``, ``--runs``
   times: its scoring loop's rows/s over wall and CPU time (as it reports them), the whole
   process's (start-up, loading the checkpoint and the vocabularies included) over wall and CPU
   time (user + system: rows/s a core), peak RSS; min and median over the runs.
   Before each run, in this process, the bare arithmetic of the model's shape is timed on the
   same rows: ONE gather of the tower input's fields (the user's and the item's fields and one
   context field: ``input width / embedding_size`` of them) from one table as large as the
   model's token table, then the model's two towers (``tower_hidden_size``, ReLU, a sigmoid
   head each), ``--batch-size`` rows a call, one thread; printed as rows a CPU second, and the
   scoring loop's rows a CPU second over it (``loop / bare``: the share of the arithmetic's
   rate the whole loop reaches, reading, mapping and writing included). Timed in the same run,
   so that both see the same machine.
5. Exported vs eager: ``--repeats`` calls of the TorchScript model, of the ONNX model in
   onnxruntime (one thread; left out when the onnx extra is not installed) and of the eager
   module as exported (the compact tables; ``run_predict.py`` holds a row a user and an item,
   ``ServingModule(entity_vectors=True)``; ``torch.inference_mode``) on batches of 1, 256 and
   4096 test rows (fewer when the test split is smaller), one thread, in ``--runs`` alternating
   rounds: the median wall and CPU time of a call in each round, min and
   median over rounds, and rows a CPU second at the median.

    OMP_NUM_THREADS=1 python benchmarks/bench_predict.py --data-path ../data --dataset s4m \\
        --n-impressions 4000000
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.csv as pa_csv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def ensure_dataset(args):
    folder = os.path.join(args.data_path, args.dataset)
    if os.path.isfile(os.path.join(folder, f"{args.dataset}.test.inter")):
        return folder
    if args.n_impressions is None:
        raise SystemExit(f"error: no dataset [{folder}]: give --n-impressions to generate it.")
    command = [
        sys.executable, "-m", "recbole_cstwa.commands.generate", "generate", "--output", args.data_path,
        "--name", args.dataset, "--n-impressions", str(args.n_impressions), "--n-users", str(args.n_users),
        "--n-items", str(args.n_items),
    ]  # fmt: skip
    print("generating:", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    return folder


def train(args, work):
    command = [
        sys.executable, os.path.join(ROOT, "run_recbole_cstwa.py"), f"--model={args.model}",
        f"--dataset={args.dataset}", f"--data_path={os.path.abspath(args.data_path)}", "--epochs=1",
        "--show_progress=False", f"--checkpoint_dir={os.path.join(work, 'saved')}", "--state=WARNING",
        "--benchmark_filename=['train', 'valid', 'test']",
    ]  # fmt: skip
    print("training:", " ".join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=work)
    print(f"trained in {time.perf_counter() - start:.1f}s")
    return re.search(r"checkpoint: (\S+?\.pth)", done.stdout).group(1)


def test_split_as_csv(folder, dataset, path):
    """The atomic test file as CSV (plain header), streamed."""
    source = os.path.join(folder, f"{dataset}.test.inter")
    with open(source, encoding="utf-8") as file:
        header = file.readline().rstrip("\n").split("\t")
    names = [name.split(":")[0] for name in header]
    reader = pa_csv.open_csv(
        source,
        read_options=pa_csv.ReadOptions(column_names=names, skip_rows=1),
        parse_options=pa_csv.ParseOptions(delimiter="\t"),
        convert_options=pa_csv.ConvertOptions(column_types={name: pa.string() for name in names}),
    )
    rows = 0
    with pa_csv.CSVWriter(
        path, reader.schema, write_options=pa_csv.WriteOptions(quoting_style="none")
    ) as writer:
        for batch in reader:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def bare_two_towers(model_file, folder, dataset, batch_size):
    """``run()``: the bare arithmetic of the model's shape over the test split's rows (module doc),
    returning its rows a CPU second."""
    import torch
    import torch.nn as nn

    from recbole_cstwa.serving.module import input_fields
    from recbole_cstwa.serving.predict import FieldVocabulary
    from recbole_cstwa.serving.trained import load_trained

    torch.set_num_threads(1)
    trained = load_trained(model_file)
    config, data = trained.config, trained.dataset
    size = config["embedding_size"]
    width = trained.model.input_size()
    token_fields, _ = input_fields(data, config)
    table = pa_csv.read_csv(
        os.path.join(folder, f"{dataset}.test.inter"), parse_options=pa_csv.ParseOptions(delimiter="\t")
    )
    names = {name.split(":")[0]: name for name in table.column_names}
    ids = {
        field: torch.from_numpy(
            FieldVocabulary(data.vocabulary(field)).indices(table.column(names[field]).cast(pa.string()))[0]
        )
        for field in token_fields
    }
    columns = {}  # the user's fields, the item's, then the context fields, as joined by id
    for id_field, feat in (
        (data.uid_field, data.get_user_feature()),
        (data.iid_field, data.get_item_feature()),
    ):
        columns[id_field] = ids[id_field]
        if feat is not None:
            columns.update({field: feat[field][ids[id_field]] for field in feat.columns if field != id_field})
    columns.update({field: ids[field] for field in token_fields if field not in columns})
    taken = list(columns)[: width // size]
    offsets = torch.tensor([0] + [data.num(field) for field in taken[:-1]]).cumsum(0)
    rows = torch.stack([columns[field] for field in taken], dim=1) + offsets
    every_token = sum(data.num(f) for f, kind in data.field2type.items() if kind.value == "token")
    embeddings = torch.randn(every_token, size) * 0.01  # as large as the model's token table

    def tower():
        layers, previous = [], width
        for hidden in config["tower_hidden_size"]:
            layers += [nn.Linear(previous, hidden), nn.ReLU()]
            previous = hidden
        return nn.Sequential(*layers, nn.Linear(previous, 1))

    click, purchase = tower().eval(), tower().eval()

    def run():
        start = time.process_time()
        with torch.inference_mode():
            for low in range(0, len(rows), batch_size):
                x = nn.functional.embedding(rows[low : low + batch_size], embeddings).flatten(1)
                torch.stack([torch.sigmoid(click(x)), torch.sigmoid(purchase(x))], dim=1)
        return len(rows) / (time.process_time() - start)

    run()  # warm-up
    return run


def score_file(model_file, source, output, batch_size):
    command = [
        "/usr/bin/time", "-v", sys.executable, os.path.join(ROOT, "run_predict.py"), f"--model_file={model_file}",
        f"--input={source}", f"--output={output}", "--threads=1", f"--batch_size={batch_size}",
    ]  # fmt: skip
    print("scoring:", " ".join(command), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    print(done.stdout.strip())

    def field(name):
        return float(re.search(rf"{re.escape(name)}: ([\d.:]+)", done.stderr).group(1).split(":")[-1])

    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", done.stderr).group(1)
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
    scored = re.search(r"scored (\d+) rows in ([\d.]+)s .*CPU ([\d.]+)s", done.stdout)
    rows = int(scored.group(1))
    cpu = field("User time (seconds)") + field("System time (seconds)")
    return {
        "loop rows/s": rows / float(scored.group(2)),
        "loop rows/CPU-s": rows / float(scored.group(3)),
        "process rows/s": rows / seconds,
        "process rows/CPU-s": rows / cpu,
        "process wall s": seconds,
        "peak RSS MiB": field("Maximum resident set size (kbytes)") / 1024,
    }


def exported_vs_eager(model_file, folder, dataset, repeats, runs, work):
    import torch

    from recbole_cstwa.errors import InputError
    from recbole_cstwa.serving.export import export_model, onnx_modules, onnx_runner
    from recbole_cstwa.serving.module import ServingModule
    from recbole_cstwa.serving.predict import FieldVocabulary
    from recbole_cstwa.serving.trained import load_trained

    torch.set_num_threads(1)
    trained = load_trained(model_file)
    export_dir = os.path.join(work, "exported")  # the benchmark's folder, not the checkpoint's
    export_model(trained, export_dir)
    serving = ServingModule(trained).eval()
    table = pa_csv.read_csv(
        os.path.join(folder, f"{dataset}.test.inter"),
        read_options=pa_csv.ReadOptions(block_size=1 << 20),
        parse_options=pa_csv.ParseOptions(delimiter="\t"),
    ).slice(0, 4096)
    names = {name.split(":")[0]: name for name in table.column_names}

    tokens = torch.stack(
        [
            torch.from_numpy(
                FieldVocabulary(trained.dataset.vocabulary(f), serving.unseen_index[f]).indices(
                    table.column(names[f]).cast(pa.string())
                )[0]
            )
            for f in serving.token_fields
        ],
        dim=1,
    )
    floats = torch.zeros(len(tokens), len(serving.float_fields))
    models = {"torchscript": torch.jit.load(os.path.join(export_dir, "model.pt"))}
    try:
        onnx_modules()
    except InputError as missing:
        print(f"ONNX left out: {missing}")
    else:
        onnx_dir = export_dir + "-onnx"  # beside: an export's folder holds only what it writes
        export_model(trained, onnx_dir, "onnx")
        models["onnx"] = onnx_runner(os.path.join(onnx_dir, "model.onnx"))[0]  # one thread
    models["eager"] = serving
    medians = {}  # (batch, model) -> (wall, CPU) median latency of each round
    with torch.inference_mode():
        for batch in sorted({min(size, len(tokens)) for size in (1, 256, 4096)}):  # capped by the split
            inputs = (tokens[:batch], floats[:batch])
            for model in models.values():
                for _ in range(3):
                    model(*inputs)  # warm-up (the TorchScript profiler optimises on the first calls)
            for _ in range(runs):  # rounds alternate the models: a busy spell hits all
                for name, model in models.items():
                    walls, cpus = [], []
                    for _ in range(repeats):
                        start, cpu_start = time.perf_counter(), time.process_time()
                        model(*inputs)
                        walls.append(time.perf_counter() - start)
                        cpus.append(time.process_time() - cpu_start)
                    round_medians = (statistics.median(walls), statistics.median(cpus))
                    medians.setdefault((batch, name), []).append(round_medians)
            for name, model in models.items():
                if name != "eager":
                    columns = (model(*inputs) - serving(*inputs)).abs().max(0).values.tolist()
                    shown = ", ".join(f"{c} {d:.2e}" for c, d in zip(serving.output_names, columns))
                    print(f"batch {batch}: max |{name} - eager|: {shown}")
    return medians


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-path", default="dataset")
    parser.add_argument("--dataset", default="s4m")
    parser.add_argument("--n-impressions", type=int, default=None, help="generate the dataset when missing")
    parser.add_argument("--n-users", type=int, default=200_000)
    parser.add_argument("--n-items", type=int, default=500_000)
    parser.add_argument("--model", default="MLP")
    parser.add_argument("--model_file", default=None, help="a checkpoint of a model trained on --dataset")
    parser.add_argument("--work", default=None, help="folder for the checkpoint, CSV, scores and exports")
    parser.add_argument("--repeats", type=int, default=50, help="calls timed a round")
    parser.add_argument("--runs", type=int, default=3, help="scoring runs, and rounds of the model timings")
    parser.add_argument(
        "--batch-size", type=int, default=8192, help="rows a call of the loop and the bare net"
    )
    args = parser.parse_args()
    folder = ensure_dataset(args)
    work = os.path.abspath(args.work or os.path.join(args.data_path, "bench-predict"))
    os.makedirs(work, exist_ok=True)
    model_file = args.model_file or train(args, work)
    source = os.path.join(work, f"{args.dataset}.test.csv")
    rows = test_split_as_csv(folder, args.dataset, source)
    print(f"test split: {rows} rows, {os.path.getsize(source) / 2**20:.0f} MiB of CSV")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    print(f"commit {commit or 'unknown'}; model file {os.path.basename(model_file)}")
    bare = bare_two_towers(model_file, folder, args.dataset, args.batch_size)
    runs = []
    for _ in range(args.runs):  # alternated: a busy spell hits both
        bare_rate = bare()
        runs.append(score_file(model_file, source, os.path.join(work, "scores.parquet"), args.batch_size))
        runs[-1]["bare rows/CPU-s"] = bare_rate
        runs[-1]["loop / bare"] = runs[-1]["loop rows/CPU-s"] / bare_rate
    print(
        f"run_predict.py, 1 thread, {args.runs} runs ({rows} rows, {args.batch_size} a call): min / median / max"
    )
    for name in runs[0]:
        values = [run[name] for run in runs]
        digits = 3 if name == "loop / bare" else 1
        print(
            f"  {name:<20} {min(values):>12,.{digits}f} {statistics.median(values):>12,.{digits}f} "
            f"{max(values):>12,.{digits}f}"
        )
    print(f"  load average {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    print("exported vs eager, 1 thread: the median call of each round; min / median over rounds")
    print(f"{'batch':>6} {'model':<11} {'wall ms a call':>18} {'CPU ms a call':>18} {'rows a CPU-s':>14}")
    timings = exported_vs_eager(model_file, folder, args.dataset, args.repeats, args.runs, work)
    for (batch, name), medians in timings.items():
        walls, cpus = [m[0] * 1000 for m in medians], [m[1] * 1000 for m in medians]
        print(
            f"{batch:>6} {name:<11} {min(walls):>8.3f} / {statistics.median(walls):<7.3f} "
            f"{min(cpus):>8.3f} / {statistics.median(cpus):<7.3f} {batch / statistics.median(cpus) * 1000:>14,.0f}"
        )


if __name__ == "__main__":
    main()
