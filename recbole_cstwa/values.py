"""Values written as text (``--key=value`` on a command line, a params file), read without ``eval``.

Values are read without ``eval``: a Python literal (``ast.literal_eval``), else YAML
(``[adam, sgd]``) read by :class:`SettingsYamlLoader` (plain values only). Text that is Python
code (a call such as ``"__import__('os')"``) or arithmetic (``1/0``) is refused with where it was
written: nothing is evaluated, so it could only end up as a misleading string.
"""

import ast
import re

import numpy as np
import yaml
from yaml.composer import ComposerError

from recbole_cstwa.errors import ValueTextError

# Expression nodes of text that reads as words, not code: names, constants and light operators
# (``leaky-relu`` is a BinOp of two names). No calls, attributes, subscripts, ``**`` or ``*``.
_INERT_NODES = (
    ast.Expression,
    ast.Name,
    ast.Constant,
    ast.Load,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.Add,
    ast.Sub,
    ast.Div,
    ast.USub,
    ast.UAdd,
    ast.Not,
    ast.And,
    ast.Or,
    ast.cmpop,
)


#: The most nodes a YAML document may expand to through its aliases (``*name``): a settings file
#: holds a few hundred; a few lines of nested aliases can expand to billions.
YAML_MAX_NODES = 100_000
#: RecBole's float pattern: ``1e-3`` is a float (YAML 1.1 wants ``1.0e-3``), as in RecBole's loader.
_RECBOLE_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class SettingsYamlLoader(yaml.SafeLoader):
    """YAML settings as plain values: YAML's own types only (a ``!!python/...`` tag is an error,
    wherever it is), RecBole's float spelling, and at most :data:`YAML_MAX_NODES` nodes once the
    aliases are expanded (an alias bomb fails before anything is built)."""

    def compose_document(self):
        node = super().compose_document()
        expanded_size(node)
        return node


SettingsYamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", _RECBOLE_FLOAT, list("-+0123456789."))


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
def check_recbole_string(text, where):
    """Refuses a string that is Python code or arithmetic; returns ``text`` otherwise.

    Nothing is evaluated (the plugin's ``Config`` keeps RecBole's ``eval`` away from every value),
    so ``open('x').write('y')`` or ``1/0`` would only become a string where the user meant code
    or a number. A plain word (``adam``), a word with operators (``leaky-relu``), a path or text
    that is no Python expression is accepted.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return text
    if not all(isinstance(node, _INERT_NODES) for node in ast.walk(tree)):
        raise ValueTextError(
            f"{where}: the string {text!r} is Python code; values are read as plain data and never "
            "run. Give plain values: numbers, true/false, words, lists."
        )
    body = tree.body.operand if isinstance(tree.body, ast.UnaryOp) else tree.body  # -1 is a number
    if not isinstance(body, (ast.Name, ast.Constant)) and not any(
        isinstance(node, ast.Name) for node in ast.walk(tree)
    ):
        raise ValueTextError(
            f"{where}: {text!r} is arithmetic; values are never evaluated. Give the value itself "
            "(a number, true/false, a word or a list)."
        )
    return text


def plain_value(value, where):
    """``value`` as plain Python data that is safe to hand to RecBole's ``Config``."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return check_recbole_string(value, where)
    if isinstance(value, (list, tuple)):
        return [plain_value(item, where) for item in value]
    if isinstance(value, dict):
        return {str(key): plain_value(item, where) for key, item in value.items()}
    raise ValueTextError(f"{where}: {value!r} is not a plain value (number, bool, string, list, dict).")


def parse_literal(text, where):
    """A value written in a params file or an override: a Python literal, else YAML, never eval."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        try:
            value = yaml.load(text, Loader=SettingsYamlLoader)
        except yaml.YAMLError:
            raise ValueTextError(f"{where}: cannot read {_shorten(text.strip())!r} as a value.") from None
        except RecursionError:
            raise ValueTextError(
                f"{where}: {_shorten(text.strip())!r} is nested too deeply to be a setting."
            ) from None
    try:
        return plain_value(value, where)
    except RecursionError:
        raise ValueTextError(
            f"{where}: {_shorten(text.strip())!r} is nested too deeply to be a setting."
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
        settings[key] = parse_literal(value, f"{where}, {key}" if where != "command line" else f"--{key}")
    return settings
