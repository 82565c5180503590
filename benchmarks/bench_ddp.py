"""1 process against N DDP processes: training time per epoch, peak memory per rank, test metrics.

    OMP_NUM_THREADS=1 python benchmarks/bench_ddp.py --model=MLP --nproc=1,2 --epochs=1 \\
        [--dataset=ccp-500k --data_path=DATA --benchmark_filename="['train','valid','test']"] \\
        [--any_recbole_key=value ...]

Each setting runs in a fresh launcher process (a DDP run spawns its ranks), so the peak memory of
one run does not carry into the next. Prints one line a run: processes, training seconds of each
epoch (rank 0; validation not included), fit seconds (stages, training and validation), peak
resident memory of each rank (MiB, ``getrusage``), and the test metrics.
"""

import argparse
import json
import os
import subprocess
import sys

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_ONE_RUN = """
import json, sys
from recbole_cstwa.quick_start import run_recbole_cstwa
nproc, port, config = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
sys.argv = sys.argv[:1]
result = run_recbole_cstwa(config_dict=config, nproc=nproc, port=port)
print("RESULT " + json.dumps({key: result[key] for key in (
    "world_size", "epoch_seconds", "fit_seconds", "peak_rss_mb", "pss_mb", "test_result", "stage_times") if key in result}))
"""


def parse_value(text):
    try:
        return json.loads(text)
    except ValueError:
        import ast

        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="MLP")
    parser.add_argument("--nproc", default="1,2", help="comma-separated process counts")
    parser.add_argument("--port", type=int, default=29731)
    args, extra = parser.parse_known_args()
    config = {"model": args.model, "show_progress": False, "state": "INFO", "use_gpu": False}
    for item in extra:
        key, _, value = item[2:].partition("=")
        config[key] = parse_value(value)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")]))
    )
    for nproc in [int(n) for n in args.nproc.split(",")]:
        completed = subprocess.run(
            [sys.executable, "-c", _ONE_RUN, str(nproc), str(args.port + nproc), json.dumps(config)],
            env=env,
            capture_output=True,
            text=True,
        )
        lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
        if completed.returncode or not lines:
            sys.exit(f"error: the run with {nproc} process(es) failed:\n{completed.stderr[-3000:]}")
        result = json.loads(lines[-1][len("RESULT ") :])
        test = {key: round(value, 6) for key, value in result["test_result"].items()}
        print(
            f"{args.model} nproc={nproc}: epoch train s {[round(s, 2) for s in result['epoch_seconds']]}, "
            f"fit s {result['fit_seconds']:.1f}, peak RSS MiB a rank {result['peak_rss_mb']}, "
            f"PSS at the end MiB a rank {result['pss_mb']}, test {test}"
            + (
                f", stages s { {k: round(v, 2) for k, v in result['stage_times'].items()} }"
                if "stage_times" in result
                else ""
            )
        )


if __name__ == "__main__":
    main()
