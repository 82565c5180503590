"""Every model on a sweep of generated worlds: ``python run_worlds.py --sweep worlds/sweep.yaml ...``.

The same command as ``recbole-cstwa-worlds`` (:mod:`recbole_cstwa.commands.worlds`); ``--help``
lists its options.
"""

from recbole_cstwa.commands.worlds import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
