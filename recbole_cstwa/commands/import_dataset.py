"""``recbole-cstwa-import``: a CSV / TSV / parquet table of impressions as a RecBole dataset folder
(:func:`recbole_cstwa.tools.importer.import_dataset`)."""

import argparse
import sys

from recbole_cstwa.errors import InputFileError
from recbole_cstwa.tools.importer import format_summary, import_dataset


def _build_parser():
    parser = argparse.ArgumentParser(
        prog="recbole-cstwa-import",
        description="Import a CSV / TSV / parquet table of impressions as a RecBole dataset folder "
        "(<output>/<name>/: atomic files and <name>.yaml).",
        epilog="Column groups take names or shell globs (numerical_*), space or comma separated. "
        "Example: --input data.csv --name mine --click click --purchase conversion "
        "--context-fields 'categorical_*' 'numerical_*' --numerical 'numerical_*'",
    )
    inputs = parser.add_argument_group("inputs (one file to split, or split files)")
    inputs.add_argument("--input", help="one file, split train/valid/test by --split-ratios")
    inputs.add_argument("--train", help="train file (with --test; valid drawn from it unless --valid)")
    inputs.add_argument("--valid", help="valid file")
    inputs.add_argument("--test", help="test file")
    inputs.add_argument("--sep", default=None, help="field separator of CSV input (default: from the name)")
    parser.add_argument("--output", default="dataset", help="parent folder of <name>/ (default %(default)s)")
    parser.add_argument("--name", required=True, help="dataset name (the folder and file names)")
    columns = parser.add_argument_group("columns")
    columns.add_argument("--click", required=True, help="0/1 click label column")
    columns.add_argument("--purchase", required=True, help="0/1 purchase (conversion) label column")
    columns.add_argument("--user-id", default=None, help="user id column (optional)")
    columns.add_argument("--item-id", default=None, help="item id column (optional)")
    columns.add_argument("--user-fields", nargs="+", default=[], help="user profile columns (need --user-id)")
    columns.add_argument(
        "--item-fields", nargs="+", default=[], help="item attribute columns (need --item-id)"
    )
    columns.add_argument("--context-fields", nargs="+", default=[], help="impression (context) columns")
    columns.add_argument("--numerical", nargs="+", default=[], help="which of the fields are numbers (float)")
    split = parser.add_argument_group("split")
    split.add_argument(
        "--split-ratios",
        nargs=3,
        type=float,
        default=[0.8, 0.1, 0.1],
        metavar=("TRAIN", "VALID", "TEST"),
        help="with --input (default 0.8 0.1 0.1)",
    )
    split.add_argument(
        "--valid-ratio",
        type=float,
        default=0.1,
        help="with --train and --test only: share of train moved to valid (default %(default)s)",
    )
    split.add_argument("--seed", type=int, default=2020, help="seed of the split (default %(default)s)")
    split.add_argument(
        "--no-split",
        action="store_true",
        help="with --input: write <name>.inter and let eval_args split at run time",
    )
    parser.add_argument("--batch-rows", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    """Command line entry point: prints the counts; writes the summary to <name>.meta.json."""
    arguments = _build_parser().parse_args(argv)
    try:
        summary = import_dataset(
            arguments.output,
            arguments.name,
            arguments.click,
            arguments.purchase,
            input=arguments.input,
            train=arguments.train,
            valid=arguments.valid,
            test=arguments.test,
            user_id=arguments.user_id,
            item_id=arguments.item_id,
            user_fields=arguments.user_fields,
            item_fields=arguments.item_fields,
            context_fields=arguments.context_fields,
            numerical=arguments.numerical,
            split_ratios=arguments.split_ratios,
            valid_ratio=arguments.valid_ratio,
            seed=arguments.seed,
            split=not arguments.no_split,
            separator=arguments.sep,
            batch_rows=arguments.batch_rows,
        )
    except (InputFileError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
