"""Throughput and peak memory of the raw Ali-CCP converter on synthetic raw files.

Writes a synthetic ``sample_skeleton``/``common_features`` train/test pair in the official raw
format, runs :func:`recbole_cstwa.tools.ali_ccp.convert_raw` on it in a fresh child process (so
that ``ru_maxrss`` is that conversion's own peak) and prints rows/s and peak memory. Give
several ``--lines`` to show that memory does not grow with the number of impressions: the
common blocks and the id pools are the same for every size, so only the row count changes.

    python benchmarks/bench_ali_ccp_converter.py --lines 200000 1000000

Shape (defaults): about Ali-CCP's proportions, 17,000 common blocks for 1M impressions (Ali-CCP
train: 42.3M impressions, about 730k blocks), each block a user's profile plus 200 multi-valued
``*_14`` features; a skeleton line holds the item, its attributes, the crosses and 301. Clicks
about 4%, purchases about 15% of clicks, a few purchases without a click. Ids are drawn with a
skew from fixed pools (items 50,000, shops 20,000, crosses 50,000, ...), so the vocabularies
saturate early; real Ali-CCP vocabularies are larger (millions of items), and the counters grow
with them, not with the number of rows.

The converter (``recbole_cstwa.tools``) imports neither RecBole nor torch, so they do not
inflate the measured memory.
"""

import argparse
import importlib.util
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROFILE_POOLS = {  # user profile field -> number of values
    "121": 97,
    "122": 13,
    "124": 3,
    "125": 7,
    "126": 4,
    "127": 4,
    "128": 3,
    "129": 5,
}
MULTI_VALUED_FIELDS = ("109_14", "110_14", "127_14", "150_14")


def load_converter():
    # recbole_cstwa/__init__.py and recbole_cstwa/tools/ import neither RecBole nor torch.
    if REPOSITORY not in sys.path:
        sys.path.insert(0, REPOSITORY)
    return importlib.import_module("recbole_cstwa.tools.ali_ccp")


def skewed(rng, pool, size):
    """Ids in ``[0, pool)``, small ids far more frequent (density ~ 1/sqrt(id))."""
    return (pool * rng.random(size) ** 2).astype(np.int64)


def feature_text(field, feature_id, value="1.0"):
    return f"{field}\x02{feature_id}\x03{value}"


def write_common(path, prefix, blocks, users, multi_per_block, rng):
    """One block per line; a block is a user (profile derived from the user id) + *_14 lists."""
    block_users = rng.integers(0, users, blocks)
    with open(path, "w", encoding="utf-8") as file:
        for block, user in enumerate(block_users):
            features = [feature_text("101", 1_000_000 + user)]
            for offset, (field, pool) in enumerate(PROFILE_POOLS.items()):
                profile_id = (user * (offset + 7)) % pool
                features.append(feature_text(field, f"{field}{profile_id:03d}"))
            multi = rng.integers(0, 100_000, multi_per_block)
            for position, behaviour_id in enumerate(multi):
                field = MULTI_VALUED_FIELDS[position % len(MULTI_VALUED_FIELDS)]
                features.append(feature_text(field, 2_000_000 + behaviour_id, "0.693"))
            file.write(f"{prefix}{block:08x},{len(features)},{chr(1).join(features)}\n")


def write_skeleton(path, lines, prefix, blocks, rng, first_sample):
    """Impressions in chunks: item + attributes (fixed per item), crosses, scenario, labels."""
    chunk = 100_000
    with open(path, "w", encoding="utf-8") as file:
        for start in range(0, lines, chunk):
            size = min(chunk, lines - start)
            block = rng.integers(0, blocks, size)
            item = skewed(rng, 50_000, size)
            crosses = [skewed(rng, 50_000, size) for _ in range(4)]
            second_508 = rng.random(size) < 0.1  # a repeated field: the last id wins
            has_853 = rng.random(size) >= 0.05  # an absent field: OOV
            scenario = rng.integers(0, 3, size)
            click = rng.random(size) < 0.04
            purchase = click & (rng.random(size) < 0.15) | (rng.random(size) < 0.0002)
            out = []
            for row in range(size):
                features = [
                    feature_text("205", 3_000_000 + item[row]),
                    feature_text("206", 4_000_000 + item[row] % 2_000),
                    feature_text("207", 5_000_000 + item[row] % 20_000),
                    feature_text("210", 6_000_000 + item[row] % 5_000),
                    feature_text("216", 7_000_000 + item[row] % 10_000),
                    feature_text("508", 8_000_000 + crosses[0][row], "2.3"),
                    feature_text("509", 9_000_000 + crosses[1][row], "1.1"),
                    feature_text("702", 10_000_000 + crosses[2][row], "0.7"),
                    feature_text("301", 11_000_000 + scenario[row]),
                ]
                if second_508[row]:
                    features.append(feature_text("508", 8_050_000 + crosses[3][row] % 100))
                if has_853[row]:
                    features.append(feature_text("853", 12_000_000 + crosses[3][row], "0.4"))
                out.append(
                    f"{first_sample + start + row},{int(click[row])},{int(purchase[row])},"
                    f"{prefix}{block[row]:08x},{len(features)},{chr(1).join(features)}\n"
                )
            file.write("".join(out))


def generate(directory, lines, test_lines, blocks, seed):
    rng = np.random.default_rng(seed)
    paths = {
        name: os.path.join(directory, f"{name}.csv")
        for name in (
            "sample_skeleton_train",
            "common_features_train",
            "sample_skeleton_test",
            "common_features_test",
        )
    }
    write_common(paths["common_features_train"], "a", blocks, 10_000, 200, rng)
    write_common(paths["common_features_test"], "b", blocks, 10_000, 200, rng)
    write_skeleton(paths["sample_skeleton_train"], lines, "a", blocks, rng, 0)
    write_skeleton(paths["sample_skeleton_test"], test_lines, "b", blocks, rng, lines)
    return paths


def current_rss_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def convert_in_this_process(directory, use_tracemalloc):
    """Child side: converts ``directory``'s files and prints one JSON line of measurements."""
    converter = load_converter()
    # The converter's stage lines (rows/s per pass) go to stderr; the parent relays them.
    logging.basicConfig(level=logging.INFO, format="  %(message)s", stream=sys.stderr)
    rss_before = current_rss_mb()
    if use_tracemalloc:
        tracemalloc.start()
    started = time.perf_counter()
    summary = converter.convert_raw(
        os.path.join(directory, "sample_skeleton_train.csv"),
        os.path.join(directory, "common_features_train.csv"),
        os.path.join(directory, "sample_skeleton_test.csv"),
        os.path.join(directory, "common_features_test.csv"),
        output=os.path.join(directory, "out"),
        name="bench",
        show_progress=False,
    )
    seconds = time.perf_counter() - started
    python_heap_peak = tracemalloc.get_traced_memory()[1] / 2**20 if use_tracemalloc else None
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rss_before_mb": rss_before,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "python_heap_peak_mb": python_heap_peak,
                "rows": summary["rows"],
                "dropped": summary["dropped_click0_purchase1"],
                "vocab_sizes": summary["vocab_sizes"],
                "raw_vocab_sizes": summary["raw_vocab_sizes"],
            }
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--test-lines", type=int, default=None, help="default: lines / 10")
    parser.add_argument("--blocks", type=int, default=17_000, help="common blocks per file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="default: a temporary folder, removed")
    parser.add_argument("--tracemalloc", action="store_true", help="also trace the Python heap (slower)")
    parser.add_argument("--convert-only", default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.convert_only:
        convert_in_this_process(arguments.convert_only, arguments.tracemalloc)
        return

    workdir = arguments.workdir or tempfile.mkdtemp(prefix="bench-ali-ccp-")
    results = []
    try:
        for lines in arguments.lines:
            test_lines = arguments.test_lines or max(1, lines // 10)
            directory = os.path.join(workdir, f"lines-{lines}")
            os.makedirs(directory, exist_ok=True)
            started = time.perf_counter()
            paths = generate(directory, lines, test_lines, arguments.blocks, arguments.seed)
            input_mb = sum(os.path.getsize(path) for path in paths.values()) / 2**20
            print(
                f"generated {lines:,} train + {test_lines:,} test lines, {arguments.blocks:,} blocks a "
                f"file ({input_mb:.0f} MiB) in {time.perf_counter() - started:.0f} s",
                file=sys.stderr,
            )
            command = [
                sys.executable,
                os.path.abspath(__file__),
                "--convert-only",
                directory,
            ]
            if arguments.tracemalloc:
                command.append("--tracemalloc")
            child = subprocess.run(command, check=True, capture_output=True, text=True)
            print(child.stderr, end="", file=sys.stderr)
            measured = json.loads(child.stdout.strip().splitlines()[-1])
            measured.update(lines=lines, test_lines=test_lines, input_mb=input_mb)
            results.append(measured)
            shutil.rmtree(directory)
    finally:
        if arguments.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"{'train lines':>12} {'test lines':>10} {'input MiB':>9} {'seconds':>8} {'lines/s':>9} "
        f"{'RSS before':>10} {'peak RSS':>9} {'growth':>7} {'py heap':>8}"
    )
    for measured in results:
        total_lines = measured["lines"] + measured["test_lines"]
        heap = measured["python_heap_peak_mb"]
        print(
            f"{measured['lines']:>12,} {measured['test_lines']:>10,} {measured['input_mb']:>9.0f} "
            f"{measured['seconds']:>8.1f} {total_lines / measured['seconds']:>9,.0f} "
            f"{measured['rss_before_mb']:>8.0f}MB {measured['peak_rss_mb']:>7.0f}MB "
            f"{measured['peak_rss_mb'] - measured['rss_before_mb']:>5.0f}MB "
            f"{'-' if heap is None else f'{heap:.0f}MB':>8}"
        )
    print(json.dumps(results, indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
