"""The known library noise is filtered at its source, and only there."""

import logging
import warnings

import recbole.data.dataset.dataset as recbole_dataset

from recbole_cstwa.compat import FAISS_LOADER_LOGGER, quiet_known_noise

CHAINED_FILLNA = """
import pandas as pd
frame = pd.DataFrame({"a": [1.0, None]})
frame["a"].fillna(value=0, inplace=True)
"""


def _future_warnings(filename, module):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_noise()
        exec(compile(CHAINED_FILLNA, filename, "exec"), {"__name__": module})
    return [w for w in caught if issubclass(w.category, FutureWarning)]


def test_pandas_chained_assignment_warning_is_quiet_in_recbole_dataset_code_only():
    assert _future_warnings(recbole_dataset.__file__, "recbole.data.dataset.dataset") == []
    assert len(_future_warnings("mine.py", "mine")) == 1  # the same warning elsewhere still shows


def test_faiss_loader_info_is_quiet_and_its_warnings_are_not():
    quiet_known_noise()
    logger = logging.getLogger(FAISS_LOADER_LOGGER)
    assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING)
