"""How the settings table (:mod:`recbole_cstwa.settings`) is checked, and where its defaults and
their sources are read.

A setting is described once:

- its default, a one-line meaning and the default's source on its line of the YAML files RecBole
  loads (``properties/overall.yaml``, ``properties/model/<Model>.yaml``), as
  ``key: default  # (type) meaning: source``;
- its kind, range and choices, the models that read it and the stages it shapes in the table,
  one :class:`Setting` a row.

:func:`check_settings` runs once, when the :class:`~recbole_cstwa.config.Config` is built, before
any data is read. A bad value raises :class:`~recbole_cstwa.errors.ConfigError` with one line
naming the key, the value, what is allowed and the default with its source, read from the
comment of the YAML line that sets the default (:func:`default_source`), e.g.::

    tower_dropout must be a list of numbers in [0, 1) (or one such number), got [1.5, 0.3, 0.3].
    Fix: --tower_dropout=[0.1,0.3,0.3] (the CSTWA paper, Section 4.1.4) or another such value.
"""

import functools
import math
import os
import re
from dataclasses import dataclass
from typing import Callable, Optional

import recbole
import yaml

from recbole_cstwa.errors import ConfigError
from recbole_cstwa.values import SettingsYamlLoader

#: ``models`` value of a setting every model run through the plugin reads (RecBole's included).
ANY_MODEL = "*"
#: ``models`` value of a setting every two-task model of the plugin reads.
MULTITASK = "multi-task"

_KINDS = ("int", "number", "bool", "choice", "int_list", "number_list")


@dataclass(frozen=True)
class Setting:
    """One row of the settings table.

    Args:
        key: the config key.
        kind: ``int``, ``number`` (int or float), ``bool``, ``choice`` (one of ``choices``; text
            is matched in any letter case and stored as written in ``choices``), ``int_list`` or
            ``number_list`` (each element in the range).
        models: model names that read it, or :data:`ANY_MODEL` / :data:`MULTITASK`.
        low, high: inclusive bounds; ``low_open`` / ``high_open`` make them exclusive.
        length: a list's exact length.
        scalar_ok: a ``number_list`` may also be one number (used for every element).
        optional: ``None`` is allowed (a list setting then reads as ``[]``).
        when: the setting is read, so checked, only when ``when(config)`` holds (e.g. a
            component is on); ``config`` is the dict of the run's settings.
        note: extra words after the requirement (why the range).
        shapes: the cached stages whose result the setting shapes (CSTWA's ``pretrain`` and
            ``graphs``): it is part of their cache key (:func:`shaping_keys`).
    """

    key: str
    kind: str
    models: tuple = (MULTITASK,)
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    length: Optional[int] = None
    scalar_ok: bool = False
    optional: bool = False
    when: Optional[Callable] = None
    note: str = ""
    shapes: tuple = ()

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise TypeError(f"Setting {self.key}: kind must be one of {_KINDS}, got {self.kind!r}.")
        # A row written with a default or a source (key, kind, default, source, ...) fails here:
        # both belong on the setting's line in the YAML file.
        if not isinstance(self.models, tuple) or not all(isinstance(m, str) for m in self.models):
            raise TypeError(
                f"Setting {self.key}: write Setting(key, kind, models=(...), ...); the default goes "
                "in properties/ (overall.yaml or model/<Model>.yaml) only, its meaning and source "
                "in the comment of its line."
            )
        if not isinstance(self.shapes, tuple) or not all(isinstance(s, str) for s in self.shapes):
            raise TypeError(
                f"Setting {self.key}: shapes must be a tuple of stage names, got {self.shapes!r}."
            )


@dataclass(frozen=True)
class Rule:
    """A condition between settings: ``check(config)`` returns a message (without the fix) or None."""

    keys: tuple
    check: Callable
    models: tuple = (MULTITASK,)
    when: Optional[Callable] = None


def applies(models, model_name, multitask):
    """Whether a setting or rule with ``models`` is read by ``model_name``."""
    return ANY_MODEL in models or (MULTITASK in models and multitask) or model_name in models


def in_effect(spec, config, model_name, multitask):
    """Whether a run of ``model_name`` with ``config`` (a dict) reads ``spec``: its model reads it
    and its ``when`` holds."""
    return applies(spec.models, model_name, multitask) and (spec.when is None or spec.when(config))


# ----- values -------------------------------------------------------------------------------------
def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    """An int or a finite float (NaN and inf are no setting's value: ``--learning_rate=1e999``)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _in_range(spec, value):
    if spec.low is not None and (value <= spec.low if spec.low_open else value < spec.low):
        return False
    return not (spec.high is not None and (value >= spec.high if spec.high_open else value > spec.high))


def _bound(value):
    return str(value) if isinstance(value, int) else f"{value:g}"


def _range_text(spec):
    low = None if spec.low is None else f"{'>' if spec.low_open else '>='} {_bound(spec.low)}"
    high = None if spec.high is None else f"{'<' if spec.high_open else '<='} {_bound(spec.high)}"
    if low and high:
        return (
            f"in {'(' if spec.low_open else '['}{_bound(spec.low)}, {_bound(spec.high)}"
            f"{')' if spec.high_open else ']'}"
        )
    return low or high or ""


def requirement(spec):
    """What ``spec`` accepts, in words (``an integer >= 1``, ``one of 'mean', 'concat'``)."""
    bounds = _range_text(spec)
    if spec.kind == "bool":
        text = "True or False"
    elif spec.kind == "choice":
        text = "one of " + ", ".join(repr(choice) for choice in spec.choices)
    elif spec.kind in ("int", "number"):
        text = ("an integer" if spec.kind == "int" else "a number") + (f" {bounds}" if bounds else "")
    else:
        element = "integers" if spec.kind == "int_list" else "numbers"
        size = f"{spec.length} " if spec.length else ""
        text = f"a list of {size}{element}" + (f" {bounds}" if bounds else "")
        if spec.scalar_ok:
            text += " (or one such number)"
        if spec.optional:
            text += " (or empty)"
    return text + (f" ({spec.note})" if spec.note else "")


def _command_line(value):
    """``value`` as written after ``--key=`` (no spaces, so no shell quoting is needed)."""
    if isinstance(value, str):
        return value
    return repr(value).replace(" ", "")


# ----- defaults and their sources, where they are written --------------------------------------
#: :func:`default_value` of a key no defaults file sets.
NO_DEFAULT = object()
#: The source :func:`default_source` gives a default only RecBole's own ``overall.yaml`` sets.
RECBOLE_DEFAULT = "RecBole's default"


def properties_dir():
    """The plugin's YAML defaults: inside the installed package, else at the top of a checkout."""
    package = os.path.dirname(os.path.abspath(__file__))
    for candidate in (
        os.path.join(package, "properties"),
        os.path.join(os.path.dirname(package), "properties"),
    ):
        if os.path.isfile(os.path.join(candidate, "overall.yaml")):
            return candidate
    raise FileNotFoundError(
        "recbole-cstwa's YAML defaults (properties/overall.yaml) are missing: reinstall with "
        "`pip install -e .` from the repository."
    )


def recbole_properties_dir():
    """RecBole's own YAML defaults (``recbole/properties``)."""
    return os.path.join(os.path.dirname(os.path.abspath(recbole.__file__)), "properties")


def _defaults_files(model_name):
    """The files a default of ``model_name`` can come from, the one that wins first: the plugin's
    ``properties/model/<Model>.yaml``, then its ``overall.yaml``, then RecBole's ``overall.yaml``
    (the order in which the config lets them win)."""
    root = properties_dir()
    return (
        os.path.join(root, "model", f"{model_name}.yaml"),
        os.path.join(root, "overall.yaml"),
        os.path.join(recbole_properties_dir(), "overall.yaml"),
    )


@functools.cache
def _defaults_file(path):
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as file:
        return yaml.load(file.read(), Loader=SettingsYamlLoader) or {}


def defining_file(key, model_name):
    """The defaults file whose line sets the default of ``key`` for ``model_name``, or None."""
    for path in _defaults_files(model_name):
        if key in _defaults_file(path):
            return path
    return None


def default_value(key, model_name):
    """The default of ``key`` for ``model_name``, read where it is written (see
    :func:`_defaults_files`). :data:`NO_DEFAULT` when none sets it."""
    path = defining_file(key, model_name)
    return NO_DEFAULT if path is None else _defaults_file(path)[key]


#: A top-level ``key: value`` line of a defaults file.
_TOP_LEVEL_LINE = re.compile(r"(?P<key>[A-Za-z_][\w.-]*)\s*:(?P<rest>(\s.*)?)$")
#: A setting's comment: ``(type) meaning: source``; the meaning ends at its first ``": "``.
_SETTING_COMMENT = re.compile(r"\((?P<type>[^()]+)\)\s+(?P<meaning>.+?):\s+(?P<source>\S.*)$")


def line_comment(text):
    """The comment of a YAML line's value part (after ``key:``), or None: the text after a ``#``
    that follows whitespace, outside a quoted scalar."""
    quote, last = None, ":"  # the last character outside spaces: a quote after it opens a scalar
    for index, char in enumerate(text):
        if quote:
            if char == quote:
                quote, last = None, char
            continue
        if char in "'\"" and last in ":[{,":
            quote = char
        elif char == "#" and index > 0 and text[index - 1] in " \t":
            return text[index + 1 :].strip()
        if not char.isspace():
            last = char
    return None


@functools.cache
def line_comments(path):
    """``{key: comment}`` of the top-level ``key: value  # comment`` lines of a YAML file (the
    last line of a key wins, as in YAML); keys without a comment are left out."""
    comments = {}
    if not os.path.isfile(path):
        return comments
    with open(path, encoding="utf-8") as file:
        for line in file:
            match = _TOP_LEVEL_LINE.match(line.rstrip("\n"))
            if match is None:
                continue
            comment = line_comment(match["rest"] or "")
            if comment:
                comments[match["key"]] = comment
            else:
                comments.pop(match["key"], None)
    return comments


def parse_setting_comment(comment):
    """``(type, meaning, source)`` of a setting's comment ``(type) meaning: source``, or None."""
    match = _SETTING_COMMENT.match(comment or "")
    return (
        None if match is None else (match["type"].strip(), match["meaning"].strip(), match["source"].strip())
    )


def default_source(key, model_name):
    """Where the default of ``key`` for ``model_name`` comes from: the source in the comment of
    the YAML line that sets it, :data:`RECBOLE_DEFAULT` when only RecBole's ``overall.yaml`` sets
    it, None when no line says."""
    path = defining_file(key, model_name)
    if path is None:
        return None
    if path == _defaults_files(model_name)[-1]:
        return RECBOLE_DEFAULT
    parsed = parse_setting_comment(line_comments(path).get(key))
    return None if parsed is None else parsed[2]


# ----- checking ------------------------------------------------------------------------------------
def _message(spec, value, model_name):
    default = NO_DEFAULT if model_name is None else default_value(spec.key, model_name)
    if default is NO_DEFAULT:
        fix = "another such value"
    else:
        source = default_source(spec.key, model_name)
        fix = f"--{spec.key}={_command_line(default)}" + (f" ({source})" if source else "")
        fix += " or another such value"
    return f"{spec.key} must be {requirement(spec)}, got {value!r}. Fix: {fix}."


def check_value(spec, value, model_name=None):
    """``value`` checked against ``spec``; returns it normalised (a choice as written in the table,
    ``None`` of an optional list as ``[]``). Raises :class:`ConfigError`, whose fix proposes
    ``model_name``'s default with its source."""
    if spec.kind == "bool":
        ok = isinstance(value, bool)
    elif spec.kind == "choice":
        matches = [c for c in spec.choices if isinstance(value, str) and c.lower() == value.lower()]
        ok = bool(matches)
        value = matches[0] if ok else value
    elif spec.kind == "int":
        ok = is_int(value) and _in_range(spec, value)
    elif spec.kind == "number":
        ok = is_number(value) and _in_range(spec, value)
    else:
        if value is None and spec.optional:
            return []
        is_element = is_int if spec.kind == "int_list" else is_number
        if spec.scalar_ok and is_element(value):
            ok = _in_range(spec, value)
        else:
            ok = (
                isinstance(value, (list, tuple))
                and (spec.length is None or len(value) == spec.length)
                and all(is_element(item) and _in_range(spec, item) for item in value)
            )
            value = list(value) if ok else value
    if not ok:
        raise ConfigError(_message(spec, value, model_name))
    return value


def check_settings(config, model_name, multitask, settings, rules):
    """Checks every one of ``settings`` (the table's rows) that ``model_name`` reads in ``config``
    (a dict, changed in place: choices and optional lists are normalised), then ``rules``.

    Settings absent from ``config`` are skipped (their model's YAML file always sets them).

    Raises:
        ConfigError: the first bad value, in table order.
    """
    for spec in settings:
        if spec.key in config and in_effect(spec, config, model_name, multitask):
            config[spec.key] = check_value(spec, config[spec.key], model_name)
    for rule in rules:
        if not applies(rule.models, model_name, multitask) or any(key not in config for key in rule.keys):
            continue
        if rule.when is not None and not rule.when(config):
            continue
        message = rule.check(config)
        if message:
            raise ConfigError(message)


def shaping_keys(settings, stage, config, model_name, multitask):
    """The keys of ``settings`` that shape ``stage`` (their ``shapes`` name it) in a run of
    ``model_name`` with ``config`` (a dict): those the run reads (:func:`in_effect`), in table
    order. A cached stage's key holds their values."""
    return [
        spec.key
        for spec in settings
        if stage in spec.shapes and spec.key in config and in_effect(spec, config, model_name, multitask)
    ]
