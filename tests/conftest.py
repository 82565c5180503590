"""Shared fixtures and helpers: a tiny generated dataset, a one-epoch run helper, and the small
helpers several test files use.

Runs happen inside a temporary working directory, because RecBole writes ``log/`` and
``log_tensorboard/`` into the current directory.
"""

import importlib.util
import os
import socket
import sys

import numpy as np
import pytest

from recbole_cstwa.quick_start import run_recbole_cstwa
from recbole_cstwa.tools.generator import generate

TINY = "tiny-ccp"
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name):
    """A top-level script of the repository (``run_hyper``, ...) as a module, to call its main."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPOSITORY, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_command_in_process(monkeypatch, capsys, script, arguments):
    """Runs ``<script>.py``'s main in this process (no interpreter start-up) with ``arguments`` on
    its command line; returns ``(exit status, stderr)``."""
    import sys

    monkeypatch.setattr(sys, "argv", [f"{script}.py", *arguments])
    status = 0
    try:
        load_script(script).main()
    except SystemExit as stop:
        status = stop.code
    return status, capsys.readouterr().err


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_table(path):
    """Every line of a tab-separated atomic file (the header first), split into cells."""
    with open(path, encoding="utf-8") as file:
        return [line.rstrip("\n").split("\t") for line in file]


def random_vectors(n, dim, seed=0):
    """``(n, dim)`` float32 standard-normal vectors."""
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def dataset_cache_dirs(config):
    """The tiny dataset's cache folders under ``config["checkpoint_dir"]``, sorted."""
    folder = config["checkpoint_dir"]
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(name for name in names if name.startswith(f"{TINY}-dataset-"))


@pytest.fixture(scope="session")
def tiny_data_path(tmp_path_factory):
    """A 4,000-impression generated dataset, pre-split into train/valid/test files."""
    root = tmp_path_factory.mktemp("data")
    generate(root, name=TINY, n_impressions=4000, cvr=0.3, seed=7)
    return str(root)


@pytest.fixture(autouse=True, scope="session")
def _no_pytest_flags_in_argv():
    """RecBole's Config reads ``--key=value`` pairs from ``sys.argv``, and the plugin refuses keys
    nobody reads: pytest's own flags (``--durations=25``, ...) must reach neither it nor spawned
    workers, which inherit ``sys.argv``. pytest-session scope, so module fixtures see it too; a test that
    wants a command line sets its own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", sys.argv[:1])
        yield


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def tiny_arguments(tiny_data_path, tmp_path, *extra):
    """The command-line form of a one-epoch run on the tiny dataset (``extra`` appended before
    the checkpoint folder)."""
    return [
        f"--dataset={TINY}",
        f"--data_path={tiny_data_path}",
        "--benchmark_filename=['train','valid','test']",
        "--epochs=1",
        "--show_progress=False",
        *extra,
        f"--checkpoint_dir={tmp_path / 'saved'}",
    ]


def tiny_config(tiny_data_path, tmp_path, **overrides):
    config = {
        "dataset": TINY,
        "data_path": tiny_data_path,
        "benchmark_filename": ["train", "valid", "test"],
        "checkpoint_dir": str(tmp_path / "saved"),
        "epochs": 1,
        "train_batch_size": 500,
        "show_progress": False,
        "state": "ERROR",
        "use_gpu": False,
    }
    config.update(overrides)
    return config


@pytest.fixture
def make_config(tiny_data_path, tmp_path):
    """``make_config(model, **config)``: the plugin ``Config`` for the tiny dataset."""
    from recbole_cstwa.config import Config

    def make(model, **overrides):
        return Config(model=model, config_dict=tiny_config(tiny_data_path, tmp_path, **overrides))

    return make


#: Labels of the crafted 8-row batch of ``build_model``: clicks with and without purchase, and
#: no-click rows.
CLICKS = [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
PURCHASES = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]


@pytest.fixture
def build_model(make_config):
    """``build_model(model, **config)`` -> (model in eval mode, an 8-row batch labelled with
    :data:`CLICKS` and :data:`PURCHASES`), seeded."""
    import torch

    from recbole_cstwa.data import create_dataset, data_preparation
    from recbole_cstwa.registry import get_model

    def make(model_name, **overrides):
        torch.manual_seed(0)
        config = make_config(model_name, **overrides)
        train_data, _, _ = data_preparation(config, create_dataset(config))
        model = get_model(model_name)(config, train_data._dataset)
        model.eval()
        batch = next(iter(train_data))[: len(CLICKS)]
        batch["click"] = torch.tensor(CLICKS)
        batch["purchase"] = torch.tensor(PURCHASES)
        return model, batch

    return make


@pytest.fixture
def model_and_trainer(make_config):
    """``model_and_trainer(model, **config)`` -> (model, its ``MultiTaskTrainer``, the first
    ``batches`` training batches), seeded the same."""
    import torch

    from recbole_cstwa.data import create_dataset, data_preparation
    from recbole_cstwa.registry import get_model
    from recbole_cstwa.trainer import MultiTaskTrainer

    def make(model_name="MLP", batches=3, **overrides):
        config = make_config(model_name, **overrides)
        train_data, _, _ = data_preparation(config, create_dataset(config))
        torch.manual_seed(0)
        model = get_model(model_name)(config, train_data._dataset)
        trainer = MultiTaskTrainer(config, model)
        taken = []
        for batch in train_data:
            taken.append(batch)
            if len(taken) == batches:
                break
        return model, trainer, taken

    return make


class Batches(list):
    """Batches taken from a loader, replayed as a training epoch's data (not shuffled)."""

    shuffle = False


@pytest.fixture
def cstwa_stages(make_config):
    """``cstwa_stages(**config)`` -> ``(trainer, model)`` after CSTWATrainer's pre-training stages."""
    from recbole_cstwa.data import create_dataset, data_preparation
    from recbole_cstwa.model.multitask.cstwa import CSTWA
    from recbole_cstwa.model.multitask.cstwa.trainer import CSTWATrainer

    def stages(**overrides):
        config = make_config("CSTWA", **overrides)
        train_data, valid_data, _ = data_preparation(config, create_dataset(config))
        model = CSTWA(config, train_data._dataset)
        trainer = CSTWATrainer(config, model)
        for _, stage in trainer.pre_training_stages():
            stage(train_data, valid_data, False)
        return trainer, model

    return stages


@pytest.fixture
def run_tiny(tiny_data_path, tmp_path):
    """``run_tiny(model, **config)``: one epoch of ``model`` on the tiny dataset."""

    def run(model, **overrides):
        return run_recbole_cstwa(model=model, config_dict=tiny_config(tiny_data_path, tmp_path, **overrides))

    return run
