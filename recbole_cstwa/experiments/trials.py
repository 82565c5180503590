"""The search space and the trial records both routes of a search share (:mod:`.hyper`'s
Hyperopt route and :mod:`.ray_tune`'s Ray route): the parameters of a params file, their hyperopt
space, a sampled point as config values, one trial's run and record, and the report file."""

import json
import math
import os
import time
from dataclasses import dataclass, field

from recbole_cstwa.config import isolated_argv
from recbole_cstwa.file_writes import write_text
from recbole_cstwa.values import plain_value

#: Parameter types of RecBole's params files.
PARAM_TYPES = ("choice", "uniform", "quniform", "loguniform")


@dataclass(frozen=True)
class SearchParam:
    """One searched parameter: ``kind`` is one of :data:`PARAM_TYPES`.

    ``values`` holds a choice's options; ``low``/``high`` (and ``q``) the bounds of the others
    (natural logs for loguniform, as in RecBole and hyperopt).
    """

    name: str
    kind: str
    values: tuple = ()
    low: float = 0.0
    high: float = 0.0
    q: float = 0.0

    @property
    def integral(self):
        """A quniform parameter with whole-number bounds and step gives ints (64, not 64.0)."""
        return self.kind == "quniform" and all(float(v).is_integer() for v in (self.low, self.high, self.q))


def hyperopt_space(params):
    """The hyperopt space of ``params`` (what RecBole builds from a params file)."""
    from hyperopt import hp

    space = {}
    for param in params:
        if param.kind == "choice":
            space[param.name] = hp.choice(param.name, list(param.values))
        elif param.kind == "uniform":
            space[param.name] = hp.uniform(param.name, param.low, param.high)
        elif param.kind == "quniform":
            space[param.name] = hp.quniform(param.name, param.low, param.high, param.q)
        else:
            space[param.name] = hp.loguniform(param.name, param.low, param.high)
    return space


def trial_config(params, sampled):
    """A sampled point as plain config values (numpy scalars to Python; integral quniform to int)."""
    by_name = {param.name: param for param in params}
    config = {}
    for name, value in sampled.items():
        value = plain_value(value, f"parameter {name}")
        if name in by_name and by_name[name].integral and value is not None:
            value = int(round(value))
        config[name] = value
    return config


@dataclass
class Search:
    """Settings shared by the trials of one search."""

    params: list
    fixed: dict
    config_file_list: list
    valid_metric: str
    bigger: bool
    data_dir: str
    info: dict = field(default_factory=dict)
    trials: list = field(default_factory=list)


def run_trial(search_params, fixed, config_file_list, sampled):
    """Trains once with ``fixed`` + the sampled point; returns ``(params, result, seconds)``."""
    from recbole_cstwa.quick_start import objective_function

    params = trial_config(search_params, sampled)
    start = time.perf_counter()
    with isolated_argv():
        result = objective_function({**fixed, **params}, config_file_list, saved=True)
    return params, result, time.perf_counter() - start


def trial_record(number, params, result, seconds):
    """One trial as the report lists it: parameters, valid score and metrics, test metrics, time."""

    def metrics(part):
        return {key: float(value) for key, value in dict(result.get(part) or {}).items()}

    return {
        "trial": number,
        "params": params,
        "valid_score": float(result["best_valid_score"]),
        "valid_result": metrics("best_valid_result"),
        "test_result": metrics("test_result"),
        "seconds": round(seconds, 3),
        "status": "ok",
    }


def best_trial(trials, bigger):
    """The finished trial with the best valid score (the first one on a tie)."""
    done = [trial for trial in trials if trial.get("status") == "ok" and math.isfinite(trial["valid_score"])]
    if not done:
        return None
    pick = max if bigger else min  # both return the first of equal scores
    return pick(done, key=lambda trial: trial["valid_score"])


def write_report(search, output_file):
    """Writes the search's report (settings, best trial, every trial) to ``output_file`` (JSON)."""
    if not output_file:
        return
    report = {
        **search.info,
        "valid_metric": search.valid_metric,
        "mode": "max" if search.bigger else "min",
        "fixed": search.fixed,
        "config_files": search.config_file_list,
        "best": best_trial(search.trials, search.bigger),
        "trials": search.trials,
    }
    folder = os.path.dirname(os.path.abspath(output_file))
    os.makedirs(folder, exist_ok=True)
    write_text(output_file, json.dumps(report, indent=2) + "\n")  # a reader never sees half a file
