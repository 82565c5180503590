"""``recbole-cstwa-convert-ali-ccp``: Ali-CCP (raw or preprocessed CSV) as RecBole atomic files
(:mod:`recbole_cstwa.tools.ali_ccp`)."""

import argparse
import json
import logging
import sys

from recbole_cstwa.tools.ali_ccp import AITM_MIN_COUNT, convert_csv, convert_raw


def _build_parser():
    parser = argparse.ArgumentParser(
        prog="recbole-cstwa-convert-ali-ccp",
        description="Convert Ali-CCP to RecBole atomic files (<output>/<name>/).",
    )
    modes = parser.add_subparsers(dest="mode", required=True)

    raw = modes.add_parser(
        "raw",
        help="official sample_skeleton/common_features files (AITM preprocessing)",
    )
    raw.add_argument("--train-skeleton", required=True)
    raw.add_argument("--train-common", required=True)
    raw.add_argument("--test-skeleton", required=True)
    raw.add_argument("--test-common", required=True)
    raw.add_argument(
        "--min-count",
        type=int,
        default=AITM_MIN_COUNT,
        help="keep an id seen at least this many times in train (default %(default)s = AITM's "
        "'counter > 10' with a counter starting at 0)",
    )
    raw.add_argument(
        "--valid-ratio", type=float, default=0.1, help="share of train moved to valid (default %(default)s)"
    )
    raw.add_argument(
        "--seed", type=int, default=2020, help="seed of the train/valid split (default %(default)s)"
    )
    raw.add_argument("--tmp-dir", default=None, help="folder for the temporary joined train file")

    csv = modes.add_parser("csv", help="preprocessed train/valid/test CSV files (torch-rechub style)")
    csv.add_argument("--train", required=True)
    csv.add_argument("--valid", required=True)
    csv.add_argument("--test", required=True)
    csv.add_argument("--keep-dense", action="store_true", help="write the D* columns as float fields")

    for mode in (raw, csv):
        mode.add_argument(
            "--output",
            default="dataset",
            help="parent folder of <name>/ (default %(default)s)",
        )
        mode.add_argument("--name", default="ali-ccp", help="dataset name (default %(default)s)")
        mode.add_argument(
            "--keep-210",
            action="store_true",
            help="also keep field 210 (item intention node)",
        )
        mode.add_argument(
            "--skip-malformed",
            action="store_true",
            help="skip malformed lines and count them",
        )
        mode.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv=None):
    """Command line entry point; prints the summary as JSON on stdout."""
    arguments = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    common = {
        "output": arguments.output,
        "name": arguments.name,
        "keep_210": arguments.keep_210,
        "skip_malformed": arguments.skip_malformed,
        "show_progress": not arguments.no_progress,
    }
    try:
        if arguments.mode == "raw":
            summary = convert_raw(
                arguments.train_skeleton,
                arguments.train_common,
                arguments.test_skeleton,
                arguments.test_common,
                min_count=arguments.min_count,
                valid_ratio=arguments.valid_ratio,
                seed=arguments.seed,
                tmp_dir=arguments.tmp_dir,
                **common,
            )
        else:
            summary = convert_csv(
                arguments.train,
                arguments.valid,
                arguments.test,
                keep_dense=arguments.keep_dense,
                **common,
            )
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
