"""Installs recbole-cstwa: the package and its YAML defaults (``properties/``).

The embedded dataset (``dataset/``) is read from the source checkout: install it editable
(``pip install -e .``), or set ``data_path`` to a copy of ``dataset/``.

The pins are the ones measured to work together with RecBole 1.2.1 (see README, "Dependencies"):
RecBole 1.2.1 needs ``ray<=2.6.3``, which needs ``numpy<2`` (``np.bool8``) and ``pkg_resources``
(setuptools below 81); pandas 3 needs numpy 2 and its copy-on-write silently breaks RecBole's NaN
filling. torch is left as a lower bound: install the wheel you want first (CI installs
``torch==2.13.0``, a CPU build).
"""

from setuptools import setup

setup(
    name="recbole-cstwa",
    version="0.1.0",
    description="CSTWA and multi-task CVR baselines as a RecBole plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9,<3.12",
    packages=[
        "recbole_cstwa",
        "recbole_cstwa.data",
        "recbole_cstwa.model",
        "recbole_cstwa.model.multitask",
        "recbole_cstwa.serving",
        "recbole_cstwa.properties",
        "recbole_cstwa.tools",
    ],
    # The YAML defaults live at the repository top (``properties/``) and install inside the
    # package, where ``recbole_cstwa.config`` looks first.
    package_dir={"recbole_cstwa.properties": "properties"},
    package_data={"recbole_cstwa.properties": ["*.yaml", "model/*.yaml", "dataset/*.yaml"]},
    install_requires=[
        "recbole==1.2.1",
        "torch>=2.0",
        "numpy>=1.23,<2",
        "pandas>=1.5,<3",
        "pyarrow>=14,<20",
        "setuptools>=77,<81",
        "ray>=1.13,<=2.6.3",
        "faiss-cpu>=1.7.4",
        "scikit-learn>=1.0",
        "scipy>=1.7",
        "hyperopt>=0.2.5",
        "plotly>=5",
        "pyyaml>=6",
        "pyarrow>=14,<20",
        "tqdm>=4.48",
    ],
    extras_require={"test": ["pytest>=7", "ruff>=0.5"]},
)
