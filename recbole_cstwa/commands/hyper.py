"""``recbole-cstwa-hyper`` (or ``python run_hyper.py``): hyper-parameter search, as RecBole's
``run_hyper.py``.

    python run_hyper.py --model=CSTWA --params_file=hyper/cstwa.hyper [--config_files="a.yaml b.yaml"]
                        [--algo=exhaustive|random|bayes] [--max_evals=N] [--tool=Hyperopt|Ray]
                        [--output_file=results/hyper/CSTWA.json] [--any_recbole_key=value ...]

Each trial trains with the fixed settings (config files, ``--key=value`` pairs) plus one point of
the params file's space, early-stops on ``valid_metric`` (``purchase_auc`` by default) and scores
the test set. ``--algo exhaustive`` tries every combination of the choices once (max_evals is the
grid size); random and bayes (TPE) run ``--max_evals`` trials. ``--tool Ray`` runs the trials in
parallel with Ray Tune (on this machine, or an existing cluster with ``--ray_address=auto`` or
``--ray_address=HOST:PORT``; ``--nproc_per_trial=2`` trains each trial with 2 DDP processes). The output
file (JSON) holds every trial's parameters and valid/test results and the best one.
"""

import argparse
import json
import sys

from recbole_cstwa.commands.cli import parse_overrides, reported_errors
from recbole_cstwa.experiments.hyper import ALGOS, TOOLS, run_search


def _parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--model", "-m", default=None, help="model (else from the config files)")
    parser.add_argument("--dataset", "-d", default=None, help="dataset (default: synthetic-ccp)")
    parser.add_argument("--config_files", default=None, help="space-separated fixed YAML files")
    parser.add_argument("--params_file", required=True, help="search space, RecBole's params file syntax")
    parser.add_argument(
        "--output_file",
        default="auto",
        help="JSON report (default: results/hyper/<model>-<dataset>-<algo>.json)",
    )
    parser.add_argument(
        "--algo", default="exhaustive", choices=ALGOS, help="search algorithm (default: exhaustive)"
    )
    parser.add_argument("--max_evals", type=int, default=100, help="trials of random/bayes (default: 100)")
    parser.add_argument(
        "--early_stop",
        type=int,
        default=None,
        help="Hyperopt: stop after this many trials without improvement (default: 10; exhaustive: none)",
    )
    parser.add_argument(
        "--tool", default="Hyperopt", choices=TOOLS, help="Hyperopt (one machine) or Ray (parallel)"
    )
    parser.add_argument("--search_seed", type=int, default=None, help="seed of the search itself")
    parser.add_argument(
        "--ray_address",
        default=None,
        help="Ray: an existing cluster, auto (on one of its nodes) or HOST:PORT of its head; default: start Ray here",
    )
    parser.add_argument(
        "--cpus_per_trial", type=float, default=1, help="Ray: CPUs of each trial (default: 1)"
    )
    parser.add_argument(
        "--gpus_per_trial", type=float, default=0, help="Ray: GPUs of each trial (default: 0)"
    )
    parser.add_argument(
        "--nproc_per_trial",
        type=int,
        default=1,
        help="Ray: DDP processes of each trial, on one node (default: 1; with GPUs, one a GPU)",
    )
    return parser


def main(argv=None):
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    with reported_errors():
        overrides = parse_overrides(extra, parser)
        config_files = args.config_files.split() if args.config_files else None
        report = run_search(
            args.params_file,
            model=args.model,
            dataset=args.dataset,
            config_file_list=config_files,
            overrides=overrides,
            algo=args.algo,
            max_evals=args.max_evals,
            early_stop=args.early_stop,
            tool=args.tool,
            output_file=args.output_file,
            search_seed=args.search_seed,
            ray_options={
                "address": args.ray_address,
                "cpus_per_trial": args.cpus_per_trial,
                "gpus_per_trial": args.gpus_per_trial,
                "nproc_per_trial": args.nproc_per_trial,
            },
        )
    best = report["best"]
    print(
        f"{len(report['trials'])} trials of {report['model']} on {report['dataset']}, written to {report['output_file']}"
    )
    if best is None:
        sys.exit("error: no trial finished")
    print(f"best params: {json.dumps(best['params'])}")
    print(f"best valid {report['valid_metric']}: {best['valid_score']:.4f}")
    print(f"test result: {json.dumps(best['test_result'])}")
    return report


def console_main():
    """The console script: :func:`main` without its report (a script's value is its exit status)."""
    main()
    return 0


if __name__ == "__main__":
    main()
