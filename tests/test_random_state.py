"""The random states as plain data, restored exactly, and a block run under its own seed."""

import random

import numpy as np
import torch

from recbole_cstwa.random_state import isolated_random_state, random_state, restore_random_state


class Loader:
    def __init__(self):
        self.generator = torch.Generator().manual_seed(7)


def _draws(loader):
    return (
        torch.rand(3).tolist(),
        np.random.rand(3).tolist(),
        [random.random() for _ in range(3)],
        torch.rand(3, generator=loader.generator).tolist(),
    )


def test_a_saved_state_restores_every_stream():
    loader = Loader()
    state = random_state(loader.generator)
    first = _draws(loader)
    loader.generator.set_state(restore_random_state(state))
    assert _draws(loader) == first


def test_an_isolated_block_is_seeded_and_shifts_nothing_after_it():
    loader = Loader()
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    expected = _draws(Loader())  # what the streams give next when nothing runs in between
    loader = Loader()
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    with isolated_random_state(11, loader):
        inside = torch.rand(2).tolist(), torch.rand(2, generator=loader.generator).tolist()
        np.random.rand(5), random.random()
    assert _draws(loader) == expected
    torch.manual_seed(11)
    assert inside == (
        torch.rand(2).tolist(),
        torch.rand(2, generator=torch.Generator().manual_seed(11)).tolist(),
    )
