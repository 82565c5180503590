"""Values written as text (``--key=value`` on a command line, a params file), read without ``eval``.

A value is a Python literal (``ast.literal_eval``), else YAML (``[adam, sgd]``). RecBole's
``Config`` later ``eval``s every string it is given, so a string that would run code there (a
call such as ``"__import__('os')"``) or fail there (``1/0``) is refused here, with where it was
written.
"""

import ast

import numpy as np
import yaml

from recbole_cstwa.errors import ValueTextError

# Expression nodes RecBole's ``eval`` of a config string may meet without running code: names,
# constants and light operators (``leaky-relu`` is a BinOp of two names; the eval fails, the text
# stays). No calls, attributes or subscripts; no ``**`` or ``*`` (``9**9**9`` would hang the eval).
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
    """Refuses a string that RecBole's ``Config`` would ``eval`` into running code or an error.

    RecBole converts every string in ``config_dict`` and on the command line with ``eval``; a
    plain word (``adam``), a word with operators (``leaky-relu``) or text that is no Python
    expression stays a string there, and those are the strings accepted.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return text
    if not all(isinstance(node, _INERT_NODES) for node in ast.walk(tree)):
        raise ValueTextError(
            f"{where}: the string {text!r} is Python code that RecBole's Config would evaluate. "
            "Give plain values: numbers, true/false, words, lists."
        )
    if not any(isinstance(node, ast.Name) for node in ast.walk(tree)):
        # Constants and light operators only: evaluating it runs no code, and shows whether
        # RecBole's eval would fail (1/0) instead of keeping the text.
        try:
            eval(compile(tree, where, "eval"), {"__builtins__": {}}, {})
        except Exception as error:
            raise ValueTextError(
                f"{where}: {text!r} is an expression that fails when RecBole's Config evaluates "
                f"it ({type(error).__name__}: {error}). Give a number, true/false, a word or a list."
            ) from None
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
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ValueTextError(f"{where}: cannot read {text.strip()!r} as a value.") from None
    return plain_value(value, where)


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
