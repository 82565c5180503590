"""``recbole-cstwa-aliexpress-sample``: a small seeded AliExpress-shaped CSV pair for trying the
importer (:mod:`recbole_cstwa.tools.aliexpress_sample`)."""

import argparse
import sys

from recbole_cstwa.tools.aliexpress_sample import write_sample


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="recbole-cstwa-aliexpress-sample",
        description="Write a seeded AliExpress-shaped train.csv / test.csv (synthetic values).",
    )
    parser.add_argument("--output", required=True, help="folder for train.csv and test.csv")
    parser.add_argument(
        "--rows", type=int, default=200_000, help="train rows (test: half) (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=2020)
    arguments = parser.parse_args(argv)
    for split, path in write_sample(arguments.output, arguments.rows, arguments.seed).items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
