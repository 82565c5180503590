"""Tools a user runs on raw data (importer, Ali-CCP converter, sample makers).

The model library never imports this package: ``python -m recbole_cstwa.tools.importer`` and
``python -m recbole_cstwa.tools.ali_ccp`` write RecBole atomic dataset folders that the library
then reads like any other dataset.
"""
