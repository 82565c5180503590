"""Hyper-parameter search: params files read without eval, exhaustive search on hyperopt >= 0.2.7,
RecBole's HyperTuning route (exhaustive, random, bayes), the output file and the Ray route."""

import itertools
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPOSITORY, TINY, load_script, tiny_config
from hyperopt import Trials, fmin, hp

from recbole_cstwa.errors import ParamsFileError
from recbole_cstwa.experiments.exhaustive import exhaustive_search, grid_size
from recbole_cstwa.experiments.hyper import parse_params, read_params_file, run_search
from recbole_cstwa.experiments.trials import SearchParam, hyperopt_space, trial_config

FOUR_TYPES = """\
# every type RecBole's params files know
learning_rate loguniform -9.2,-4.6
tower_dropout choice [[0.1, 0.3, 0.3], [0.2, 0.2, 0.2]]   # lists as options
learner       choice [adam, 'sgd']

sm_lambda     uniform 0.1, 0.9
embedding_size quniform 4,16,4
"""


def test_params_file_has_the_four_types(tmp_path):
    path = tmp_path / "space.hyper"
    path.write_text(FOUR_TYPES)
    params = {param.name: param for param in read_params_file(path)}
    assert list(params) == ["learning_rate", "tower_dropout", "learner", "sm_lambda", "embedding_size"]
    assert (params["learning_rate"].kind, params["learning_rate"].low, params["learning_rate"].high) == (
        "loguniform",
        -9.2,
        -4.6,
    )
    assert params["tower_dropout"].values == ([0.1, 0.3, 0.3], [0.2, 0.2, 0.2])
    assert params["learner"].values == ("adam", "sgd")  # a YAML flow list or Python literals
    assert (params["sm_lambda"].kind, params["sm_lambda"].low, params["sm_lambda"].high) == (
        "uniform",
        0.1,
        0.9,
    )
    assert (params["embedding_size"].low, params["embedding_size"].high, params["embedding_size"].q) == (
        4,
        16,
        4,
    )
    assert params["embedding_size"].integral


def test_sampled_values_follow_the_types():
    from hyperopt.pyll.stochastic import sample

    params = parse_params(FOUR_TYPES.splitlines())
    space = hyperopt_space(params)
    rng = np.random.default_rng(0)
    for _ in range(20):
        point = trial_config(params, sample(space, rng=rng))
        assert math.exp(-9.2) <= point["learning_rate"] <= math.exp(-4.6)  # bounds are logs
        assert point["tower_dropout"] in ([0.1, 0.3, 0.3], [0.2, 0.2, 0.2])
        assert 0.1 <= point["sm_lambda"] <= 0.9
        assert isinstance(point["embedding_size"], int) and point["embedding_size"] in (4, 8, 12, 16)


@pytest.mark.parametrize(
    "line, message",
    [
        ("learning_rate choice", "expected `name type values`"),
        ("learning_rate gaussian 0,1", "unknown type 'gaussian'"),
        ("learning_rate uniform 0.1", "uniform takes low,high"),
        ("learning_rate uniform a,b", "takes numbers"),
        ("learning_rate uniform 0.9,0.1", "needs low < high"),
        ("embedding_size quniform 4,16,0", "step q > 0"),
        ("learner choice []", "non-empty list"),
        ("learner choice 3", "non-empty list"),
        ("learning-rate choice [1]", "not a config key name"),
    ],
)
def test_a_bad_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.hyper"
    path.write_text(f"# a comment\n{line}\n")
    with pytest.raises(ParamsFileError, match=message) as error:
        read_params_file(path)
    assert f"{path}, line 2" in str(error.value)


def test_a_repeated_name_is_an_error():
    with pytest.raises(ParamsFileError, match="already searched on line 1"):
        parse_params(["a choice [1]", "a choice [2]"])


@pytest.mark.parametrize(
    "values, kept",
    [
        ("[__import__('os').getcwd()]", "__import__('os').getcwd()"),
        ("['__import__(\"os\").getcwd()']", '__import__("os").getcwd()'),  # RecBole would eval it
        ("[open('x')]", "open('x')"),
        ("['9**9**9**9']", "9**9**9**9"),  # no code, but an eval that never ends
    ],
)
def test_code_is_kept_as_text_never_run(values, kept):
    """Such text was refused as "Python code"; values are data, never evaluated: the string."""
    (param,) = parse_params([f"learner choice {values}"])
    assert param.values == (kept,)


def test_a_choice_that_is_no_list_is_refused():
    with pytest.raises(ParamsFileError, match="line 1: choice takes a non-empty list"):
        parse_params(["learner choice __import__('os')"])


def test_words_that_recbole_keeps_as_strings_are_accepted():
    (param,) = parse_params(["activation choice ['leaky-relu', relu, 'Dice']"])
    assert param.values == ("leaky-relu", "relu", "Dice")


def test_missing_params_file():
    with pytest.raises(ParamsFileError, match="does not exist"):
        read_params_file("no/such.hyper")


@pytest.mark.skipif(
    tuple(int(p) for p in __import__("hyperopt").__version__.split(".")[:3]) < (0, 2, 7),
    reason="RecBole's exhaustive search works on hyperopt < 0.2.7",
)
def test_recbole_exhaustive_search_is_broken_on_this_hyperopt():
    # Why exhaustive.exhaustive_search exists: RecBole hands hyperopt a RandomState.
    from recbole.trainer.hyper_tuning import exhaustive_search as recbole_exhaustive

    with pytest.raises(AttributeError, match="integers"):
        fmin(
            lambda p: 0.0,
            {"a": hp.choice("a", [1, 2])},
            algo=recbole_exhaustive,
            max_evals=2,
            show_progressbar=False,
        )


def test_exhaustive_search_visits_every_grid_point_once():
    space = {
        "a": hp.choice("a", [1, 2, 3]),
        "b": hp.choice("b", [[64, 32], [128]]),  # RecBole's _spacesize fails on list options
        "c": hp.choice("c", ["x", "y"]),
        "u": hp.uniform("u", 0.0, 1.0),
    }
    assert grid_size(space) == 12
    seen = []

    def objective(point):
        seen.append((point["a"], tuple(point["b"]), point["c"]))
        return point["u"]

    trials = Trials()
    fmin(
        objective,
        space,
        algo=exhaustive_search,
        max_evals=grid_size(space) + 5,  # asking for more stops at the end of the grid
        trials=trials,
        rstate=np.random.default_rng(0),
        show_progressbar=False,
    )
    grid = set(itertools.product([1, 2, 3], [(64, 32), (128,)], ["x", "y"]))
    assert len(seen) == 12 and set(seen) == grid
    assert len({trial["misc"]["vals"]["u"][0] for trial in trials.trials}) == 12  # continuous: drawn


def test_exhaustive_search_on_a_larger_grid():
    space = {name: hp.choice(name, list(range(size))) for name, size in (("p", 6), ("q", 5), ("r", 4))}
    seen = []
    fmin(
        lambda point: seen.append(tuple(sorted(point.items()))) or 0.0,
        space,
        algo=exhaustive_search,
        max_evals=grid_size(space),
        rstate=np.random.default_rng(1),
        show_progressbar=False,
    )
    assert len(seen) == len(set(seen)) == 120


def test_grid_of_a_continuous_space_and_a_nested_one():
    assert grid_size({"u": hp.uniform("u", 0, 1)}) == 1  # as RecBole: one draw
    with pytest.raises(ValueError, match="flat space"):
        grid_size({"x": hp.choice("x", [hp.choice("y", [1, 2]), 3])})


def _check_report(report, n_trials, division=True):
    """``division``: the model's pCVR is pCTCVR / pCTR (MLP), not a pCVR head (ESMM)."""
    assert report["valid_metric"] == "purchase_auc" and report["mode"] == "max"
    assert len(report["trials"]) == n_trials
    assert all(trial["status"] == "ok" for trial in report["trials"])
    for trial in report["trials"]:
        assert trial["valid_score"] == trial["valid_result"]["purchase_auc"]
        # the default tasks' RecBole metrics, calibration and truth metrics (the tiny dataset has
        # truth files), and for a DIVISION pCVR the share of clipped divisions
        tasks, metrics = ("click", "purchase", "cvr", "cvr_all"), ("auc", "logloss", "pcoc", "ece")
        metrics += ("truth_kl", "truth_auc", "truth_ece")
        keys = {f"{task}_{metric}" for task in tasks for metric in metrics}
        if division:
            keys |= {"cvr_truth_clipped", "cvr_all_truth_clipped"}
        assert set(trial["test_result"]) == keys
    best = max(report["trials"], key=lambda trial: trial["valid_score"])
    assert report["best"] == best


@pytest.mark.slow
def test_hypertuning_exhaustive_covers_the_grid(tiny_data_path, tmp_path):
    output = tmp_path / "out" / "search.json"
    params = parse_params(
        ["learning_rate choice [0.01, 0.001]", "tower_dropout choice [[0.1,0.1,0.1], [0.3,0.3,0.3]]"]
    )
    report = run_search(
        params,
        model="MLP",
        overrides=tiny_config(tiny_data_path, tmp_path),
        algo="exhaustive",
        output_file=str(output),
    )
    _check_report(report, 4)
    points = {(t["params"]["learning_rate"], tuple(t["params"]["tower_dropout"])) for t in report["trials"]}
    assert points == set(itertools.product([0.01, 0.001], [(0.1,) * 3, (0.3,) * 3]))
    written = json.loads(output.read_text())
    assert written["best"] == report["best"] and written["trials"] == report["trials"]
    assert written["algo"] == "exhaustive" and written["model"] == "MLP" and written["dataset"] == TINY


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["random", "bayes"])
def test_hypertuning_random_and_bayes(tiny_data_path, tmp_path, algo):
    params = parse_params(["learning_rate loguniform -7,-4", "embedding_size quniform 4,8,4"])
    report = run_search(
        params,
        model="ESMM",
        overrides=tiny_config(tiny_data_path, tmp_path),
        algo=algo,
        max_evals=2,
        search_seed=3,
    )
    _check_report(report, 2, division=False)
    assert all(isinstance(t["params"]["embedding_size"], int) for t in report["trials"])


def test_a_setting_both_fixed_and_searched_is_refused(tiny_data_path, tmp_path):
    params = parse_params(["learning_rate choice [0.01]"])
    with pytest.raises(ValueError, match="learning_rate is both searched"):
        run_search(params, model="MLP", overrides=tiny_config(tiny_data_path, tmp_path, learning_rate=0.1))


@pytest.mark.slow
def test_command_line_writes_best_and_all_trials(tiny_data_path, tmp_path, capsys):
    params_file = tmp_path / "space.hyper"
    params_file.write_text("learning_rate choice [0.01, 0.005]\n")
    output = tmp_path / "result.json"
    load_script("run_hyper").main(
        [
            "--model=MLP",
            f"--dataset={TINY}",
            f"--params_file={params_file}",
            f"--output_file={output}",
            "--algo=random",
            "--max_evals=2",
            f"--data_path={tiny_data_path}",
            "--benchmark_filename=[train, valid, test]",
            "--epochs=1",
            "--show_progress=False",
            "--state=ERROR",
            f"--checkpoint_dir={tmp_path / 'saved'}",
        ]
    )
    written = json.loads(output.read_text())
    _check_report(written, 2)
    printed = capsys.readouterr().out
    assert f"best params: {json.dumps(written['best']['params'])}" in printed
    assert "best valid purchase_auc:" in printed


@pytest.mark.slow
def test_redirected_output_has_no_colour_code_or_progress_bar(tiny_data_path, tmp_path):
    """Behind hyperopt's progress-bar redirection colorama does not strip RecBole's log colours."""
    params_file = tmp_path / "space.hyper"
    params_file.write_text("learning_rate choice [0.01, 0.02]\n")
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(REPOSITORY, "run_hyper.py"),
            "--model=MLP",
            f"--dataset={TINY}",
            f"--params_file={params_file}",
            f"--data_path={tiny_data_path}",
            "--benchmark_filename=[train,valid,test]",
            "--epochs=1",
            f"--checkpoint_dir={tmp_path / 'saved'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "best params:" in done.stdout and "General Hyper Parameters" in done.stderr
    for output in (done.stdout, done.stderr):
        assert "\x1b[" not in output and "\r" not in output


@pytest.mark.parametrize("line", ["learning_rate choice ['1/0']", "learning_rate choice [1/0]"])
def test_choice_text_that_looks_like_code_is_kept_as_the_string(line):
    """It was refused as "arithmetic"; values are data, never evaluated: a string, which the
    settings check then refuses for learning_rate like any other word."""
    (param,) = parse_params([line])
    assert param.values == ("1/0",)


@pytest.mark.parametrize(
    "line, message",
    [
        # read as the text it is (never evaluated): no list to choose from
        (
            "learner choice __import__('os')",
            r"choice takes a non-empty list such as \[1, 2\], got \"__import__",
        ),
        ("learner choice [adam, sgd", r"choice takes a non-empty list such as \[1, 2\], got '\[adam, sgd'"),
        pytest.param(
            "learner choice " + "[" * 5000 + "]" * 5000,
            "is nested too deeply to be a setting",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_command_line_bad_params_file_is_one_error_line(tmp_path, capsys, line, message):
    params_file = tmp_path / "space.hyper"
    params_file.write_text(f"embedding_size choice [4]\n{line}\n")
    with pytest.raises(SystemExit) as stop:
        load_script("run_hyper").main(["--model=MLP", f"--params_file={params_file}"])
    assert stop.value.code == 2
    (printed,) = capsys.readouterr().err.splitlines()
    assert printed.startswith(f"error: {params_file}, line 2: ")
    assert re.search(message, printed)


def test_a_params_file_that_is_not_utf8_is_one_error_line(tmp_path, capsys):
    params_file = tmp_path / "space.hyper"
    params_file.write_bytes(
        "embedding_size choice [4]\nlearner choice ['adam']  # caf\xe9\n".encode("latin-1")
    )
    with pytest.raises(SystemExit) as stop:
        load_script("run_hyper").main(["--model=MLP", f"--params_file={params_file}"])
    assert stop.value.code == 2
    (printed,) = capsys.readouterr().err.splitlines()
    assert (
        printed
        == f"error: Params file [{params_file}], line 2: byte 0xe9 is not UTF-8 text. Fix: save the file as UTF-8."
    )


@pytest.mark.slow  # imports Ray
def test_ray_space_translation():
    from ray.tune.search.sample import Categorical, Float

    from recbole_cstwa.experiments.ray_tune import ray_space

    params = parse_params(FOUR_TYPES.splitlines())
    space = ray_space(params)
    assert isinstance(space["learning_rate"], Float)
    assert space["learning_rate"].lower == pytest.approx(math.exp(-9.2))
    assert space["learning_rate"].upper == pytest.approx(math.exp(-4.6))
    assert isinstance(space["learner"], Categorical) and space["learner"].categories == ["adam", "sgd"]
    assert ray_space(params, grid=True)["learner"] == {"grid_search": ["adam", "sgd"]}
    assert SearchParam("x", "quniform", low=4, high=16, q=4).integral


@pytest.mark.slow
def test_ray_local_mode_runs_trials(tiny_data_path, tmp_path):
    import ray

    ray.init(local_mode=True, num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        settings = tiny_config(tiny_data_path, tmp_path)
        params = parse_params(
            ["learning_rate loguniform -7,-4", "tower_dropout choice [[0.1,0.1,0.1], [0.3,0.3,0.3]]"]
        )
        output = tmp_path / "ray.json"
        report = run_search(
            params,
            model="MLP",
            overrides=settings,
            algo="random",
            max_evals=2,
            tool="Ray",
            output_file=str(output),
        )
        _check_report(report, 2)
        assert all(math.exp(-7) <= t["params"]["learning_rate"] <= math.exp(-4) for t in report["trials"])
        assert json.loads(output.read_text())["best"] == report["best"]

        grid = parse_params(["learning_rate choice [0.01, 0.001]"])
        report = run_search(grid, model="MLP", overrides=settings, algo="exhaustive", tool="Ray")
        _check_report(report, 2)
        assert sorted(t["params"]["learning_rate"] for t in report["trials"]) == [0.001, 0.01]
    finally:
        ray.shutdown()


@pytest.mark.parametrize(
    "line, message",
    [
        ("sm_lambda uniform 0.1,1.5", "sm_lambda uniform: sm_lambda must be a number in [0, 1], got 1.5."),
        (
            "embedding_size choice [4, 0]",
            "embedding_size choice: embedding_size must be an integer in [1, 4096] (far above the papers' 5 to 64; larger only allocates memory), got 0.",
        ),
        ("graph_top_k uniform 4,32", "graph_top_k uniform: graph_top_k takes whole numbers"),
        ("graph_top_k quniform 0,32,4", "graph_top_k quniform: graph_top_k must be an integer >= 1, got 0."),
    ],
)
def test_values_outside_a_settings_range_are_refused_before_any_trial(line, message):
    from recbole_cstwa.experiments.hyper import check_space

    with pytest.raises(ParamsFileError) as error:
        check_space(parse_params([line]), "CSTWA", "params file [space.hyper]")
    assert str(error.value).startswith(f"params file [space.hyper], {message}")
    check_space(parse_params(["sm_lambda uniform 0.1,0.9", "dropout_prob choice [7]"]), "CSTWA", "x")
