"""Train and evaluate a model, RecBole style: ``python run_recbole_cstwa.py --model=CSTWA ...``.

The same command as ``recbole-cstwa`` (:mod:`recbole_cstwa.commands.train`); ``--help`` lists
its options.
"""

from recbole_cstwa.commands.train import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
