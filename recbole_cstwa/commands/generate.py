"""``recbole-cstwa-generate``: synthetic Ali-CCP-like impressions with a known truth, and their
oracle metrics (:mod:`recbole_cstwa.tools.generator`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from recbole_cstwa.experiments.oracle import oracle_metrics
from recbole_cstwa.tools.generator import (
    DEFAULT_CLICKBAIT_SHARE,
    DEFAULT_CTR,
    DEFAULT_CVR,
    DEFAULT_N_CATEGORIES,
    DEFAULT_N_IMPRESSIONS,
    DEFAULT_NAME,
    DEFAULT_NEW_ITEM_SHARE,
    DEFAULT_NEW_USER_SHARE,
    DEFAULT_RHO,
    DEFAULT_SEED,
    DEFAULT_SELECTION_BIAS,
    DEFAULT_SPLIT,
    SPLIT_NAMES,
    generate,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recbole-cstwa-generate",
        description="Synthetic Ali-CCP-like impressions with a known click/purchase truth.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("generate", help="write the RecBole atomic files and the truth")
    make.add_argument("--output", default="dataset", help="parent folder (default: dataset)")
    make.add_argument("--name", default=DEFAULT_NAME)
    make.add_argument("--n-impressions", type=int, default=DEFAULT_N_IMPRESSIONS)
    make.add_argument("--n-users", type=int, default=None, help="default: n_impressions / 30")
    make.add_argument("--n-items", type=int, default=None, help="default: n_impressions / 30")
    make.add_argument("--n-categories", type=int, default=DEFAULT_N_CATEGORIES)
    make.add_argument("--ctr", type=float, default=DEFAULT_CTR, help="mean P(click)")
    make.add_argument("--cvr", type=float, default=DEFAULT_CVR, help="mean P(purchase | click)")
    make.add_argument(
        "--rho",
        type=float,
        default=DEFAULT_RHO,
        help="click/purchase affinity correlation",
    )
    make.add_argument("--seed", type=int, default=DEFAULT_SEED)
    make.add_argument(
        "--split",
        type=float,
        nargs=3,
        default=list(DEFAULT_SPLIT),
        metavar=("TRAIN", "VALID", "TEST"),
    )
    make.add_argument(
        "--clickbait-share",
        type=float,
        default=DEFAULT_CLICKBAIT_SHARE,
        help="share of clickbait categories (many clicks, few purchases)",
    )
    make.add_argument(
        "--selection-bias",
        type=float,
        default=DEFAULT_SELECTION_BIAS,
        help="weight of the purchase-only affinity in the click logit (0: none)",
    )
    make.add_argument(
        "--new-user-share",
        type=float,
        default=DEFAULT_NEW_USER_SHARE,
        help="share of users held out of train (cold start in valid/test)",
    )
    make.add_argument(
        "--new-item-share",
        type=float,
        default=DEFAULT_NEW_ITEM_SHARE,
        help="share of items held out of train (cold start in valid/test)",
    )
    oracle = commands.add_parser("oracle", help="print the oracle metrics of a split")
    oracle.add_argument("--dataset-dir", required=True)
    oracle.add_argument("--split", default="test", choices=SPLIT_NAMES)
    oracle.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "generate":
        started = time.perf_counter()
        try:
            path = generate(
                output_dir=args.output,
                name=args.name,
                n_impressions=args.n_impressions,
                n_users=args.n_users,
                n_items=args.n_items,
                n_categories=args.n_categories,
                ctr=args.ctr,
                cvr=args.cvr,
                rho=args.rho,
                seed=args.seed,
                split=args.split,
                clickbait_share=args.clickbait_share,
                selection_bias=args.selection_bias,
                new_user_share=args.new_user_share,
                new_item_share=args.new_item_share,
            )
        except ValueError as error:
            parser.error(str(error))
        except OSError as error:  # a full disk names its folder
            print(f"error: {error}", file=sys.stderr)
            return 2
        elapsed = time.perf_counter() - started
        counts = json.loads((path / f"{args.name}.meta.json").read_text())["counts"]
        print(f"wrote {path} in {elapsed:.1f} s")
        for split_name in (*SPLIT_NAMES, "all"):
            row = counts[split_name]
            print(
                f"{split_name:>5}: rows={row['rows']} users={row['users']} items={row['items']}"
                f" clicks={row['clicks']} purchases={row['purchases']}"
            )
        return 0
    metrics = oracle_metrics(args.dataset_dir, args.split)
    if args.json:
        print(json.dumps(metrics))
    else:
        for key, value in metrics.items():
            print(f"{key}: {value:.6f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
