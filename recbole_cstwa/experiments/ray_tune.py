"""Ray Tune route of the hyper-parameter search (``run_hyper.py --tool=Ray``).

Trials run in parallel on this machine (Ray started here) or on an existing Ray cluster
(``--ray_address=auto`` on a cluster node, or ``HOST:PORT`` of the head: Ray's own convention).
Each trial asks Ray for ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs
(``resources_per_trial``) on one node and trains on one device, or, with ``nproc_per_trial`` > 1,
with that many DDP processes on its node (:mod:`recbole_cstwa.distributed`; give it as many GPUs,
or CPUs). On a cluster, every node needs recbole-cstwa installed and the dataset at the same
``data_path``. The trials are recorded in the same output file as the Hyperopt route
(:mod:`recbole_cstwa.experiments.hyper`). Ray is imported only here.
"""

import math
import os
import socket
import time

from recbole_cstwa.config import isolated_argv
from recbole_cstwa.errors import ConfigError
from recbole_cstwa.experiments.trials import (
    hyperopt_space,
    run_trial,
    trial_config,
    trial_record,
    write_report,
)


def ray_space(params, grid=False):
    """The Ray Tune space of ``params``; ``grid=True`` makes every choice a grid search.

    loguniform bounds are logs, so they become ``tune.loguniform(exp(low), exp(high))``, as in
    RecBole's ``run_hyper.py``.
    """
    from ray import tune

    space = {}
    for param in params:
        if param.kind == "choice":
            values = list(param.values)
            space[param.name] = tune.grid_search(values) if grid else tune.choice(values)
        elif param.kind == "uniform":
            space[param.name] = tune.uniform(param.low, param.high)
        elif param.kind == "quniform":
            space[param.name] = tune.quniform(param.low, param.high, param.q)
        else:
            space[param.name] = tune.loguniform(math.exp(param.low), math.exp(param.high))
    return space


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_ddp_trial(search_params, fixed, config_file_list, sampled, nproc):
    """As :func:`~recbole_cstwa.experiments.trials.run_trial`, with ``nproc`` DDP processes on this node."""
    from recbole_cstwa.quick_start import run_recbole_cstwa

    params = trial_config(search_params, sampled)
    start = time.perf_counter()
    with isolated_argv():
        result = run_recbole_cstwa(
            config_dict={**fixed, **params},
            config_file_list=config_file_list or None,
            saved=True,
            nproc=nproc,
            ip="127.0.0.1",
            port=_free_port(),
        )
    return params, result, time.perf_counter() - start


def _ray_trainable():
    """A Ray Tune class trainable running one training per trial (one ``step``).

    The class API, not the function API: Ray 2.6's function trainables share one session per
    process, which breaks when two trials meet in one process (``ray.init(local_mode=True)``).
    """
    from ray import tune

    class RecBoleTrial(tune.Trainable):
        def setup(
            self,
            config,
            search_params,
            fixed,
            config_file_list,
            valid_metric,
            gpus_per_trial,
            nproc_per_trial,
        ):
            self.sampled = dict(config)
            self.nproc = int(nproc_per_trial)
            self.search_params, self.fixed = search_params, dict(fixed)
            self.config_file_list, self.valid_metric = config_file_list, valid_metric
            # RecBole's Config sets CUDA_VISIBLE_DEVICES from gpu_id: point it at Ray's GPUs.
            self.fixed["gpu_id"] = ",".join(str(gpu) for gpu in self.gpu_ids()) if gpus_per_trial else ""

        def gpu_ids(self):
            import ray

            return ray.get_gpu_ids()

        def step(self):
            if self.nproc > 1:
                params, result, seconds = _run_ddp_trial(
                    self.search_params, self.fixed, self.config_file_list, self.sampled, self.nproc
                )
            else:
                params, result, seconds = run_trial(
                    self.search_params, self.fixed, self.config_file_list, self.sampled
                )
            record = trial_record(0, params, result, seconds)
            return {
                self.valid_metric: record["valid_score"],
                "valid_result": record["valid_result"],
                "test_result": record["test_result"],
                "run_seconds": record["seconds"],
                "done": True,
            }

    return RecBoleTrial


def search_ray(search, algo, max_evals, output_file, seed, options):
    """Runs ``search`` with Ray Tune; ``options``: ``address`` (``None``: start Ray here),
    ``cpus_per_trial``, ``gpus_per_trial``, ``nproc_per_trial``, ``storage_path``,
    ``max_concurrent_trials``."""
    import ray
    from ray import tune

    # Trials run in their own folders (Ray's default), so every path they read is made absolute.
    search.fixed["data_path"] = search.data_dir
    gpus = float(options.get("gpus_per_trial") or 0)
    cpus = float(options.get("cpus_per_trial") or 1)
    nproc = int(options.get("nproc_per_trial") or 1)
    if nproc < 1 or (gpus and nproc > gpus):
        raise ConfigError(
            f"nproc_per_trial={nproc} needs at least as many GPUs a trial (gpus_per_trial={gpus:g}), "
            "one a DDP process, or gpus_per_trial=0 to train on CPU processes."
        )
    mode = "max" if search.bigger else "min"
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=options.get("address"), include_dashboard=False)
    run_args = {"num_samples": max_evals}
    if algo == "exhaustive":
        run_args = {"config": ray_space(search.params, grid=True), "num_samples": 1}
    elif algo == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        run_args["config"] = ray_space(search.params)
        run_args["search_alg"] = BasicVariantGenerator(random_state=seed)
    else:
        from ray.tune.search.hyperopt import HyperOptSearch

        run_args["search_alg"] = HyperOptSearch(
            hyperopt_space(search.params), metric=search.valid_metric, mode=mode, random_state_seed=seed
        )
    storage = options.get("storage_path") or os.path.abspath(
        (os.path.splitext(output_file)[0] if output_file else "ray_results") + "-ray"
    )
    search.info.update(max_evals=max_evals if algo != "exhaustive" else None, ray_storage=storage)

    class RecordTrials(tune.Callback):
        """Records each trial as it ends and rewrites the output file, as the Hyperopt route."""

        def __init__(self):
            self.order, self.results = [], {}

        def _note(self, trial, record):
            if trial.trial_id not in self.results:
                self.order.append(trial.trial_id)
            self.results[trial.trial_id] = record
            search.trials[:] = [
                {**self.results[trial_id], "trial": number}
                for number, trial_id in enumerate(self.order, start=1)
            ]
            write_report(search, output_file)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self._note(trial, _ray_record(search, trial.config, result))

        def on_trial_error(self, iteration, trials, trial, **info):
            params = trial_config(search.params, {p.name: trial.config.get(p.name) for p in search.params})
            self._note(
                trial, {"params": params, "status": "error", "error": getattr(trial, "error_file", None)}
            )

    recorder = RecordTrials()
    try:
        tune.run(
            tune.with_parameters(
                _ray_trainable(),
                search_params=search.params,
                fixed=search.fixed,
                config_file_list=search.config_file_list,
                valid_metric=search.valid_metric,
                gpus_per_trial=gpus,
                nproc_per_trial=nproc,
            ),
            metric=search.valid_metric,
            mode=mode,
            resources_per_trial={"cpu": cpus, "gpu": gpus},
            storage_path=storage,
            name=f"{search.info['model']}-{search.info['dataset']}-{algo}",
            raise_on_failed_trial=False,
            max_concurrent_trials=options.get("max_concurrent_trials"),
            callbacks=[recorder],
            verbose=1,
            **run_args,
        )
    except RuntimeError as error:
        # Ray 2.6's tune.run builds an ExperimentAnalysis at the very end, which needs pyarrow
        # (in ray[tune], not in plain ray, which is what RecBole requires). The trials are done
        # and recorded by the callback by then, so only that last step is skipped.
        if "pyarrow" not in str(error) or not recorder.results:
            raise
    finally:
        if started_ray:
            ray.shutdown()


def _ray_record(search, sampled, result):
    """A trial record from a Ray result (nested dicts may come flattened as ``valid_result/x``)."""

    def part(name):
        value = result.get(name)
        if isinstance(value, dict):
            return {key: float(item) for key, item in value.items()}
        prefix = name + "/"
        return {key[len(prefix) :]: float(item) for key, item in result.items() if key.startswith(prefix)}

    return {
        "params": trial_config(
            search.params, {param.name: sampled.get(param.name) for param in search.params}
        ),
        "valid_score": float(result[search.valid_metric]),
        "valid_result": part("valid_result"),
        "test_result": part("test_result"),
        "seconds": result.get("run_seconds"),
        "status": "ok",
    }
