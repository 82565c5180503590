"""One command to compare models: plugin models, RecBole's built-in context models and variants.

Every model of the list (and every named variant: a model with config overrides, e.g. the CSTWA
paper's ablations) is trained on the same dataset and split with each seed. Results are test-set
metrics of the best validation epoch.

* Plugin models (MLP, ESMM, CSTWA, ...) have a click and a purchase head: one run per seed.
* RecBole's built-in models (DeepFM, WideDeep, DCN, xDeepFM, ...) learn one label: each is trained
  twice per seed, with ``LABEL_FIELD`` = the click label and = the purchase label, on the same
  split, and scored on the same test impressions. Its row joins the two runs: click metrics
  from the click run, purchase metrics from the purchase run, and its time is both runs' time.

Seeds and splits: each run sets ``seed`` (RecBole's ``init_seed``: weights, batch order,
dropout). A pre-split dataset (``benchmark_filename``, as the embedded synthetic-ccp) has the
same train/valid/test files in every run. Otherwise RecBole splits by ``eval_args``; with
``order: RO`` it shuffles with the run's seed before splitting, so one seed gives every model the
same split (the comparison stays paired) and each seed a different split (the spread over seeds
then includes the split).

The summary gives, per row, the mean and sample standard deviation (n - 1) over seeds of click
AUC, click LogLoss, purchase AUC, purchase LogLoss, CVR AUC (over clicked impressions, when
``eval_tasks`` lists ``cvr``), the run time, and a paired t-test
(``scipy.stats.ttest_rel``) of the per-seed purchase AUC and click AUC against a reference row,
Holm-adjusted over the rows (:mod:`recbole_cstwa.experiments.statistics`).
With 3 seeds the t-test has 2 degrees of freedom and little power: a p above 0.05 does not show
that two models are equal, and only large, consistent gaps come out significant. When the dataset
has the generator's truth files, an oracle row gives the AUC of scoring with the true
probabilities. Increments (``"A-B"``: row A minus row B, paired by seed) give the differences'
mean and std, their t-test and Holm's p over the listed increments (the paper's Table 3 reading).
The summary names the ``valid_metric`` the runs picked their kept epoch on.

Runs are trained in this process, in worker processes (``jobs``) or as Ray tasks
(:mod:`recbole_cstwa.experiments.workers`), each claimed first and recorded by one whole-line
append (:mod:`recbole_cstwa.experiments.run_records`).

Files in the output folder: ``runs.jsonl`` (one line per finished run, appended as it finishes;
a rerun skips the runs already there with the same settings), ``claims/`` (the runs in
training), ``summary.md``, ``summary.csv``, ``increments.csv`` (with increments) and
``summary.html`` (an interactive plot; plotly.js inline by default, so it opens offline).
"""

import hashlib
import json
import math
import os
import pickle
import time
from dataclasses import dataclass, field

from recbole_cstwa.config import isolated_argv
from recbole_cstwa.digest import file_digest
from recbole_cstwa.errors import CompareError, ConfigError, UnknownSettingError
from recbole_cstwa.experiments.report import (
    METRICS,
    OPTIONAL_METRICS,
    POWER_METRICS,
    TESTED_METRICS,
    increment_lines,
    selection_line,
    table_lines,
    write_csv,
    write_increments_csv,
    write_markdown,
    write_plot,
)
from recbole_cstwa.experiments.run_records import RUNS_FILE, read_runs
from recbole_cstwa.experiments.statistics import (
    holm_adjusted,
    mean_std,
    paired_summary,
    paired_test,
    seeds_needed,
)
from recbole_cstwa.experiments.workers import (
    InProcess,
    RayTasks,
    RunContext,
    WorkerProcesses,
    run_all,
)
from recbole_cstwa.tasks import label_fields
from recbole_cstwa.values import parse_assignments, split_assignments

DEFAULT_OUTPUT_DIR = os.path.join("results", "compare")
#: Settings the comparison sets itself in every run.
RESERVED_KEYS = ("seed", "LABEL_FIELD", "model", "dataset")
#: Where runs are trained: this machine (``--jobs``) or a Ray cluster.
TOOLS = ("local", "Ray")


@dataclass(frozen=True)
class Entry:
    """A row of the comparison: ``model`` trained with ``overrides`` (a variant if any)."""

    name: str
    model: str
    overrides: dict = field(default_factory=dict)


def parse_variant(text):
    """``"NAME=MODEL:key=value,key=value"`` (overrides optional) as an :class:`Entry`."""
    name, sep, rest = text.partition("=")
    model, _, assignments = rest.partition(":")
    name, model = name.strip(), model.strip()
    if not sep or not name or not model:
        raise CompareError(
            f"--variant {text!r}: write NAME=MODEL:key=value,key=value, e.g. "
            '"SM=CSTWA:use_sm=True,use_cp=False,use_ce=False".'
        )
    return Entry(name, model, parse_assignments(split_assignments(assignments), f"--variant {name}"))


@dataclass(frozen=True)
class Increment:
    """A pairwise increment of the summary: row ``minuend`` minus row ``subtrahend``, paired by seed."""

    minuend: str
    subtrahend: str

    @property
    def name(self):
        return f"{self.minuend} - {self.subtrahend}"


def parse_increment(text, names):
    """``"CP+CE-CP"`` (row CP+CE minus row CP) as an :class:`Increment` of two of ``names``: the
    one ``-`` with a row name on each side (row names may hold ``-`` and ``+`` themselves)."""
    splits = {(text[:at].strip(), text[at + 1 :].strip()) for at, char in enumerate(text) if char == "-"}
    found = sorted((a, b) for a, b in splits if a in names and b in names)
    if len(found) != 1:
        reason = "names no two rows" if not found else f"reads {len(found)} ways: {found}"
        raise CompareError(
            f"--increment {text!r} {reason}. Write ROW-ROW with two row names (the first minus "
            f'the second), e.g. "CP+CE-CP"; rows: {list(names)}.'
        )
    minuend, subtrahend = found[0]
    if minuend == subtrahend:
        raise CompareError(f"--increment {text!r} subtracts a row from itself: name two rows.")
    return Increment(minuend, subtrahend)


def _is_two_task(model):
    from recbole_cstwa.registry import get_model, is_multitask_model

    return is_multitask_model(get_model(model))


def _defaults_digest():
    """A digest of every YAML file under the plugin's ``properties/``."""
    from recbole_cstwa.config import properties_dir

    root = properties_dir()
    paths = sorted(
        os.path.join(folder, name)
        for folder, _, names in os.walk(root)
        for name in names
        if name.endswith(".yaml")
    )
    return [[os.path.relpath(path, root), file_digest(path)] for path in paths]


def _dataset_yaml_digest(config_dict, dataset):
    from recbole_cstwa.config import EMBEDDED_DATASET, dataset_yaml_path

    path = dataset_yaml_path(
        str((config_dict or {}).get("data_path", "dataset/")), dataset or EMBEDDED_DATASET
    )
    return file_digest(path) if os.path.isfile(path) else None


def run_key(model, task, config_dict, dataset, config_file_list):
    """Identifies a run by everything that sets its result, for resuming."""
    settings = {
        "model": model,
        "task": task,
        "dataset": dataset,
        "config": config_dict,
        "config_files": [[os.path.abspath(path), file_digest(path)] for path in config_file_list or []],
        # The plugin's YAML defaults: editing one must not reuse runs made under the old value.
        "defaults": _defaults_digest(),
        # The dataset's own YAML, loaded by convention (<data_path>/<name>/<name>.yaml).
        "dataset_yaml": _dataset_yaml_digest(config_dict, dataset),
    }
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Plan:
    """Everything the comparison runs, checked before the first run."""

    entries: list
    seeds: list
    dataset: str
    config_file_list: list
    overrides: dict
    reference: str
    label_fields: dict
    two_task: dict
    data_dir: str
    test_split: str = ""
    runs: list = field(default_factory=list)
    increments: list = field(default_factory=list)
    #: each row's data_path and checkpoint_dir, absolute (for runs in other working folders)
    paths: dict = field(default_factory=dict)


def make_plan(
    models,
    seeds,
    dataset=None,
    config_file_list=None,
    overrides=None,
    variants=(),
    reference=None,
    increments=(),
):
    """Checks the models, variants, increments and settings and lists the runs (nothing is
    trained). Each run names the ``valid_metric`` its settings resolve to."""
    from recbole_cstwa.config import Config

    entries = [Entry(name, name) for name in models] + [
        variant if isinstance(variant, Entry) else parse_variant(variant) for variant in variants
    ]
    if not entries:
        raise CompareError("No model to compare: give --models and/or --variant.")
    names = [entry.name for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise CompareError(f"Row name(s) {duplicates} appear twice: give each variant its own name.")
    seeds = [int(seed) for seed in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise CompareError(f"--seeds needs distinct seeds, got {seeds}.")
    overrides = dict(overrides or {})
    for where, settings in [("--key=value", overrides)] + [
        (f"--variant {e.name}", e.overrides) for e in entries
    ]:
        reserved = sorted(set(settings) & set(RESERVED_KEYS))
        if reserved:
            raise CompareError(
                f"{where} sets {reserved}: the comparison sets these itself (seeds with --seeds, "
                "the model with --models or --variant, the dataset with --dataset, and LABEL_FIELD "
                "per run of a built-in model)."
            )
    config_file_list = [os.path.abspath(path) for path in config_file_list or []]
    for path in config_file_list:
        if not os.path.isfile(path):
            raise ConfigError(f"Config file [{path}] does not exist (--config_files).")
    if reference is None:
        reference = entries[0].name
    if reference not in names:
        raise CompareError(f"--reference {reference!r} is not a row; rows: {names}.")
    increments = [
        item if isinstance(item, Increment) else parse_increment(item, names) for item in increments
    ]

    two_task, configs = {}, {}
    for entry in entries:
        two_task[entry.name] = _is_two_task(entry.model)  # unknown names fail here, before any run
        try:
            with isolated_argv():
                configs[entry.name] = Config(
                    model=entry.model,
                    dataset=dataset,
                    config_file_list=config_file_list or None,
                    config_dict={**overrides, **entry.overrides},
                )
        except UnknownSettingError as error:
            if error.where != "config_dict":
                raise
            # config_dict holds the variant's settings over the command's --key=value pairs
            where = f"--variant {entry.name}" if error.key in entry.overrides else "command line"
            raise error.given_in(where) from None
    labels = label_fields(configs[entries[0].name])
    valid_metrics = {}  # (row, task) -> the metric that picks the run's kept epoch
    for entry in entries:
        if two_task[entry.name]:
            valid_metrics[entry.name, "both"] = configs[entry.name]["valid_metric"]
            continue
        for task in ("click", "purchase"):  # a single-label model: resolved for each label
            with isolated_argv():
                config = Config(
                    model=entry.model,
                    dataset=dataset,
                    config_file_list=config_file_list or None,
                    config_dict={**overrides, **entry.overrides, "LABEL_FIELD": labels[task]},
                )
            valid_metrics[entry.name, task] = config["valid_metric"]
    first = configs[entries[0].name]
    benchmark = first["benchmark_filename"] or []
    plan = Plan(
        entries=entries,
        seeds=seeds,
        dataset=first["dataset"],
        config_file_list=config_file_list,
        overrides=overrides,
        reference=reference,
        label_fields=labels,
        two_task=two_task,
        data_dir=first["data_path"],
        test_split=benchmark[2] if len(benchmark) == 3 else "",
        increments=increments,
        paths={
            name: {
                # data_path ends in the dataset's folder
                "data_path": os.path.dirname(os.path.abspath(config["data_path"])),
                "checkpoint_dir": os.path.abspath(config["checkpoint_dir"]),
            }
            for name, config in configs.items()
        },
    )
    for seed in seeds:  # seed by seed: a comparison cut short still has whole seeds
        for entry in entries:
            tasks = ("both",) if two_task[entry.name] else ("click", "purchase")
            for task in tasks:
                config_dict = {**overrides, **entry.overrides, "seed": seed}
                if task != "both":
                    config_dict["LABEL_FIELD"] = labels[task]
                key = run_key(entry.model, task, config_dict, plan.dataset, config_file_list)
                plan.runs.append(
                    {
                        "row": entry.name,
                        "model": entry.model,
                        "seed": seed,
                        "task": task,
                        "config": config_dict,
                        "key": key,
                        "valid_metric": valid_metrics[entry.name, task],
                    }
                )
    return plan


def code_version():
    """What code a run is made with: the plugin's version and, in a git checkout, its commit and
    whether tracked files differ from it (``{"version", "commit", "modified"}``; commit None
    outside a checkout or without git)."""
    import subprocess

    import recbole_cstwa

    root = os.path.dirname(os.path.dirname(os.path.abspath(recbole_cstwa.__file__)))
    version = {"version": recbole_cstwa.__version__, "commit": None, "modified": None}
    if not os.path.exists(os.path.join(root, ".git")):
        return version
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return version
    return {**version, "commit": commit, "modified": bool(status.strip())}


def code_label(code):
    """One line naming a run's code, e.g. ``commit 1a2b3c4d (0.1.0)``."""
    if not code:
        return "unrecorded"
    if not code.get("commit"):
        return f"version {code.get('version')} (no git commit)"
    return f"commit {code['commit'][:10]} ({code.get('version')})" + (
        " with local changes" if code.get("modified") else ""
    )


def execute(
    plan,
    output_dir,
    resume=True,
    runner=None,
    log=print,
    jobs=1,
    tool="local",
    ray_options=None,
    poll_seconds=5.0,
):
    """Runs what ``runs.jsonl`` lacks and returns every run's record, in the plan's order.

    ``tool="local"``: ``jobs`` 1 trains in this process; more, in that many worker processes at
    once. ``tool="Ray"``: as Ray tasks (``ray_options``: ``address``, ``cpus_per_run``,
    ``gpus_per_run``; ``jobs``, when given, caps the runs at once). Runs are claimed before they
    are trained (:mod:`recbole_cstwa.experiments.run_records`): a run another process is training
    is waited for, its record checked every ``poll_seconds``. A run that fails in a worker ends
    the comparison with an error naming it, after the others finished; running the same command
    again trains it.
    """
    if tool not in TOOLS:
        raise CompareError(f"--tool {tool!r}: choose one of {list(TOOLS)}.")
    if jobs is not None and int(jobs) < 1:
        raise CompareError(f"--jobs {jobs}: give at least 1 (runs at once).")
    if runner is not None and tool == "Ray":
        raise CompareError("tool='Ray' trains with run_recbole_cstwa on the cluster: give no runner.")
    if runner is not None and (jobs or 1) > 1:
        try:
            pickle.dumps(runner)  # it goes to each worker process by name
        except (pickle.PicklingError, AttributeError, TypeError) as error:
            raise CompareError(
                f"jobs={jobs} sends the runner to worker processes, which need a module-level "
                f"function ({error}); give one, or jobs=1."
            ) from None
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RUNS_FILE)
    if os.path.islink(path):  # appending through it would write to whatever it points to
        raise CompareError(
            f"[{path}] is a symbolic link: the comparison appends its records there and never "
            "through a link. Remove the link or choose another output folder."
        )
    if not resume and os.path.isfile(path):
        os.replace(path, f"{path}.{time.strftime('%Y%m%d-%H%M%S')}.bak")
    done = read_runs(path)
    code = code_version()
    older = sorted({code_label(r.get("code")) for r in done.values()} - {code_label(code)})
    if older:  # kept runs of other code: the table then mixes code versions, and says so
        log(f"runs.jsonl holds runs of other code ({', '.join(older)}); this code is {code_label(code)}")
    context = RunContext(
        dataset=plan.dataset,
        config_file_list=plan.config_file_list,
        output_dir=os.path.abspath(output_dir),
        runs_path=os.path.abspath(path),
        code=code,
        working_dir=os.getcwd(),
    )
    todo = []
    for number, run in enumerate(plan.runs, start=1):
        label = f"[{number}/{len(plan.runs)}] {run['row']} seed {run['seed']}" + (
            f" ({run['task']} label)" if run["task"] != "both" else ""
        )
        if run["key"] in done:
            log(f"{label}: done before, kept")
        else:
            todo.append((number, run, label))
    failures = []
    if todo:
        if tool == "Ray":
            options = {**(ray_options or {}), "max_concurrent": jobs}
            backend = RayTasks(context, options, lambda run: plan.paths[run["row"]], log)
        elif (jobs or 1) > 1:
            backend = WorkerProcesses(int(jobs), context, runner, log)
        else:
            backend = InProcess(context, runner, log)
        failures = run_all(todo, backend, context, log, poll_seconds)
    recorded = read_runs(path)
    missing = [run for run in plan.runs if run["key"] not in recorded]
    if failures or missing:
        listed = "; ".join(f"{label}: {error}" for label, error in failures) or (
            f"{len(missing)} run(s) have no record"
        )
        raise CompareError(
            f"{len(missing)} of {len(plan.runs)} runs did not finish ({listed}). The others are "
            f"recorded in [{path}]: run the same command again to train the missing ones."
        )
    return [{**recorded[run["key"]], "row": run["row"]} for run in plan.runs]


def per_seed(plan, records):
    """``{row: {seed: {metric: value, "seconds": .., "epoch_seconds": ..}}}`` (rows join runs)."""
    joined = {entry.name: {} for entry in plan.entries}
    for record in records:
        values = joined[record["row"]].setdefault(record["seed"], {"seconds": 0.0, "epoch_seconds": 0.0})
        task = record["task"]
        for metric, value in record["test_result"].items():
            # A built-in model's purchase run also gives the purchase-derived tasks (cvr, ctcvr).
            derived = ("cvr_", "ctcvr_") if task == "purchase" else ()
            if task == "both" or metric.startswith((task + "_", *derived)):
                values[metric] = value
        values["seconds"] += record["wall_seconds"]
        if record.get("sm_used") is not None:
            values["sm_used"] = record["sm_used"]
        if record.get("trained_steps") is not None and record["trained_steps"] >= 0:
            # the kept model's training steps, and those the Structure Migrator's P acted in
            values["sm_steps"], values["trained_steps"] = record["sm_steps"], record["trained_steps"]
        if record.get("kept_epoch") is not None:
            # 1-based, as a reader counts epochs; a built-in row keeps its purchase run's epoch.
            if task in ("both", "purchase") or "kept_epoch" not in values:
                values["kept_epoch"] = int(record["kept_epoch"]) + 1
        # Pre-training stages (CSTWA's CTR model and graphs) count in the time, not per epoch.
        fit_seconds = (record.get("stage_times") or {}).get("train", record.get("fit_seconds"))
        if fit_seconds is not None and record.get("epochs_trained"):
            # A built-in row's epoch is one epoch of each of its two runs.
            values["epoch_seconds"] += fit_seconds / record["epochs_trained"]
        else:
            values["epoch_seconds"] = math.nan
    return joined


def summarize(plan, records):
    """One summary row per entry: means, stds, times and the tests against the reference."""
    joined = per_seed(plan, records)
    rows = []
    for entry in plan.entries:
        seeds = joined[entry.name]
        row = {
            "name": entry.name,
            "model": entry.model,
            "kind": "multi-task" if plan.two_task[entry.name] else "built-in (2 runs)",
            "overrides": entry.overrides,
            "n_seeds": len(seeds),
        }
        for metric in (*METRICS, *OPTIONAL_METRICS, "seconds", "epoch_seconds"):
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(
                [v.get(metric, math.nan) for v in seeds.values()]
            )
        row.update(_sm_used(seeds))
        kept = [seeds[seed]["kept_epoch"] for seed in sorted(seeds) if "kept_epoch" in seeds[seed]]
        row["kept_epochs"] = ", ".join(map(str, kept)) if kept else None  # per seed, in seed order
        for metric in TESTED_METRICS:
            if entry.name == plan.reference:
                row[f"{metric}_delta"], row[f"{metric}_p"] = math.nan, math.nan
                continue
            values = {seed: v[metric] for seed, v in seeds.items() if metric in v}
            reference = {seed: v[metric] for seed, v in joined[plan.reference].items() if metric in v}
            row[f"{metric}_delta"], row[f"{metric}_p"], _ = paired_test(values, reference)
        rows.append(row)
    # Every row is tested against the same reference: the p-values of one metric form one family.
    for metric in TESTED_METRICS:
        adjusted = holm_adjusted({row["name"]: row[f"{metric}_p"] for row in rows})
        for row in rows:
            row[f"{metric}_p_holm"] = adjusted[row["name"]]
    return rows


def _sm_used(seeds):
    """The "SM used" cell of a row: per seed (in seed order) the kept model's training steps
    that had the Structure Migrator's P over its training steps, and the mean of those shares
    (``sm_share_mean``); from records without the step counts, the seeds whose kept model used
    it (``1/2``)."""
    used = [seeds[seed] for seed in sorted(seeds) if "sm_used" in seeds[seed]]
    if not used:
        return {"sm_used": None, "sm_share_mean": math.nan}
    if all(v.get("trained_steps") for v in used):
        shares = [v["sm_steps"] / v["trained_steps"] for v in used]
        steps = ", ".join(f"{v['sm_steps']}/{v['trained_steps']}" for v in used)
        mean = sum(shares) / len(shares)
        return {"sm_used": f"{steps} (mean {mean:.2f})", "sm_share_mean": mean}
    return {"sm_used": f"{sum(v['sm_used'] for v in used)}/{len(used)}", "sm_share_mean": math.nan}


def summarize_increments(plan, joined):
    """The summary's pairwise increments (:attr:`Plan.increments`): for each tested metric, the
    per-seed differences' mean and sample std, the paired t-test's p and Holm's p over the
    listed increments (one family a metric)."""
    rows = []
    for increment in plan.increments:
        minuend, subtrahend = joined[increment.minuend], joined[increment.subtrahend]
        row = {"name": increment.name, "minuend": increment.minuend, "subtrahend": increment.subtrahend}
        for metric in TESTED_METRICS:
            values = {seed: v[metric] for seed, v in minuend.items() if metric in v}
            reference = {seed: v[metric] for seed, v in subtrahend.items() if metric in v}
            paired = paired_summary(values, reference)
            row[f"{metric}_delta_mean"], row[f"{metric}_delta_std"] = paired["mean"], paired["std"]
            row[f"{metric}_p"], row[f"{metric}_n"] = paired["p"], paired["n"]
        rows.append(row)
    for metric in TESTED_METRICS:
        adjusted = holm_adjusted({index: row[f"{metric}_p"] for index, row in enumerate(rows)})
        for index, row in enumerate(rows):
            row[f"{metric}_p_holm"] = adjusted[index]
    return rows


def summarize_power(plan, joined):
    """For every row against the reference and every metric of
    :data:`~recbole_cstwa.experiments.report.POWER_METRICS` both report on two seeds or more: the
    per-seed differences' mean and sample std, the paired t-test's p and the seeds a paired t-test
    needs to separate them (:func:`~recbole_cstwa.experiments.statistics.seeds_needed`, 80% power
    at level 0.05)."""
    reference = joined[plan.reference]
    rows = []
    for entry in plan.entries:
        if entry.name == plan.reference:
            continue
        metrics = {}
        for metric in POWER_METRICS:
            values = {s: v[metric] for s, v in joined[entry.name].items() if _finite(v.get(metric))}
            base = {s: v[metric] for s, v in reference.items() if _finite(v.get(metric))}
            paired = paired_summary(values, base)
            if paired["n"] < 2:
                continue
            differences = paired.pop("differences")
            metrics[metric] = {**paired, "seeds_needed": seeds_needed(differences.values())}
        if metrics:
            rows.append({"name": entry.name, "metrics": metrics})
    return rows


def _finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def selection_metrics(plan, records):
    """``{valid_metric: [run kinds]}``: the metric that picked each run's kept epoch (the
    record's, else the plan's resolved one), e.g. ``{"purchase_auc": ["MLP", "DeepFM purchase
    label"], "click_auc": ["DeepFM click label"]}``."""
    planned = {run["key"]: run.get("valid_metric") for run in plan.runs}
    chosen = {}
    for record in records:
        metric = record.get("valid_metric") or planned.get(record["key"]) or "unrecorded"
        kind = record["row"] + (f" {record['task']} label" if record["task"] != "both" else "")
        kinds = chosen.setdefault(metric, [])
        if kind not in kinds:
            kinds.append(kind)
    return chosen


def oracle_row(plan):
    """The generator's oracle metrics on the test file, when the dataset has truth files."""
    from recbole_cstwa.experiments.oracle import oracle_metrics

    if not plan.test_split:
        return None  # split by RecBole: the truth files' test split is not the test set
    try:
        return oracle_metrics(plan.data_dir, split=plan.test_split)
    except (FileNotFoundError, ValueError, KeyError):
        return None


def run_comparison(
    models,
    seeds,
    dataset=None,
    config_file_list=None,
    overrides=None,
    variants=(),
    reference=None,
    output_dir=DEFAULT_OUTPUT_DIR,
    resume=True,
    oracle=True,
    plotlyjs=True,
    runner=None,
    log=print,
    increments=(),
    jobs=1,
    tool="local",
    ray_options=None,
    poll_seconds=5.0,
):
    """Runs the comparison and writes ``runs.jsonl``, ``summary.{md,csv,html}``.

    Args:
        models (list): model names, one row each; variants: ``"NAME=MODEL:key=value,..."``
            strings or :class:`Entry` objects.
        seeds (list): one run (two for a built-in model) per seed and row.
        overrides (dict): settings for every run; a variant's own settings win over them.
        reference: the row the others are tested against (default: the first row).
        resume: keep the runs already in ``runs.jsonl`` with the same settings.
        plotlyjs: ``True`` puts plotly.js inside the HTML (works offline, about 4.8 MB),
            ``"cdn"`` links it (small file, needs the internet to open).
        runner: the training function (default :func:`recbole_cstwa.quick_start.run_recbole_cstwa`;
            with ``jobs`` > 1 a module-level function, as it goes to the worker processes).
        increments: ``"ROW-ROW"`` strings (or :class:`Increment` objects): each the paired
            difference of two rows over seeds, tested and Holm-adjusted over the list.
        jobs, tool, ray_options, poll_seconds: where the runs are trained (:func:`execute`).

    Returns:
        dict: ``rows`` (the summary), ``increments``, ``power`` (:func:`summarize_power`),
        ``selection`` (:func:`selection_metrics`), ``per_seed``, ``records``, ``oracle``,
        ``files``, ``table`` (what the command prints).
    """
    plan = make_plan(models, seeds, dataset, config_file_list, overrides, variants, reference, increments)
    records = execute(
        plan,
        output_dir,
        resume=resume,
        runner=runner,
        log=log,
        jobs=jobs,
        tool=tool,
        ray_options=ray_options,
        poll_seconds=poll_seconds,
    )
    rows = summarize(plan, records)
    joined = per_seed(plan, records)
    increment_rows = summarize_increments(plan, joined)
    power = summarize_power(plan, joined)
    selection = selection_metrics(plan, records)
    oracle_values = oracle_row(plan) if oracle else None
    files = {
        "runs": os.path.join(output_dir, RUNS_FILE),
        "markdown": os.path.join(output_dir, "summary.md"),
        "csv": os.path.join(output_dir, "summary.csv"),
    }
    codes = {}
    for record in records:
        label = code_label(record.get("code"))
        codes[label] = codes.get(label, 0) + 1
    write_markdown(
        files["markdown"],
        plan,
        rows,
        oracle_values,
        codes,
        increments=increment_rows,
        selection=selection,
        power=power,
    )
    write_csv(files["csv"], rows, oracle_values)
    if increment_rows:
        files["increments"] = os.path.join(output_dir, "increments.csv")
        write_increments_csv(files["increments"], increment_rows)
    plots = write_plot(os.path.join(output_dir, "summary.html"), plan, rows, joined, oracle_values, plotlyjs)
    files["html"] = plots[0]
    if len(plots) > 1:
        files["png"] = plots[1]
    return {
        "plan": plan,
        "rows": rows,
        "increments": increment_rows,
        "power": power,
        "selection": selection,
        "per_seed": joined,
        "records": records,
        "oracle": oracle_values,
        "files": files,
        "table": "\n".join(
            [
                *table_lines(plan, rows, oracle_values),
                "",
                selection_line(selection),
                *(["", *increment_lines(increment_rows)] if increment_rows else []),
            ]
        ),
    }
