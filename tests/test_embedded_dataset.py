"""The embedded dataset is what its ``meta.json`` says: the command recorded there redraws every
file of it byte for byte."""

import importlib
import json
import os
import shlex

import pytest
from conftest import REPOSITORY

from recbole_cstwa.commands.generate import main as generate_main

EMBEDDED = os.path.join(REPOSITORY, "dataset", "synthetic-ccp")


@pytest.mark.slow
def test_the_recorded_command_regenerates_the_embedded_dataset_byte_for_byte(tmp_path):
    with open(os.path.join(EMBEDDED, "synthetic-ccp.meta.json"), encoding="utf-8") as file:
        meta = json.load(file)
    importlib.import_module(meta["generator"])  # the generator it names exists
    program, *arguments = shlex.split(meta["regenerate"].replace("<dir>", str(tmp_path)))
    assert program == "recbole-cstwa-generate"  # the console script of recbole_cstwa.commands.generate
    assert generate_main(arguments) == 0
    generated = sorted(os.listdir(tmp_path / "synthetic-ccp"))
    assert "synthetic-ccp.train.inter" in generated and "synthetic-ccp.meta.json" in generated
    for name in generated:
        with open(os.path.join(EMBEDDED, name), "rb") as file:
            assert (tmp_path / "synthetic-ccp" / name).read_bytes() == file.read(), name
