"""What a process sets up for a run: torch's threads and the run's own log file.

RecBole names its log file by the model, the dataset, the second and a hash of the settings, and
appends to it: runs started in the same second with the same settings, or several runs in one
process (``run_compare.py``), would share a file. :func:`init_run_logger` gives each run a file
of its own.
"""

import contextlib
import hashlib
import logging
import os

import torch
from recbole.utils import get_local_time, init_logger

from recbole_cstwa.compat import plain_logs_when_redirected


def set_torch_threads(config):
    """torch's threads for this process: ``threads`` when given, else ``OMP_NUM_THREADS`` when
    set, else the default ``threads`` (1: with two threads a process, an epoch was measured
    several times slower than with one while other processes shared the cores, see
    ``results/threads.md``). ``threads: 0`` keeps torch's own choice (a thread a core)."""
    given = "threads" in config.external_config_dict
    if not given and os.environ.get("OMP_NUM_THREADS"):
        return
    if config["threads"] > 0:
        torch.set_num_threads(config["threads"])


def init_run_logger(config):
    """RecBole's logger, writing to a log file of this run alone.

    RecBole names the file ``log/<model>/<model>-<dataset>-<second>-<hash of the settings>.log``
    and appends to it, so two runs with the same settings started in the same second would write
    into one file; and a second run in one process (``run_compare.py``) keeps logging into the
    first run's file. The root logger's file is replaced by ``<RecBole's name>-<process id>.log``,
    created only when no such file exists (else ``-<process id>-2``, ...); RecBole's own file is
    removed when it stayed empty.

    Returns:
        str: the run's log file, or None when RecBole's logger wrote none.
    """
    init_logger(config)
    plain_logs_when_redirected()
    settings = "".join(str(value) for value in config.final_config_dict.values())
    name = (
        f"{config['model']}-{config['dataset']}-{get_local_time()}-"
        f"{hashlib.md5(settings.encode('utf-8')).hexdigest()[:6]}"
    )
    folder = os.path.join("log", str(config["model"]))
    root = logging.getLogger()
    recbole_files = [
        handler
        for handler in root.handlers
        if isinstance(handler, logging.FileHandler)
        and os.path.dirname(handler.baseFilename) == os.path.abspath(folder)
    ]
    log_file = None
    for old in recbole_files:
        stem = os.path.join(folder, f"{name}-{os.getpid()}")
        path = log_file = _exclusive_file([f"{stem}.log"] + [f"{stem}-{n}.log" for n in range(2, 1000)])
        new = logging.FileHandler(path, encoding=old.encoding)
        new.setLevel(old.level)
        new.setFormatter(old.formatter)
        for log_filter in old.filters:
            new.addFilter(log_filter)
        root.removeHandler(old)
        root.addHandler(new)
        old.close()
        for leftover in {old.baseFilename, os.path.abspath(os.path.join(folder, f"{name}.log"))}:
            with contextlib.suppress(OSError):  # absent, or removed by another run first
                if os.path.getsize(leftover) == 0:
                    os.remove(leftover)
    return log_file


def _exclusive_file(candidates):
    """Creates the first of ``candidates`` that does not exist yet (``O_EXCL``) and returns it."""
    for path in candidates:
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"log files {candidates[0]} ... {candidates[-1]} all exist already")
