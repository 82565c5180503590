"""The random states a run draws from (torch's, CUDA's, numpy's, Python's and a data loader's), as
plain data: saved in a checkpoint, so that a resumed run goes on as the interrupted one would have
(:mod:`recbole_cstwa.checkpoint`), and set aside around a stage that must not shift them (CSTWA's
pre-training, :func:`isolated_random_state`)."""

import random
from contextlib import contextmanager

import numpy as np
import torch


def random_state(loader_generator=None):
    """torch's, numpy's and Python's random states (and a data loader's), as plain data."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [
            name,
            torch.from_numpy(keys.astype(np.int64)),
            int(position),
            int(has_gauss),
            float(cached_gaussian),
        ],
        "python": [version, list(internal), gauss_next],
        "loader": loader_generator.get_state() if loader_generator is not None else None,
    }


def restore_random_state(state):
    """Sets the states :func:`random_state` saved; returns the loader's (set by the caller)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    return state["loader"]


@contextmanager
def isolated_random_state(seed, data_loader=None):
    """Runs a block under its own seeded random state, then restores the previous one.

    Covers torch (CPU and CUDA), numpy, ``random`` and the data loader's shuffling generator, so
    that a stage run before training (or skipped because it was cached) does not shift the
    random numbers the training itself draws. The block starts with torch and the loader seeded
    with ``seed``.
    """
    generator = getattr(data_loader, "generator", None)
    saved = random_state(generator)
    torch.manual_seed(seed)
    if generator is not None:
        generator.manual_seed(seed)
    try:
        yield
    finally:
        loader_state = restore_random_state(saved)
        if loader_state is not None:
            generator.set_state(loader_state)
