"""The sweep of worlds: its file, the worlds' datasets and the report (runs faked, so the report's
arithmetic is checked against known values), and one real tiny sweep end to end."""

import json
import math
import os

import numpy as np
import pytest

from recbole_cstwa.commands.worlds import draw_worlds, main
from recbole_cstwa.errors import CompareError
from recbole_cstwa.experiments.worlds import (
    World,
    check_world_dataset,
    ranks,
    read_sweep,
    run_sweep,
    world_statistics,
)

SWEEP = """
base: {n_impressions: 3000, n_users: 60, n_items: 80, n_categories: 10, ctr: 0.2, cvr: 0.3, seed: 5, split: [0.5, 0.2, 0.3]}
worlds:
  - {name: base, note: the base world}
  - {name: selection, note: selection bias, selection_bias: 3.0, rho: 0.0}
"""


@pytest.fixture
def sweep_file(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP)
    return str(path)


def test_the_sweep_file_merges_the_base_into_each_world(sweep_file):
    sweep = read_sweep(sweep_file)
    assert [world.name for world in sweep.worlds] == ["base", "selection"]
    assert sweep.worlds[1].knobs["selection_bias"] == 3.0 and sweep.worlds[1].knobs["n_users"] == 60
    assert sweep.worlds[1].dataset == "world-selection"


@pytest.mark.parametrize(
    "text, message",
    [
        ("worlds: []", "needs `worlds:`"),
        ("worlds:\n  - {name: a, colour: 3}", "not generator knobs"),
        ("worlds:\n  - {name: a}\n  - {name: a}", "used twice"),
        ("worlds:\n  - {name: ../up}", "name must be"),
        ("worlds:\n  - {name: a, rho: high}", "must be a number"),
    ],
)
def test_a_bad_sweep_file_is_one_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(CompareError, match=message):
        read_sweep(str(path))


def test_worlds_are_drawn_once_and_another_dataset_under_the_name_is_refused(sweep_file, tmp_path):
    sweep = read_sweep(sweep_file)
    data = tmp_path / "data"
    draw_worlds(sweep, str(data), log=lambda _: None)
    assert all(check_world_dataset(world, str(data)) for world in sweep.worlds)
    stamp = os.path.getmtime(data / "world-base" / "world-base.train.inter")
    draw_worlds(sweep, str(data), log=lambda _: None)  # already there: not drawn again
    assert os.path.getmtime(data / "world-base" / "world-base.train.inter") == stamp
    other = World("base", "", {**sweep.worlds[0].knobs, "rho": 0.9})
    with pytest.raises(CompareError, match="other knobs"):
        check_world_dataset(other, str(data))


def test_selection_bias_shows_in_the_worlds_statistics(sweep_file, tmp_path):
    sweep = read_sweep(sweep_file)
    draw_worlds(sweep, str(tmp_path), log=lambda _: None)
    base, selection = (world_statistics(str(tmp_path), world) for world in sweep.worlds)
    assert selection["cvr_lift_on_clicks"] > base["cvr_lift_on_clicks"] + 0.2
    assert base["rows"] == 900 and base["clicks"] > 0


def test_ranks_put_the_best_first_whichever_way_a_metric_points():
    assert ranks({"a": 0.1, "b": 0.3, "c": 0.2}, "low") == {"a": 1, "b": 3, "c": 2}
    assert ranks({"a": 0.1, "b": 0.3, "c": math.nan}, "high") == {"a": 2, "b": 1, "c": 3}
    assert ranks({"a": 0.6, "b": 1.1, "c": 2.0}, "one") == {"a": 2, "b": 1, "c": 3}


#: Faked test results: (row, world) -> cvr_all truth KL a seed adds to a base value.
FAKE_KL = {"ESMM": 0.20, "ESCM2": 0.10}


def _fake_runner(**kwargs):
    seed = kwargs["config_dict"]["seed"]
    model = kwargs["model"]
    kl = FAKE_KL[model] + 0.01 * (seed - 1)
    result = {
        "cvr_all_truth_kl": kl,
        "purchase_auc": 0.6 + 0.1 * (model == "ESCM2") + 0.001 * seed,
        "purchase_pcoc": 1.0 + 0.05 * seed,
        "cvr_all_truth_auc": 0.55,
    }
    return {"test_result": result, "best_valid_result": result, "best_valid_score": 0.6, "model_file": None}


def test_the_report_holds_every_table_with_the_runs_values(sweep_file, tmp_path):
    sweep = read_sweep(sweep_file)
    data = tmp_path / "data"
    draw_worlds(sweep, str(data), log=lambda _: None)
    out = tmp_path / "runs"
    result = run_sweep(
        sweep,
        str(data),
        str(out),
        ["ESMM", "ESCM2"],
        [1, 2, 3],
        pairs=[("ESCM2", "ESMM")],
        log=lambda _: None,
        runner=_fake_runner,
    )
    text = open(result["files"][0], encoding="utf-8").read()
    assert text.splitlines()[0].startswith("# Worlds")
    world_table = [line for line in text.splitlines() if line.startswith("| world | its knobs")]
    assert world_table, "the report opens with the worlds' table, whose first column is `world`"
    # ESCM2's cvr_all KL: 0.10 + 0.01 * (seed - 1) over seeds 1..3 -> 0.110 ± 0.010, the best
    assert "**0.110 ± 0.010**" in text
    # ESCM2 against ESMM: -0.100 in every world
    assert text.count("| -0.100 (") == 2
    assert "## ESCM2 against ESMM" in text
    page = open(result["files"][1], encoding="utf-8").read()
    assert page.count("<svg") == 4 and "selection" in page
    for world in ("base", "selection"):
        records = [json.loads(line) for line in open(out / world / "runs.jsonl", encoding="utf-8")]
        assert len(records) == 6


@pytest.mark.slow
def test_a_tiny_sweep_trains_and_reports(sweep_file, tmp_path):
    report = tmp_path / "worlds.md"
    main(
        [
            "--sweep",
            sweep_file,
            "--data_path",
            str(tmp_path / "data"),
            "--models",
            "MLP ESMM",
            "--seeds",
            "2020",
            "--output_dir",
            str(tmp_path / "runs"),
            "--report",
            str(report),
            "--epochs=1",
            "--show_progress=False",
            f"--checkpoint_dir={tmp_path / 'saved'}",
        ]
    )
    text = report.read_text()
    assert "| base |" in text and "| selection |" in text and "purchase AUC" in text
    assert (tmp_path / "worlds.html").exists()


def test_seeds_needed_follows_the_noncentral_t():
    from recbole_cstwa.experiments.statistics import paired_power, seeds_needed

    # effect size 1 (mean = sd): a paired t-test at 0.05 needs 10 pairs for 80% power
    # (the textbook value, e.g. G*Power: d = 1 -> n = 10)
    differences = [0.0, 2.0, 1.0 - 1.0 / (2**0.5), 1.0 + 1.0 / (2**0.5)]  # mean 1, sample sd 1
    assert abs(paired_power(1.0, 10) - 0.8031) < 2e-3
    assert seeds_needed(differences) == 10
    assert seeds_needed([0.5, 0.5, 0.5]) == 2 and seeds_needed([0.0, 0.0]) == math.inf


def test_the_power_is_a_number_for_a_large_effect_and_the_seeds_are_the_fewest():
    from scipy import stats

    from recbole_cstwa.experiments.statistics import paired_power, seeds_needed

    # scipy's noncentral t returns NaN here (noncentrality 15 with 1 degree of freedom); the
    # seeds needed for a difference of 10.6 of its sd were once counted as 7, not 3
    effect = 10.6
    assert 0.75 < paired_power(effect, 2) < 0.77 and paired_power(effect, 3) > 0.999
    assert seeds_needed([effect - 1, effect, effect + 1]) == 3
    rng = np.random.default_rng(0)
    for effect, n in ((10.6, 2), (14.0, 2)):  # against a simulated paired t-test
        differences = rng.normal(effect, 1.0, size=(200_000, n))
        t = differences.mean(1) / (differences.std(1, ddof=1) / n**0.5)
        simulated = float((np.abs(t) > stats.t.ppf(0.975, n - 1)).mean())
        assert abs(paired_power(effect, n) - simulated) < 0.005, (effect, n)
    for effect in (0.4, 0.7, 1.2, 2.5, 6.0):  # bisection finds what a scan finds
        scan = next(n for n in range(2, 1001) if paired_power(effect, n) >= 0.8)
        assert seeds_needed([effect - 1, effect, effect + 1]) == scan
    assert seeds_needed([0.01 - 1, 0.01, 0.01 + 1]) == math.inf  # beyond 1,000 seeds
