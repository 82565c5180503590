"""The comparison: runs per model and label, the table against the per-run results, the paired
t-test against scipy, the files, resuming, and the checks made before any run."""

import csv
import json
import math
import os
import statistics
import subprocess
import zlib

import pytest
from conftest import REPOSITORY, TINY, load_script, tiny_config
from scipy import stats

from recbole_cstwa.errors import InputError
from recbole_cstwa.experiments.compare import METRICS, Entry, make_plan, parse_variant, run_comparison
from recbole_cstwa.experiments.oracle import oracle_metrics
from recbole_cstwa.values import split_assignments

SEEDS = [2020, 2021]
MODELS = ["MLP", "ESMM", "DeepFM"]
VARIANT = "ESMM_small=ESMM:tower_hidden_size=[16,8],tower_dropout=[0.1,0.1]"


def _overrides(tiny_data_path, folder):
    settings = tiny_config(tiny_data_path, folder)
    del settings["dataset"]  # the comparison's own argument
    return settings


def scripted_runner(model, dataset, config_file_list, config_dict, saved):
    """Stands in for training (``run_comparison(runner=...)``): results that differ by model,
    variant settings, seed and metric, in the shape ``run_recbole_cstwa`` returns."""
    label = config_dict.get("LABEL_FIELD")
    # a purchase-trained model is also scored on the clicked rows (cvr), as the trainers do
    tasks = {"click": ["click"], "purchase": ["purchase", "cvr"], None: ["click", "purchase", "cvr"]}[label]
    result = {}
    for metric in (*METRICS, "cvr_logloss"):  # every metric the trainers report
        if metric.split("_")[0] in tasks:
            key = f"{model}/{config_dict.get('tower_hidden_size')}/{config_dict['seed']}/{metric}"
            result[metric] = 0.6 + (zlib.crc32(key.encode()) % 1000) / 10000
    return {
        "test_result": result,
        "best_valid_result": result,
        "best_valid_score": result.get("purchase_auc", result.get("click_auc")),
        "fit_seconds": 2.0 + config_dict["seed"] % 3,
        "epochs_trained": 2,
        # 0-based as the trainers give it; a built-in model's click run keeps another epoch
        "kept_epoch": 0 if label == "click" else config_dict["seed"] % 2,
    }


@pytest.fixture(scope="module")
def comparison(tiny_data_path, tmp_path_factory):
    """MLP, ESMM, DeepFM and an ESMM variant, 2 seeds, scripted results: run once for the module."""
    folder = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        result = _compare(tiny_data_path, folder, scripted_runner)
    result["folder"] = folder
    return result


def _compare(tiny_data_path, folder, runner):
    """The module's comparison (MODELS, SEEDS, VARIANT) into ``folder/out`` with ``runner``."""
    return run_comparison(
        MODELS,
        SEEDS,
        dataset=TINY,
        overrides=_overrides(tiny_data_path, folder),
        variants=[VARIANT],
        reference="MLP",
        output_dir=str(folder / "out"),
        runner=runner,
        log=lambda message: None,
    )


@pytest.mark.slow
def test_a_comparison_trains_both_kinds_of_model(tiny_data_path, tmp_path):
    """One real run of each kind (a plugin model, a built-in one on both labels)."""
    result = run_comparison(
        ["MLP", "DeepFM"],
        [2020],
        dataset=TINY,
        overrides=_overrides(tiny_data_path, tmp_path),
        output_dir=str(tmp_path / "out"),
        oracle=False,
        plotlyjs="cdn",
        log=lambda message: None,
    )
    rows = {row["name"]: row for row in result["rows"]}
    for name in ("MLP", "DeepFM"):
        assert all(0 < rows[name][f"{metric}_mean"] for metric in METRICS)
    assert len(result["records"]) == 3
    # Each record names its kept checkpoint and the metric that picked it (the click run's own).
    picked = {(record["row"], record["task"]): record["valid_metric"] for record in result["records"]}
    assert picked == {
        ("MLP", "both"): "purchase_auc",
        ("DeepFM", "click"): "click_auc",
        ("DeepFM", "purchase"): "purchase_auc",
    }
    assert result["selection"] == {
        "purchase_auc": ["MLP", "DeepFM purchase label"],
        "click_auc": ["DeepFM click label"],
    }
    for record in result["records"]:
        assert os.path.isabs(record["model_file"]) and os.path.isfile(record["model_file"])


def test_split_assignments_keeps_lists_and_quotes_whole():
    assert split_assignments("a=1, b=[1,2],c='x,y', d={'k': [1, 2]}") == [
        "a=1",
        "b=[1,2]",
        "c='x,y'",
        "d={'k': [1, 2]}",
    ]


def test_parse_variant():
    entry = parse_variant("SM=CSTWA:use_sm=True,use_cp=False,tower_dropout=[0.1,0.2,0.2]")
    assert entry == Entry("SM", "CSTWA", {"use_sm": True, "use_cp": False, "tower_dropout": [0.1, 0.2, 0.2]})
    assert parse_variant("Plain=MLP") == Entry("Plain", "MLP", {})
    for bad in ("SM", "=CSTWA:a=1", "SM=:a=1", "SM=CSTWA:use_sm"):
        with pytest.raises(InputError):
            parse_variant(bad)


def test_built_in_models_run_once_per_label_and_plugin_models_once(comparison):
    runs = {}
    for record in comparison["records"]:
        runs.setdefault((record["row"], record["seed"]), []).append(record)
    assert len(comparison["records"]) == len(SEEDS) * (3 + 2)
    for seed in SEEDS:
        for row in ("MLP", "ESMM", "ESMM_small"):
            (record,) = runs[(row, seed)]
            assert record["task"] == "both" and "LABEL_FIELD" not in record["config"]
            assert set(METRICS) <= set(record["test_result"]) <= set(METRICS) | {"cvr_logloss"}
        click, purchase = sorted(runs[("DeepFM", seed)], key=lambda record: record["task"])
        assert (click["task"], click["config"]["LABEL_FIELD"]) == ("click", "click")
        assert (purchase["task"], purchase["config"]["LABEL_FIELD"]) == ("purchase", "purchase")
        assert set(click["test_result"]) == {"click_auc", "click_logloss"}
        assert set(purchase["test_result"]) == {"purchase_auc", "purchase_logloss", "cvr_auc", "cvr_logloss"}
        for record in runs[("MLP", seed)] + runs[("DeepFM", seed)]:
            assert record["config"]["seed"] == seed
    (variant,) = runs[("ESMM_small", SEEDS[0])]
    assert variant["config"]["tower_hidden_size"] == [16, 8]


def _per_seed_values(comparison, row, metric):
    """The metric per seed straight from the run records (a built-in row: its label's run)."""
    values = {}
    for record in comparison["records"]:
        if record["row"] == row and metric in record["test_result"]:
            values[record["seed"]] = record["test_result"][metric]
    return values


def test_table_is_mean_and_std_of_the_runs(comparison):
    rows = {row["name"]: row for row in comparison["rows"]}
    assert list(rows) == ["MLP", "ESMM", "DeepFM", "ESMM_small"]
    for name, row in rows.items():
        assert row["n_seeds"] == len(SEEDS)
        for metric in METRICS:
            values = list(_per_seed_values(comparison, name, metric).values())
            assert len(values) == len(SEEDS)
            assert row[f"{metric}_mean"] == pytest.approx(statistics.mean(values))
            assert row[f"{metric}_std"] == pytest.approx(statistics.stdev(values))
    for seed in SEEDS:  # a built-in row's time is both runs' time
        seconds = [
            r["wall_seconds"] for r in comparison["records"] if r["row"] == "DeepFM" and r["seed"] == seed
        ]
        assert len(seconds) == 2
        assert comparison["per_seed"]["DeepFM"][seed]["seconds"] == pytest.approx(sum(seconds))
    assert all(
        math.isfinite(row["epoch_seconds_mean"]) and row["epoch_seconds_mean"] > 0 for row in rows.values()
    )


def test_paired_t_test_matches_scipy(comparison):
    reference = {
        metric: _per_seed_values(comparison, "MLP", metric) for metric in ("purchase_auc", "click_auc")
    }
    for row in comparison["rows"]:
        for metric in ("purchase_auc", "click_auc"):
            if row["name"] == "MLP":
                assert math.isnan(row[f"{metric}_p"]) and math.isnan(row[f"{metric}_delta"])
                continue
            values = _per_seed_values(comparison, row["name"], metric)
            a = [values[seed] for seed in SEEDS]
            b = [reference[metric][seed] for seed in SEEDS]
            expected = stats.ttest_rel(a, b).pvalue
            assert row[f"{metric}_p"] == pytest.approx(expected, nan_ok=True)
            assert row[f"{metric}_delta"] == pytest.approx(statistics.mean(a) - statistics.mean(b))


def test_holm_adjustment_by_hand():
    from recbole_cstwa.experiments.statistics import holm_adjusted

    # Sorted 0.01, 0.02, 0.04 of m = 3: 3 * 0.01, max(0.03, 2 * 0.02), max(0.04, 1 * 0.04); and the
    # running maximum binds when a later product is smaller: 0.03, 0.035 -> 0.06, max(0.06, 0.035).
    adjusted = holm_adjusted({"a": 0.04, "b": 0.01, "c": 0.02, "ref": math.nan})
    assert adjusted["b"] == pytest.approx(0.03) and adjusted["c"] == pytest.approx(0.04)
    assert adjusted["a"] == pytest.approx(0.04) and math.isnan(adjusted["ref"])
    adjusted = holm_adjusted({"a": 0.03, "b": 0.035})
    assert adjusted == pytest.approx({"a": 0.06, "b": 0.06})
    assert holm_adjusted({"a": 0.6, "b": 0.9}) == {"a": 1.0, "b": 1.0}


def test_mean_std_and_paired_test_by_hand():
    from recbole_cstwa.experiments.statistics import mean_std, paired_test

    assert mean_std([1.0, 2.0, None, math.nan, 3.0]) == (2.0, 1.0)  # sample deviation (n - 1)
    mean, std = mean_std([4.0])
    assert mean == 4.0 and math.isnan(std)
    delta, p_value, n = paired_test({1: 0.7, 2: 0.8, 3: 0.75, 4: 0.9}, {1: 0.6, 2: 0.7, 3: 0.7, 5: 0.1})
    assert n == 3 and delta == pytest.approx((0.1 + 0.1 + 0.05) / 3)  # seed 4 and 5: unpaired
    assert p_value == pytest.approx(stats.ttest_rel([0.7, 0.8, 0.75], [0.6, 0.7, 0.7]).pvalue)
    delta, p_value, n = paired_test({1: 0.7}, {1: 0.5})
    assert (delta, n) == (pytest.approx(0.2), 1) and math.isnan(p_value)


def test_holm_p_and_kept_epochs_in_the_rows(comparison):
    from recbole_cstwa.experiments.statistics import holm_adjusted

    for metric in ("purchase_auc", "click_auc"):
        expected = holm_adjusted({row["name"]: row[f"{metric}_p"] for row in comparison["rows"]})
        for row in comparison["rows"]:
            assert row[f"{metric}_p_holm"] == pytest.approx(expected[row["name"]], nan_ok=True)
            if math.isfinite(row[f"{metric}_p"]):
                assert row[f"{metric}_p_holm"] >= row[f"{metric}_p"]
    for row in comparison["rows"]:  # 1-based, seed order; a built-in row shows its purchase run's
        assert row["kept_epochs"] == ", ".join(str(seed % 2 + 1) for seed in sorted(SEEDS))


def test_files_are_written(comparison, tiny_data_path):
    files = comparison["files"]
    assert {"runs", "markdown", "csv", "html"} <= set(files)
    with open(files["runs"]) as file:
        assert len([json.loads(line) for line in file]) == len(comparison["records"])

    markdown = open(files["markdown"], encoding="utf-8").read()
    assert "| model | click AUC | click LogLoss | purchase AUC | purchase LogLoss |" in markdown
    assert "p (purchase AUC)" in markdown and "p (click AUC)" in markdown and "little power" in markdown
    assert "| MLP (ref) |" in markdown and "ESMM_small" in markdown
    assert "Holm p (purchase AUC)" in markdown and "kept epoch (per seed)" in markdown

    with open(files["csv"], newline="") as file:
        table = {line["name"]: line for line in csv.DictReader(file)}
    for row in comparison["rows"]:
        for column in (
            "purchase_auc_mean",
            "purchase_auc_std",
            "click_auc_mean",
            "purchase_auc_p",
            "purchase_auc_p_holm",
        ):
            assert float(table[row["name"]][column]) == pytest.approx(row[column], nan_ok=True)

    html = open(files["html"], encoding="utf-8").read()
    assert "plotly" in html.lower() and "ESMM_small" in html
    assert os.path.getsize(files["html"]) > 1_000_000  # plotly.js inline: opens offline

    # The tiny dataset has truth files: the oracle row is the generator's oracle on the test file.
    oracle = oracle_metrics(os.path.join(tiny_data_path, TINY), split="test")
    assert comparison["oracle"]["purchase_auc"] == oracle["purchase_auc"]
    assert "oracle (true probabilities)" in markdown and "oracle" in table


def test_a_second_run_keeps_the_finished_runs(comparison, tiny_data_path, monkeypatch):
    def no_training(**kwargs):
        raise AssertionError(f"run again: {kwargs}")

    folder = comparison["folder"]
    monkeypatch.chdir(folder)
    again = _compare(tiny_data_path, folder, no_training)
    assert again["rows"] == comparison["rows"]


def test_command_line_resumes_and_prints_the_table(comparison, tiny_data_path, monkeypatch, capsys):
    folder = comparison["folder"]
    monkeypatch.chdir(folder)
    module = load_script("run_compare")
    settings = [f"--{key}={value}" for key, value in _overrides(tiny_data_path, folder).items()]
    monkeypatch.setattr(
        "recbole_cstwa.quick_start.run_recbole_cstwa",
        lambda **kwargs: pytest.fail("settings changed: trained again"),
    )
    result = module.main(
        [
            "--models",
            "MLP ESMM",
            "DeepFM",
            "--seeds",
            *map(str, SEEDS),
            "--variant",
            VARIANT,
            f"--dataset={TINY}",
        ]
        + ["--reference", "MLP", "--output_dir", str(folder / "out"), *settings]
    )
    assert result["rows"] == comparison["rows"]
    printed = capsys.readouterr().out
    assert "| ESMM_small |" in printed and "written:" in printed


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"overrides": {"seed": 1}}, "sets \\['seed'\\]"),
        ({"variants": ["X=MLP:LABEL_FIELD=click"]}, "sets \\['LABEL_FIELD'\\]"),
        ({"variants": ["MLP=ESMM"]}, "appear twice"),
        ({"reference": "CSTWA_all"}, "is not a row"),
        ({"seeds": [1, 1]}, "distinct seeds"),
        ({"models": ["MLP", "NoSuchModel"]}, "NoSuchModel"),
    ],
)
def test_bad_comparisons_fail_before_any_run(tiny_data_path, tmp_path, arguments, message):
    settings = {
        "models": ["MLP"],
        "seeds": [1],
        "dataset": TINY,
        "overrides": _overrides(tiny_data_path, tmp_path),
    }
    settings.update(arguments)
    with pytest.raises(ValueError, match=message):
        make_plan(**settings)


def test_run_key_changes_when_a_yaml_default_changes(monkeypatch, tmp_path):
    import shutil

    from recbole_cstwa import config
    from recbole_cstwa.experiments import compare

    copy = tmp_path / "properties"
    shutil.copytree(config.properties_dir(), copy)
    monkeypatch.setattr(config, "properties_dir", lambda: str(copy))
    before = compare.run_key("CSTWA", "both", {"seed": 1}, "synthetic-ccp", [])
    assert before == compare.run_key("CSTWA", "both", {"seed": 1}, "synthetic-ccp", [])
    with open(copy / "model" / "CSTWA.yaml", "a") as file:
        file.write("pretrain_epochs: 2\n")
    assert compare.run_key("CSTWA", "both", {"seed": 1}, "synthetic-ccp", []) != before


@pytest.mark.parametrize(
    "line", ['{"row": "MLP"}', '["key", "abc"]', '{"key": "abc"}', '{"key": 1, "test_result": {}}']
)
def test_a_runs_file_line_that_is_no_run_record_is_one_error(tmp_path, line):
    """run_compare resumes from runs.jsonl: a record without key ended in KeyError: 'key'."""
    from recbole_cstwa.errors import CompareError
    from recbole_cstwa.experiments.compare import read_runs

    path = tmp_path / "runs.jsonl"
    path.write_text('{"key": "k1", "test_result": {"purchase_auc": 0.6}}\n' + line + "\n" + '{"key": "cut')
    with pytest.raises(
        CompareError, match=r"runs.jsonl, line 2: not a run record of this command .* --fresh"
    ):
        read_runs(str(path))
    path.write_text('{"key": "k1", "test_result": {"purchase_auc": 0.6}}\n{"key": "cut')  # cut by a crash
    assert list(read_runs(str(path))) == ["k1"]


def test_sm_used_column_counts_the_seeds_whose_kept_model_used_it(tiny_data_path, tmp_path):
    def runner(model, dataset, config_file_list, config_dict, saved):
        result = scripted_runner(model, dataset, config_file_list, config_dict, saved)
        if model == "CSTWA":
            result["sm_used"] = config_dict["seed"] == SEEDS[0]
        return result

    result = run_comparison(
        ["MLP"],
        SEEDS,
        dataset=TINY,
        overrides=_overrides(tiny_data_path, tmp_path),
        variants=["CSTWA=CSTWA:use_sm=True"],
        output_dir=str(tmp_path / "out"),
        runner=runner,
        log=lambda message: None,
    )
    header, _, mlp, cstwa = result["table"].splitlines()[:4]
    assert header.endswith("| SM used |")
    assert mlp.endswith("| – |") and cstwa.endswith("| 1/2 |")
    records = [json.loads(line) for line in open(result["files"]["runs"], encoding="utf-8")]
    assert [record["sm_used"] for record in records if record["row"] == "CSTWA"] == [True, False]


def test_runs_record_their_code_and_the_summary_names_it(comparison, tiny_data_path, tmp_path):
    from recbole_cstwa.experiments.compare import code_label, code_version

    code = code_version()
    assert all(record["code"] == code for record in comparison["records"])
    if os.path.exists(os.path.join(REPOSITORY, ".git")):  # a checkout: the commit is the HEAD's
        head = subprocess.run(["git", "-C", REPOSITORY, "rev-parse", "HEAD"], capture_output=True, text=True)
        assert code["commit"] == head.stdout.strip() and isinstance(code["modified"], bool)
    markdown = open(comparison["files"]["markdown"], encoding="utf-8").read()
    assert f"Code: all {len(comparison['records'])} runs at {code_label(code)}." in markdown

    # Runs of other code kept in runs.jsonl: the table says the code versions differ.
    out = tmp_path / "out"
    out.mkdir()
    with open(comparison["files"]["runs"], encoding="utf-8") as file:
        lines = [json.loads(line) for line in file]
    lines[0]["code"] = {"version": "0.0.9", "commit": "0" * 40, "modified": False}
    (out / "runs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    logged = []
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        result = run_comparison(
            MODELS,
            SEEDS,
            dataset=TINY,
            overrides=_overrides(tiny_data_path, comparison["folder"]),
            variants=[VARIANT],
            reference="MLP",
            output_dir=str(out),
            runner=scripted_runner,
            log=logged.append,
        )
    markdown = open(result["files"]["markdown"], encoding="utf-8").read()
    assert "**Code: the runs were made with 2 different code versions**" in markdown
    assert "commit 0000000000 (0.0.9): 1 runs" in markdown
    assert any("runs of other code (commit 0000000000 (0.0.9))" in line for line in logged)


def test_sm_used_is_the_kept_models_share_of_steps_with_p(tiny_data_path, tmp_path):
    def runner(model, dataset, config_file_list, config_dict, saved):
        result = scripted_runner(model, dataset, config_file_list, config_dict, saved)
        if model == "CSTWA":  # epoch 1 kept, P from mid-epoch (seed 2020); both epochs kept, all with P
            steps = {2020: (60, 120), 2021: (240, 240)}[config_dict["seed"]]
            result.update(sm_used=True, sm_steps=steps[0], trained_steps=steps[1])
        return result

    result = run_comparison(
        ["MLP"],
        SEEDS,
        dataset=TINY,
        overrides=_overrides(tiny_data_path, tmp_path),
        variants=["CSTWA=CSTWA:use_sm=True"],
        output_dir=str(tmp_path / "out"),
        runner=runner,
        log=lambda message: None,
    )
    cstwa = result["rows"][1]
    assert cstwa["sm_used"] == "60/120, 240/240 (mean 0.75)" and cstwa["sm_share_mean"] == 0.75
    assert result["table"].splitlines()[3].endswith("| 60/120, 240/240 (mean 0.75) |")
    records = [json.loads(line) for line in open(result["files"]["runs"], encoding="utf-8")]
    assert [(r["sm_steps"], r["trained_steps"]) for r in records if r["row"] == "CSTWA"] == [
        (60, 120),
        (240, 240),
    ]
    markdown = open(result["files"]["markdown"], encoding="utf-8").read()
    assert "SM used: per seed, the kept model's training steps" in markdown


def test_the_summary_names_the_valid_metric_of_the_runs(comparison):
    """MLP and ESMM select on purchase_auc (the default); DeepFM's click run on click_auc, the
    metric its label's run computes (records without valid_metric: the plan's resolved one)."""
    kinds = ["MLP", "ESMM", "DeepFM purchase label", "ESMM_small"]
    assert comparison["selection"] == {"purchase_auc": kinds, "click_auc": ["DeepFM click label"]}
    line = (
        "Kept epoch: the best validation valid_metric of each run: `purchase_auc` (MLP, ESMM, "
        "DeepFM purchase label, ESMM_small); `click_auc` (DeepFM click label)."
    )
    assert line in open(comparison["files"]["markdown"], encoding="utf-8").read()
    assert line in comparison["table"]
    planned = {(run["row"], run["task"]): run["valid_metric"] for run in comparison["plan"].runs}
    assert planned[("DeepFM", "click")] == "click_auc" and planned[("ESMM_small", "both")] == "purchase_auc"


def test_a_single_valid_metric_is_named_once(tiny_data_path, tmp_path):
    result = run_comparison(
        ["MLP"],
        SEEDS,
        dataset=TINY,
        overrides={**_overrides(tiny_data_path, tmp_path), "valid_metric": "click_logloss"},
        output_dir=str(tmp_path / "out"),
        runner=scripted_runner,
        log=lambda message: None,
        oracle=False,
    )
    assert "Kept epoch: the best validation `click_logloss` (valid_metric) of every run." in result["table"]


@pytest.mark.parametrize(
    "text, names, expected",
    [
        ("CP+CE-CP", ["CP", "CP+CE"], ("CP+CE", "CP")),
        (" ESMM - MLP ", ["MLP", "ESMM"], ("ESMM", "MLP")),
        ("A-B-C", ["A-B", "C", "A"], ("A-B", "C")),  # "A" - "B-C": B-C is no row
    ],
)
def test_parse_increment(text, names, expected):
    from recbole_cstwa.experiments.compare import parse_increment

    increment = parse_increment(text, names)
    assert (increment.minuend, increment.subtrahend) == expected
    assert increment.name == f"{expected[0]} - {expected[1]}"


@pytest.mark.parametrize(
    "text, message",
    [
        ("CP+CE", "names no two rows"),
        ("CP-SM", "names no two rows"),
        ("A-B-C", "reads 2 ways"),
        ("CP-CP", "from itself"),
    ],
)
def test_bad_increments_fail_before_any_run(text, message):
    from recbole_cstwa.experiments.compare import parse_increment

    with pytest.raises(InputError, match=message):
        parse_increment(text, ["CP", "CP+CE", "A", "B-C", "A-B", "C"])


def test_increments_are_paired_differences_tested_and_holm_adjusted(tiny_data_path, tmp_path):
    from recbole_cstwa.experiments.statistics import holm_adjusted

    seeds = [2020, 2021, 2022]
    listed = ["ESMM-MLP", "ESMM_small-ESMM"]
    result = run_comparison(
        ["MLP", "ESMM"],
        seeds,
        dataset=TINY,
        overrides=_overrides(tiny_data_path, tmp_path),
        variants=[VARIANT],
        increments=listed,
        output_dir=str(tmp_path / "out"),
        runner=scripted_runner,
        log=lambda message: None,
        oracle=False,
    )
    joined = result["per_seed"]
    rows = result["increments"]
    assert [(row["minuend"], row["subtrahend"]) for row in rows] == [("ESMM", "MLP"), ("ESMM_small", "ESMM")]
    for metric in ("purchase_auc", "click_auc"):
        p_values = {}
        for row in rows:
            a = [joined[row["minuend"]][seed][metric] for seed in seeds]
            b = [joined[row["subtrahend"]][seed][metric] for seed in seeds]
            differences = [x - y for x, y in zip(a, b)]
            assert row[f"{metric}_delta_mean"] == pytest.approx(statistics.mean(differences))
            assert row[f"{metric}_delta_std"] == pytest.approx(statistics.stdev(differences))
            assert row[f"{metric}_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
            assert row[f"{metric}_n"] == 3
            p_values[row["name"]] = row[f"{metric}_p"]
        adjusted = holm_adjusted(p_values)  # over the listed increments, not the table's rows
        assert [row[f"{metric}_p_holm"] for row in rows] == pytest.approx(
            [adjusted[row["name"]] for row in rows]
        )
    markdown = open(result["files"]["markdown"], encoding="utf-8").read()
    assert "## Increments" in markdown and "| ESMM_small - ESMM | 3 |" in markdown
    assert "| ESMM - MLP | 3 |" in result["table"]
    with open(result["files"]["increments"], newline="") as file:
        written = list(csv.DictReader(file))
    assert [line["name"] for line in written] == ["ESMM - MLP", "ESMM_small - ESMM"]
    assert float(written[0]["purchase_auc_p_holm"]) == pytest.approx(rows[0]["purchase_auc_p_holm"])


def test_increments_from_the_command_line(comparison, tiny_data_path, monkeypatch, capsys):
    folder = comparison["folder"]
    monkeypatch.chdir(folder)
    settings = [f"--{key}={value}" for key, value in _overrides(tiny_data_path, folder).items()]
    monkeypatch.setattr(
        "recbole_cstwa.quick_start.run_recbole_cstwa", lambda **kwargs: pytest.fail("trained again")
    )
    result = load_script("run_compare").main(
        ["--models", "MLP ESMM DeepFM", "--seeds", *map(str, SEEDS), "--variant", VARIANT]
        + [f"--dataset={TINY}", "--reference", "MLP", "--output_dir", str(folder / "out")]
        + ["--increment", "ESMM_small-ESMM", "--increment", "DeepFM-MLP", *settings]
    )
    assert [row["name"] for row in result["increments"]] == ["ESMM_small - ESMM", "DeepFM - MLP"]
    printed = capsys.readouterr().out
    assert "| ESMM_small - ESMM | 2 |" in printed and "| DeepFM - MLP | 2 |" in printed


@pytest.mark.slow
def test_the_seeds_needed_are_those_of_the_measured_paired_differences(comparison):
    from recbole_cstwa.experiments.statistics import seeds_needed

    reference = _per_seed_values(comparison, "MLP", "purchase_auc")
    by_name = {row["name"]: row["metrics"] for row in comparison["power"]}
    assert "MLP" not in by_name and set(by_name) == {"ESMM", "ESMM_small", "DeepFM"}
    for name, metrics in by_name.items():
        assert set(metrics) == {"purchase_auc"}  # no truth metrics in these runs
        values = _per_seed_values(comparison, name, "purchase_auc")
        differences = [values[seed] - reference[seed] for seed in SEEDS]
        cells = metrics["purchase_auc"]
        assert cells["mean"] == pytest.approx(statistics.mean(differences))
        assert cells["std"] == pytest.approx(statistics.stdev(differences))
        assert cells["n"] == 2 and cells["seeds_needed"] == seeds_needed(differences)
        expected = stats.ttest_rel([values[s] for s in SEEDS], [reference[s] for s in SEEDS]).pvalue
        assert cells["p"] == pytest.approx(expected, nan_ok=True)
    summary = (comparison["folder"] / "out" / "summary.md").read_text()
    assert "## Seeds needed" in summary
    esmm = by_name["ESMM"]["purchase_auc"]
    assert f"| ESMM | purchase AUC | {esmm['mean']:+.4f} ± {esmm['std']:.4f} |" in summary
