"""Throughput and peak memory of the generic importer on AliExpress-shaped CSV files.

Writes an AliExpress-shaped ``train.csv`` / ``test.csv`` pair (``recbole_cstwa.tools.
aliexpress_sample``: 16 categorical + 63 numerical columns, no ids) for each ``--rows`` and runs
the importer on it in a fresh child process, so that ``ru_maxrss`` is that import's own peak.
Give several sizes to show that memory does not grow with the rows (the files are streamed; with
no id columns nothing else grows).

    python benchmarks/bench_importer.py --rows 200000 1000000
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The child runs the importer's command line and reports its own peak RSS (KiB on Linux).
CHILD = (
    "import resource, runpy, sys\n"
    "try:\n"
    "    runpy.run_module('recbole_cstwa.commands.import_dataset', run_name='__main__')\n"
    "except SystemExit as exit:\n"
    "    assert not exit.code, exit.code\n"
    "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", nargs="+", type=int, default=[200_000, 1_000_000], help="train rows (test: half)"
    )
    arguments = parser.parse_args()
    sys.path.insert(0, REPOSITORY)
    from recbole_cstwa.tools.aliexpress_sample import write_sample

    environment = dict(os.environ, PYTHONPATH=REPOSITORY)
    lines = [
        f"{'train rows':>12}{'test rows':>12}{'input MiB':>11}{'seconds':>9}{'rows/s':>10}{'peak RSS':>10}"
    ]
    with tempfile.TemporaryDirectory(prefix="bench-importer-") as scratch:
        for rows in arguments.rows:
            folder = os.path.join(scratch, str(rows))
            paths = write_sample(os.path.join(folder, "raw"), rows, seed=2020)
            size = sum(os.path.getsize(path) for path in paths.values()) / 2**20
            command = [
                sys.executable,
                "-c",
                CHILD,
                "--train",
                paths["train"],
                "--test",
                paths["test"],
                "--output",
                os.path.join(folder, "data"),
                "--name",
                "bench",
                "--click",
                "click",
                "--purchase",
                "conversion",
                "--context-fields",
                "categorical_*",
                "numerical_*",
                "--numerical",
                "numerical_*",
            ]
            started = time.perf_counter()
            done = subprocess.run(command, check=True, env=environment, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            peak_text = f"{int(done.stderr.split('PEAK')[-1]) / 1024:.0f}MB"
            total = rows + rows // 2
            lines.append(
                f"{rows:>12,}{rows // 2:>12,}{size:>11.0f}{seconds:>9.1f}{total / seconds:>10,.0f}{peak_text:>10}"
            )
            shutil.rmtree(folder)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
