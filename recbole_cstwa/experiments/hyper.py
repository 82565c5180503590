"""Hyper-parameter search, RecBole's way: a params file, RecBole's ``HyperTuning`` or Ray Tune.

The params file has RecBole's syntax, one parameter a line (``#`` starts a comment)::

    learning_rate loguniform -8,-4          # exp(U(-8, -4)): the bounds are natural logs
    tower_dropout choice [[0.1,0.3,0.3], [0.2,0.2,0.2]]
    graph_top_k   choice [4, 8, 16, 32]
    sm_lambda     uniform 0.1,0.9
    embedding_size quniform 4,16,4          # round(U(4, 16) / 4) * 4; whole numbers stay ints

Unlike RecBole's ``HyperTuning._build_space_from_file`` (which ``eval``s choice values), the
file is read without ``eval``: choice values are Python literals (``ast.literal_eval``) or a YAML
flow list (``[adam, sgd]``), and bounds are numbers. Values are data (:mod:`recbole_cstwa.values`):
text that looks like code (``1/0``) is a string, never evaluated.

Two routes run the same search:

* ``tool="Hyperopt"``: RecBole's ``HyperTuning`` on one machine, trials one after another, with
  ``algo`` exhaustive (:func:`recbole_cstwa.experiments.exhaustive.exhaustive_search`, as RecBole's is broken on
  hyperopt >= 0.2.7), random or bayes (TPE).
* ``tool="Ray"``: Ray Tune, trials in parallel on a machine or a Ray cluster; exhaustive =
  ``tune.grid_search``, random = Tune's sampling, bayes = Tune's ``HyperOptSearch`` (TPE). Ray
  is imported only on this route, in :mod:`recbole_cstwa.experiments.ray_tune`.

Both optimise the run's task-prefixed ``valid_metric`` (``purchase_auc`` by default; maximised or
minimised by ``valid_metric_bigger``) and write every trial's parameters and results, and the
best, to one JSON file.
"""

import contextlib
import math
import os
import re

from recbole_cstwa.compat import terminal
from recbole_cstwa.config import isolated_argv
from recbole_cstwa.errors import ConfigError, ParamsFileError, UnknownSettingError, ValueTextError
from recbole_cstwa.experiments.trials import (
    PARAM_TYPES,
    Search,
    SearchParam,
    best_trial,
    hyperopt_space,
    run_trial,
    trial_record,
    write_report,
)
from recbole_cstwa.keys import check_keys
from recbole_cstwa.values import parse_literal, strip_comment

#: Search algorithms, as RecBole names them.
ALGOS = ("exhaustive", "random", "bayes")
#: Search back-ends.
TOOLS = ("Hyperopt", "Ray")
#: RecBole's early stop of a search: stop after this many trials without a better valid score.
RECBOLE_EARLY_STOP = 10

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _numbers(text, count, where, kind):
    parts = [part.strip() for part in text.split(",")]
    shape = {"uniform": "low,high", "loguniform": "low,high", "quniform": "low,high,q"}[kind]
    if len(parts) != count:
        raise ParamsFileError(f"{where}: {kind} takes {shape}, got {text.strip()!r}.")
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        raise ParamsFileError(f"{where}: {kind} takes numbers {shape}, got {text.strip()!r}.") from None
    if not all(math.isfinite(number) for number in numbers):
        raise ParamsFileError(f"{where}: {kind} bounds must be finite, got {text.strip()!r}.")
    if numbers[0] >= numbers[1]:
        raise ParamsFileError(f"{where}: {kind} needs low < high, got {text.strip()!r}.")
    if kind == "quniform" and numbers[2] <= 0:
        raise ParamsFileError(f"{where}: quniform needs a step q > 0, got {text.strip()!r}.")
    return numbers


def parse_params(lines, source="<params>"):
    """Reads params file lines (``name type values``) into :class:`SearchParam` objects."""
    params, seen = [], {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        where = f"{source}, line {number}"
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 3:
            raise ParamsFileError(
                f"{where}: expected `name type values` (type one of {', '.join(PARAM_TYPES)}), got {line!r}."
            )
        name, kind, text = parts
        text = strip_comment(text)
        if not _NAME.fullmatch(name):
            raise ParamsFileError(f"{where}: {name!r} is not a config key name.")
        if name in seen:
            raise ParamsFileError(f"{where}: {name} is already searched on line {seen[name]}.")
        if kind == "choice":
            try:
                values = parse_literal(text, where)
            except ValueTextError as error:
                raise ParamsFileError(str(error)) from None
            if not isinstance(values, list) or not values:
                raise ParamsFileError(f"{where}: choice takes a non-empty list such as [1, 2], got {text!r}.")
            params.append(SearchParam(name, kind, values=tuple(values)))
        elif kind in ("uniform", "loguniform"):
            low, high = _numbers(text, 2, where, kind)
            params.append(SearchParam(name, kind, low=low, high=high))
        elif kind == "quniform":
            low, high, q = _numbers(text, 3, where, kind)
            params.append(SearchParam(name, kind, low=low, high=high, q=q))
        else:
            raise ParamsFileError(f"{where}: unknown type {kind!r}; use one of {', '.join(PARAM_TYPES)}.")
        seen[name] = number
    if not params:
        raise ParamsFileError(f"{source}: no parameter to search (lines are `name type values`).")
    return params


def read_params_file(path):
    """Reads a RecBole params file; see the module docstring for the syntax."""
    path = str(path)
    if not os.path.isfile(path):
        raise ParamsFileError(f"Params file [{path}] does not exist (--params_file).")
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise ParamsFileError(
            f"Params file [{path}], line {line}: byte {error.object[error.start]:#04x} is not UTF-8 text. "
            "Fix: save the file as UTF-8."
        ) from None
    return parse_params(lines, source=path)


def _prepare(params, model, dataset, config_file_list, overrides, source="the search space"):
    """Checks the settings and the searched keys once, before any trial, and reads the metric
    to optimise."""
    from recbole_cstwa.config import Config

    fixed = dict(overrides or {})
    clash = sorted(set(fixed) & {param.name for param in params})
    if clash:
        raise ConfigError(
            f"{', '.join(clash)} is both searched (params file) and fixed (--key=value or "
            "config_dict): remove one of the two."
        )
    if model is not None:
        fixed["model"] = model
    if dataset is not None:
        fixed["dataset"] = dataset
    config_file_list = [os.path.abspath(path) for path in (config_file_list or [])]
    for path in config_file_list:
        if not os.path.isfile(path):
            raise ConfigError(f"Config file [{path}] does not exist (--config_files).")
    try:
        with isolated_argv():
            config = Config(config_file_list=config_file_list or None, config_dict=dict(fixed))
    except UnknownSettingError as error:
        # the fixed settings are the command's --key=value pairs
        raise (error.given_in("command line") if error.where == "config_dict" else error) from None
    check_keys([param.name for param in params], source, config.known_keys)
    fixed.setdefault("model", config["model"])
    fixed.setdefault("dataset", config["dataset"])
    return Search(
        params=params,
        fixed=fixed,
        config_file_list=config_file_list,
        valid_metric=config["valid_metric"],
        bigger=bool(config["valid_metric_bigger"]),
        data_dir=os.path.dirname(os.path.abspath(config["data_path"])),  # data_path ends in the dataset
        info={"model": config["model"], "dataset": config["dataset"]},
    )


def check_space(params, model, source):
    """Checks every value a search can try against the settings table, before any trial: each
    choice, and the bounds of a range (``exp`` of a loguniform's)."""
    from recbole_cstwa.registry import get_model, is_multitask_model
    from recbole_cstwa.setting_checks import applies, check_value
    from recbole_cstwa.settings import SETTINGS

    multitask = is_multitask_model(get_model(model))
    described = {spec.key: spec for spec in SETTINGS}
    for param in params:
        spec = described.get(param.name)
        if spec is None:
            continue  # a RecBole setting the plugin does not describe
        if not applies(spec.models, model, multitask):
            continue
        if param.kind == "choice":
            values = param.values
        elif param.kind == "loguniform":
            values = (math.exp(param.low), math.exp(param.high))
        else:
            values = (param.low, param.high)
            if spec.kind == "int" and not param.integral:
                raise ParamsFileError(
                    f"{source}, {param.name} {param.kind}: {param.name} takes whole numbers, which "
                    f"{param.kind} does not draw. Fix: quniform with whole-number bounds and step, "
                    "or choice."
                )
            values = tuple(int(v) if spec.kind == "int" else v for v in values)
        for value in values:
            try:
                check_value(spec, value, model)
            except ConfigError as error:
                raise ParamsFileError(f"{source}, {param.name} {param.kind}: {error}") from None


def run_search(
    params,
    model=None,
    dataset=None,
    config_file_list=None,
    overrides=None,
    algo="exhaustive",
    max_evals=100,
    early_stop=None,
    tool="Hyperopt",
    output_file=None,
    search_seed=None,
    ray_options=None,
):
    """Searches ``params`` (a params file path or :class:`SearchParam` list) and reports.

    Args:
        model, dataset: the model and dataset (else from the config files).
        config_file_list (list): fixed YAML files for every trial; overrides (dict): fixed
            settings for every trial, handed to RecBole's ``Config`` as ``config_dict``.
        algo: ``exhaustive`` (every grid point of the choices once; max_evals is the grid size),
            ``random`` or ``bayes``; max_evals: trials for random/bayes.
        early_stop: stop after this many trials without a better valid score (Hyperopt route);
            default RecBole's 10 for random/bayes, none for exhaustive.
        tool: ``Hyperopt`` (RecBole's ``HyperTuning``) or ``Ray`` (Ray Tune).
        output_file: JSON report, rewritten after every trial on the Hyperopt route; ``"auto"``:
            ``results/hyper/<model>-<dataset>-<algo>.json``.
        search_seed (int): seeds the search itself (each trial's training seed is ``seed``).
        ray_options (dict): Ray route only (:mod:`recbole_cstwa.experiments.ray_tune`): ``address``,
            ``cpus_per_trial``, ``gpus_per_trial``, ``nproc_per_trial``, ``storage_path``,
            ``max_concurrent_trials``.

    Returns:
        dict: the report written to ``output_file``: ``best`` and ``trials`` (``params``,
        ``valid_score``, ``valid_result``, ``test_result``, ``seconds``) and the settings.
    """
    if algo not in ALGOS:
        raise ConfigError(f"algo must be one of {', '.join(ALGOS)}, got {algo!r}.")
    if tool not in TOOLS:
        raise ConfigError(f"tool must be one of {', '.join(TOOLS)}, got {tool!r}.")
    if max_evals is None or int(max_evals) < 1:
        raise ConfigError(f"--max_evals must be a positive number of trials, got {max_evals!r}.")
    source = "the search space"
    if not isinstance(params, (list, tuple)):
        source = f"params file [{params}]"
        params = read_params_file(params)
    search = _prepare(list(params), model, dataset, config_file_list, overrides, source)
    check_space(search.params, search.info["model"], source)
    search.info.update(algo=algo, tool=tool, search_seed=search_seed)
    if output_file == "auto":
        output_file = os.path.join(
            "results", "hyper", f"{search.info['model']}-{search.info['dataset']}-{algo}.json"
        )
    search.info["output_file"] = output_file
    if tool == "Hyperopt":
        _search_hyperopt(search, algo, int(max_evals), early_stop, output_file, search_seed)
    else:
        from recbole_cstwa.experiments.ray_tune import search_ray

        search_ray(search, algo, int(max_evals), output_file, search_seed, dict(ray_options or {}))
    write_report(search, output_file)
    return {
        **search.info,
        "valid_metric": search.valid_metric,
        "mode": "max" if search.bigger else "min",
        "best": best_trial(search.trials, search.bigger),
        "trials": search.trials,
    }


@contextlib.contextmanager
def _hyperopt_seed(seed):
    """hyperopt's ``fmin`` seeds itself from ``$HYPEROPT_FMIN_SEED``; RecBole passes no seed."""
    if seed is None:
        yield
        return
    saved = os.environ.get("HYPEROPT_FMIN_SEED")
    os.environ["HYPEROPT_FMIN_SEED"] = str(int(seed))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HYPEROPT_FMIN_SEED", None)
        else:
            os.environ["HYPEROPT_FMIN_SEED"] = saved


def _search_hyperopt(search, algo, max_evals, early_stop, output_file, seed):
    from recbole.trainer import HyperTuning

    from recbole_cstwa.experiments.exhaustive import exhaustive_search, grid_size

    space = hyperopt_space(search.params)
    if algo == "exhaustive":
        max_evals = grid_size(space)
        algo_arg = exhaustive_search
        early_stop = early_stop or max_evals
    else:
        algo_arg = algo
        early_stop = early_stop or RECBOLE_EARLY_STOP
    search.info["max_evals"] = max_evals

    def objective(config_dict, config_file_list):
        params, result, seconds = run_trial(search.params, search.fixed, config_file_list, config_dict)
        search.trials.append(trial_record(len(search.trials) + 1, params, result, seconds))
        write_report(search, output_file)
        return result

    class QuietHyperTuning(HyperTuning):
        def run(self):
            # RecBole's run() without hyperopt's progress bar off a terminal (it would write one
            # line a refresh into a redirected file)
            from hyperopt import fmin

            fmin(
                self.trial,
                self.space,
                algo=self.algo,
                max_evals=self.max_evals,
                early_stop_fn=self.early_stop_fn,
                show_progressbar=terminal(),
            )

    tuner = QuietHyperTuning(
        objective,
        space=space,
        fixed_config_file_list=search.config_file_list or None,
        algo=algo_arg,
        max_evals=max_evals,
        early_stop=early_stop,
    )
    with _hyperopt_seed(seed):
        tuner.run()
