"""The plugin's one error type for bad input and settings.

Every error a user can fix (a setting, a data file, a params file, a model name, a comparison
request) is an :class:`InputError`; its message is one line naming the file or key, the bad value
and the fix. The command-line scripts print it as ``error: <message>`` and exit with status 2
(:func:`recbole_cstwa.cli.reported_errors`); anything else is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """Bad input or settings: the message names the file or key, the value and the fix."""


class ConfigError(InputError):
    """A configuration that cannot give correct results, with the key to change."""


class CheckpointError(InputError):
    """A checkpoint that cannot be used as asked: the message names the file and the fix."""
