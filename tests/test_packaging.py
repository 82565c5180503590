"""The wheel ships every module, the YAML defaults inside the package (where ``Config`` looks
first) and console scripts that name existing functions."""

import configparser
import importlib
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # builds the wheel
def test_wheel_contains_every_yaml_default(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            ROOT,
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = [name for name in os.listdir(tmp_path) if name.endswith(".whl")]
    archive = zipfile.ZipFile(tmp_path / wheel)
    names = set(archive.namelist())
    shipped = {name for name in names if name.endswith(".yaml")}
    expected = set()
    for folder, _, files in os.walk(os.path.join(ROOT, "properties")):
        for name in files:
            relative = os.path.relpath(os.path.join(folder, name), ROOT)
            expected.add("recbole_cstwa/" + relative.replace(os.sep, "/"))
    assert expected and expected <= shipped
    modules = set()
    for folder, _, files in os.walk(os.path.join(ROOT, "recbole_cstwa")):
        modules |= {
            os.path.relpath(os.path.join(folder, name), ROOT).replace(os.sep, "/")
            for name in files
            if name.endswith(".py")
        }
    assert "recbole_cstwa/model/multitask/cstwa/trainer.py" in modules
    assert modules <= names
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    scripts = configparser.ConfigParser()
    scripts.read_string(archive.read(entry_points).decode())
    assert "recbole-cstwa" in scripts["console_scripts"]
    for target in scripts["console_scripts"].values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))
