"""``recbole-cstwa-worlds`` (or ``python run_worlds.py``): every model on a sweep of generated
worlds, scored against their known truth.

    python run_worlds.py --sweep worlds/sweep.yaml --data_path DATA --seeds 2020 2021 2022 \
        --models "MLP ESMM ESCM2 ..." --variant "CSTWA-noCE=CSTWA:use_ce=False" \
        --pair CSTWA:CSTWA-noCE --jobs 2 --output_dir results/worlds-runs --report results/worlds.md

Draws each world's dataset (``world-<name>`` under ``--data_path``) when it is missing, runs the
same comparison on every world (each world's runs.jsonl under ``--output_dir`` resumes when the
command runs again) and writes the report (``--report``, with a heatmap page beside it). The
sweep file's format: :mod:`recbole_cstwa.experiments.worlds`. Other ``--key=value`` pairs are
RecBole settings for every run.
"""

import argparse

from recbole_cstwa.commands.cli import parse_overrides, reported_errors
from recbole_cstwa.errors import CompareError
from recbole_cstwa.experiments.worlds import check_world_dataset, read_sweep, run_sweep


def draw_worlds(sweep, data_path, log=print):
    """Generates the datasets of the worlds that are missing under ``data_path``."""
    from recbole_cstwa.tools.generator import generate

    for world in sweep.worlds:
        if check_world_dataset(world, data_path):
            continue
        log(f"drawing world {world.name}: {world.knobs}")
        try:
            generate(output_dir=data_path, name=world.dataset, **world.knobs)
        except ValueError as error:
            raise CompareError(f"Sweep file [{sweep.path}], world {world.name}: {error}") from None


def _pair(text):
    row, sep, baseline = text.partition(":")
    if not sep or not row or not baseline:
        raise argparse.ArgumentTypeError(f"write ROW:BASELINE, e.g. CSTWA:CSTWA-noCE; got {text!r}")
    return row, baseline


def _parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument(
        "--sweep", default="worlds/sweep.yaml", help="the sweep file (default: worlds/sweep.yaml)"
    )
    parser.add_argument(
        "--data_path", required=True, help="folder of the worlds' datasets (drawn when missing)"
    )
    parser.add_argument("--models", nargs="+", default=[], help="model names (one string or several)")
    parser.add_argument(
        "--variant", action="append", default=[], help="NAME=MODEL:key=value,... (repeatable)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020, 2021, 2022])
    parser.add_argument("--reference", default=None, help="row the others are set against (default: ESMM)")
    parser.add_argument(
        "--pair", type=_pair, action="append", default=[], help="ROW:BASELINE differenced in every world"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="one-thread processes running the runs (default: 1)"
    )
    parser.add_argument(
        "--output_dir", default="results/worlds-runs", help="each world's runs.jsonl goes to a folder here"
    )
    parser.add_argument("--report", default=None, help="Markdown report (default: OUTPUT_DIR/worlds.md)")
    parser.add_argument("--draw_only", action="store_true", help="draw the missing datasets and stop")
    parser.add_argument("--fresh", action="store_true", help="start every world's comparison over")
    return parser


def main(argv=None):
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    models = [name for item in args.models for name in item.split()]
    with reported_errors():
        overrides = parse_overrides(extra, parser)
        sweep = read_sweep(args.sweep)
        draw_worlds(sweep, args.data_path)
        if args.draw_only:
            return None
        result = run_sweep(
            sweep,
            args.data_path,
            args.output_dir,
            models,
            args.seeds,
            variants=args.variant,
            reference=args.reference,
            pairs=args.pair,
            overrides=overrides,
            report=args.report,
            resume=not args.fresh,
            jobs=args.jobs,
        )
    print("written: " + ", ".join(result["files"]))
    return result


def console_main():
    """The console script: :func:`main` without its result."""
    main()
    return 0


if __name__ == "__main__":
    main()
