"""The wheel ships the YAML defaults inside the package, where ``Config`` looks first."""

import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    shipped = {name for name in zipfile.ZipFile(tmp_path / wheel).namelist() if name.endswith(".yaml")}
    expected = set()
    for folder, _, files in os.walk(os.path.join(ROOT, "properties")):
        for name in files:
            relative = os.path.relpath(os.path.join(folder, name), ROOT)
            expected.add("recbole_cstwa/" + relative.replace(os.sep, "/"))
    assert expected and expected <= shipped
