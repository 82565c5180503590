"""CSTWA's graph index (``graph_index: auto``): exact search up to a size, approximate above it,
with the graph's invariants kept."""

import logging

import numpy as np
import pytest
import torch
from conftest import random_vectors

from recbole_cstwa.model.multitask.cstwa.structure import build_graph, choose_index, nearest_neighbours


@pytest.mark.parametrize(("nodes", "expected"), [(40, "exact"), (41, "ivf")])
def test_auto_picks_exact_up_to_the_threshold(nodes, expected, caplog):
    assert choose_index("auto", nodes, 40)[0] == expected
    assert choose_index("auto", nodes, 40, gpu=True)[0] == "exact"
    assert choose_index("ivf", nodes, 40)[0] == "ivf"
    with caplog.at_level(logging.INFO):
        nearest_neighbours(
            random_vectors(nodes, 12), 4, index_type="auto", exact_max_nodes=40, log_name="item graph"
        )
    assert f"item graph: {expected} faiss search over {nodes} nodes" in caplog.text


def test_auto_below_the_threshold_is_the_exact_graph():
    vectors = random_vectors(60, 12)
    auto = build_graph(vectors, 5, index_type="auto", exact_max_nodes=1000)
    exact = build_graph(vectors, 5, index_type="exact")
    assert torch.equal(auto.indices(), exact.indices())
    assert torch.equal(auto.values(), exact.values())


def test_approximate_auto_graph_keeps_the_invariants():
    vectors = np.abs(random_vectors(300, 12))  # positive cosines: every one of the K edges is kept
    k = 6
    graph = build_graph(vectors, k, index_type="auto", exact_max_nodes=50)
    rows, columns = graph.indices().numpy()
    counts = np.bincount(rows, minlength=len(vectors))
    assert counts[0] == 1 and (counts[1:] == k).all()  # padding row: its own edge only
    # D^-1/2 A D^-1/2 with D the row sums of A: rebuild A from the cosines of the kept edges.
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    weights = np.where(rows == 0, 1.0, (unit[rows] * unit[columns]).sum(axis=1))
    degree = np.bincount(rows, weights=weights, minlength=len(vectors))
    expected = weights / np.sqrt(degree[rows] * degree[columns])
    np.testing.assert_allclose(graph.values().numpy(), expected, rtol=1e-4)
    assert ((rows == columns).sum()) == len(vectors)  # every node keeps its self edge
