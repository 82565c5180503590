"""What the command-line programs share: ``--key=value`` overrides, one ``error:`` line, and
RecBole's ``Config`` kept away from the program's own arguments."""

import contextlib
import sys

from recbole_cstwa.errors import InputError
from recbole_cstwa.values import parse_assignments

#: Exit status of a script stopped by bad input or settings (argparse's status for bad usage).
INPUT_ERROR_STATUS = 2


@contextlib.contextmanager
def reported_errors():
    """Turns bad input (:class:`~recbole_cstwa.errors.InputError`) into one ``error: ...`` line on
    stderr and exit status 2; any other exception is a bug and keeps its traceback."""
    try:
        yield
    except InputError as error:
        message = " ".join(str(error).split())  # one line, whatever the message holds
        print(f"error: {message}", file=sys.stderr)
        sys.exit(INPUT_ERROR_STATUS)


def parse_overrides(extra, parser):
    """A script's remaining arguments, RecBole settings given as ``--key=value``, as values."""
    bad = [arg for arg in extra if not arg.startswith("--") or "=" not in arg or arg.startswith("--=")]
    if bad:
        parser.error(f"unrecognised arguments {bad}: RecBole settings are given as --key=value")
    return parse_assignments(extra, "command line")
