"""Train and evaluate a model, RecBole style.

    python run_recbole_cstwa.py --model=CSTWA [--dataset=synthetic-ccp] [--config_files="a.yaml b.yaml"]
                                [--any_recbole_key=value ...]

Prints the click and purchase metrics of the best validation epoch and of the test set.
"""

import argparse

from recbole_cstwa.cli import reported_errors
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


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", "-m", default="CSTWA", help="plugin model or RecBole context-aware model")
    parser.add_argument("--dataset", "-d", default=None, help="dataset name (default: synthetic-ccp)")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files")
    args, _ = parser.parse_known_args()  # other --key=value pairs are RecBole config overrides
    config_files = args.config_files.split() if args.config_files else None
    with reported_errors():  # bad input or settings: one `error: ...` line naming the key and the fix
        result = run_recbole_cstwa(model=args.model, dataset=args.dataset, config_file_list=config_files)
    print(f"{result['model']} on {args.dataset or 'synthetic-ccp'}")
    print(format_results(result))


if __name__ == "__main__":
    main()
