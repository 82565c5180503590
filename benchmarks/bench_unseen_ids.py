"""Scores of ids unseen in training, by ``min_count``: a cold-start dataset's test split.

For each model, ``min_count`` and seed, a training run (``run_recbole_cstwa``, the given settings)
on a generated dataset whose validation and test splits hold users and items held out of
training (``--new-user-share``, ``--new-item-share``; generated when its folder is missing), then
its kept checkpoint, rebuilt alone (``load_trained``), scores the test split twice:

- ``evaluation``: as the trainer's evaluation does, every id in the vocabulary (RecBole numbers
  the tokens of every split; an id seen only in valid / test has a row of its own, never trained,
  with ``min_count: 0``, the field's out-of-vocabulary row otherwise), the user's and item's
  features joined;
- ``predict``: as ``run_predict.py`` scores a file whose users / items were never seen (a new
  user in production is in no vocabulary): each user (item) absent from the training split gets
  the field's unseen index (``ServingModule.unseen_index``: ``[PAD]``, an absent field, with
  ``min_count: 0``; the out-of-vocabulary row otherwise), and no features.

The test rows are grouped by whether their user and their item occur in the training split
(``known``: both; ``new user``; ``new item``; ``both new``); for each group: rows, purchases, the
mean predicted ``p_purchase`` and ``p_click`` against the observed rates, and the purchase and
click AUC (scikit-learn's ``roc_auc_score``). Also the run's own test purchase and click AUC
(RecBole's evaluator, every row). Means over the seeds.

    OMP_NUM_THREADS=1 python benchmarks/bench_unseen_ids.py --data-path <data> --dataset cold-600k \\
        --n-impressions 600000 --n-users 40000 --n-items 100000 --models MLP ESMM CSTWA \\
        --min-counts 0 1 2 5 10 --seeds 2020 2021 2022 --json unseen.jsonl
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GROUPS = ("known", "new user", "new item", "both new")


def ensure_dataset(args):
    folder = os.path.join(args.data_path, args.dataset)
    if os.path.isfile(os.path.join(folder, f"{args.dataset}.test.inter")):
        return
    if args.n_impressions is None:
        raise SystemExit(f"error: no dataset [{folder}]: give --n-impressions to generate it.")
    command = [
        sys.executable, "-m", "recbole_cstwa.commands.generate", "generate", "--output", args.data_path,
        "--name", args.dataset, "--n-impressions", str(args.n_impressions), "--n-users", str(args.n_users),
        "--n-items", str(args.n_items), "--new-user-share", str(args.new_user_share),
        "--new-item-share", str(args.new_item_share), "--seed", str(args.data_seed),
        "--split", *map(str, args.split),
    ]  # fmt: skip
    print("generating:", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def base_settings(args, work):
    from recbole_cstwa.values import parse_assignments

    settings = {
        "data_path": args.data_path,
        "dataset": args.dataset,
        "benchmark_filename": ["train", "valid", "test"],
        "show_progress": False,
        "state": "ERROR",
        "checkpoint_dir": os.path.join(work, "saved"),
        "epochs": args.epochs,
        "stopping_step": args.stopping_step,
    }
    settings.update(parse_assignments(args.set, "--set"))  # read as data, as on a command line
    return settings


def test_rows(settings):
    """The test split's batches, each row's group (an index into ``GROUPS``) and its labels."""
    import torch

    from recbole_cstwa.config import Config
    from recbole_cstwa.data import create_dataset, data_preparation

    config = Config(model="MLP", config_dict=settings)
    train_data, _, test_data = data_preparation(config, create_dataset(config))
    train = train_data._dataset.inter_feat
    uid, iid = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
    seen = {
        field: torch.bincount(train[field].long(), minlength=train_data._dataset.num(field)) > 0
        for field in (uid, iid)
    }
    batches, groups, labels = [], [], {"click": [], "purchase": []}
    for batch in test_data:
        interaction = batch[0]
        new_user = ~seen[uid][interaction[uid].long()]
        new_item = ~seen[iid][interaction[iid].long()]
        groups.append((new_user.long() + 2 * new_item.long()).numpy())  # known, new user, new item, both
        for task, field in (("click", config["CLICK_FIELD"]), ("purchase", config["PURCHASE_FIELD"])):
            labels[task].append(interaction[field].numpy())
        batches.append(interaction)
    return batches, np.concatenate(groups), {task: np.concatenate(values) for task, values in labels.items()}


def predictions_of(trained, batches, groups):
    """``{view: {task: (N,) probabilities}}`` of the two views of the module doc."""
    import torch

    from recbole_cstwa.serving.module import ServingModule

    serving = ServingModule(trained).eval()
    uid, iid = trained.dataset.uid_field, trained.dataset.iid_field
    views = {view: {"click": [], "purchase": []} for view in ("evaluation", "predict")}
    start = 0
    with torch.no_grad():
        for interaction in batches:
            rows = len(interaction)
            outputs = trained.model.predict_tasks(interaction)
            tokens = torch.stack([interaction[field].long() for field in serving.token_fields], dim=1)
            group = torch.from_numpy(groups[start : start + rows])
            for field, new in ((uid, group % 2 == 1), (iid, group >= 2)):
                column = serving.token_fields.index(field)
                tokens[new, column] = serving.unseen_index[field]
            floats = torch.zeros(rows, len(serving.float_fields))  # the dataset has none
            scored = serving.task_outputs(tokens, floats)
            for task in ("click", "purchase"):
                views["evaluation"][task].append(outputs[task].numpy())
                views["predict"][task].append(scored[task].numpy())
            start += rows
    return {
        view: {task: np.concatenate(values) for task, values in tasks.items()}
        for view, tasks in views.items()
    }


def group_figures(groups, labels, predictions):
    """Per group: rows, purchases, observed and mean predicted rates, AUCs."""
    from sklearn.metrics import roc_auc_score

    figures = {}
    for position, name in enumerate(GROUPS):
        rows = groups == position
        entry = {"rows": int(rows.sum()), "purchases": int(labels["purchase"][rows].sum())}
        for task in ("purchase", "click"):
            observed, predicted = labels[task][rows], predictions[task][rows]
            entry[f"{task}_rate"] = float(observed.mean()) if rows.any() else float("nan")
            entry[f"mean_p_{task}"] = float(predicted.mean()) if rows.any() else float("nan")
            one_class = len(np.unique(observed)) < 2
            entry[f"{task}_auc"] = float("nan") if one_class else float(roc_auc_score(observed, predicted))
        figures[name] = entry
    return figures


def run_one(settings, model_name, min_count, seed, batches, groups, labels):
    from recbole_cstwa.quick_start import run_recbole_cstwa
    from recbole_cstwa.serving.trained import load_trained

    result = run_recbole_cstwa(
        model=model_name, config_dict={**settings, "min_count": min_count, "seed": seed}
    )
    trained = load_trained(result["model_file"])
    views = predictions_of(trained, batches, groups)
    test = result["test_result"]
    return {
        "model": model_name,
        "min_count": min_count,
        "seed": seed,
        "purchase_auc": float(test["purchase_auc"]),
        "click_auc": float(test["click_auc"]),
        "best_epoch": result["best_epoch"],
        "epochs_trained": result["epochs_trained"],
        "fit_seconds": round(result["fit_seconds"], 1),
        "views": {view: group_figures(groups, labels, predictions) for view, predictions in views.items()},
    }


def _mean(values):
    values = [value for value in values if not np.isnan(value)]
    return statistics.mean(values) if values else float("nan")


def print_table(results, args):
    print(f"means over seeds {args.seeds}; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    first = results[0]["views"]["evaluation"]
    print(
        "groups (test rows, purchases): "
        + ", ".join(f"{name} {first[name]['rows']:,} / {first[name]['purchases']:,}" for name in GROUPS)
    )
    print(
        "observed purchase rate: "
        + ", ".join(f"{name} {first[name]['purchase_rate']:.4f}" for name in GROUPS)
        + "; click rate: "
        + ", ".join(f"{name} {first[name]['click_rate']:.4f}" for name in GROUPS)
    )
    for view in ("evaluation", "predict"):
        print(f"{view}: per group mean p_purchase, mean p_click, purchase AUC, click AUC")
        header = f"{'model':<7}{'min_count':>10}{'purchase AUC':>13}{'click AUC':>10}"
        for name in GROUPS:
            header += f" | {name:<27}"
        print(header)
        for model_name in args.models:
            for min_count in args.min_counts:
                runs = [r for r in results if r["model"] == model_name and r["min_count"] == min_count]
                if not runs:
                    continue
                line = (
                    f"{model_name:<7}{min_count:>10}{_mean([r['purchase_auc'] for r in runs]):>13.4f}"
                    f"{_mean([r['click_auc'] for r in runs]):>10.4f}"
                )
                for name in GROUPS:
                    figures = [r["views"][view][name] for r in runs]
                    line += " | " + " ".join(
                        f"{_mean([f[key] for f in figures]):.4f}"
                        for key in ("mean_p_purchase", "mean_p_click", "purchase_auc", "click_auc")
                    )
                print(line, flush=True)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-path", default="dataset")
    parser.add_argument("--dataset", default="cold-600k")
    parser.add_argument("--n-impressions", type=int, default=None, help="generate the dataset when missing")
    parser.add_argument("--n-users", type=int, default=40_000)
    parser.add_argument("--n-items", type=int, default=100_000)
    parser.add_argument("--new-user-share", type=float, default=0.2)
    parser.add_argument("--new-item-share", type=float, default=0.2)
    parser.add_argument("--data-seed", type=int, default=2024)
    parser.add_argument("--split", type=float, nargs=3, default=[0.7, 0.1, 0.2])
    parser.add_argument("--models", nargs="+", default=["MLP", "ESMM", "CSTWA"])
    parser.add_argument("--min-counts", type=int, nargs="+", default=[0, 1, 2, 5, 10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[2020, 2021, 2022])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--stopping-step", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--json", default=None, help="results, one JSON line a run (appended; runs already there are kept)"
    )
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config would read this script's options as settings
    args.data_path = os.path.abspath(args.data_path)
    ensure_dataset(args)
    work = tempfile.mkdtemp(prefix="bench_unseen_")
    os.chdir(work)  # RecBole writes log/ into the working directory
    settings = base_settings(args, work)
    batches, groups, labels = test_rows(settings)
    done = []
    if args.json and os.path.isfile(args.json):
        with open(args.json, encoding="utf-8") as file:
            done = [json.loads(line) for line in file if line.strip()]
    results = []
    for model_name in args.models:
        for min_count in args.min_counts:
            for seed in args.seeds:
                previous = [
                    r
                    for r in done
                    if (r["model"], r["min_count"], r["seed"]) == (model_name, min_count, seed)
                ]
                if previous:
                    results.append(previous[0])
                    continue
                result = run_one(settings, model_name, min_count, seed, batches, groups, labels)
                results.append(result)
                print(json.dumps(result), flush=True)
                if args.json:
                    with open(args.json, "a", encoding="utf-8") as file:
                        file.write(json.dumps(result) + "\n")
    print_table(results, args)


if __name__ == "__main__":
    main()
