"""``recbole-cstwa-compare`` (or ``python run_compare.py``): compare models on one dataset, one
split and several seeds, in one command.

    python run_compare.py --models "CSTWA AITM ESCM2 MLP DeepFM DCN" --seeds 2020 2021 2022
                          [--dataset=synthetic-ccp] [--config_files="a.yaml b.yaml"]
                          [--variant "SM=CSTWA:use_sm=True,use_cp=False,use_ce=False" ...]
                          [--reference CSTWA] [--output_dir results/compare] [--epochs=10 ...]
                          [--increment "CP+CE-CP" ...] [--jobs 2] [--tool=Ray [--ray_address=auto]]

Plugin models (two heads) run once per seed; RecBole's built-in models (DeepFM, WideDeep, DCN,
xDeepFM, ...) run twice per seed, on the click label and on the purchase label, and their row
joins the two. ``--variant NAME=MODEL:key=value,...`` adds a row: MODEL with those settings (an
ablation table is a list of variants). Other ``--key=value`` pairs are RecBole settings for every
run. Each run is appended to OUTPUT_DIR/runs.jsonl when it finishes; running the same command
again skips the runs already there (``--fresh`` starts over). The table (mean ± std over seeds,
times, paired t-test against the reference: with 3 seeds it has little power) is printed and
written to summary.md and summary.csv; summary.html is a plot of the purchase and click AUC.
``--increment A-B`` (repeatable) adds row A minus row B, paired by seed, with its t-test and Holm's
p over the listed increments (as the CSTWA paper's Table 3 reads each component's gain).

``--jobs N`` trains N runs at once, each in its own one-thread process; ``--tool=Ray`` spreads
the runs over a Ray cluster (``--ray_address``, ``--cpus_per_run``, ``--gpus_per_run``; a Ray
started here by default). Every run is claimed before it is trained, so two commands on one
output folder never train a run twice; a run killed mid-way leaves no record and the same
command trains it again.
"""

import argparse

from recbole_cstwa.commands.cli import parse_overrides, reported_errors
from recbole_cstwa.experiments.compare import TOOLS, run_comparison


def _parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--models", nargs="+", default=[], help="model names (one string or several)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020], help="seeds (default: 2020)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help='a named variant, NAME=MODEL:key=value,key=value (repeatable), e.g. "SM=CSTWA:use_sm=True"',
    )
    parser.add_argument("--dataset", "-d", default=None, help="dataset (default: synthetic-ccp)")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files for every run")
    parser.add_argument(
        "--reference", default=None, help="row the others are tested against (default: the first)"
    )
    parser.add_argument(
        "--output_dir", default="results/compare", help="output folder (default: results/compare)"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="ignore (and back up) the runs already in runs.jsonl"
    )
    parser.add_argument("--no_oracle", action="store_true", help="leave out the oracle row")
    parser.add_argument(
        "--increment",
        action="append",
        default=[],
        help='a pairwise increment ROW-ROW, the first row minus the second (repeatable), e.g. "CP+CE-CP"',
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs at once (default 1, in this process; N: N one-thread worker processes; Ray: a cap)",
    )
    parser.add_argument(
        "--tool",
        choices=TOOLS,
        default="local",
        help="local: this machine (default); Ray: one Ray task a run",
    )
    parser.add_argument(
        "--ray_address",
        default=None,
        help="Ray: an existing cluster, auto (on one of its nodes) or HOST:PORT of its head; default: start Ray here",
    )
    parser.add_argument("--cpus_per_run", type=float, default=1, help="Ray: CPUs of each run (default: 1)")
    parser.add_argument("--gpus_per_run", type=float, default=0, help="Ray: GPUs of each run (default: 0)")
    parser.add_argument(
        "--plotlyjs",
        choices=("inline", "cdn"),
        default="inline",
        help="inline: a self-contained HTML (about 4.8 MB); cdn: a small file that loads plotly.js online",
    )
    return parser


def main(argv=None):
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    models = [name for item in args.models for name in item.split()]
    with reported_errors():
        overrides = parse_overrides(extra, parser)
        result = run_comparison(
            models,
            args.seeds,
            dataset=args.dataset,
            config_file_list=args.config_files.split() if args.config_files else None,
            overrides=overrides,
            variants=args.variant,
            reference=args.reference,
            output_dir=args.output_dir,
            resume=not args.fresh,
            oracle=not args.no_oracle,
            plotlyjs=True if args.plotlyjs == "inline" else "cdn",
            increments=args.increment,
            jobs=args.jobs,
            tool=args.tool,
            ray_options={
                "address": args.ray_address,
                "cpus_per_run": args.cpus_per_run,
                "gpus_per_run": args.gpus_per_run,
            },
        )
    print()
    print(result["table"])
    print()
    print("written: " + ", ".join(result["files"].values()))
    return result


def console_main():
    """The console script: :func:`main` without its result (a script's value is its exit status)."""
    main()
    return 0


if __name__ == "__main__":
    main()
