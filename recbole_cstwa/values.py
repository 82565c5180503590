"""Values written as text, read as data and never evaluated: ``--key=value`` on a command line,
a params file, a ``--variant``, a ``config_dict`` string and the plain scalars of a YAML file.

One rule reads every value that is written without quotes (:func:`read_scalar`):

- a number, a quoted string, ``True`` / ``False`` / ``None`` as Python literals
  (``ast.literal_eval``: ``1e-3``, ``-2``, ``0x10``, ``'a b'``);
- ``true`` / ``false`` in any letter case; ``~`` and ``null`` (YAML's None); ``.inf`` / ``.nan``;
- anything else is the string as written: a path (``best.pth``,
  ``saved/MLP-Dec-10-2026_16-21-52-31492-ebce0d.pth``, ``data.v2``), a word, a date
  (``2026-12-10``), ``1:30``, ``yes``, or text that looks like code (``1/0``).

A list or a dict is a Python literal (``[1, 2]``, ``{'max_norm': 5}``) or YAML's flow style
(``[adam, sgd]``, ``{split: {RS: [0.8, 0.1, 0.1]}}``), whose unquoted items are read by the same
rule (YAML's own implicit types, which turn ``2026-12-10`` into a date and ``1:30`` into 90, are
not used). Settings that name a file, a folder or a name (:data:`TEXT_KEYS`) keep their text.
Nothing is evaluated, so text that looks like code is a string like any other: a setting that
wants a number then says so (``learning_rate must be a number > 0, got '1/0'``).
"""

import ast

import numpy as np
import yaml
from yaml.composer import ComposerError
from yaml.nodes import ScalarNode

from recbole_cstwa.errors import ValueTextError

#: The most nodes a YAML document may expand to through its aliases (``*name``): a settings file
#: holds a few hundred; a few lines of nested aliases can expand to billions.
YAML_MAX_NODES = 100_000
#: Settings that name a file, a folder or a name: their value is the text as written (a folder
#: named ``2024`` is no number), ``~`` / ``null`` / ``None`` meaning None.
TEXT_KEYS = frozenset(
    {
        "model",
        "dataset",
        "data_path",
        "checkpoint_dir",
        "dataset_cache_dir",
        "model_file",
        "resume",
        "config_files",
        "params_file",
        "output_file",
    }
)
_NULL_WORDS = frozenset({"~", "null", "Null", "NULL", "None"})
_YAML_SPECIAL_FLOATS = {
    ".inf": float("inf"),
    "+.inf": float("inf"),
    "-.inf": float("-inf"),
    ".nan": float("nan"),
}
#: The tag :class:`SettingsYamlLoader` gives an unquoted scalar: read by :func:`read_scalar`.
_PLAIN_TAG = "tag:recbole-cstwa,2026:plain"
_TEXT_TAG = "tag:recbole-cstwa,2026:text"
_NOT_LITERAL = object()


class _NotPlain(Exception):
    """A Python literal that is no plain data (a set, bytes, a complex number)."""


def _plain_data(value):
    """``value`` (from ``ast.literal_eval`` or YAML) as plain data: tuples as lists, dict keys as
    text; raises :class:`_NotPlain` for anything else."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain_data(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain_data(item) for key, item in value.items()}
    raise _NotPlain(value)


def _literal(text):
    """``text`` as a Python literal of plain data; ``text`` itself for a literal of another type
    (RecBole's rule: ``{1, 2}`` keeps its text); :data:`_NOT_LITERAL` when it is none."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _NOT_LITERAL
    try:
        return _plain_data(value)
    except _NotPlain:
        return text


def read_scalar(text):
    """A value written without quotes, read as data (the module's rule): a number, a Python
    string literal, True / False (any letter case), None (``None``, ``~``, ``null``), ``.inf`` /
    ``.nan``; anything else is ``text`` itself."""
    value = _literal(text)
    if value is not _NOT_LITERAL:
        return value
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text in _NULL_WORDS:
        return None
    special = _YAML_SPECIAL_FLOATS.get(text.lower())
    return text if special is None else special


def read_text(text):
    """The value of a :data:`TEXT_KEYS` setting: the text as written (a quoted Python string
    unquoted), None for ``~`` / ``null`` / ``None``."""
    if text in _NULL_WORDS:
        return None
    value = _literal(text)
    return value if isinstance(value, str) else text


class SettingsYamlLoader(yaml.SafeLoader):
    """YAML settings as plain values: YAML's structure (mappings, lists, quotes) with the module's
    rule for unquoted scalars (no dates, sexagesimal numbers or ``yes``/``no`` booleans), the text
    of :data:`TEXT_KEYS` settings, YAML's own types only (a ``!!python/...`` tag is an error,
    wherever it is), and at most :data:`YAML_MAX_NODES` nodes once the aliases are expanded (an
    alias bomb fails before anything is built)."""

    def compose_document(self):
        node = super().compose_document()
        expanded_size(node)
        return node

    def resolve(self, kind, value, implicit):
        if kind is ScalarNode and implicit[0]:
            return _PLAIN_TAG
        return super().resolve(kind, value, implicit)

    def construct_mapping(self, node, deep=False):
        for key_node, value_node in node.value:
            if (
                isinstance(key_node, ScalarNode)
                and key_node.value in TEXT_KEYS
                and isinstance(value_node, ScalarNode)
                and value_node.tag == _PLAIN_TAG
            ):
                value_node.tag = _TEXT_TAG
        return super().construct_mapping(node, deep=deep)


def _construct_plain(loader, node):
    return None if node.value == "" else read_scalar(node.value)  # ``key:`` alone is YAML's null


def _construct_text(loader, node):
    return None if node.value == "" else read_text(node.value)


SettingsYamlLoader.add_constructor(_PLAIN_TAG, _construct_plain)
SettingsYamlLoader.add_constructor(_TEXT_TAG, _construct_text)


def expanded_size(root):
    """Nodes of ``root`` with every alias expanded; more than :data:`YAML_MAX_NODES`, or an alias
    inside itself, is a :class:`yaml.composer.ComposerError`."""
    sizes, pending = {}, [(root, False)]
    while pending:  # iterative: a deeply nested document must not exhaust Python's stack
        node, children_done = pending.pop()
        if id(node) in sizes:
            continue
        children = (
            [child for pair in node.value for child in pair]
            if isinstance(node, yaml.MappingNode)
            else node.value
            if isinstance(node, yaml.SequenceNode)
            else []
        )
        if children_done:
            sizes[id(node)] = 1 + sum(sizes.get(id(child), 0) for child in children)
            if sizes[id(node)] > YAML_MAX_NODES:
                raise ComposerError(
                    None, None, f"its aliases expand to more than {YAML_MAX_NODES:,} values", node.start_mark
                )
            continue
        pending.append((node, True))
        pending.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(root)]


# ----- quote-aware scanning ------------------------------------------------------------------
def unquoted(text):
    """``(index, char, depth)`` for each character of ``text`` outside quotes; ``depth`` counts
    the open brackets before it. Quote characters themselves are not yielded."""
    quote, depth = None, 0
    for index, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
            continue
        if char in "'\"":
            quote = char
            continue
        if char in "])}":
            depth -= 1
        yield index, char, depth
        if char in "[({":
            depth += 1


def strip_comment(text):
    """Drops a trailing ``# comment`` that is outside quotes."""
    for index, char, _ in unquoted(text):
        if char == "#":
            return text[:index].strip()
    return text.strip()


def split_assignments(text):
    """Splits ``a=1,b=[1,2],c='x,y'`` at the commas outside brackets and quotes."""
    cuts = [index for index, char, depth in unquoted(text) if char == "," and depth == 0]
    parts = [text[start + 1 : end] for start, end in zip([-1, *cuts], [*cuts, len(text)])]
    return [part.strip() for part in parts if part.strip()]


# ----- values ----------------------------------------------------------------------------------
def plain_value(value, where):
    """``value`` as plain Python data that is safe to hand to RecBole's ``Config``: numbers, bools,
    None, strings (kept as they are), lists (tuples too) and dicts of those."""
    try:
        return _plain_data(value)
    except _NotPlain as error:
        raise ValueTextError(
            f"{where}: {error.args[0]!r} is not a plain value (number, bool, string, list, dict)."
        ) from None


def parse_literal(text, where, key=None):
    """A value written as text (a command line, a params file, a ``config_dict`` string), read by
    the module's rule; ``key``: the setting, whose value stays text when it names a file, a folder
    or a name (:data:`TEXT_KEYS`). Text in brackets that is no list or dict (RecBole's interval
    ``[0,inf)``) is the string as written."""
    stripped = text.strip()
    if key in TEXT_KEYS:
        return read_text(stripped)
    if not stripped.startswith(("[", "{")):
        return read_scalar(stripped)
    value = _literal(stripped)
    if value is not _NOT_LITERAL:
        return value
    try:
        return plain_value(yaml.load(stripped, Loader=SettingsYamlLoader), where)
    except yaml.YAMLError:
        return stripped
    except RecursionError:
        raise ValueTextError(
            f"{where}: {_shorten(stripped)!r} is nested too deeply to be a setting."
        ) from None


def _shorten(text, limit=80):
    return text if len(text) <= limit else text[:limit] + "..."


def parse_assignments(items, where):
    """``["key=value", ...]`` (a leading ``--`` allowed) as config values."""
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ValueTextError(f"{where}: expected key=value, got {item!r}.")
        settings[key] = parse_literal(
            value, f"{where}, {key}" if where != "command line" else f"--{key}", key=key
        )
    return settings
