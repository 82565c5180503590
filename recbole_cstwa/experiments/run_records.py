"""A comparison's shared records: ``runs.jsonl`` and the claims on runs in training.

Several processes may train the runs of one comparison at once (``run_compare --jobs N``, two
invocations on one output folder, a Ray driver): each record is appended to the one
``runs.jsonl`` as a single ``write`` of one whole line, under ``O_APPEND`` and an exclusive
``fcntl.flock`` of the file, so no record is lost, interleaved or doubled. A writer killed
during its write can leave a torn last line: the next writer starts its record on a new line and
a reader skips the torn one.

A run is claimed before it is trained: ``claims/<run key>.claim`` in the output folder, held by
an exclusive ``flock`` of the claiming process for as long as it trains, and removed once the
run's record is written. The operating system drops the lock when its process ends, however it
ends (``SIGKILL`` included), so a claim whose lock can be taken is stale: the next claimer takes
it over and trains the run again, unless its record is there already. A claim file holds the
claimer's process id, host and start time, for a reader.

The locks are advisory ``flock`` locks: every writer of the folder must use this module, and the
folder must be on a file system that supports them (local disks do; some network file systems
do not).
"""

import contextlib
import errno
import fcntl
import json
import os
import socket
import time

from recbole_cstwa.errors import CompareError
from recbole_cstwa.file_writes import disk_full_error, is_disk_full

RUNS_FILE = "runs.jsonl"
CLAIMS_FOLDER = "claims"
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


def read_runs(path):
    """The records of ``runs.jsonl`` by key. A line cut off by a crash is skipped; a line that is
    no run record (no ``key``, no test result) is an error naming the line."""
    records = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as file:
            for number, line in enumerate(file, start=1):
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    continue
                if not (
                    isinstance(record, dict)
                    and isinstance(record.get("key"), str)
                    and isinstance(record.get("test_result"), dict)
                ):
                    raise CompareError(
                        f"{path}, line {number}: not a run record of this command (it needs key and "
                        "test_result). Fix: remove the line, or start over with --fresh (the file "
                        "is kept as a .bak copy)."
                    )
                records[record["key"]] = record
    return records


def append_record(path, record):
    """Appends ``record`` to ``path`` as one JSON line: one ``write`` under ``O_APPEND`` and an
    exclusive ``flock``, so that concurrent writers never interleave. A symbolic link at
    ``path`` is refused (``O_NOFOLLOW``: ``OSError`` ``ELOOP``) rather than followed."""
    line = (json.dumps(record, default=float) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _NO_FOLLOW, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # a writer killed mid-line: its torn line stays apart
        written = os.write(fd, line)
        if written != len(line):  # a regular file takes all of it unless the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(os.path.dirname(os.path.abspath(path)), needed=len(line)) from None
        raise
    finally:
        os.close(fd)  # releases the lock


def claims_folder(output_dir):
    return os.path.join(output_dir, CLAIMS_FOLDER)


def claim_path(output_dir, key):
    return os.path.join(claims_folder(output_dir), f"{key}.claim")


class Claim:
    """A run claimed by this process: its lock is held until :meth:`release`, or until the
    process ends. ``previous``: what the stale claim taken over said (``None`` for a new one)."""

    def __init__(self, path, fd, previous):
        self.path, self.fd, self.previous = path, fd, previous

    def release(self):
        """Removes the claim (after the run's record is written, or when it will not be)."""
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)  # before the lock goes: a waiter then sees the name gone
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.release()


def _holder(fd):
    """What a claim file says of its claimer (``{"pid", "host", "since"}``), or None."""
    try:
        return json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (OSError, ValueError):
        return None


def try_claim(output_dir, key):
    """Claims the run ``key`` for this process: a :class:`Claim`, or None when a live process
    holds it. A claim left by a process that ended (a stale claim) is taken over."""
    os.makedirs(claims_folder(output_dir), exist_ok=True)
    path = claim_path(output_dir, key)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NO_FOLLOW, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        # The claimer before us may have removed the name after recording its run (we then
        # locked a file no name leads to): start again on the name.
        try:
            linked = os.stat(path, follow_symlinks=False)
            opened = os.fstat(fd)
            same = (linked.st_dev, linked.st_ino) == (opened.st_dev, opened.st_ino)
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        previous = _holder(fd)
        mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, mine.encode("utf-8"), 0)
        return Claim(path, fd, previous)


def claim_holder(output_dir, key):
    """What the live claim on ``key`` says of its claimer (``{"pid", "host", "since"}``), ``{}``
    when unreadable, or None when no live process holds one."""
    path = claim_path(output_dir, key)
    try:
        fd = os.open(path, os.O_RDONLY | _NO_FOLLOW)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fd) or {}
        return None  # nobody holds it: stale, or released just now
    finally:
        os.close(fd)


def describe_holder(holder):
    """``pid 123 on host-a`` for a claim's holder."""
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} on {holder.get('host')}"
