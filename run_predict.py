"""Score new impressions with a trained model, or export it for serving: ``python run_predict.py ...``.

The same command as ``recbole-cstwa-predict`` (:mod:`recbole_cstwa.commands.predict`); ``--help``
lists its options.
"""

from recbole_cstwa.commands.predict import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
