"""The one writer of RecBole atomic dataset folders, shared by the importer and the Ali-CCP converter.

A folder ``<output>/<name>/`` holds ``<name>.<suffix>`` files: tab-separated tables with
RecBole's ``field:type`` header (``inter``, ``train.inter``, ``user``, ``item``, ...), the
dataset's YAML (``<name>.yaml``, loaded by convention when a run names the dataset) and a
``<name>.meta.json`` summary. The files are written into a new folder beside ``<name>/`` (created
exclusively, under an unpredictable name) and, when the whole conversion succeeds, that folder
replaces ``<name>/`` in one rename: a reader, or a kill at any moment, sees the whole old dataset
or the whole new one, never a mix. What else the old folder holds (a user's own files, subfolders
and symbolic links) is carried over as it was (files as hard links, links not followed) and
listed in :attr:`AtomicDatasetWriter.carried_over`.
A failed conversion (a full disk included, whose error names the folder) removes the new folder.

Rows are buffered and written in chunks (:class:`TableWriter`): memory stays bounded by the
chunk, not by the file.
"""

import json
import os
import shutil
import tempfile

from recbole_cstwa.file_writes import (
    disk_full_error,
    folder_size,
    is_disk_full,
    remove_stale_temporaries,
    replace_directory,
)

#: Rows buffered before a write.
CHUNK_ROWS = 10_000
#: The purchase of a row that has no click breaks the click -> purchase funnel: such rows are
#: dropped and counted by every front end (AITM's preprocessing does the same).
FUNNEL_BREAK = ("0", "1")


def is_purchase_without_click(click, purchase):
    """True for a ``click=0, purchase=1`` row (labels as the written ``"0"``/``"1"`` tokens)."""
    return (click, purchase) == FUNNEL_BREAK


def check_dataset_name(name):
    """A dataset name must be a plain file name (it names the folder and every file in it)."""
    if not name or os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
        raise ValueError(f"dataset name must be a plain file name, got {name!r}")
    return name


def _link_or_copy(source, target):
    """``target`` as a hard link to ``source`` (no bytes copied), or a copy where links fail."""
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)


def header_line(fields):
    """RecBole's header: ``name:type`` per ``(name, type)``, tab separated, with a newline."""
    return "\t".join(f"{name}:{kind}" for name, kind in fields) + "\n"


class TableWriter:
    """One atomic table: a header (none when ``fields`` is None: a temporary file), then lines
    appended one at a time or a chunk at a time."""

    def __init__(self, file, fields, chunk_rows=CHUNK_ROWS):
        self.file = file
        self.fields = None if fields is None else list(fields)
        self.chunk_rows = chunk_rows
        self.rows = 0
        self._buffer = []
        if self.fields is not None:
            file.write(header_line(self.fields))

    def add(self, line):
        """Appends one line (ending in a newline); written once ``chunk_rows`` are buffered."""
        self._buffer.append(line)
        if len(self._buffer) >= self.chunk_rows:
            self.flush()

    def add_bytes(self, data, count):
        """Appends ``count`` lines given as UTF-8 bytes (e.g. an Arrow string buffer), unconverted."""
        self.flush()
        self.file.flush()
        self.file.buffer.write(data)
        self.rows += count

    def flush(self):
        if self._buffer:
            self.file.write("".join(self._buffer))
            self.rows += len(self._buffer)
            self._buffer.clear()

    def close(self):
        self.flush()
        self.file.close()


def _yaml_scalar(value):
    if value is None:
        return "~"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    plain = (
        text
        and all(ch.isalnum() or ch in "_-." for ch in text)
        and text.lower() not in ("true", "false", "null", "yes", "no", "on", "off", "~")
    )
    return text if plain else json.dumps(text)  # a JSON string is a YAML double-quoted scalar


def yaml_text(settings, comments=()):
    """``settings`` (str -> scalar, list or dict of lists) as YAML, lists in flow style."""
    lines = [f"# {comment}" for comment in comments]
    for key, value in settings.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            for sub_key, sub_value in value.items():
                lines.append(f"  {sub_key}: [{', '.join(_yaml_scalar(v) for v in sub_value)}]")
        elif isinstance(value, (list, tuple)):
            lines.append(f"{key}: [{', '.join(_yaml_scalar(v) for v in value)}]")
        else:
            lines.append(f"{key}: {_yaml_scalar(value)}")
    return "\n".join(lines) + "\n"


class AtomicDatasetWriter:
    """Writes ``<output>/<name>/<name>.<suffix>`` files all or nothing (see the module docstring).

    Use as a context manager: the new folder replaces ``<output>/<name>`` when the block ends
    normally and is removed when it raises.
    """

    def __init__(self, output, name):
        self.name = check_dataset_name(name)
        self.directory = os.path.join(os.fspath(output), name)
        parent = os.path.dirname(os.path.abspath(self.directory))
        os.makedirs(parent, exist_ok=True)
        remove_stale_temporaries(parent)
        # ``.<name>.<pid>-...``: the process id tells a live writer's folder from a dead one's.
        self.staging = tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-{name}-", dir=parent)
        os.chmod(self.staging, 0o755)  # as a folder made by os.makedirs (mkdtemp makes it private)
        self._parts = []
        self._tables = []
        #: What the old folder held besides this writer's files, kept in the new one (see commit).
        self.carried_over = []

    def path(self, suffix):
        """Where ``<name>.<suffix>`` is written until the commit."""
        return os.path.join(self.staging, f"{self.name}.{suffix}")

    def open(self, suffix):
        """A new text file ``<name>.<suffix>`` in the new folder."""
        part = self.path(suffix)
        file = open(part, "x", encoding="utf-8", newline="\n")
        self._parts.append(part)
        return file

    def table(self, suffix, fields, chunk_rows=CHUNK_ROWS):
        """A :class:`TableWriter` for ``<name>.<suffix>`` with the ``(name, type)`` header."""
        table = TableWriter(self.open(suffix), fields, chunk_rows)
        self._tables.append(table)
        return table

    def write_text(self, suffix, text):
        with self.open(suffix) as file:
            file.write(text)

    def write_yaml(self, settings, comments=()):
        self.write_text("yaml", yaml_text(settings, comments))

    def write_meta(self, summary):
        self.write_text("meta.json", json.dumps(summary, indent=2) + "\n")

    def tmp_dir(self):
        """A folder for temporary files, inside the new folder (removed with it on failure)."""
        return self.staging

    def commit(self):
        for table in self._tables:
            table.close()
        for part in self._parts:
            with open(part, "rb") as file:
                os.fsync(file.fileno())
        self._carry_over_old_files()
        old = replace_directory(self.staging, self.directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._parts, self._tables = [], []

    def _carry_over_old_files(self):
        """What the old folder holds that this writer does not write (a user's own files,
        subfolders and symbolic links) is carried into the new one as it was: files hard-linked
        (copied where links fail), folders rebuilt the same way, links re-created with the same
        target (never followed). Their names go to :attr:`carried_over`."""
        self.carried_over = []
        if os.path.islink(self.directory) or not os.path.isdir(self.directory):
            return
        written = set(os.listdir(self.staging))
        for entry in sorted(os.scandir(self.directory), key=lambda entry: entry.name):
            left_by_old_versions = entry.name.endswith(".part")
            if entry.name in written or left_by_old_versions:
                continue
            target = os.path.join(self.staging, entry.name)
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
                self.carried_over.append(f"{entry.name} -> {os.readlink(entry.path)}")
            elif entry.is_dir(follow_symlinks=False):
                shutil.copytree(entry.path, target, symlinks=True, copy_function=_link_or_copy)
                self.carried_over.append(entry.name + "/")
            elif entry.is_file(follow_symlinks=False):
                _link_or_copy(entry.path, target)
                self.carried_over.append(entry.name)

    def abort(self):
        for table in self._tables:
            try:
                table.file.close()
            except OSError:  # its buffer could not be written (a full disk): removed below anyway
                pass
        self._parts, self._tables = [], []
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback):
        if error_type is None:
            try:
                self.commit()
            except BaseException as failure:
                self._abort_with(failure)
                raise
            return False
        self._abort_with(error)
        return False

    def _abort_with(self, error):
        """Removes the new folder; a full disk is raised again naming the output folder."""
        written = folder_size(self.staging)
        self.abort()
        if is_disk_full(error):
            folder = os.path.dirname(os.path.abspath(self.directory))
            raise disk_full_error(folder, written) from None
