"""Wall time and peak memory of CSTWA's stages.

1. Graph building (Eqs. 2-5, :func:`recbole_cstwa.model.multitask.cstwa.structure.build_graph`) on synthetic
   representations of ``--nodes`` entities, each the concatenation of ``--fields`` field vectors
   of size 5 (an id field unique to the entity plus shared profile fields, as Eq. 2 builds them
   from an embedding table), with the exact faiss index and the approximate IVF and HNSW
   indexes; the approximate ones also report their neighbour recall against the exact search.
2. On a pre-split dataset (``--dataset``, default the embedded ``synthetic-ccp``; unless
   ``--skip-training``): the pre-training stage, the graph stage and one training epoch with ``sm_mode: epoch``, with
   ``sm_mode: batch`` and without the Structure Migrator (``use_sm: False``), through
   :class:`recbole_cstwa.model.multitask.cstwa.trainer.CSTWATrainer`, without the artifact cache.

Peak memory is the largest resident-set growth above the start of each step (sampled every
5 ms; CPU; each graph build runs in its own fresh process, the training steps one after the
other in this one, so memory freed by an earlier step and reused is not counted again), and the
CUDA peak when the model runs on a GPU.

    python benchmarks/bench_cstwa.py [--nodes 200000] [--indexes exact ivf hnsw] [--skip-training]
        [--dataset NAME --data-path FOLDER]
"""

import argparse
import multiprocessing
import os
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
import torch

from recbole_cstwa.model.multitask.cstwa.structure import build_graph

PROFILE_VOCABULARIES = (100, 13, 3, 7, 4, 4, 3, 97, 50, 20)  # shared fields after the id


class PeakMemory:
    """Largest RSS growth (MiB) while the block runs, sampled by a background thread."""

    def __enter__(self):
        self.process = psutil.Process(os.getpid())
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.began = time.perf_counter()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc_info):
        self.seconds = time.perf_counter() - self.began
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        self.mib = (self.peak - self.start) / 2**20
        self.cuda_mib = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
        return False

    def result(self):
        return self.seconds, self.mib, self.cuda_mib


def synthetic_representations(nodes, fields, dim=5, seed=0):
    """``(nodes, fields * dim)``: an own id vector plus shared profile field vectors a node."""
    rng = np.random.default_rng(seed)
    parts = [rng.normal(scale=0.01, size=(nodes, dim))]  # the id field: one vector per node
    for vocabulary in PROFILE_VOCABULARIES[: fields - 1]:
        table = rng.normal(scale=0.05, size=(vocabulary, dim))
        parts.append(table[rng.integers(0, vocabulary, nodes)])
    return np.concatenate(parts, axis=1).astype(np.float32)


GRAPH_SETTINGS = {"ivf_nlist": 1024, "nprobe": 16, "hnsw_m": 32, "hnsw_ef_search": 64}


def _graph_step(nodes, fields, top_k, index_type):
    """One graph build in a fresh process, so that its peak memory is its own."""
    vectors = synthetic_representations(nodes, fields)
    with PeakMemory() as memory:
        graph = build_graph(vectors, top_k, index_type=index_type, **GRAPH_SETTINGS)
    row, column = graph.indices().numpy()
    return memory.seconds, memory.mib, row * nodes + column


def bench_graphs(nodes, fields, top_k, indexes):
    rows, exact_edges = [], None
    context = multiprocessing.get_context("spawn")
    for index_type in indexes:
        with context.Pool(1) as pool:
            seconds, mib, edges = pool.apply(_graph_step, (nodes, fields, top_k, index_type))
        if index_type == "exact":
            exact_edges, note = edges, f"{len(edges):,} edges"
        elif exact_edges is not None:  # share of the exact graph's edges found
            note = f"edge recall {len(np.intersect1d(edges, exact_edges)) / len(exact_edges):.3f}"
        else:
            note = f"{len(edges):,} edges"
        rows.append((f"graph {index_type} ({nodes:,} nodes, K={top_k})", seconds, mib, None, note))
    return rows


def bench_training(checkpoint_dir, dataset, data_path):
    from recbole.utils import init_seed

    from recbole_cstwa.config import Config
    from recbole_cstwa.data import create_dataset, data_preparation
    from recbole_cstwa.model.multitask.cstwa import CSTWA
    from recbole_cstwa.model.multitask.cstwa.trainer import CSTWATrainer

    def setup(**overrides):
        config = Config(
            model="CSTWA",
            config_dict={
                "dataset": dataset,
                "benchmark_filename": ["train", "valid", "test"],
                "show_progress": False,
                "state": "ERROR",
                "cstwa_cache": False,
                "checkpoint_dir": checkpoint_dir,
                **({"data_path": data_path} if data_path else {}),
                **overrides,
            },
        )
        init_seed(config["seed"], config["reproducibility"])
        train_data, valid_data, _ = data_preparation(config, create_dataset(config))
        model = CSTWA(config, train_data._dataset).to(config["device"])
        return CSTWATrainer(config, model), train_data, valid_data

    rows = []
    trainer, train_data, valid_data = setup()
    for name, stage in trainer.pre_training_stages():
        with PeakMemory() as memory:
            stage(train_data, valid_data, False)
        rows.append((f"stage {name} ({dataset})", *memory.result(), ""))
    for mode in ("epoch", "batch"):
        trainer.model.sm_mode = mode
        with PeakMemory() as memory:
            if mode == "epoch":
                trainer.model.update_structure()  # a later epoch's start: P from the current embedding
            trainer._train_epoch(train_data, 0)
        rows.append((f"train epoch, sm_mode {mode}", *memory.result(), f"{len(train_data)} batches"))
    trainer, train_data, _ = setup(use_sm=False)
    with PeakMemory() as memory:
        trainer._train_epoch(train_data, 0)
    rows.append(("train epoch, use_sm False", *memory.result(), f"{len(train_data)} batches"))
    return rows


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=200_000, help="entities in the graph benchmark")
    parser.add_argument("--fields", type=int, default=8, help="fields a representation (Eq. 2)")
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--indexes", nargs="+", default=["exact", "ivf", "hnsw"])
    parser.add_argument("--skip-training", action="store_true", help="only the graph benchmark")
    parser.add_argument("--dataset", default="synthetic-ccp", help="a pre-split dataset (train/valid/test)")
    parser.add_argument(
        "--data-path", default=None, help="its parent folder (default: the embedded dataset's)"
    )
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config would read this script's --key=value options as settings
    data_path = args.data_path and os.path.abspath(args.data_path)

    print(f"torch threads {torch.get_num_threads()}, cores {os.cpu_count()}")
    rows = bench_graphs(args.nodes, args.fields, args.top_k, args.indexes)
    if not args.skip_training:
        with tempfile.TemporaryDirectory() as directory:
            previous = os.getcwd()
            os.chdir(directory)  # RecBole writes log folders into the working directory
            try:
                rows += bench_training(os.path.join(directory, "saved"), args.dataset, data_path)
            finally:
                os.chdir(previous)
    cuda = torch.cuda.is_available()
    header = f"{'step':<44}{'seconds':>9}{'peak MiB':>10}" + (f"{'CUDA MiB':>10}" if cuda else "") + "  note"
    print(header)
    print("-" * len(header))
    for name, seconds, mib, cuda_mib, note in rows:
        line = f"{name:<44}{seconds:>9.2f}{mib:>10.1f}"
        if cuda:
            line += f"{cuda_mib:>10.1f}" if cuda_mib is not None else f"{'-':>10}"
        print(f"{line}  {note}")


if __name__ == "__main__":
    main()
