"""What a training step costs besides the matrix products: dropout masks and ``torch.compile``.

1. Dropout on the towers' activation shapes (batch 2000 x 128 / 64 / 32, forward and backward):
   torch's ``nn.Dropout`` (its CPU mask comes from ``bernoulli_``) against the plugin's
   :class:`recbole_cstwa.model.layers.Dropout` (the same dropout, mask from uniform draws).
2. ``torch.compile`` (``--compile-backend``, default inductor) of the click and purchase towers
   of ``--model`` against eager execution, through the plugin's trainer on ``--batches``
   pre-built batches of ``--dataset``: the time of the first 3 steps (compilation included) and
   the best rows/s of ``--repeats`` epochs over the batches. Skipped with ``--skip-compile``.

    python benchmarks/bench_step.py --data-path <data folder> --dataset s4m --model CSTWA

The device comes from the config (``--set device=cuda`` / ``use_gpu``); ``--threads`` sets torch's.
"""

import argparse
import os
import sys
import tempfile
import time

import torch


def time_ms(function, repeats=100):
    function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats * 1e3


def bench_dropout(device):
    from recbole_cstwa.model.layers import Dropout

    print("dropout, forward + backward, ms a call:")
    for width, rate in ((128, 0.1), (64, 0.3), (32, 0.3)):
        x = torch.randn(2000, width, device=device, requires_grad=True)
        results = {}
        for name, layer in (("nn.Dropout", torch.nn.Dropout(rate)), ("layers.Dropout", Dropout(rate))):

            def step(layer=layer, x=x):
                layer(x).sum().backward()
                if device.type == "cuda":
                    torch.cuda.synchronize()

            results[name] = time_ms(step)
        print(
            f"  2000 x {width:<4} p={rate}: nn.Dropout {results['nn.Dropout']:.3f}, "
            f"layers.Dropout {results['layers.Dropout']:.3f} ({results['nn.Dropout'] / results['layers.Dropout']:.2f}x)"
        )


class PrebuiltBatches(list):
    shuffle = False


def bench_compile(args):
    from recbole.utils import init_seed

    from recbole_cstwa.config import Config
    from recbole_cstwa.data import create_dataset, data_preparation
    from recbole_cstwa.registry import get_model, get_trainer
    from recbole_cstwa.values import parse_assignments

    os.chdir(tempfile.mkdtemp(prefix="bench_step_"))
    settings = {
        "dataset": args.dataset,
        "data_path": os.path.abspath(args.data_path),
        "benchmark_filename": ["train", "valid", "test"],
        "show_progress": False,
        "state": "ERROR",
        "use_sm": False,  # the towers' cost; CSTWA's graphs do not change it
    }
    settings.update(parse_assignments(args.set, "--set"))  # read as data, as on a command line
    config = Config(model=args.model, config_dict=settings)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    batches = []
    for batch in train_data:
        if len(batches) == args.batches:
            break
        batches.append(batch.to(config["device"]))
    rows = sum(len(batch) for batch in batches)
    print(f"torch.compile of the towers, {args.model} on {args.dataset}, {rows:,} rows a timed epoch:")
    for compiled in (False, True):
        init_seed(config["seed"], config["reproducibility"])
        model = get_model(args.model)(config, train_data._dataset).to(config["device"])
        if compiled:
            for name in ("click_tower", "purchase_tower"):
                setattr(model, name, torch.compile(getattr(model, name), backend=args.compile_backend))
        trainer = get_trainer(config["MODEL_TYPE"], args.model)(config, model)
        start = time.perf_counter()
        trainer._train_epoch(PrebuiltBatches(batches[:3]), 0)
        first = time.perf_counter() - start
        rates = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            trainer._train_epoch(PrebuiltBatches(batches), 0)
            rates.append(rows / (time.perf_counter() - start))
        print(
            f"  {f'compiled ({args.compile_backend})' if compiled else 'eager':<20}: first 3 steps {first:.1f} s, "
            f"{max(rates):,.0f} rows/s (best of {args.repeats})"
        )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-path", default="dataset")
    parser.add_argument("--dataset", default="synthetic-ccp")
    parser.add_argument("--model", default="CSTWA")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile's backend (eager, aot_eager: no code generation)",
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config would read this script's --key=value options as settings
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if any(s in ("device=cuda", "use_gpu=true") for s in args.set) else "cpu")
    print(f"{torch.get_num_threads()} threads, {device}")
    bench_dropout(device)
    if not args.skip_compile:
        bench_compile(args)


if __name__ == "__main__":
    main()
