"""``recbole-cstwa`` (or ``python run_recbole_cstwa.py``): train and evaluate a model, RecBole style.


    python run_recbole_cstwa.py --model=CSTWA [--dataset=synthetic-ccp] [--config_files="a.yaml b.yaml"]
                                [--nproc=N] [--world_size=W --ip=HOST --port=P --group_offset=R]
                                [--any_recbole_key=value ...]
    python run_recbole_cstwa.py --model_file=saved/MLP-....pth      # evaluate, no training
    python run_recbole_cstwa.py --resume=saved/MLP-....pth [--epochs=20]   # continue training
                                [--resume_in_place=True]

Prints the click and purchase metrics of the best validation epoch and of the test set, the best
epoch, the checkpoint that holds it and the run's log file. A checkpoint of this version brings its model, dataset and
settings (the command line overrides them); one of an earlier version needs them given.
``--resume`` continues the epochs of the checkpoint (``--epochs`` counts all of them, the
checkpoint's included) on the data it was trained on (checked: the same vocabularies); its
checkpoints go beside the given one under a new name, which starts as its copy, so the given file
is kept (``--resume_in_place=True`` writes over it); the table shows the kept epoch's validation
metrics, the checkpoint's own until a new epoch beats it (docs/serving.md).
``--nproc=2`` trains with 2 data-parallel processes (DDP: one a GPU with nccl, or CPU processes
with gloo); over several machines, each runs ``--nproc`` ranks from ``--group_offset`` of
``--world_size``, meeting at rank 0's ``--ip`` and ``--port``.
"""

import argparse

from recbole_cstwa.commands.cli import reported_errors
from recbole_cstwa.quick_start import evaluate_checkpoint, run_recbole_cstwa
from recbole_cstwa.tasks import COLD_ROWS, COLD_SUFFIX, split_metric_key


def metric_grid(values, title):
    """One split's metrics as a grid: a line a task, a column a metric (``click_auc`` under
    ``auc``); ``-`` where a task has no such metric."""
    grid = {}
    for key, value in values.items():
        task, metric = split_metric_key(key)
        grid.setdefault(task or "", {})[metric] = value
    columns = list(dict.fromkeys(metric for metrics in grid.values() for metric in metrics))
    widths = [max(8, len(column)) + 1 for column in columns]
    name_width = max(10, *(len(task) + 1 for task in grid))
    lines = [f"{title:<{name_width}}" + "".join(f"{c:>{w}}" for c, w in zip(columns, widths))]
    for task, metrics in grid.items():
        cells = [
            f"{metrics[column]:>{width}.4f}" if column in metrics else f"{'-':>{width}}"
            for column, width in zip(columns, widths)
        ]
        lines.append(f"{task:<{name_width}}" + "".join(cells))
    return lines


def format_results(result):
    """The test and valid metrics as grids (a line a task, a column a metric), the cold-start
    slice's apart, then the best epoch, its checkpoint and the run's log file."""
    splits = [("test", result["test_result"] or {}), ("valid", result["best_valid_result"] or {})]
    lines, cold = [], []
    for split, values in splits:
        whole = {k: v for k, v in values.items() if k != COLD_ROWS and not k.endswith(COLD_SUFFIX)}
        sliced = {k.removesuffix(COLD_SUFFIX): v for k, v in values.items() if k.endswith(COLD_SUFFIX)}
        if whole:
            lines += metric_grid(whole, split)
        if sliced:
            cold.append((split, values.get(COLD_ROWS), sliced))
    if cold:
        counts = ", ".join(f"{split} {rows} rows" for split, rows, _ in cold)
        lines.append(
            f"cold start ({counts}: those whose user or item was seen fewer than cold_start_count "
            "times in training):"
        )
        for split, _, sliced in cold:
            lines += metric_grid(sliced, split)
    log = f"log: {result['log_file']}" if result.get("log_file") else ""
    if result.get("model_file"):
        epoch = result.get("best_epoch")
        saved = epoch if epoch is not None else "none saved"
        lines.append(f"best epoch: {saved}; checkpoint: {result['model_file']}" + (f"; {log}" if log else ""))
    elif log:
        lines.append(log)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", "-m", default=None, help="plugin or RecBole context model (default: CSTWA)"
    )
    parser.add_argument("--dataset", "-d", default=None, help="dataset name (default: synthetic-ccp)")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files")
    parser.add_argument("--nproc", type=int, default=1, help="processes on this machine (default: 1)")
    parser.add_argument(
        "--world_size", type=int, default=-1, help="processes on all machines (default: nproc)"
    )
    parser.add_argument("--ip", default="localhost", help="address of the machine running rank 0")
    parser.add_argument("--port", type=int, default=5678, help="free port on the machine running rank 0")
    parser.add_argument("--group_offset", type=int, default=0, help="rank of this machine's first process")
    parser.add_argument(
        "--model_file", default=None, help="evaluate this checkpoint on the splits, no training"
    )
    parser.add_argument(
        "--resume",
        default=None,
        help="continue training from this checkpoint (written beside it, under a new name, unless "
        "--resume_in_place=True)",
    )
    args, _ = parser.parse_known_args(argv)  # other --key=value pairs are RecBole config overrides
    config_files = args.config_files.split() if args.config_files else None
    with reported_errors():  # bad input or settings: one `error: ...` line naming the key and the fix
        if args.model_file:
            result = evaluate_checkpoint(args.model_file, args.model, args.dataset, config_files)
            print(f"{result['model']} from {args.model_file} (evaluated, not trained)")
            print(format_results(result))
            return
        model = args.model if args.model or args.resume else "CSTWA"
        result = run_recbole_cstwa(
            model=model,
            dataset=args.dataset,
            config_file_list=config_files,
            nproc=args.nproc,
            world_size=args.world_size,
            ip=args.ip,
            port=args.port,
            group_offset=args.group_offset,
            resume=args.resume,
        )
    if result is None:  # a machine without rank 0
        print(
            f"ranks {args.group_offset}..{args.group_offset + args.nproc - 1} done; rank 0 reports the results"
        )
        return
    resumed = f", resumed from {args.resume}" if args.resume else ""
    print(f"{result['model']} on {result.get('dataset') or args.dataset or 'synthetic-ccp'}{resumed}")
    print(format_results(result))


if __name__ == "__main__":
    main()
