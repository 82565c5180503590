"""The plugin's error types for bad input and settings: one hierarchy under :class:`InputError`.

Every error a user can fix (a setting, a data file, a params file, a model name, a comparison
request) is an :class:`InputError`; its message is one line naming the file or key, the bad value
and the fix. The command-line scripts print it as ``error: <message>`` and exit with status 2
(:func:`recbole_cstwa.commands.cli.reported_errors`); anything else is a bug and keeps its
traceback. Every error type of the plugin is defined here, so any module can raise one without
importing the module that first needed it; :class:`CacheError` alone is no :class:`InputError`:
the plugin catches it itself (an unusable cache is rebuilt).
"""

import errno


class InputError(ValueError):
    """Bad input or settings: the message names the file or key, the value and the fix."""


class ConfigError(InputError):
    """A configuration that cannot give correct results, with the key to change."""


class DataFormatError(InputError):
    """Bad input data: the message names the file, the field and the fix."""


class UnknownModelError(InputError):
    """A model name that is neither a plugin model nor a RecBole built-in model."""


class ParamsFileError(InputError):
    """A params file line that cannot be read, with the file and the line number."""


class CompareError(InputError):
    """A comparison that cannot run as asked, with what to change."""


class DistributedRunError(InputError):
    """A DDP setting that cannot work (the message names the setting and the fix)."""


class ValueTextError(InputError):
    """A value written on the command line or in a params file that cannot be used."""


class InputFileError(InputError):
    """Bad input for the importer: the message names the file, the column and the fix."""


class MalformedLineError(InputError):
    """A line of an input file that cannot be converted, with its file and 1-based number."""

    def __init__(self, path, line_number, reason, detail):
        super().__init__(
            f"{path}, line {line_number}: {reason}: {detail}. Fix or remove the line, or pass "
            "--skip-malformed (skip_malformed=True) to skip such lines and count them."
        )
        self.path = path
        self.line_number = line_number
        self.reason = reason


class CheckpointError(InputError):
    """A checkpoint that cannot be used as asked: the message names the file and the fix."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """A checkpoint file that does not exist (a ``FileNotFoundError`` too, for callers that test
    for one): the message names the file and the option that gave it."""


class PredictInputError(InputError):
    """A file to score or write that cannot be used: names the file, the column and the fix."""


class UnknownSettingError(ConfigError):
    """A key no one reads (a misspelled setting), with the closest known key.

    Args:
        key: the key as given.
        where: where it was given (``command line``, ``Config file [a.yaml]``, ``config_dict``,
            ``params file [p.hyper]``, ``--variant NAME``).
        suggestion: the closest known key, or None.
    """

    def __init__(self, key, where, suggestion=None):
        self.key, self.where, self.suggestion = key, where, suggestion
        dash = "--" if where == "command line" else ""
        guess = f"; did you mean {dash}{suggestion}?" if suggestion else "."
        super().__init__(
            f"{where}: {dash}{key} is not a setting of RecBole or recbole-cstwa{guess} A key of "
            f"your own is kept when listed in extra_keys (--extra_keys=[{key}])."
        )

    def given_in(self, where):
        """The same error, said to come from ``where``."""
        return UnknownSettingError(self.key, where, self.suggestion)


class DiskFullError(OSError, InputError):
    """No space left while writing a file: the message names the folder and the space needed.

    An ``OSError`` with ``errno`` ``ENOSPC`` (what callers of a write test for) and an
    :class:`InputError`: the fix is the user's (free space or write elsewhere), so the command
    lines print it as one ``error:`` line.
    """

    def __init__(self, message):
        super().__init__(errno.ENOSPC, message)

    def __str__(self):
        return self.strerror

    def __reduce__(self):  # OSError's would call __init__ with (errno, message)
        return type(self), (self.strerror,)


class CacheError(Exception):
    """A cache directory that cannot be used (truncated, foreign, or of another format): caught
    where the cache is read, which rebuilds it."""
