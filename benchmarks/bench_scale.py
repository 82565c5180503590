"""Training cost at real size: does a step cost the same with Ali-CCP's vocabularies?

For each model (plugin MLP, AITM, ESCM2, DCMT, DDPO, NISE, CSTWA and RecBole's DeepFM), on an Ali-CCP-shaped dataset
(``--dataset``, generated with ``recbole_cstwa.tools.generator`` when its folder is missing) and on
its small-vocabulary twin (``--small-dataset``: the same row count, 10K users / 10K items), each
model in a fresh process:

- ``load s`` / ``load MiB``: dataset loading and splitting (``create_dataset`` +
  ``data_preparation``) and the process's peak RSS after it;
- ``pretrain s`` / ``graph s`` (CSTWA): its pre-training stage over every training row (reused
  from the artifact cache under ``--cache-dir`` when present: then ``cached``) and its graph stage
  (always rebuilt, with the configured ``graph_index``), with the graphs' edge recall against an
  exact search for ``--recall-queries`` sampled nodes a graph;
- ``train rows/s``: RecBole's ``_train_epoch`` over the real data loader (batch collation
  included), ``--max-train-rows`` rows a pass, best of ``--repeats`` passes over the next
  batches of one shuffled epoch (its shuffle drawn once, before the timed passes);
- ``refresh s`` (CSTWA): one refresh of the Structure Migrator's ``P`` over every user and item
  (once an epoch in training). The timed steps run with that ``P`` held and no refresh inside
  them (a short timed window would otherwise carry a whole epoch's refresh); the extrapolated
  epoch adds it once;
- ``eval rows/s``: ``trainer.evaluate`` on the first ``--max-eval-rows`` validation rows;
- ``vs bare``: on the same pre-built batches, the trainer's ``_train_epoch`` rows/s over a bare
  loop's (``zero_grad``; ``sum(calculate_loss)``; ``backward``; ``step``) of the same model
  object and optimizer, best of ``--repeats`` alternated runs each;
- ``large/small``: train rows/s on ``--dataset`` over that on ``--small-dataset``.
- with ``--compare-columns`` (the plugin's models): the same model's training and evaluation
  rows/s with its embedding layers reading the user's and item's token features from the
  columns the data loader joins (the look-up before the per-user / per-item index tables:
  ``FieldEmbedding`` without them), alternated with the index tables, best of ``--repeats``
  each, on the same pre-built batches and the same validation rows.

    python benchmarks/bench_scale.py --data-path ../data --dataset s4m \\
        --n-impressions 4000000 --n-users 200000 --n-items 500000 --max-train-rows 200000

Settings after ``--set`` go to every model's config (e.g. ``--set embedding_update=dense``). The
device comes from the config (``--set device=cuda`` / RecBole's ``use_gpu``). Timings depend on
the machine's load: compare runs taken back to back.
"""

import argparse
import itertools
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

MODELS = ("MLP", "AITM", "ESCM2", "DCMT", "DDPO", "NISE", "CSTWA", "DeepFM")


class LimitedLoader:
    """``max_batches`` batches of a RecBole data loader; other attributes pass through.

    With ``shared``, the batches come from one iterator kept across passes (the next batches of
    the same shuffled epoch): the epoch's shuffle (a ``randperm`` over every training row,
    0.1-0.2 s at 3.2M rows) is then drawn once, as in a real epoch, not once a timed pass.
    """

    _iterators = {}

    def __init__(self, loader, max_batches, shared=False):
        self.loader = loader
        self.max_batches = max_batches
        self.shared = shared

    def _batches(self):
        if not self.shared:
            yield from self.loader
            return
        while len(self.loader):
            iterator = self._iterators.setdefault(id(self.loader), iter(self.loader))
            for batch in iterator:  # noqa: UP028 (yield from would close the shared iterator)
                yield batch
            del self._iterators[id(self.loader)]  # epoch done: a new shuffle

    def __iter__(self):
        return itertools.islice(self._batches(), self.max_batches)  # no batch drawn beyond these

    def __len__(self):
        return min(len(self.loader), self.max_batches)

    def __getattr__(self, name):
        return getattr(self.loader, name)


class PrebuiltBatches(list):
    """Pre-built batches, read by the trainer like a data loader (no shuffling)."""

    shuffle = False


def _config_dict(args, dataset):
    from recbole_cstwa.values import parse_assignments

    settings = {
        "dataset": dataset,
        "data_path": args.data_path,
        "benchmark_filename": ["train", "valid", "test"],
        "show_progress": False,
        "state": "ERROR",
        "checkpoint_dir": args.cache_dir,
        "eval_batch_size": 20000,
    }
    settings.update(parse_assignments(args.set, "--set"))  # read as data, as on a command line
    return settings


def _edge_recall(representations, graph, top_k, queries, seed=0):
    """Share of an exact cosine top-K search's edges the graph holds, over sampled nodes.

    ``graph`` is the model's :class:`~recbole_cstwa.model.multitask.cstwa.structure.RowGraph`. The exact search
    (faiss ``IndexFlatIP`` on L2-normalised rows) runs over every node for ``queries`` sampled
    query nodes (the padding row 0 excluded); the node's K-1 nearest other nodes are compared
    (the self edge is always kept). Edges whose weight was cut to 0 (negative cosine) count as
    missed.
    """
    import faiss

    vectors = np.ascontiguousarray(representations[1:], dtype=np.float32).copy()
    faiss.normalize_L2(vectors)
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    _, exact = index.search(vectors[sample], top_k + 1)
    pointers = graph.row_pointers.cpu().numpy()
    columns = graph.columns.cpu().numpy()
    found = total = 0
    for query, neighbours in zip(sample, exact):
        wanted = [int(n) + 1 for n in neighbours if n >= 0 and n != query][: top_k - 1]
        held = set(columns[pointers[query + 1] : pointers[query + 2]].tolist())
        found += sum(node in held for node in wanted)
        total += len(wanted)
    return found / max(total, 1)


def _rows_per_second(run, rows):
    start = time.perf_counter()
    run()
    return rows / (time.perf_counter() - start)


def bench_model(args, model_name, dataset, measure_graph, loaded=None):
    """One model on one dataset, in this process. Returns a dict of measurements.

    ``loaded``: a dict shared by the models of one process (``--one-process``): the dataset is
    loaded by the first model and reused by the others (their load figures are the first's).
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    from recbole.utils import init_seed

    from recbole_cstwa.config import Config
    from recbole_cstwa.data import create_dataset
    from recbole_cstwa.registry import get_model, get_trainer

    try:  # the plugin's own data preparation where it has one, else RecBole's
        from recbole_cstwa.data import data_preparation
    except ImportError:
        from recbole.data import data_preparation

    os.chdir(args.work_dir)  # RecBole writes log/ and saved/ into the working directory
    result = {"model": model_name, "dataset": dataset}
    config = Config(model=model_name, config_dict=_config_dict(args, dataset))
    init_seed(config["seed"], config["reproducibility"])
    start = time.perf_counter()
    if loaded is not None and "splits" in loaded:  # RecBole's build() runs once a dataset object
        train_data, valid_data = loaded["splits"]
        result["load_s"], result["load_mib"] = loaded["load_s"], loaded["load_mib"]
        result["load_shared"] = True
    else:
        train_data, valid_data, _ = data_preparation(config, create_dataset(config))
        result["load_s"] = time.perf_counter() - start
        result["load_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if loaded is not None:
            loaded.update(
                splits=(train_data, valid_data), load_s=result["load_s"], load_mib=result["load_mib"]
            )
    result["train_rows_total"] = len(train_data._dataset)
    result["threads"] = torch.get_num_threads()
    result["device"] = str(config["device"])

    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    batch_size = config["train_batch_size"]

    if model_name == "CSTWA":
        stages = dict(trainer.pre_training_stages())
        start = time.perf_counter()
        stages["pretrain"](train_data, valid_data if not args.skip_pretrain_auc else None, False)
        result["pretrain_s"] = time.perf_counter() - start
        result["pretrain_cached"] = any(e[:2] == ("pretrain", "loaded") for e in trainer.cache_events)
        if measure_graph:
            trainer.config["cstwa_cache"] = False  # always rebuild the graphs
            start = time.perf_counter()
            stages["graphs"](train_data, valid_data, False)
            result["graph_s"] = time.perf_counter() - start
            trainer.config["cstwa_cache"] = True
            from recbole_cstwa.model.multitask.cstwa.structure import group_representations

            recalls = {}
            for group in ("user", "item"):
                with torch.no_grad():
                    representations = (
                        group_representations(
                            trainer.pretrained_embedding, model.entity_features(group), group
                        )
                        .cpu()
                        .numpy()
                    )
                recalls[group] = _edge_recall(
                    representations, model.graph(group), config["graph_top_k"], args.recall_queries
                )
            result["recall"] = recalls
            result["graph_index"] = getattr(trainer, "graph_index_used", config["graph_index"])
        else:  # the graphs from the artifact cache (built once by a run that measured them)
            stages["graphs"](train_data, valid_data, False)
        start = time.perf_counter()
        model.update_structure()
        result["refresh_s"] = time.perf_counter() - start

    def train_epoch(loader, trainer=trainer):
        if model_name == "CSTWA":  # steady state: P held, no refresh inside the timed steps
            trainer.training_steps = 0
            trainer.sm_first_epoch_refreshes = 0  # nor the first epoch's spread refreshes
        trainer._train_epoch(loader, 0)

    max_batches = max(1, args.max_train_rows // batch_size)
    limited = LimitedLoader(train_data, max_batches, shared=True)
    rows = min(len(train_data._dataset), max_batches * batch_size)
    train_epoch(LimitedLoader(train_data, 2, shared=True))  # warm-up (and the epoch's shuffle)
    result["train_rows_s"] = max(
        _rows_per_second(lambda: train_epoch(limited), rows) for _ in range(args.repeats)
    )
    result["train_rows"] = rows

    # RecBole path vs a bare loop, same model object, optimizer and pre-built batches.
    batches = PrebuiltBatches(
        batch.to(config["device"]) for batch in LimitedLoader(train_data, args.bare_batches)
    )
    bare_rows = sum(len(batch) for batch in batches)
    optimizer = trainer.optimizer

    def bare_loop():
        model.train()
        for interaction in batches:
            optimizer.zero_grad()
            losses = model.calculate_loss(interaction)
            loss = sum(losses) if isinstance(losses, tuple) else losses
            loss.backward()
            optimizer.step()

    bare, recbole = [], []
    for _ in range(args.repeats):
        bare.append(_rows_per_second(bare_loop, bare_rows))
        recbole.append(_rows_per_second(lambda: train_epoch(batches), bare_rows))
    result["bare_rows_s"], result["recbole_rows_s"] = max(bare), max(recbole)
    result["vs_bare"] = max(recbole) / max(bare)

    eval_batches = max(1, args.max_eval_rows // config["eval_batch_size"])
    eval_rows = min(len(valid_data._dataset), eval_batches * config["eval_batch_size"])
    result["eval_rows_s"] = _rows_per_second(
        lambda: trainer.evaluate(LimitedLoader(valid_data, eval_batches), load_best_model=False), eval_rows
    )
    if args.compare_dense and hasattr(model, "make_embedding"):
        # The same model with embedding_update: dense (the previous updates), back to back.
        dense_config = Config(
            model=model_name, config_dict={**_config_dict(args, dataset), "embedding_update": "dense"}
        )
        init_seed(config["seed"], config["reproducibility"])
        dense_model = get_model(model_name)(dense_config, train_data._dataset).to(config["device"])
        if model_name == "CSTWA":  # the graphs built above
            for group in ("user", "item"):
                built, graph = model.structure[group], dense_model.structure[group]
                graph.row_pointers, graph.columns, graph.values = (
                    built.row_pointers,
                    built.columns,
                    built.values,
                )
        dense_trainer = get_trainer(config["MODEL_TYPE"], config["model"])(dense_config, dense_model)
        if model_name == "CSTWA":
            dense_model.update_structure()
        train_epoch(LimitedLoader(train_data, 2), dense_trainer)
        result["dense_train_rows_s"] = max(
            _rows_per_second(lambda: train_epoch(limited, dense_trainer), rows) for _ in range(args.repeats)
        )
        result["dense_prebuilt_rows_s"] = max(
            _rows_per_second(lambda: train_epoch(batches, dense_trainer), bare_rows)
            for _ in range(args.repeats)
        )
        result["sparse_prebuilt_rows_s"] = result["recbole_rows_s"]
    if args.compare_columns and hasattr(model, "make_embedding"):
        evaluate = lambda: trainer.evaluate(  # noqa: E731
            LimitedLoader(valid_data, eval_batches), load_best_model=False
        )
        compare_columns(model, lambda: train_epoch(batches), bare_rows, evaluate, eval_rows, result, args)
    result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def compare_columns(model, train, rows, evaluate, eval_rows, result, args):
    """Training (``train``: an epoch over pre-built batches) and evaluation rows/s with the
    embedding layers' per-user / per-item index tables and without them (reading the joined
    columns), alternated."""
    from recbole_cstwa.model.layers import FieldEmbedding

    layers = [layer for layer in model.modules() if isinstance(layer, FieldEmbedding)]
    by_id = [layer._entity_field for layer in layers]
    timings = {"index tables": ([], []), "joined columns": ([], [])}
    for _ in range(args.repeats):
        for name in timings:
            for layer, fields in zip(layers, by_id):
                layer._entity_field = fields if name == "index tables" else {}
            timings[name][0].append(_rows_per_second(train, rows))
            timings[name][1].append(_rows_per_second(evaluate, eval_rows))
    for layer, fields in zip(layers, by_id):
        layer._entity_field = fields
    result["index_tables_prebuilt_rows_s"] = max(timings["index tables"][0])
    result["columns_prebuilt_rows_s"] = max(timings["joined columns"][0])
    result["index_tables_eval_rows_s"] = max(timings["index tables"][1])
    result["columns_eval_rows_s"] = max(timings["joined columns"][1])


def _worker(args, model_names, dataset, measure_graph, queue):
    loaded = {} if len(model_names) > 1 else None
    for model_name in model_names:
        try:
            queue.put(bench_model(args, model_name, dataset, measure_graph, loaded))
        except Exception as error:  # reported in the table, the other models still run
            import traceback

            traceback.print_exc()
            queue.put({"model": model_name, "dataset": dataset, "error": f"{type(error).__name__}: {error}"})


def run_isolated(args, model_names, dataset, measure_graph):
    """Runs ``model_names`` on ``dataset`` in one fresh process; yields each model's result."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_worker, args=(args, model_names, dataset, measure_graph, queue))
    process.start()
    for _ in model_names:
        yield queue.get()
    process.join()


def ensure_dataset(args, name, n_users, n_items):
    folder = os.path.join(args.data_path, name)
    if os.path.isfile(os.path.join(folder, f"{name}.train.inter")):
        return
    if args.n_impressions is None:
        raise SystemExit(f"error: no dataset [{folder}]: give --n-impressions to generate it.")
    command = [
        sys.executable, "-m", "recbole_cstwa.commands.generate", "generate", "--output", args.data_path,
        "--name", name, "--n-impressions", str(args.n_impressions), "--n-users", str(n_users),
        "--n-items", str(n_items),
    ]  # fmt: skip
    print("generating:", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def _format(value, spec):
    return "-" if value is None else format(value, spec)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-path", default="dataset")
    parser.add_argument("--dataset", default="s4m")
    parser.add_argument("--small-dataset", default=None, help="default: <dataset>-smallvocab")
    parser.add_argument("--n-impressions", type=int, default=None, help="generate missing datasets")
    parser.add_argument("--n-users", type=int, default=200_000)
    parser.add_argument("--n-items", type=int, default=500_000)
    parser.add_argument("--small-vocabulary", type=int, default=10_000, help="users and items of the twin")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--max-train-rows", type=int, default=200_000)
    parser.add_argument("--max-eval-rows", type=int, default=200_000)
    parser.add_argument("--bare-batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recall-queries", type=int, default=20_000)
    parser.add_argument("--skip-graph", action="store_true", help="read CSTWA's graphs from the cache only")
    parser.add_argument("--skip-pretrain-auc", action="store_true")
    parser.add_argument("--skip-small", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--cache-dir", default=None, help="CSTWA artifact cache (default: <data-path>/bench-cache)"
    )
    parser.add_argument(
        "--compare-dense",
        action="store_true",
        help="also time each plugin model with embedding_update: dense, back to back",
    )
    parser.add_argument(
        "--compare-columns",
        action="store_true",
        help="also time the plugin's models reading user / item features from the joined columns",
    )
    parser.add_argument(
        "--one-process",
        action="store_true",
        help="load each dataset once for all models (faster; load figures and peak RSS then shared)",
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config would read this script's --key=value options as settings
    args.data_path = os.path.abspath(args.data_path)
    args.small_dataset = args.small_dataset or f"{args.dataset}-smallvocab"
    args.cache_dir = os.path.abspath(args.cache_dir or os.path.join(args.data_path, "bench-cache"))
    args.work_dir = tempfile.mkdtemp(prefix="bench_scale_")

    ensure_dataset(args, args.dataset, args.n_users, args.n_items)
    datasets = [args.dataset]
    if not args.skip_small:
        ensure_dataset(args, args.small_dataset, args.small_vocabulary, args.small_vocabulary)
        datasets.append(args.small_dataset)
    print(
        f"limits: training rows/s on the first {args.max_train_rows:,} training rows, evaluation on "
        f"the first {args.max_eval_rows:,} validation rows, bare-loop ratio on {args.bare_batches} "
        f"pre-built batches (best of {args.repeats}); settings {args.set}",
        flush=True,
    )
    results = {}
    for dataset in datasets:
        measure_graph = dataset == args.dataset and not args.skip_graph
        groups = [args.models] if args.one_process else [[name] for name in args.models]
        for group in groups:
            for result in run_isolated(args, group, dataset, measure_graph):
                results[(result["model"], dataset)] = result
                print(json.dumps(result), flush=True)

    header = (
        f"{'model':<8}{'dataset':<16}{'load s':>8}{'load MiB':>9}{'pretrain s':>11}{'graph s':>9}"
        f"{'train rows/s':>13}{'eval rows/s':>12}{'large/small':>12}{'vs bare':>9}  note"
    )
    print(header)
    print("-" * len(header))
    for (model_name, dataset), r in results.items():
        if "error" in r:
            print(f"{model_name:<8}{dataset:<16}  error: {r['error']}")
            continue
        small = results.get((model_name, args.small_dataset), {})
        ratio = (
            r["train_rows_s"] / small["train_rows_s"]
            if dataset == args.dataset and small.get("train_rows_s")
            else None
        )
        notes = [f"{r['threads']} threads, {r['device']}"]
        if r.get("dense_train_rows_s"):
            notes.append(
                f"dense updates: {r['dense_train_rows_s']:,.0f} rows/s, pre-built batches "
                f"{r['dense_prebuilt_rows_s']:,.0f} vs sparse {r['sparse_prebuilt_rows_s']:,.0f}"
            )
        if r.get("columns_prebuilt_rows_s"):
            notes.append(
                f"pre-built batches, index tables {r['index_tables_prebuilt_rows_s']:,.0f} vs joined columns "
                f"{r['columns_prebuilt_rows_s']:,.0f} rows/s; eval {r['index_tables_eval_rows_s']:,.0f} vs "
                f"{r['columns_eval_rows_s']:,.0f}"
            )
        if r.get("load_shared"):
            notes.append("load shared with the model above")
        if r.get("pretrain_cached"):
            notes.append("pretrain cached")
        if "recall" in r:
            notes.append(
                f"{r['graph_index']}: recall user {r['recall']['user']:.3f} item {r['recall']['item']:.3f}"
            )
        print(
            f"{model_name:<8}{dataset:<16}{r['load_s']:>8.1f}{r['load_mib']:>9.0f}"
            f"{_format(r.get('pretrain_s'), '.1f'):>11}{_format(r.get('graph_s'), '.1f'):>9}"
            f"{r['train_rows_s']:>13,.0f}{r['eval_rows_s']:>12,.0f}{_format(ratio, '.2f'):>12}"
            f"{r['vs_bare']:>9.2f}  {'; '.join(notes)}"
        )
        if model_name == "CSTWA" and dataset == args.dataset:
            refresh = r.get("refresh_s", 0.0)
            epoch_minutes = (r["train_rows_total"] / r["train_rows_s"] + refresh) / 60
            full_minutes = (38_000_000 / r["train_rows_s"] + refresh) / 60
            print(
                f"{'':<8}CSTWA epoch extrapolated from train rows/s and one P refresh ({refresh:.1f} s): "
                f"{epoch_minutes:.1f} min for this dataset's {r['train_rows_total']:,} rows, "
                f"{full_minutes:.1f} min for Ali-CCP's 38M"
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump([dict(r) for r in results.values()], file, indent=1)


if __name__ == "__main__":
    main()
