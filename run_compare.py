"""Compare models over seeds in one command: ``python run_compare.py --models "CSTWA MLP" ...``.

The same command as ``recbole-cstwa-compare`` (:mod:`recbole_cstwa.commands.compare`); ``--help``
lists its options.
"""

from recbole_cstwa.commands.compare import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
