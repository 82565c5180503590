"""Tools a user runs (importer, Ali-CCP converter, synthetic-data generator, sample makers).

The model library never imports this package (it reads the generator's truth files through
:mod:`recbole_cstwa.oracle`): ``python -m recbole_cstwa.tools.importer`` and
``python -m recbole_cstwa.tools.ali_ccp`` write RecBole atomic dataset folders that the library
then reads like any other dataset.
"""
