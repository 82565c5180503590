"""Where a comparison's runs are trained: in this process, in worker processes on this machine, or
as Ray tasks; :func:`run_all` hands the runs out in the plan's order and collects the outcomes.

* In this process (``--jobs 1``): one run after the other, as a plain loop.
* Worker processes (``--jobs N``): at most N at once, each run in a fresh process started with
  the ``spawn`` context and ``OMP_NUM_THREADS=1`` (so a run's memory and global state never
  reach the next). A worker claims its run, trains it and appends its record to ``runs.jsonl``
  itself (:mod:`recbole_cstwa.experiments.run_records`).
* Ray (``--tool=Ray``): one Ray task a run (``max_calls=1``: a fresh worker process each), on a
  cluster or a Ray started here; the driver claims each run before it submits it and alone
  appends the records, as the tasks finish. Every node needs recbole-cstwa installed and the
  dataset at the same ``data_path``. Ray is imported only here.

A run another process is training (its claim is live) is waited for: its record is read when it
comes, and the run is trained here if the other process ends without one.
"""

import collections
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field, replace

from recbole_cstwa.errors import InputError
from recbole_cstwa.experiments.run_records import (
    append_record,
    claim_holder,
    describe_holder,
    read_runs,
    try_claim,
)

#: Longest failure message sent back from a worker process.
_MESSAGE_LIMIT = 4000


@dataclass(frozen=True)
class RunContext:
    """What every run of a comparison shares (picklable: it goes to worker processes and Ray)."""

    dataset: str
    config_file_list: list
    output_dir: str
    runs_path: str
    code: dict
    #: settings given to the runner over a run's own (not part of its key), e.g. absolute paths
    runtime: dict = field(default_factory=dict)
    working_dir: str = ""


def _metrics(result):
    return {key: float(value) for key, value in dict(result or {}).items()}


def make_record(run, result, seconds, code):
    """The ``runs.jsonl`` record of ``run`` from the runner's ``result``."""
    model_file = result.get("model_file")
    return {
        **run,
        "test_result": _metrics(result.get("test_result")),
        "best_valid_result": _metrics(result.get("best_valid_result")),
        "best_valid_score": float(result["best_valid_score"]),
        # the metric that picked the kept epoch (the run's resolved valid_metric)
        "valid_metric": result.get("valid_metric") or run.get("valid_metric"),
        "wall_seconds": seconds,
        "fit_seconds": result.get("fit_seconds"),
        "epochs_trained": result.get("epochs_trained"),
        "kept_epoch": result.get("kept_epoch"),
        # the kept checkpoint, to score it again under another protocol
        "model_file": os.path.abspath(model_file) if model_file else None,
        "sm_used": result.get("sm_used"),
        "sm_steps": result.get("sm_steps"),
        "trained_steps": result.get("trained_steps"),
        "stage_times": result.get("stage_times"),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "code": code,
    }


def train_run(run, context, runner=None):
    """Trains ``run`` and returns its record (nothing is written). The caller hides its command
    line from RecBole's ``Config`` (:func:`~recbole_cstwa.config.isolated_argv`)."""
    if runner is None:
        from recbole_cstwa.quick_start import run_recbole_cstwa as runner
    start = time.perf_counter()
    result = runner(
        model=run["model"],
        dataset=context.dataset,
        config_file_list=context.config_file_list or None,
        config_dict={**run["config"], **context.runtime},
        saved=True,
    )
    return make_record(run, result, time.perf_counter() - start, context.code)


def claim_train_record(run, context, runner=None):
    """Claims ``run``, trains it and appends its record, in this process: ``(status, previous)``,
    status ``"recorded"``, ``"busy"`` (a live process holds the claim) or ``"done"`` (recorded
    by another process meanwhile); ``previous``: the stale claim taken over, if any."""
    claim = try_claim(context.output_dir, run["key"])
    if claim is None:
        return "busy", None
    with claim:  # released (removed) after the record is written, or when training fails
        if run["key"] in read_runs(context.runs_path):
            return "done", claim.previous
        record = train_run(run, context, runner)
        append_record(context.runs_path, record)
    return "recorded", claim.previous


@dataclass
class Outcome:
    """How a run handed out ended: ``status`` as :func:`claim_train_record`'s, or ``"failed"``
    with ``detail`` the error; ``previous``: a stale claim taken over."""

    item: tuple
    status: str
    detail: str = ""
    previous: dict = None


class InProcess:
    """One run at a time, in this process; an error ends the comparison, as a single run's does."""

    def __init__(self, context, runner, log):
        self.context, self.runner, self.log = context, runner, log
        self.outcomes = []

    def room(self):
        return not self.outcomes

    def active(self):
        return len(self.outcomes)

    def start(self, item):
        from recbole_cstwa.config import isolated_argv

        _, run, label = item
        self.log(f"{label}: training")
        with isolated_argv():
            status, previous = claim_train_record(run, self.context, self.runner)
        self.outcomes.append(Outcome(item, status, previous=previous))

    def collect(self, timeout=None):
        outcomes, self.outcomes = self.outcomes, []
        return outcomes

    def close(self):
        pass


@contextlib.contextmanager
def _one_thread_environment():
    """``OMP_NUM_THREADS=1`` for the processes started in the block (one thread a worker)."""
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before


def _work_in_process(connection, run, context, runner):
    """A worker process's whole life: one run, then its outcome sent back."""
    # Its command line is the parent's (spawn copies it): RecBole's Config must not read it, as
    # isolated_argv hides it in the parent (not imported here: it loads RecBole, which only a
    # real run needs).
    sys.argv = sys.argv[:1]
    try:
        status, previous = claim_train_record(run, context, runner)
        message = (status, "", previous)
    except BaseException as error:
        message = ("failed", f"{type(error).__name__}: {error}"[:_MESSAGE_LIMIT], None)
        if not isinstance(error, InputError):  # a bug: its trace, as a run in process shows it
            traceback.print_exc(file=sys.stderr)
    with contextlib.suppress(OSError):
        connection.send(message)
    connection.close()


def _ended(exit_code):
    if exit_code is not None and exit_code < 0:
        try:
            return f"killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"killed by signal {-exit_code}"
    return f"exit status {exit_code}"


class WorkerProcesses:
    """At most ``jobs`` runs at once, each in a fresh ``spawn``-ed one-thread process."""

    def __init__(self, jobs, context, runner, log):
        self.context, self.runner, self.log = context, runner, log
        self.spawn = multiprocessing.get_context("spawn")
        self.free = list(range(1, jobs + 1))  # worker numbers, for the log
        self.running = {}  # process sentinel -> [process, receiving end, worker, item, message]

    def room(self):
        return bool(self.free)

    def active(self):
        return len(self.running)

    def start(self, item):
        _, run, label = item
        worker = self.free.pop(0)
        self.log(f"{label}: training (worker {worker})")
        receiving, sending = self.spawn.Pipe(duplex=False)
        process = self.spawn.Process(
            target=_work_in_process,
            args=(sending, run, self.context, self.runner),
            name=f"run_compare worker {worker}",
        )
        with _one_thread_environment():
            process.start()
        sending.close()  # the worker holds the only sending end: its death closes the pipe
        self.running[process.sentinel] = [process, receiving, worker, item, None]

    def collect(self, timeout=None):
        waiting = list(self.running) + [entry[1] for entry in self.running.values() if entry[4] is None]
        ready = multiprocessing.connection.wait(waiting, timeout)
        for entry in self.running.values():
            if entry[1] in ready:
                entry[4] = self._receive(entry[1])
        outcomes = []
        for sentinel in [sentinel for sentinel in ready if sentinel in self.running]:
            process, receiving, worker, item, message = self.running.pop(sentinel)
            if message is None and receiving.poll():
                message = self._receive(receiving)
            receiving.close()
            process.join()
            self.free.append(worker)
            self.free.sort()
            if message is None:
                detail = (
                    f"its worker process (worker {worker}, pid {process.pid}) ended without a "
                    f"result ({_ended(process.exitcode)}); the run has no record"
                )
                outcomes.append(Outcome(item, "failed", detail))
            else:
                status, detail, previous = message
                outcomes.append(Outcome(item, status, detail, previous))
        return outcomes

    @staticmethod
    def _receive(receiving):
        try:
            return receiving.recv()
        except (EOFError, OSError):
            return None

    def close(self):
        """Stops the workers still running (after an error or Ctrl-C here): their runs leave no
        record, and their claims go with them."""
        for process, *_ in self.running.values():
            if process.is_alive():
                process.terminate()
        for process, receiving, *_ in self.running.values():
            process.join()
            receiving.close()
        self.running.clear()


def _run_as_ray_task(run, context, use_gpus):
    """A Ray task's body: the run in the driver's working folder where this node has it, on the
    GPUs Ray gave the task (none: the CPU)."""
    import ray

    from recbole_cstwa.config import isolated_argv

    runtime = dict(context.runtime)
    # RecBole's Config sets CUDA_VISIBLE_DEVICES from gpu_id: point it at Ray's GPUs.
    runtime["gpu_id"] = ",".join(str(gpu) for gpu in ray.get_gpu_ids()) if use_gpus else ""
    if context.working_dir and os.path.isdir(context.working_dir):
        os.chdir(context.working_dir)  # RecBole writes log/ into the working folder
    with isolated_argv():  # a Ray worker's command line is Ray's
        return train_run(run, replace(context, runtime=runtime))


class RayTasks:
    """One Ray task a run; the driver claims each run and appends its record.

    ``options``: ``address`` (None: start Ray here), ``cpus_per_run``, ``gpus_per_run``,
    ``max_concurrent`` (default: as many as the cluster's CPUs, and GPUs, allow at the start).
    ``runtime_of(run)``: the settings a run gets over its own on the cluster (absolute paths).
    """

    def __init__(self, context, options, runtime_of, log):
        import ray

        self.ray, self.context, self.runtime_of, self.log = ray, context, runtime_of, log
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            ray.init(address=options.get("address"), include_dashboard=False)
        self.cpus = float(options.get("cpus_per_run") or 1)
        self.gpus = float(options.get("gpus_per_run") or 0)
        limit = options.get("max_concurrent")
        if not limit:
            resources = ray.cluster_resources()
            limit = int(resources.get("CPU", 1) // self.cpus) if self.cpus else 1
            if self.gpus:
                limit = min(limit, int(resources.get("GPU", 0) // self.gpus))
        self.limit = max(1, int(limit))
        # max_calls=1: a fresh worker process a run, as the local workers
        self.task = ray.remote(max_calls=1)(_run_as_ray_task)
        self.pending = {}  # object ref -> (item, claim)
        self.outcomes = []

    def room(self):
        return len(self.pending) < self.limit and not self.outcomes

    def active(self):
        return len(self.pending) + len(self.outcomes)

    def start(self, item):
        _, run, label = item
        claim = try_claim(self.context.output_dir, run["key"])
        if claim is None:
            self.outcomes.append(Outcome(item, "busy"))
            return
        if run["key"] in read_runs(self.context.runs_path):
            claim.release()
            self.outcomes.append(Outcome(item, "done", previous=claim.previous))
            return
        self.log(f"{label}: training (Ray task)")
        context = replace(self.context, runtime={**self.context.runtime, **self.runtime_of(run)})
        ref = self.task.options(num_cpus=self.cpus, num_gpus=self.gpus).remote(run, context, bool(self.gpus))
        self.pending[ref] = (item, claim)

    def collect(self, timeout=None):
        if self.outcomes:
            outcomes, self.outcomes = self.outcomes, []
            return outcomes
        ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        outcomes = []
        for ref in ready:
            item, claim = self.pending.pop(ref)
            with claim:
                try:
                    record = self.ray.get(ref)
                except Exception as error:  # the task's error, or its worker's or node's loss
                    outcomes.append(
                        Outcome(item, "failed", f"{type(error).__name__}: {error}"[:_MESSAGE_LIMIT])
                    )
                    continue
                append_record(self.context.runs_path, record)
            outcomes.append(Outcome(item, "recorded", previous=claim.previous))
        return outcomes

    def close(self):
        for ref, (_, claim) in self.pending.items():
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
            claim.release()
        self.pending.clear()
        if self.started_ray:
            self.ray.shutdown()


def run_all(todo, backend, context, log, poll_seconds=5.0):
    """Hands ``todo`` (``(number, run, label)`` in the plan's order) to ``backend`` and waits
    for runs claimed by other processes; returns ``[(label, error)]`` of the runs that failed."""
    queue = collections.deque(todo)
    waiting, failures = [], []
    try:
        while queue or waiting or backend.active():
            while queue and backend.room():
                item = queue.popleft()
                holder = claim_holder(context.output_dir, item[1]["key"])
                if holder is not None:
                    log(f"{item[2]}: in training by {describe_holder(holder)}; waiting for its record")
                    waiting.append(item)
                    continue
                backend.start(item)
            if backend.active():
                finished = backend.collect(timeout=poll_seconds if waiting else None)
            else:
                finished = []
                if waiting:
                    time.sleep(poll_seconds)
            for outcome in finished:
                label = outcome.item[2]
                if outcome.previous:
                    log(
                        f"{label}: took over the claim of {describe_holder(outcome.previous)}, no longer running"
                    )
                if outcome.status == "busy":
                    log(f"{label}: claimed by another process meanwhile; waiting for its record")
                    waiting.append(outcome.item)
                elif outcome.status == "done":
                    log(f"{label}: recorded by another process meanwhile, kept")
                elif outcome.status == "failed":
                    log(f"{label}: failed: {outcome.detail}")
                    failures.append((label, outcome.detail))
            if waiting:
                recorded = read_runs(context.runs_path)
                for item in list(waiting):
                    if item[1]["key"] in recorded:
                        waiting.remove(item)
                        log(f"{item[2]}: recorded by another process, kept")
                    elif claim_holder(context.output_dir, item[1]["key"]) is None:
                        waiting.remove(item)  # its claimer ended without a record: ours now
                        queue.append(item)
    finally:
        backend.close()
    return failures
