"""Hyper-parameter search, as RecBole's ``run_hyper.py``: ``python run_hyper.py --model=CSTWA
--params_file=hyper/cstwa.hyper ...``.

The same command as ``recbole-cstwa-hyper`` (:mod:`recbole_cstwa.commands.hyper`); ``--help``
lists its options.
"""

from recbole_cstwa.commands.hyper import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
