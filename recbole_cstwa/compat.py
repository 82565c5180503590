"""Quieting what RecBole's dependencies print that tells a user nothing, each at its source.

Each filter names the message and the module it comes from, so any other warning still shows:

- pandas (>= 2.2) warns twice per dataset load that RecBole 1.2.1's ``Dataset._fill_nan``
  (``feat[field].fillna(..., inplace=True)``) will stop working in pandas 3.0. The fill still
  works with the pandas this plugin installs; the warning is about RecBole's code, not the data.
- faiss's loader logs at INFO which CPU instruction set it tried and loaded (``Loading faiss
  with AVX512 support``, ``Could not load library with AVX512 support ...``); RecBole's logger
  shows INFO, so these lines land in every run that imports faiss.
- RecBole's console log colours: see :func:`plain_logs_when_redirected`.
"""

import logging
import sys
import warnings

from recbole.utils.logger import RemoveColorFilter

#: pandas' FutureWarning about chained in-place assignment, raised from RecBole's dataset code.
PANDAS_CHAINED_INPLACE = (
    r"A value is trying to be set on a copy of a DataFrame or Series through chained assignment"
)
#: The module RecBole's ``fillna(..., inplace=True)`` calls are in.
RECBOLE_DATASET_MODULE = r"recbole\.data\.dataset\.dataset"
#: The logger of faiss's instruction-set loader.
FAISS_LOADER_LOGGER = "faiss.loader"


def quiet_known_noise():
    """Installs the filters above (idempotent: ``warnings`` drops a filter added twice)."""
    warnings.filterwarnings(
        "ignore", message=PANDAS_CHAINED_INPLACE, category=FutureWarning, module=RECBOLE_DATASET_MODULE
    )
    logging.getLogger(FAISS_LOADER_LOGGER).setLevel(logging.WARNING)


def terminal():
    """Whether this process writes to a terminal (its real stderr: a wrapper such as hyperopt's
    progress-bar redirection does not count)."""
    stream = sys.__stderr__
    return bool(stream is not None and stream.isatty() and sys.stderr.isatty())


def plain_logs_when_redirected():
    """RecBole's logger (``init_logger``) colours its console lines with ANSI codes and leaves
    the colour codes ``set_color`` puts in messages (the config dump); colorama strips them only
    where it recognises the stream as redirected, which it does not behind hyperopt's
    redirection. Off a terminal, the console handlers get RecBole's plain file format and its
    own colour filter."""
    if terminal():
        return
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:  # not the log file (a FileHandler subclass)
            handler.setFormatter(
                logging.Formatter("%(asctime)-15s %(levelname)s  %(message)s", "%d %b %H:%M")
            )
            if not any(isinstance(f, RemoveColorFilter) for f in handler.filters):
                handler.addFilter(RemoveColorFilter())
