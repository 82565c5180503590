"""A sweep of generated worlds: every model trained on each world and scored against its truth.

A world is a dataset drawn by the generator (:mod:`recbole_cstwa.tools.generator`) with its own
knobs: how far click and purchase agree (``rho``), the share of clickbait categories, how much a
click depends on the conversion latent (``selection_bias``), the purchase rate (``cvr``), users
and items per impression (``n_users``, ``n_items``) and held-out users and items (cold start).
The sweep file (YAML, e.g. ``worlds/sweep.yaml``) gives the base knobs and each world's own::

    base: {n_impressions: 400000, n_users: 952, n_items: 2381, ctr: 0.0389, cvr: 0.14, seed: 2024,
           split: [0.4, 0.1, 0.5]}
    worlds:
      - {name: base, note: the base world}
      - {name: selection, note: clicks depend on the conversion latent, selection_bias: 1.5}

Each world's dataset is ``world-<name>`` under ``data_path`` (written by the command, which may
import the generator; this module reads what it wrote). Every world runs the same comparison
(:func:`recbole_cstwa.experiments.compare.run_comparison`: its rows, seeds and settings) into
``<output_dir>/<world>/runs.jsonl``, which resumes as a comparison does. The report
(:func:`write_report`) holds the worlds' table (their knobs and what they measure on the test
split: the lift of the true CVR on clicked impressions, the agreement of click and conversion),
model x world tables of the truth KL of ``cvr_all``, purchase AUC and purchase PCOC, where each
model wins, every row against the reference row on ``cvr_all``, the named pairs of rows (the
Curse Escaper: CSTWA against CSTWA without it) and a heatmap of the ranks (an HTML page with
inline SVG: no script, no library).
"""

import gzip
import html
import math
import os
from dataclasses import dataclass

import numpy as np

from recbole_cstwa.errors import CompareError
from recbole_cstwa.experiments.statistics import mean_std, paired_test
from recbole_cstwa.file_writes import write_text

#: The generator's knobs a world may set (``recbole-cstwa-generate generate``'s arguments).
WORLD_KNOBS = (
    "n_impressions",
    "n_users",
    "n_items",
    "n_categories",
    "ctr",
    "cvr",
    "rho",
    "seed",
    "split",
    "clickbait_share",
    "selection_bias",
    "new_user_share",
    "new_item_share",
)
#: A world's dataset name: ``world-<name>``.
DATASET_PREFIX = "world-"
#: The report's metrics: key, title, and how a value ranks (``low``: smaller is better, ``high``:
#: bigger is better, ``one``: nearer 1 is better).
REPORT_METRICS = (
    ("cvr_all_truth_kl", "`cvr_all` truth KL (nats a row, smaller is better)", "low"),
    ("purchase_auc", "purchase AUC (sampled labels)", "high"),
    ("purchase_pcoc", "purchase PCOC (predicted / observed purchases; 1 is calibrated)", "one"),
    ("cvr_all_truth_auc", "`cvr_all` truth soft AUC", "high"),
)


@dataclass(frozen=True)
class World:
    """One world: its name, a one-line note and the generator's arguments (base merged)."""

    name: str
    note: str
    knobs: dict

    @property
    def dataset(self):
        return DATASET_PREFIX + self.name


@dataclass(frozen=True)
class Sweep:
    """A sweep file: the base knobs and the worlds, in file order."""

    path: str
    base: dict
    worlds: tuple


def _checked_knobs(knobs, where):
    unknown = sorted(set(knobs) - set(WORLD_KNOBS))
    if unknown:
        raise CompareError(
            f"{where}: {unknown} are not generator knobs; a world sets some of {list(WORLD_KNOBS)} "
            "(recbole-cstwa-generate generate --help)."
        )
    for key, value in knobs.items():
        plain = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key == "split":
            plain = (
                isinstance(value, list)
                and len(value) == 3
                and all(isinstance(v, (int, float)) for v in value)
            )
        if not plain:
            raise CompareError(
                f"{where}: {key} must be a number{' list of 3' if key == 'split' else ''}, got {value!r}."
            )
    return dict(knobs)


def read_sweep(path):
    """The :class:`Sweep` of a YAML sweep file, checked (names plain and distinct, knobs known)."""
    import yaml

    from recbole_cstwa.values import SettingsYamlLoader

    path = str(path)
    try:
        with open(path, encoding="utf-8") as file:
            loaded = yaml.load(file.read(), Loader=SettingsYamlLoader)
    except FileNotFoundError:
        raise CompareError(f"Sweep file [{path}] does not exist (--sweep).") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        problem = str(getattr(error, "problem", None) or error).splitlines()[0]
        raise CompareError(f"Sweep file [{path}] cannot be read: {problem}.") from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("worlds"), list) or not loaded["worlds"]:
        raise CompareError(f"Sweep file [{path}] needs `worlds:`, a list of worlds (name, note, knobs).")
    base = _checked_knobs(loaded.get("base") or {}, f"Sweep file [{path}], base")
    worlds, seen = [], set()
    for number, entry in enumerate(loaded["worlds"], start=1):
        where = f"Sweep file [{path}], world {number}"
        if not isinstance(entry, dict):
            raise CompareError(f"{where}: write name, note and knobs as `key: value` lines.")
        entry = dict(entry)
        name, note = entry.pop("name", None), str(entry.pop("note", "") or "")
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
            raise CompareError(f"{where}: name must be letters, digits, - or _, got {name!r}.")
        if name in seen:
            raise CompareError(f"{where}: the name {name} is used twice.")
        seen.add(name)
        worlds.append(World(name, note, {**base, **_checked_knobs(entry, f"{where} ({name})")}))
    return Sweep(path, base, tuple(worlds))


def check_world_dataset(world, data_path):
    """Whether ``world``'s dataset is there with the world's knobs: True when it is, False when it
    is missing; another dataset under its name (other knobs in its meta.json) is an error."""
    import json

    folder = os.path.join(data_path, world.dataset)
    meta_path = os.path.join(folder, f"{world.dataset}.meta.json")
    if not os.path.exists(folder):
        return False
    try:
        with open(meta_path, encoding="utf-8") as file:
            parameters = json.load(file)["parameters"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CompareError(
            f"[{folder}] holds no generated world (no readable {os.path.basename(meta_path)}): remove it "
            "or choose another --data_path."
        ) from None
    differ = {
        key: (parameters.get(key), value)
        for key, value in world.knobs.items()
        if key in parameters and parameters.get(key) != value and not _same_number(parameters.get(key), value)
    }
    if differ:
        shown = ", ".join(f"{key} {old!r} there, {new!r} asked" for key, (old, new) in sorted(differ.items()))
        raise CompareError(
            f"[{folder}] was generated with other knobs ({shown}): remove it to draw the world again, "
            "or give the world another name."
        )
    return True


def _same_number(stored, asked):
    if isinstance(asked, list) and isinstance(stored, list) and len(asked) == len(stored):
        return all(_same_number(a, b) for a, b in zip(stored, asked))
    return (
        isinstance(stored, (int, float)) and isinstance(asked, (int, float)) and math.isclose(stored, asked)
    )


def world_statistics(data_path, world, split="test"):
    """What ``world`` measures on its ``split``: rows, clicks, purchases, the lift of the true CVR
    on clicked impressions (mean q over clicked rows / mean q over all rows: 1 without selection
    bias) and the correlation of the click and conversion logits (how far they agree)."""
    folder = os.path.join(data_path, world.dataset)
    stem = os.path.join(folder, f"{world.dataset}.{split}")
    import pandas as pd

    labels = pd.read_csv(f"{stem}.inter", sep="\t", usecols=["click:float", "purchase:float"])
    with gzip.open(f"{stem}.truth.gz", "rt") as file:
        truth = pd.read_csv(file, sep="\t")
    p_click = truth["p_click"].to_numpy()
    q = truth["p_purchase"].to_numpy() / p_click
    clicked = labels["click:float"].to_numpy() == 1

    def logit(p):
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return np.log(p / (1 - p))

    return {
        "rows": len(labels),
        "clicks": int(clicked.sum()),
        "purchases": int(labels["purchase:float"].sum()),
        "cvr_lift_on_clicks": float(q[clicked].mean() / q.mean()) if clicked.any() else math.nan,
        "click_conversion_correlation": float(np.corrcoef(logit(p_click), logit(q))[0, 1]),
    }


def _values(per_seed_rows, row, metric):
    return {seed: values[metric] for seed, values in per_seed_rows[row].items() if metric in values}


def _score(mean, how):
    """A value's rank key: smaller is better."""
    if mean is None or not math.isfinite(mean):
        return math.inf
    return {"low": mean, "high": -mean, "one": abs(math.log(mean)) if mean > 0 else math.inf}[how]


def ranks(means, how):
    """``{row: rank}`` (1 = best; ties share the best rank; a missing value ranks last)."""
    keys = {row: _score(mean, how) for row, mean in means.items()}
    ordered = sorted(set(keys.values()))
    return (
        {row: 1 + sum(1 for other in keys.values() if other < key) for row, key in keys.items()}
        if ordered
        else {}
    )


def summarize_worlds(results, rows):
    """``{world: {metric: {row: (mean, std)}}}`` from each world's per-seed values."""
    summary = {}
    for world, per_seed_rows in results.items():
        summary[world] = {
            metric: {row: mean_std(list(_values(per_seed_rows, row, metric).values())) for row in rows}
            for metric, _, _ in REPORT_METRICS
        }
    return summary


def _cell(mean, std, digits):
    if mean is None or not math.isfinite(mean):
        return "–"
    text = f"{mean:.{digits}f}"
    return text + (f" ± {std:.{digits}f}" if std is not None and math.isfinite(std) else "")


def _p(p_value):
    if p_value is None or not math.isfinite(p_value):
        return "–"
    return f"{p_value:.3f}" if p_value >= 0.001 else f"{p_value:.0e}"


def _world_settings(world, base):
    own = {key: value for key, value in world.knobs.items() if base.get(key) != value}
    return ", ".join(f"{key} {value}" for key, value in own.items()) or "base knobs"


def report_lines(sweep, results, statistics, rows, reference, pairs, seeds, code_lines=()):
    """The Markdown report (see the module doc)."""
    worlds = [world for world in sweep.worlds if world.name in results]
    summary = summarize_worlds(results, rows)
    lines = [
        "# Worlds: every model on generated worlds, scored against the known truth",
        "",
        f"Sweep file `{os.path.basename(sweep.path)}`; seeds {', '.join(map(str, seeds))}; rows: "
        f"{', '.join(rows)}. Base knobs: "
        + ", ".join(f"{key} {value}" for key, value in sweep.base.items())
        + ". Test split of each world; mean ± sample standard deviation over seeds.",
        *code_lines,
        "",
        "| world | its knobs | what it is | test rows | clicks | purchases | true-CVR lift on clicks |"
        " click-conversion logit correlation |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for world in worlds:
        stats = statistics[world.name]
        lines.append(
            f"| {world.name} | {_world_settings(world, sweep.base)} | {world.note} | {stats['rows']:,} | "
            f"{stats['clicks']:,} | {stats['purchases']:,} | {stats['cvr_lift_on_clicks']:.2f} | "
            f"{stats['click_conversion_correlation']:+.2f} |"
        )
    lines += [
        "",
        "True-CVR lift on clicks: the mean true CVR q = P(purchase | click) over the clicked test "
        "impressions over its mean over all of them (1: clicks are a fair sample for the CVR; above "
        "1: selection bias). Correlation: of the true click and conversion logits over the test "
        "impressions.",
    ]
    for metric, title, how in REPORT_METRICS:
        digits = 3 if metric.endswith("_kl") or metric.endswith("pcoc") else 4
        lines += ["", f"## {title}", "", "| model | " + " | ".join(w.name for w in worlds) + " |"]
        lines.append("|---|" + "|".join("---:" for _ in worlds) + "|")
        best = {w.name: min(rows, key=lambda r: _score(summary[w.name][metric][r][0], how)) for w in worlds}
        for row in rows:
            cells = []
            for world in worlds:
                mean, std = summary[world.name][metric][row]
                text = _cell(mean, std, digits)
                cells.append(f"**{text}**" if best[world.name] == row and text != "–" else text)
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "## Where each model wins", ""]
    lines.append("| world | " + " | ".join(title.split(" (")[0] for _, title, _ in REPORT_METRICS) + " |")
    lines.append("|---|" + "|".join("---" for _ in REPORT_METRICS) + "|")
    for world in worlds:
        cells = []
        for metric, _, how in REPORT_METRICS:
            means = {row: summary[world.name][metric][row][0] for row in rows}
            order = sorted(rows, key=lambda r: _score(means[r], how))
            if not math.isfinite(_score(means[order[0]], how)):
                cells.append("–")
                continue
            gap = (
                abs(means[order[0]] - means[order[1]])
                if len(order) > 1 and math.isfinite(_score(means[order[1]], how))
                else math.nan
            )
            cells.append(
                f"{order[0]} ({means[order[0]]:.4f}; {order[1]} {gap:.4f} behind)"
                if math.isfinite(gap)
                else f"{order[0]} ({means[order[0]]:.4f})"
            )
        lines.append(f"| {world.name} | " + " | ".join(cells) + " |")
    if reference in rows:
        lines += [
            "",
            f"## Every row against {reference} on `cvr_all` (truth KL difference, paired p over seeds)",
            "",
            "Negative: closer to the true CVR over every impression than "
            f"{reference}. Worlds in the order of their true-CVR lift on clicks (selection bias).",
            "",
            "| world (lift) | " + " | ".join(row for row in rows if row != reference) + " |",
            "|---|" + "|".join("---:" for row in rows if row != reference) + "|",
        ]
        for world in sorted(worlds, key=lambda w: statistics[w.name]["cvr_lift_on_clicks"]):
            cells = []
            for row in rows:
                if row == reference:
                    continue
                delta, p_value, _ = paired_test(
                    _values(results[world.name], row, "cvr_all_truth_kl"),
                    _values(results[world.name], reference, "cvr_all_truth_kl"),
                )
                cells.append("–" if not math.isfinite(delta) else f"{delta:+.3f} ({_p(p_value)})")
            lift = statistics[world.name]["cvr_lift_on_clicks"]
            lines.append(f"| {world.name} ({lift:.2f}) | " + " | ".join(cells) + " |")
    for row, baseline in pairs:
        if row not in rows or baseline not in rows:
            continue
        lines += [
            "",
            f"## {row} against {baseline} (difference, paired p over seeds)",
            "",
            "Worlds in the order of the click-conversion correlation (where click and purchase "
            "disagree most first).",
            "",
            "| world (correlation) | purchase AUC | `cvr_all` truth KL | `cvr_all` truth AUC |",
            "|---|---:|---:|---:|",
        ]
        for world in sorted(worlds, key=lambda w: statistics[w.name]["click_conversion_correlation"]):
            cells = []
            for metric in ("purchase_auc", "cvr_all_truth_kl", "cvr_all_truth_auc"):
                delta, p_value, _ = paired_test(
                    _values(results[world.name], row, metric), _values(results[world.name], baseline, metric)
                )
                cells.append("–" if not math.isfinite(delta) else f"{delta:+.4f} ({_p(p_value)})")
            correlation = statistics[world.name]["click_conversion_correlation"]
            lines.append(f"| {world.name} ({correlation:+.2f}) | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The ranks of every row in every world are drawn in [worlds.html](worlds.html) (1 = best).",
    ]
    return lines


#: Heatmap colours from rank 1 (best) to the last rank.
_BEST, _WORST = (26, 150, 65), (215, 48, 39)


def _colour(rank, count):
    share = 0.0 if count <= 1 else (rank - 1) / (count - 1)
    middle = (255, 255, 191)
    start, end = (_BEST, middle) if share <= 0.5 else (middle, _WORST)
    local = share * 2 if share <= 0.5 else (share - 0.5) * 2
    return "#" + "".join(f"{round(a + (b - a) * local):02x}" for a, b in zip(start, end))


def heatmap_svg(title, world_names, rows, rank_table):
    """An SVG heatmap: one row a model, one column a world, the rank written in each cell."""
    cell_w, cell_h, left, top = 86, 24, 150, 70
    width, height = left + cell_w * len(world_names) + 10, top + cell_h * len(rows) + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="4" y="16" font-size="14" font-weight="bold">{html.escape(title)}</text>',
    ]
    for column, world in enumerate(world_names):
        x = left + column * cell_w + cell_w / 2
        parts.append(f'<text x="{x}" y="{top - 8}" text-anchor="middle">{html.escape(world)}</text>')
    for line, row in enumerate(rows):
        y = top + line * cell_h
        parts.append(f'<text x="{left - 6}" y="{y + 16}" text-anchor="end">{html.escape(row)}</text>')
        for column, world in enumerate(world_names):
            rank = rank_table[world].get(row)
            x = left + column * cell_w
            fill = "#dddddd" if rank is None else _colour(rank, len(rows))
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell_w - 2}" height="{cell_h - 2}" fill="{fill}"/>'
                f'<text x="{x + cell_w / 2}" y="{y + 16}" text-anchor="middle">{"–" if rank is None else rank}</text>'
            )
    parts.append("</svg>")
    return "\n".join(parts)


def report_html(sweep, results, rows):
    """The heatmaps of the ranks, one a report metric, in one self-contained HTML page."""
    worlds = [world.name for world in sweep.worlds if world.name in results]
    summary = summarize_worlds(results, rows)
    figures = []
    for metric, title, how in REPORT_METRICS:
        rank_table = {
            world: ranks({row: summary[world][metric][row][0] for row in rows}, how) for world in worlds
        }
        figures.append(heatmap_svg(f"rank by {title}", worlds, rows, rank_table))
    body = "\n<br>\n".join(figures)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Worlds: ranks</title></head><body>\n'
        "<p>Rank of every model (rows) in every world (columns), 1 = best, by the mean over seeds "
        "(results/worlds.md gives the values).</p>\n" + body + "\n</body></html>\n"
    )


def write_report(path, sweep, results, statistics, rows, reference, pairs, seeds, code_lines=()):
    """Writes the Markdown report at ``path`` and the heatmap page beside it (``.html``)."""
    write_text(
        path,
        "\n".join(report_lines(sweep, results, statistics, rows, reference, pairs, seeds, code_lines)) + "\n",
    )
    html_path = os.path.splitext(path)[0] + ".html"
    write_text(html_path, report_html(sweep, results, rows))
    return [path, html_path]


def run_sweep(
    sweep,
    data_path,
    output_dir,
    models,
    seeds,
    variants=(),
    reference=None,
    pairs=(),
    overrides=None,
    report=None,
    log=print,
    **comparison,
):
    """Runs the comparison on every world of ``sweep`` (each world's dataset must exist: the
    command draws the missing ones) and writes the report.

    Args:
        data_path: the folder holding the worlds' datasets (``world-<name>``).
        output_dir: each world's comparison goes to ``<output_dir>/<world>/`` (``runs.jsonl``
            resumes there).
        models, seeds, variants, overrides: the comparison of every world
            (:func:`~recbole_cstwa.experiments.compare.run_comparison`).
        reference: the row every other row is set against on ``cvr_all`` in the report (default:
            ESMM when it is a row, else the first row); pairs: ``[(row, baseline)]`` differenced in
            every world (e.g. CSTWA against CSTWA without its Curse Escaper).
        report: the Markdown report's path (default ``<output_dir>/worlds.md``; the heatmap page
            is written beside it).
        comparison: more arguments of ``run_comparison`` (``jobs``, ``resume``, ...).

    Returns:
        dict: ``results`` (``{world: per-seed values of every row}``), ``statistics``,
        ``rows``, ``files``.
    """
    from recbole_cstwa.experiments.compare import code_label, run_comparison

    data_path = os.path.abspath(data_path)
    missing = [world.name for world in sweep.worlds if not check_world_dataset(world, data_path)]
    if missing:
        raise CompareError(
            f"the datasets of the worlds {missing} are missing under [{data_path}]: run_worlds.py "
            "draws them (recbole-cstwa-worlds)."
        )
    results, statistics, rows, codes = {}, {}, None, {}
    for number, world in enumerate(sweep.worlds, start=1):
        log(f"world {number}/{len(sweep.worlds)}: {world.name} ({world.note})")
        settings = {
            **(overrides or {}),
            "data_path": data_path,
            "benchmark_filename": ["train", "valid", "test"],
        }
        result = run_comparison(
            models,
            seeds,
            dataset=world.dataset,
            overrides=settings,
            variants=variants,
            reference=None,
            output_dir=os.path.join(output_dir, world.name),
            plotlyjs="cdn",
            log=log,
            **comparison,
        )
        results[world.name] = result["per_seed"]
        rows = [entry.name for entry in result["plan"].entries]
        statistics[world.name] = world_statistics(data_path, world)
        for record in result["records"]:
            label = code_label(record.get("code"))
            codes[label] = codes.get(label, 0) + 1
    if reference is None:
        reference = "ESMM" if "ESMM" in rows else rows[0]
    code_lines = (
        [f"Code: all {sum(codes.values())} runs at {next(iter(codes))}."]
        if len(codes) == 1
        else [
            f"**Code: {len(codes)} code versions** ({'; '.join(f'{k}: {v} runs' for k, v in codes.items())})."
        ]
    )
    report = report or os.path.join(output_dir, "worlds.md")
    files = write_report(report, sweep, results, statistics, rows, reference, list(pairs), seeds, code_lines)
    return {"results": results, "statistics": statistics, "rows": rows, "files": files}
