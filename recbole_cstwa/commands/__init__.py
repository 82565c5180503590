"""The command-line programs (console scripts and the ``run_*.py`` files call their ``main``).

Each module reads its arguments and calls the library (:mod:`recbole_cstwa.quick_start`,
:mod:`recbole_cstwa.experiments`, :mod:`recbole_cstwa.tools`); :mod:`recbole_cstwa.commands.cli`
holds what they share.
"""
