"""``recbole-cstwa`` (or ``python run_recbole_cstwa.py``): train and evaluate a model, RecBole style.

    python run_recbole_cstwa.py --model=CSTWA [--dataset=synthetic-ccp] [--config_files="a.yaml b.yaml"]
                                [--nproc=N] [--world_size=W --ip=HOST --port=P --group_offset=R]
                                [--any_recbole_key=value ...]

Prints the click and purchase metrics of the best validation epoch and of the test set.
``--nproc=2`` trains with 2 data-parallel processes (DDP: one a GPU with nccl, or CPU processes
with gloo); over several machines, each runs ``--nproc`` ranks from ``--group_offset`` of
``--world_size``, meeting at rank 0's ``--ip`` and ``--port``.
"""

import argparse

from recbole_cstwa.commands.cli import reported_errors
from recbole_cstwa.quick_start import run_recbole_cstwa


def format_results(result):
    """The valid and test metrics as an aligned table."""
    valid, test = result["best_valid_result"] or {}, result["test_result"] or {}
    metrics = list(test) or list(valid)
    lines = [f"{'metric':<20}{'valid':>10}{'test':>10}"]
    for metric in metrics:
        lines.append(
            f"{metric:<20}{valid.get(metric, float('nan')):>10.4f}{test.get(metric, float('nan')):>10.4f}"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", "-m", default="CSTWA", help="plugin model or RecBole context-aware model")
    parser.add_argument("--dataset", "-d", default=None, help="dataset name (default: synthetic-ccp)")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files")
    parser.add_argument("--nproc", type=int, default=1, help="processes on this machine (default: 1)")
    parser.add_argument("--world_size", type=int, default=-1, help="processes on all machines (default: nproc)")
    parser.add_argument("--ip", default="localhost", help="address of the machine running rank 0")
    parser.add_argument("--port", type=int, default=5678, help="free port on the machine running rank 0")
    parser.add_argument("--group_offset", type=int, default=0, help="rank of this machine's first process")
    args, _ = parser.parse_known_args(argv)  # other --key=value pairs are RecBole config overrides
    config_files = args.config_files.split() if args.config_files else None
    with reported_errors():  # bad input or settings: one `error: ...` line naming the key and the fix
        result = run_recbole_cstwa(
            model=args.model,
            dataset=args.dataset,
            config_file_list=config_files,
            nproc=args.nproc,
            world_size=args.world_size,
            ip=args.ip,
            port=args.port,
            group_offset=args.group_offset,
        )
    if result is None:  # a machine without rank 0
        print(f"ranks {args.group_offset}..{args.group_offset + args.nproc - 1} done; rank 0 reports the results")
        return
    print(f"{result['model']} on {args.dataset or 'synthetic-ccp'}")
    print(format_results(result))


if __name__ == "__main__":
    main()
