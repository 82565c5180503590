"""RecBole's exhaustive hyper-parameter search, fixed for hyperopt >= 0.2.7.

RecBole's ``exhaustive_search`` (``recbole/trainer/hyper_tuning.py``) samples with
``np.random.RandomState``; hyperopt >= 0.2.7 samples with ``rng.integers``, which only
``np.random.Generator`` has, so ``algo="exhaustive"`` fails with an AttributeError (RecBole
issues #1081, #1240, #1320, #1868). It also finds new grid points by drawing at random until an
untried one comes up (giving up after 1,000 draws), so on a grid of n points the last one is
missed with probability (1 - 1/n) ** 1000: 37% for n = 1,000. And RecBole's ``_spacesize``
fails on a choice whose options are lists. The functions below enumerate the grid instead.
"""

import re

import numpy as np


def _choice_nodes(space):
    """The ``hp.choice`` nodes of a hyperopt space: ``{label: number of options}``.

    Raises:
        ValueError: for a choice nested in another choice's options (a conditional space): its
            grid points are not a product, and RecBole's params files never write one.
    """
    from hyperopt.pyll import as_apply, dfs

    choices, nested = {}, []
    for node in dfs(as_apply(space)):
        if node.name != "switch" or node.pos_args[0].name != "hyperopt_param":
            continue
        choices[node.pos_args[0].pos_args[0].obj] = len(node.pos_args) - 1
        for option in node.pos_args[1:]:
            nested += [
                inner.pos_args[0].pos_args[0].obj
                for inner in dfs(option)
                if inner.name == "switch" and inner.pos_args[0].name == "hyperopt_param"
            ]
    if nested:
        raise ValueError(
            f"Exhaustive search needs a flat space, but choice(s) {sorted(set(nested))} sit inside "
            "another choice's options. Write every parameter on its own line of the params file."
        )
    return choices


def grid_size(space):
    """Number of grid points of a hyperopt space: the product of its choices' option counts.

    Continuous parameters (uniform, quniform, loguniform) do not count: each grid point gets one
    draw of them, as in RecBole (a space without choices has one grid point).
    """
    return int(np.prod(list(_choice_nodes(space).values()), dtype=np.int64))


def _hyperopt_rng(seed):
    """The random generator type the installed hyperopt samples with (``integers`` from 0.2.7)."""
    import hyperopt

    version = tuple(int(part) for part in re.findall(r"\d+", hyperopt.__version__)[:3])
    return np.random.default_rng(seed) if version >= (0, 2, 7) else np.random.RandomState(seed)


def exhaustive_search(new_ids, domain, trials, seed):
    """A hyperopt ``algo`` that visits every grid point of a flat space exactly once.

    Drop-in for RecBole's ``exhaustive_search``: pass it as ``HyperTuning(algo=...)`` with
    ``max_evals=grid_size(space)``. The untried grid points are taken in a random order drawn
    from ``seed`` (so a search cut short is still spread over the grid); continuous parameters
    are drawn with ``np.random.default_rng(seed)`` (a ``RandomState`` on hyperopt < 0.2.7). Returns no trial once the grid is used up,
    which ends ``fmin``.
    """
    from hyperopt import pyll
    from hyperopt.base import miscs_update_idxs_vals

    choices = _choice_nodes(domain.expr)
    labels = sorted(choices)
    shape = tuple(choices[label] for label in labels)
    tried = {
        tuple(int(trial["misc"]["vals"][label][0]) for label in labels)
        for trial in trials.trials
        if all(trial["misc"]["vals"].get(label) for label in labels)
    }
    size = int(np.prod(shape, dtype=np.int64))
    tried_flat = [int(np.ravel_multi_index(point, shape)) for point in tried] if labels else [0] * len(tried)
    untried = np.setdiff1d(np.arange(size), np.asarray(tried_flat, dtype=np.int64))
    rng = _hyperopt_rng(seed)
    picked = rng.permutation(untried)[: len(new_ids)]

    docs = []
    for new_id, flat_index in zip(new_ids, picked):
        idxs, vals = pyll.rec_eval(domain.s_idxs_vals, memo={domain.s_new_ids: [new_id], domain.s_rng: rng})
        for label, option in zip(labels, np.unravel_index(int(flat_index), shape)):
            idxs[label], vals[label] = [new_id], [int(option)]
        misc = {"tid": new_id, "cmd": domain.cmd, "workdir": domain.workdir}
        miscs_update_idxs_vals([misc], idxs, vals)
        docs += trials.new_trial_docs([new_id], [None], [domain.new_result()], [misc])
    return docs
