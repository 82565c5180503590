"""Dataset tools (importer, Ali-CCP converter, synthetic-data generator, sample maker): library
functions only; their command lines are in :mod:`recbole_cstwa.commands`.

The model library never imports this package (it reads the generator's truth files through
:mod:`recbole_cstwa.experiments.oracle`): ``recbole-cstwa-import`` and
``recbole-cstwa-convert-ali-ccp`` write RecBole atomic dataset folders that the library then
reads like any other dataset. This package imports neither RecBole nor torch.
"""
