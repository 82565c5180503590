"""The comparison's report: the Markdown table (also printed), the CSV and the HTML plot."""

import csv
import json
import math
import os

from recbole_cstwa.file_writes import atomic_file, write_text

#: The table's metrics, task-prefixed as the plugin's trainers report them.
METRICS = ("click_auc", "click_logloss", "purchase_auc", "purchase_logloss", "cvr_auc")
#: Columns added when the runs report them: the truth metrics of a dataset with truth files and
#: the calibration of the purchase head (docs/evaluation.md).
OPTIONAL_METRICS = ("cvr_all_truth_kl", "purchase_truth_auc", "cvr_all_truth_auc", "purchase_pcoc")
#: Metrics tested against the reference row.
TESTED_METRICS = ("purchase_auc", "click_auc")
#: Metrics whose statistical power against the reference is reported (the seeds needed): the
#: sampled purchase labels' AUC beside the truth metrics, where the runs report them.
POWER_METRICS = ("purchase_auc", "purchase_truth_auc", "cvr_all_truth_kl", "cvr_all_truth_auc")
METRIC_TITLES = {
    "click_auc": "click AUC",
    "click_logloss": "click LogLoss",
    "purchase_auc": "purchase AUC",
    "purchase_logloss": "purchase LogLoss",
    "cvr_auc": "CVR AUC (clicked)",
    "cvr_all_truth_kl": "CVR KL to truth (all rows, nats)",
    "purchase_truth_auc": "purchase soft AUC (truth)",
    "cvr_all_truth_auc": "CVR soft AUC (truth, all rows)",
    "purchase_pcoc": "purchase PCOC",
}


def shown_metrics(rows):
    """The table's metrics: :data:`METRICS`, then the :data:`OPTIONAL_METRICS` some row has."""
    present = [
        metric
        for metric in OPTIONAL_METRICS
        if any(math.isfinite(row.get(f"{metric}_mean", math.nan)) for row in rows)
    ]
    return (*METRICS, *present)


def _cell(mean, std, digits=4):
    if mean is None or not math.isfinite(mean):
        return "–"
    if std is None or not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _p_cell(p_value):
    if p_value is None or not math.isfinite(p_value):
        return "–"
    return f"{p_value:.3f}" if p_value >= 0.001 else f"{p_value:.1e}"


def _signed(value):
    return "–" if value is None or not math.isfinite(value) else f"{value:+.4f}"


def table_lines(plan, rows, oracle=None):
    """The summary as a Markdown table (also what is printed)."""
    ref = plan.reference
    metrics = shown_metrics(rows)
    header = ["model", *(METRIC_TITLES[m] for m in metrics), "time (s)", "s / epoch", "seeds"]
    header += [f"Δ purchase AUC vs {ref}", "p (purchase AUC)", "Holm p (purchase AUC)"]
    header += [f"Δ click AUC vs {ref}", "p (click AUC)", "Holm p (click AUC)"]
    show_kept = any(row.get("kept_epochs") for row in rows)
    if show_kept:
        header.append("kept epoch (per seed)")
    show_sm = any(row.get("sm_used") for row in rows)  # CSTWA rows: seeds whose kept model used SM
    if show_sm:
        header.append("SM used")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        cells = [row["name"] + (" (ref)" if row["name"] == ref else "")]
        cells += [_cell(row[f"{m}_mean"], row[f"{m}_std"]) for m in metrics]
        cells += [
            _cell(row["seconds_mean"], row["seconds_std"], 1),
            _cell(row["epoch_seconds_mean"], None, 2),
        ]
        cells += [str(row["n_seeds"])]
        for metric in ("purchase_auc", "click_auc"):
            cells += [_signed(row[f"{metric}_delta"]), _p_cell(row[f"{metric}_p"])]
            cells.append(_p_cell(row.get(f"{metric}_p_holm")))
        if show_kept:
            cells.append(row.get("kept_epochs") or "–")
        if show_sm:
            cells.append(row.get("sm_used") or "–")
        lines.append("| " + " | ".join(cells) + " |")
    if oracle:
        cells = ["oracle (true probabilities)"] + [_cell(oracle.get(m), None) for m in metrics]
        lines.append("| " + " | ".join(cells + ["–"] * (len(header) - len(cells))) + " |")
    return lines


def selection_line(selection):
    """The summary's statement of the ``valid_metric`` that picked each run's kept epoch
    (``{metric: [run kinds]}``)."""
    if not selection:
        return "Kept epoch: no runs."
    if len(selection) == 1:
        return f"Kept epoch: the best validation `{next(iter(selection))}` (valid_metric) of every run."
    listed = "; ".join(f"`{metric}` ({', '.join(kinds)})" for metric, kinds in selection.items())
    return f"Kept epoch: the best validation valid_metric of each run: {listed}."


def increment_lines(increments):
    """The pairwise increments (Table 3's protocol) as a Markdown table."""
    header = ["increment", "seeds"]
    for metric in TESTED_METRICS:
        title = METRIC_TITLES[metric]
        header += [f"Δ {title} (mean ± std)", f"p ({title})", f"Holm p ({title})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in increments:
        cells = [row["name"], str(min(row[f"{metric}_n"] for metric in TESTED_METRICS))]
        for metric in TESTED_METRICS:
            mean, std = row[f"{metric}_delta_mean"], row[f"{metric}_delta_std"]
            delta = (
                "–"
                if not math.isfinite(mean)
                else _signed(mean) + (f" ± {std:.4f}" if math.isfinite(std) else "")
            )
            cells += [delta, _p_cell(row[f"{metric}_p"]), _p_cell(row[f"{metric}_p_holm"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def power_lines(power, reference, level=0.8, alpha=0.05):
    """The seeds-needed table: a line a row and metric (:func:`~recbole_cstwa.experiments.compare.summarize_power`)."""
    lines = [
        f"| row | metric | Δ vs {reference} (mean ± sd over seeds) | p | seeds | seeds for {level:.0%} power |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in power:
        for metric, cells in row["metrics"].items():
            needed = cells["seeds_needed"]
            needed = "–" if math.isnan(needed) else ("> 1000" if math.isinf(needed) else str(needed))
            delta = f"{cells['mean']:+.4f} ± {cells['std']:.4f}"
            lines.append(
                f"| {row['name']} | {METRIC_TITLES.get(metric, metric)} | {delta} | "
                f"{_p_cell(cells['p'])} | {cells['n']} | {needed} |"
            )
    return lines


def write_increments_csv(path, increments):
    columns = ["name", "minuend", "subtrahend"]
    for metric in TESTED_METRICS:
        columns += [f"{metric}_{part}" for part in ("delta_mean", "delta_std", "p", "p_holm", "n")]
    with atomic_file(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in increments:
            writer.writerow({column: row.get(column) for column in columns})


def code_lines(codes):
    """The summary's statement of the code the runs were made with (``{label: runs}``)."""
    if not codes:
        return []
    if len(codes) == 1:
        label, count = next(iter(codes.items()))
        return [f"Code: all {count} runs at {label}."]
    listed = "; ".join(f"{label}: {count} runs" for label, count in codes.items())
    return [
        f"**Code: the runs were made with {len(codes)} different code versions** ({listed}): "
        "re-run the older ones (`--fresh`, or remove their lines from runs.jsonl) before citing."
    ]


def write_markdown(path, plan, rows, oracle=None, codes=None, increments=None, selection=None, power=None):
    split = (
        f"the dataset's pre-split files (test: `{plan.test_split}`), the same in every run"
        if plan.test_split
        else "RecBole's `eval_args` split; with `order: RO` shuffled with each run's seed (same split "
        "for every model of a seed)"
    )
    variants = [
        f"- **{e.name}** = {e.model} with `{json.dumps(e.overrides)}`" for e in plan.entries if e.overrides
    ]
    text = [
        f"# Comparison on {plan.dataset}",
        "",
        f"Seeds: {', '.join(map(str, plan.seeds))}. Split: {split}. Reference: **{plan.reference}**.",
        f"Settings for every run: `{json.dumps(plan.overrides)}`"
        + (
            f", config files: {', '.join(f'`{p}`' for p in plan.config_file_list)}"
            if plan.config_file_list
            else ""
        )
        + ".",
        *code_lines(codes),
        *([selection_line(selection)] if selection is not None else []),
        "",
        *table_lines(plan, rows, oracle),
        "",
        "Test-set metrics of the best validation epoch: mean ± sample standard deviation (n - 1) over "
        "seeds. Built-in models are trained once per label; their row joins the click run and the "
        "purchase run, and their time is both runs' time. time = wall time of the run(s) (data "
        "loading, pre-training stages, training, evaluation); s / epoch = training time / epochs "
        "trained (validation included, pre-training stages not), summed over a built-in model's two runs.",
        "",
        f"Δ and p: paired t-test (scipy.stats.ttest_rel) of the per-seed values against {plan.reference}. "
        "With few seeds the test has little power (3 seeds: 2 degrees of freedom): a large p does not "
        "mean the models are equal. Holm p: the p-values of one metric adjusted together by Holm's "
        "step-down method (every row is tested against the same reference), the one to read when "
        "asking whether any row differs. Kept epoch: the 1-based epoch whose checkpoint was scored, "
        "per seed in seed order.",
    ]
    if any(row.get("sm_used") for row in rows):
        text += [
            "",
            "SM used: per seed, the kept model's training steps in which the Structure Migrator's "
            "P acted over its training steps (e.g. 60/120 when epoch 1 is kept and P first came "
            "mid-epoch), and the mean of those shares; for runs recorded without step counts, the "
            "seeds whose kept model used it.",
        ]
    if increments:
        text += [
            "",
            "## Increments",
            "",
            *increment_lines(increments),
            "",
            "Each increment is one row minus another, paired by seed: the mean ± sample standard "
            "deviation of the per-seed differences, the paired t-test's p, and Holm's p over the "
            "listed increments (one family a metric), as the paper's Table 3 reads each component's "
            "gain.",
        ]
    if power:
        text += [
            "",
            "## Seeds needed",
            "",
            *power_lines(power, plan.reference),
            "",
            "For each row against the reference: the per-seed differences (row minus reference; for "
            "the KL, lower is better), the paired t-test's p, and the fewest seeds with which a "
            "two-sided paired t-test at level 0.05 separates the two with probability 0.8 if the "
            "differences keep the mean / sd measured here (the noncentral t distribution; "
            "`statistics.seeds_needed`). A metric whose differences vary less over seeds than "
            "their mean needs fewer seeds: compare the sampled labels' purchase AUC with the truth "
            "metrics of a generated dataset.",
        ]
    if variants:
        text += ["", "Variants:", *variants]
    write_text(path, "\n".join(text) + "\n")


def write_csv(path, rows, oracle=None):
    columns = ["name", "model", "kind", "n_seeds"]
    for metric in (*METRICS, *OPTIONAL_METRICS, "seconds", "epoch_seconds"):
        columns += [f"{metric}_mean", f"{metric}_std"]
    for metric in TESTED_METRICS:
        columns += [f"{metric}_delta", f"{metric}_p", f"{metric}_p_holm"]
    columns += ["kept_epochs", "sm_used", "sm_share_mean", "overrides"]
    with atomic_file(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({**{c: row.get(c) for c in columns}, "overrides": json.dumps(row["overrides"])})
        if oracle:
            writer.writerow(
                {
                    "name": "oracle",
                    "kind": "true probabilities",
                    **{f"{m}_mean": oracle.get(m) for m in METRICS},
                }
            )


def figure(plan, rows, joined, oracle=None):
    """A plotly figure: purchase and click AUC per row, each seed a dot, mean ± std a bar."""
    from plotly.subplots import make_subplots

    names = [row["name"] for row in rows]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("purchase AUC", "click AUC"), horizontal_spacing=0.12)
    for col, metric in enumerate(("purchase_auc", "click_auc"), start=1):
        for row in rows:
            is_ref = row["name"] == plan.reference
            seeds = joined[row["name"]]
            p_text = "reference" if is_ref else f"p = {_p_cell(row[f'{metric}_p'])} vs {plan.reference}"
            fig.add_scatter(
                x=[row[f"{metric}_mean"]],
                y=[row["name"]],
                error_x={
                    "type": "data",
                    "array": [row[f"{metric}_std"] if math.isfinite(row[f"{metric}_std"]) else 0],
                },
                mode="markers",
                marker={"size": 12, "color": "#d62728" if is_ref else "#1f77b4", "symbol": "diamond"},
                name=row["name"],
                showlegend=False,
                hovertemplate=f"{row['name']}<br>mean %{{x:.4f}} ± {_cell(row[f'{metric}_std'], None)}<br>{p_text}<extra></extra>",
                row=1,
                col=col,
            )
            fig.add_scatter(
                x=[values.get(metric) for values in seeds.values()],
                y=[row["name"]] * len(seeds),
                mode="markers",
                marker={"size": 6, "color": "rgba(100,100,100,0.55)"},
                text=[f"seed {seed}" for seed in seeds],
                hovertemplate="%{text}: %{x:.4f}<extra></extra>",
                showlegend=False,
                row=1,
                col=col,
            )
        if oracle and oracle.get(metric) is not None and math.isfinite(oracle[metric]):
            fig.add_vline(
                x=oracle[metric],
                line_dash="dash",
                line_color="green",
                annotation_text="oracle",
                annotation_position="bottom left",
                row=1,
                col=col,
            )
    fig.update_yaxes(categoryorder="array", categoryarray=names[::-1])
    fig.update_layout(
        title=f"{plan.dataset}: test AUC, seeds {', '.join(map(str, plan.seeds))}<br><sup>diamond = mean ± "
        f"std over seeds, dots = single seeds, red = reference ({plan.reference})"
        + (", dashed = oracle" if oracle else "")
        + "</sup>",
        height=max(360, 60 + 40 * len(rows)),
        width=1100,
        template="plotly_white",
    )
    return fig


def write_plot(path, plan, rows, joined, oracle=None, plotlyjs=True):
    """Writes the HTML plot (and a PNG next to it when kaleido is installed); returns the paths."""
    fig = figure(plan, rows, joined, oracle)
    with atomic_file(path, "w", encoding="utf-8") as file:
        fig.write_html(file, include_plotlyjs=plotlyjs, full_html=True)
    written = [path]
    try:
        import kaleido  # noqa: F401  (optional; never installed by this package)
    except ImportError:
        return written
    png = os.path.splitext(path)[0] + ".png"
    with atomic_file(png, "wb") as file:
        fig.write_image(file, format="png")
    return written + [png]
