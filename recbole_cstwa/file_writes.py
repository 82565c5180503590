"""Files the plugin writes, whole or not at all, and never through a symbolic link.

Every file (checkpoints, caches, importer and converter output, comparison records, search
results) is first created exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``) under an unpredictable
name in its target folder, so that nothing planted at a temporary name is followed or
overwritten; it is then flushed to disk and moved onto its name with ``os.replace``, which
replaces a symbolic link there instead of writing through it. A reader never sees half a file,
and a failed write (a full disk, an error, Ctrl-C) removes its temporary file.
"""

import contextlib
import errno
import os
import re
import secrets
import shutil
import time

from recbole_cstwa.errors import DiskFullError

#: Every temporary name holds this marker (``.<name>.<pid>-<random>.tmp``).
TMP_SUFFIX = ".tmp"
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
_MIB = 1 << 20
_TEMPORARY = re.compile(r"\..+\.(\d+)-[0-9a-f]{16}" + re.escape(TMP_SUFFIX))


def temporary_name(path):
    """A fresh hidden name beside ``path``: the writer's process id and 64 random bits."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}-{secrets.token_hex(8)}{TMP_SUFFIX}")


def create_exclusive(path, flags=os.O_WRONLY):
    """``(fd, temporary)``: a new file beside ``path`` that no other name or link refers to."""
    while True:
        temporary = temporary_name(path)
        try:
            return os.open(temporary, flags | os.O_CREAT | os.O_EXCL | _NO_FOLLOW, 0o666), temporary
        except FileExistsError:  # 64 random bits: practically never
            continue


def disk_full_error(folder, written=0, needed=None):
    """A :class:`DiskFullError` naming ``folder``, its free space and the space needed."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if needed:
        wanted = f"about {max(needed, written) / _MIB:.1f} MiB were needed"
    else:
        wanted = f"more than the {written / _MIB:.1f} MiB written were needed"
    left = "" if free is None else f", {free / _MIB:.1f} MiB are free"
    return DiskFullError(f"no space left on the device of [{folder}]: {wanted}{left}")


def folder_size(folder):
    """The bytes of the files directly in ``folder``."""
    try:
        return sum(
            entry.stat(follow_symlinks=False).st_size for entry in os.scandir(folder) if entry.is_file()
        )
    except OSError:
        return 0


@contextlib.contextmanager
def atomic_file(path, mode="wb", encoding=None, newline=None, needed=None):
    """Yields a file open on a new temporary name beside ``path``; moves it onto ``path`` when the
    block ends normally (after ``fsync``), removes it when the block raises.

    A full disk raises :class:`DiskFullError` naming the folder (``needed``: the expected size in
    bytes, for its message).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes a new file: mode 'w' or 'wb', not {mode!r}")
    fd, temporary = create_exclusive(path)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        written = _size(temporary)
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if is_disk_full(error) and not isinstance(error, DiskFullError):
            raise disk_full_error(os.path.dirname(os.path.abspath(path)), written, needed) from None
        raise


def is_disk_full(error):
    """True for ``ENOSPC``, also when a library re-raised it as another error (``torch.save``
    raises a ``RuntimeError`` whose context is the ``OSError``)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def _size(path):
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def write_bytes(path, data):
    with atomic_file(path, "wb", needed=len(data)) as file:
        file.write(data)


def write_text(path, text):
    with atomic_file(path, "w", encoding="utf-8", newline="\n") as file:
        file.write(text)


def open_append(path, encoding="utf-8"):
    """``path`` opened for appending text, created if missing; a symbolic link there is refused
    (``O_NOFOLLOW``: ``OSError`` ``ELOOP``) rather than followed."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NO_FOLLOW, 0o666)
    return os.fdopen(fd, "a", encoding=encoding)


def replace_directory(source, target):
    """Moves the folder ``source`` onto ``target`` (a folder or nothing) in one rename where the
    system allows it: ``renameat2(RENAME_EXCHANGE)`` on Linux swaps both names atomically, so a
    reader or a kill sees the whole old folder or the whole new one. Elsewhere the old folder is
    renamed aside first and moved back if the second rename fails. Returns the old folder's new
    name (to be removed by the caller), or None."""
    if os.path.islink(target) or (os.path.lexists(target) and not os.path.isdir(target)):
        os.remove(target)  # never write into what a link points to
    if not os.path.lexists(target):
        os.rename(source, target)
        return None
    if _exchange(source, target):
        return source  # ``source`` now names the old folder
    aside = temporary_name(target)
    os.rename(target, aside)
    try:
        os.rename(source, target)
    except BaseException:
        os.rename(aside, target)
        raise
    return aside


def _exchange(first, second):
    """Swaps two paths atomically (Linux ``renameat2``); False where that is not available."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), second)


def write_directory(path, files):
    """Writes the folder ``path`` as one unit: ``files`` (``{relative path: bytes}``, ``/``
    between folders) go into a new folder beside it (created exclusively, under an unpredictable
    name), which then replaces ``path`` in one rename (:func:`replace_directory`; a link at
    ``path`` is replaced, not followed); the old folder is removed afterwards. A reader, or a
    kill, sees the whole old folder or the whole new one; a failed write removes the new folder
    (a full disk raises :class:`DiskFullError` naming the parent folder)."""
    for relative in files:
        parts = relative.split("/")
        if os.path.isabs(relative) or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"{relative!r} is not a plain path inside the folder")
    parent = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(parent)
    staging = temporary_name(path)
    os.mkdir(staging)  # fails on anything already there, a link included
    try:
        for relative, data in files.items():
            target = os.path.join(staging, *relative.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            write_bytes(target, data)
        old = replace_directory(staging, path)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if is_disk_full(error):
            needed = sum(len(data) for data in files.values())
            raise disk_full_error(parent, needed=needed) from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(folder, max_age_hours=6.0):
    """Removes temporary files and folders (``.<name>.<pid>-<random>.tmp``, and the dataset
    cache's ``.tmp-<pid>-*``) left in ``folder`` by writers that died: older than
    ``max_age_hours`` and not owned by a live process on this machine. Returns the removed names."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    removed = []
    deadline = time.time() - max_age_hours * 3600
    for entry in entries:
        pid = _writer_pid(entry.name)
        if pid is None:
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime > deadline or _alive(pid):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.remove(entry.path)
        except OSError:
            continue
        removed.append(entry.name)
    return removed


def _writer_pid(name):
    """The process id in a temporary name of this module or the dataset cache, 0 for a dataset
    cache folder of older versions (``.tmp-<random>``, no id), else None."""
    match = _TEMPORARY.fullmatch(name)
    if match:
        return int(match.group(1))
    if name.startswith(".tmp-"):
        head = name[len(".tmp-") :].split("-", 1)[0]
        return int(head) if head.isdigit() and "-" in name[len(".tmp-") :] else 0
    return None


def _alive(pid):
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
