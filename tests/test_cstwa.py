"""CSTWA: graph building, the three components, the switches, the trainer's cache, end to end."""

import copy

import numpy as np
import pytest
import torch
from conftest import random_vectors, tiny_config
from recbole.utils import init_seed

from recbole_cstwa.checkpoint import load_checkpoint
from recbole_cstwa.config import Config
from recbole_cstwa.data import create_dataset, data_preparation
from recbole_cstwa.errors import CheckpointError
from recbole_cstwa.model.abstract_recommender import MultiTaskRecommender
from recbole_cstwa.model.multitask.cstwa.artifact_cache import ArtifactCache
from recbole_cstwa.model.multitask.cstwa.cstwa import (
    CSTWA,
    PredictionWindow,
    curse_escaper_weights,
)
from recbole_cstwa.model.multitask.cstwa.structure import (
    RowGraph,
    build_graph,
    group_representations,
    nearest_neighbours,
    propagate_all,
    propagate_rows,
)
from recbole_cstwa.model.multitask.cstwa.trainer import CSTWATrainer
from recbole_cstwa.model.multitask.mlp import MLP
from recbole_cstwa.setting_checks import shaping_keys
from recbole_cstwa.settings import SETTINGS


# ----- helpers ---------------------------------------------------------------------------------
def _cosine(vectors):
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit @ unit.T


def _dense_graph(vectors, k, self_loop=True):
    """The graph of Eqs. 3-5 computed densely with numpy (no faiss): the reference."""
    similarity = _cosine(vectors)
    n = len(vectors)
    adjacency = np.zeros((n, n))
    for row in range(n):
        others = [j for j in np.argsort(-similarity[row], kind="stable") if j != row]
        chosen = ([row] + others[: k - 1]) if self_loop else others[:k]
        adjacency[row, chosen] = np.maximum(similarity[row, chosen], 0)
    degree = adjacency.sum(axis=1)
    scale = np.where(degree > 0, degree, 1) ** -0.5 * (degree > 0)
    return scale[:, None] * adjacency * scale[None, :]


@pytest.fixture
def build(make_config):
    """``build(**config)`` -> ``(model, train_data, config)``: a CSTWA model on the tiny data."""

    def make(model_class=CSTWA, **overrides):
        config = make_config(model_class.__name__, **overrides)
        train_data, _, _ = data_preparation(config, create_dataset(config))
        init_seed(config["seed"], True)
        model = model_class(config, train_data._dataset)
        return model, train_data, config

    return make


def _give_graphs(model, k=4):
    """Graphs from the model's own CVR embedding (any graph will do for these tests)."""
    graphs = []
    for group in ("user", "item"):
        with torch.no_grad():
            rows = group_representations(model.purchase_embedding, model.entity_features(group), group)
        graphs.append(build_graph(rows, k))
    model.set_graphs(*graphs)
    return graphs


# ----- graphs ----------------------------------------------------------------------------------
def test_graph_rows_hold_at_most_k_nonnegative_edges():
    k = 5
    graph = build_graph(random_vectors(60, 6), k)
    rows, _ = graph.indices()
    assert graph.shape == (60, 60) and graph.is_coalesced()
    assert torch.bincount(rows, minlength=60).max().item() <= k
    assert (graph.values() > 0).all()


@pytest.mark.parametrize("self_loop", [True, False])
def test_graph_normalisation_equals_dense_numpy(self_loop):
    vectors = random_vectors(9, 3, seed=3)  # 3 dimensions: many negative cosines among 9 vectors
    graph = build_graph(vectors, 4, self_loop=self_loop, padding_rows=0)
    expected = _dense_graph(vectors, 4, self_loop=self_loop)
    assert (_cosine(vectors) < 0).any()
    np.testing.assert_allclose(graph.to_dense().numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("self_loop", [True, False])
def test_exact_faiss_neighbours_equal_brute_force(self_loop):
    vectors = random_vectors(300, 10, seed=1)
    neighbours, similarities = nearest_neighbours(vectors, 8, self_loop=self_loop)
    similarity = _cosine(vectors)
    np.fill_diagonal(similarity, -np.inf)
    brute = np.argsort(-similarity, axis=1)[:, : 7 if self_loop else 8]
    found = neighbours[:, 1:] if self_loop else neighbours
    if self_loop:
        assert (neighbours[:, 0] == np.arange(300)).all()
        np.testing.assert_allclose(similarities[:, 0], 1.0, atol=1e-5)
    assert (np.sort(found, axis=1) == np.sort(brute, axis=1)).all()
    np.testing.assert_allclose(similarities[:, -1], similarity[np.arange(300), brute[:, -1]], atol=1e-5)


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_approximate_index_returns_k_neighbours(index_type):
    vectors = random_vectors(3000, 8, seed=2)
    settings = {"ivf_nlist": 16, "nprobe": 4, "hnsw_m": 16, "hnsw_ef_search": 32}
    neighbours, _ = nearest_neighbours(vectors, 8, index_type=index_type, **settings)
    exact, _ = nearest_neighbours(vectors, 8)
    assert neighbours.shape == (3000, 8) and (neighbours >= 0).all()
    recall = np.mean([len(set(a) & set(b)) / 8 for a, b in zip(neighbours, exact)])
    assert recall > 0.7
    graph = build_graph(vectors, 8, index_type=index_type, **settings)
    assert torch.bincount(graph.indices()[0]).max().item() <= 8


def test_padding_row_is_only_its_own_neighbour():
    graph = build_graph(random_vectors(20, 4), 4, padding_rows=1).to_dense()
    assert graph[0, 0] == 1 and graph[0, 1:].abs().sum() == 0 and graph[1:, 0].abs().sum() == 0


def test_symmetric_switch_gives_a_symmetric_graph():
    vectors = random_vectors(40, 4, seed=5)
    directed = build_graph(vectors, 3).to_dense()
    symmetric = build_graph(vectors, 3, symmetric=True).to_dense()
    assert not torch.allclose(directed, directed.T)
    torch.testing.assert_close(symmetric, symmetric.T)


@pytest.mark.parametrize("layers", [1, 2])
def test_row_propagation_equals_dense_product(layers):
    graph = build_graph(random_vectors(30, 4), 4)
    features = torch.randn(30, 6, dtype=torch.float64)
    dense = torch.linalg.matrix_power(graph.to_dense().double(), layers) @ features
    row_graph = RowGraph.from_sparse(graph)
    rows = torch.tensor([3, 7, 3, 29, 0])
    torch.testing.assert_close(
        propagate_rows(row_graph, rows, lambda ids: features[ids], layers), dense[rows]
    )
    torch.testing.assert_close(propagate_all(row_graph, features, layers), dense)


def test_bad_graph_settings_are_rejected(build):
    with pytest.raises(ValueError, match="graph_index"):
        build(graph_index="annoy")
    with pytest.raises(ValueError, match="sm_mode"):
        build(sm_mode="step")


# ----- Curse Escaper -------------------------------------------------------------------------------
# tau_low = 0.1, tau_high = 0.5, alpha = 3: false positive, neither, false negative (capped),
# neither, neither, false positive (capped), false negative, false negative at p = 0 (capped).
CE_P_CTR = [0.6, 0.6, 0.05, 0.05, 0.3, 0.9, 0.08, 0.0]
CE_PURCHASE = [0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0]


def test_curse_escaper_ratio_weights_equal_hand_computed_values():
    weights, false_positive, false_negative = curse_escaper_weights(
        torch.tensor(CE_P_CTR), torch.tensor(CE_PURCHASE), 0.1, 0.5, alpha=3, max_weight=4,
        form="ratio", return_masks=True,
    )  # fmt: skip
    # (0.6 / 0.5)^3 = 1.728; (0.1 / 0.05)^3 = 8 -> 4; (0.9 / 0.5)^3 = 5.832 -> 4; (0.1 / 0.08)^3 = 1.953125
    expected = [1.728, 1, 4, 1, 1, 4, 1.953125, 4]
    torch.testing.assert_close(weights, torch.tensor(expected))
    assert false_positive.tolist() == [True, False, False, False, False, True, False, False]
    assert false_negative.tolist() == [False, False, True, False, False, False, True, True]


def test_curse_escaper_margin_weights_equal_hand_computed_values():
    p_ctr, purchase = torch.tensor(CE_P_CTR), torch.tensor(CE_PURCHASE)
    weights = curse_escaper_weights(p_ctr, purchase, 0.1, 0.5, alpha=3, max_weight=4, form="margin")
    # 1 + 3 * 0.1 / 0.5; 1 + 3 * 0.05 / 0.1; 1 + 3 * 0.4 / 0.5; 1 + 3 * 0.02 / 0.1; 1 + 3 * 0.1 / 0.1
    expected = [1.6, 1, 2.5, 1, 1, 3.4, 1.6, 4]
    torch.testing.assert_close(weights, torch.tensor(expected))  # at most 1 + alpha: cap 4 never below
    capped = curse_escaper_weights(p_ctr, purchase, 0.1, 0.5, alpha=3, max_weight=3, form="margin")
    torch.testing.assert_close(capped, torch.tensor([1.6, 1, 2.5, 1, 1, 3, 1.6, 3]))


def test_curse_escaper_weights_are_one_at_the_thresholds():
    p_ctr, purchase = torch.tensor([0.5, 0.1]), torch.tensor([0.0, 1.0])
    for form in ("ratio", "margin"):
        weights = curse_escaper_weights(p_ctr, purchase, 0.1, 0.5, alpha=3, max_weight=4, form=form)
        torch.testing.assert_close(weights, torch.ones(2))


def test_curse_escaper_tally_counts_shares_and_mean_weights(build):
    model, train_data, _ = build(use_sm=False, ce_window=1000, ce_weight_form="ratio")
    model.ctr_window.push(torch.linspace(0, 1, 101))  # tau_low 0.1, tau_high 0.99
    p_ctr = torch.tensor([0.995, 0.995, 0.08, 0.05, 0.5, 0.999])
    purchase = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    model.sample_weights(p_ctr, purchase)  # not tallied
    model.sample_weights(p_ctr, purchase, tally=True)
    model.sample_weights(p_ctr[:2], purchase[:2], tally=True)
    tally = model.ce_tally.summary()
    fp = [(0.995 / 0.99) ** 3, (0.999 / 0.99) ** 3, (0.995 / 0.99) ** 3]
    fn = [(0.1 / 0.08) ** 3, 4.0]  # (0.1 / 0.05)^3 = 8 -> 4
    assert tally["rows"] == 8
    assert tally["fp_share"] == pytest.approx(3 / 8) and tally["fn_share"] == pytest.approx(2 / 8)
    assert tally["fp_mean_weight"] == pytest.approx(np.mean(fp), rel=1e-5)
    assert tally["fn_mean_weight"] == pytest.approx(np.mean(fn), rel=1e-5)
    assert tally["purchases"] == 4 and tally["fn_purchase_share"] == pytest.approx(2 / 4)
    assert model.ce_tally.summary(reset=False)["rows"] == 0  # read once, then afresh
    model.sample_weights(p_ctr, purchase, tally=True)
    assert model.ce_tally.summary(reset=False)["rows"] == 6  # a look leaves it as it is
    assert model.ce_tally.summary()["rows"] == 6


def test_prediction_window_keeps_the_last_n():
    window = PredictionWindow(5)
    assert len(window) == 0 and window.percentiles(10, 99) is None
    window.push(torch.tensor([1.0, 2.0, 3.0]))
    assert sorted(window.held().tolist()) == [1.0, 2.0, 3.0]
    window.push(torch.tensor([4.0, 5.0, 6.0, 7.0]))
    assert sorted(window.held().tolist()) == [3.0, 4.0, 5.0, 6.0, 7.0]
    window.push(torch.arange(10.0, 22.0))
    assert sorted(window.held().tolist()) == [17.0, 18.0, 19.0, 20.0, 21.0]


def test_model_weights_use_the_previous_window_only(build):
    model, train_data, _ = build(use_sm=False, ce_window=1000)
    batch = next(iter(train_data))
    click, purchase = model.labels(batch)
    p_ctr = torch.linspace(0, 1, len(batch))
    # Empty window: every weight is 1.
    assert (model.sample_weights(p_ctr, purchase) == 1).all()
    # Partly filled (101 of 1000): percentiles of what it holds, tau_low 0.1 and tau_high 0.99.
    model.ctr_window.push(torch.linspace(0, 1, 101))
    expected = curse_escaper_weights(p_ctr, purchase, 0.1, 0.99, 3, 4, form=model.ce_weight_form)
    torch.testing.assert_close(model.sample_weights(p_ctr, purchase), expected)
    assert (expected != 1).any()
    # calculate_loss weighs with the window as it was, then adds the batch (in training only).
    model.train()
    torch.manual_seed(0)
    output = model.forward(batch)
    weights = model.sample_weights(output["click"].detach(), purchase)
    expected_loss = model.bce(output["purchase"], purchase, weight=weights)
    torch.manual_seed(0)
    losses = model.calculate_loss(batch)
    torch.testing.assert_close(losses[1], expected_loss)
    assert len(model.ctr_window) == 101 + len(batch)
    model.eval()
    model.calculate_loss(batch)
    assert len(model.ctr_window) == 101 + len(batch)


def test_curse_escaper_defaults_weigh_with_the_training_mode_prediction(build):
    """The paper's reading by default: no warm-up, and the dropout-noised p_ctr of the training
    forward is what the weights and the window see."""
    model, train_data, config = build(use_sm=False)
    assert config["ce_eval_mode_ctr"] is False and config["ce_warmup_steps"] == 0
    batch = next(iter(train_data))
    model.train()
    output = model.forward(batch)
    torch.testing.assert_close(model.curse_escaper_ctr(output), output["click"].detach())
    model.ctr_window.push(torch.linspace(0, 1, 101))  # one step pushed: tau_low 0.1, tau_high 0.99
    p_ctr, purchase = torch.tensor([0.995, 0.05]), torch.tensor([0.0, 1.0])
    assert (model.sample_weights(p_ctr, purchase) > 1).all()  # re-weighted from the first step on


def test_eval_mode_ctr_is_the_click_prediction_without_dropout(build):
    # min_count 0: a training forward also shows rare users and items as unknown ones (a draw a
    # step), which an eval forward does not; this test is about dropout alone.
    model, train_data, _ = build(use_sm=False, ce_eval_mode_ctr=True, ce_window=100000, min_count=0)
    batch = next(iter(train_data))
    model.eval()
    with torch.no_grad():
        eval_p = model.forward(batch)["click"]
    model.train()
    torch.manual_seed(0)
    output = model.forward(batch)
    ce_ctr = model.curse_escaper_ctr(output)
    assert model.click_tower.training  # back in training mode
    assert not ce_ctr.requires_grad
    torch.testing.assert_close(ce_ctr, eval_p)
    assert not torch.allclose(output["click"], eval_p)  # dropout changes the training-mode p
    # calculate_loss weighs with it and adds it to the window (here the window was empty).
    torch.manual_seed(0)
    model.calculate_loss(batch)
    torch.testing.assert_close(model.ctr_window.held(), eval_p)


def test_no_reweighting_during_the_warm_up(build):
    model, train_data, _ = build(use_sm=False, ce_warmup_steps=2, ce_window=1000)
    p_ctr, purchase = torch.tensor([0.995, 0.05, 0.5]), torch.tensor([0.0, 1.0, 0.0])
    model.ctr_window.push(torch.linspace(0, 1, 101))  # tau_low 0.1, tau_high 0.99
    assert (model.sample_weights(p_ctr, purchase, tally=True) == 1).all()  # step 1 of 2
    assert model.ce_tally.summary()["fp_share"] == 0
    model.ctr_window.push(torch.linspace(0, 1, 101))
    weights = model.sample_weights(p_ctr, purchase)  # the warm-up is over
    assert weights[0] > 1 and weights[1] > 1 and weights[2] == 1
    # In training: the first ce_warmup_steps steps weigh nothing, the window fills meanwhile.
    model, train_data, _ = build(use_sm=False, ce_warmup_steps=2, ce_window=1000)
    model.train()
    batches = iter(train_data)
    for step in range(2):
        batch = next(batches)
        torch.manual_seed(step)
        output = model.forward(batch)
        unweighted = model.bce(output["purchase"], model.labels(batch)[1])
        torch.manual_seed(step)
        torch.testing.assert_close(model.calculate_loss(batch)[1], unweighted)
    assert len(model.ctr_window) == 2 * len(batch) and model.ctr_window.batches == 2
    tally = model.ce_tally.summary()
    assert tally["fp_share"] == 0 and tally["fn_share"] == 0 and tally["rows"] > 0


def test_curse_escaper_off_gives_unit_weights(build):
    model, train_data, _ = build(use_sm=False, use_ce=False)
    batch = next(iter(train_data))
    assert model.ctr_window is None
    assert (model.sample_weights(torch.rand(len(batch)), model.labels(batch)[1]) == 1).all()


# ----- Click Perceptron ---------------------------------------------------------------------------
def test_click_perceptron_scales_the_purchase_input(build):
    model, train_data, _ = build(use_sm=False)
    model.eval()
    output = model(next(iter(train_data)))
    info = output["info"]
    assert info.shape == output["purchase_input"].shape
    assert (info > 0).all() and (info < 2).all()
    torch.testing.assert_close(output["purchase_tower_input"], output["purchase_input"] * info)


def test_click_perceptron_off_feeds_x_cvr_unchanged(build):
    model, train_data, _ = build(use_sm=False, use_cp=False)
    output = model(next(iter(train_data)))
    assert model.info_layer is None and output["info"] is None
    assert output["purchase_tower_input"] is output["purchase_input"]


# ----- Structure Migrator --------------------------------------------------------------------------
def test_structure_migrator_mix_equals_its_formula(build):
    model, train_data, _ = build(sm_lambda=0.3)
    user_graph, _ = _give_graphs(model)
    batch = next(iter(train_data))
    model.train()
    model.update_structure()
    with torch.no_grad():
        everyone = group_representations(model.purchase_embedding, model.entity_features("user"), "user")
        propagated = user_graph.to_dense() @ everyone
        live = model.purchase_embedding(batch, "user")[0].flatten(1)
        expected = 0.7 * live + 0.3 * propagated[batch["user_id"]]
        width = live.shape[1]
        torch.testing.assert_close(model.purchase_input(batch)[:, :width], expected)
    assert not torch.allclose(expected, live)


def test_structure_migrator_off_keeps_live_rows(build):
    model, train_data, _ = build(use_sm=False)
    batch = next(iter(train_data))
    with torch.no_grad():  # no draws of rare users shown as unknown (min_count) between the calls
        live = model.purchase_embedding(batch, "user")[0].flatten(1)
        torch.testing.assert_close(model.purchase_input(batch)[:, : live.shape[1]], live)
        torch.testing.assert_close(
            model.purchase_input(batch), model.embed_input(batch, model.purchase_embedding)
        )


def test_epoch_mode_does_not_mix_before_the_first_update(build):
    model, train_data, _ = build()
    _give_graphs(model)
    batch = next(iter(train_data))
    with torch.no_grad():
        torch.testing.assert_close(
            model.purchase_input(batch), model.embed_input(batch, model.purchase_embedding)
        )


def test_batch_mode_equals_epoch_mode_and_trains_neighbours(build):
    model, train_data, _ = build()
    _give_graphs(model)
    batch = next(iter(train_data))
    model.eval()
    model.update_structure()
    with torch.no_grad():
        by_epoch = model.purchase_input(batch)
        model.sm_mode = "batch"
        by_batch = model.purchase_input(batch)
    torch.testing.assert_close(by_batch, by_epoch)
    # Batch mode: gradients reach the table rows of neighbours outside the batch.
    model.train()
    model.purchase_input(batch).sum().backward()
    table = model.purchase_embedding.token_table.weight.grad.to_dense()  # sparse by default
    touched_batch_mode = int((table.abs().sum(1) > 0).sum())
    model.zero_grad()
    model.sm_mode = "epoch"
    model.purchase_input(batch).sum().backward()
    epoch_grad = model.purchase_embedding.token_table.weight.grad.to_dense()
    touched_epoch_mode = int((epoch_grad.abs().sum(1) > 0).sum())
    assert touched_batch_mode > touched_epoch_mode


def test_held_p_changes_only_on_update_and_travels_with_the_state_dict(build):
    model, train_data, _ = build()
    _give_graphs(model)
    batch = next(iter(train_data))
    model.update_structure()

    def propagated_part():
        with torch.no_grad():
            live = model.purchase_embedding(batch, "user")[0].flatten(1)
            return model.migrated_rows(batch, "user") - 0.7 * live

    before = propagated_part()
    with torch.no_grad():
        model.purchase_embedding.token_table.weight.mul_(2.0)  # an "optimizer step"
    for mode in (True, False):  # neither training nor evaluation recomputes P by itself
        model.train(mode)
        torch.testing.assert_close(propagated_part(), before)
    state = {name: value.clone() for name, value in model.state_dict().items()}
    model.update_structure()
    torch.testing.assert_close(propagated_part(), 2 * before)
    model.load_state_dict(state)  # a checkpoint brings back the P its training used
    torch.testing.assert_close(propagated_part(), before)


def _fit_recording_p(make_config, **overrides):
    """Trains CSTWA with its trainer; records, at every training step, the held user P (or None)."""
    settings = {"epochs": 3, "stopping_step": 10, "cstwa_cache": False, "sm_refresh_steps": 0}
    config = make_config("CSTWA", **{**settings, **overrides})
    init_seed(config["seed"], True)
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    model = CSTWA(config, train_data._dataset)
    trainer = CSTWATrainer(config, model)
    initial_embedding = copy.deepcopy(model.purchase_embedding)
    used, valid_scores = [], []
    train_loss = model.calculate_loss

    def recording_loss(interaction):
        graph = model.structure["user"]
        used.append(graph.propagated.clone() if bool(graph.ready) else None)
        return train_loss(interaction)

    model.calculate_loss = recording_loss
    trainer.fit(
        train_data, valid_data, saved=True, callback_fn=lambda epoch, score: valid_scores.append(score)
    )
    return model, trainer, train_data, valid_data, initial_embedding, used, valid_scores


@pytest.fixture(scope="module")
def fit_with_four_first_epoch_refreshes(tiny_data_path, tmp_path_factory):
    """:func:`_fit_recording_p` with P refreshed 4 times in the first epoch, trained once for the
    tests that read its schedule and its evaluation."""
    folder = tmp_path_factory.mktemp("cstwa-fit")

    def make_config(model, **overrides):
        return Config(model=model, config_dict=tiny_config(tiny_data_path, folder, **overrides))

    return _fit_recording_p(make_config, sm_first_epoch_refreshes=4)


def test_no_training_step_uses_p_of_the_initial_embedding(fit_with_four_first_epoch_refreshes):
    model, trainer, train_data, _, initial_embedding, used, _ = fit_with_four_first_epoch_refreshes
    steps = len(train_data)
    assert len(used) == 3 * steps
    first_epoch = trainer.first_epoch_refresh_steps(steps)
    assert first_epoch == [1, 2, 4, 5] and steps == 7  # 4 refreshes spread over 7 steps
    assert trainer.structure_updates == first_epoch + [steps, 2 * steps]  # then at each epoch start
    assert used[0] is None  # the first step has no P (the embedding is still the initial one)
    graph = copy.deepcopy(model.structure["user"])
    graph.refresh(initial_embedding)  # the P the random initial embedding would give
    for p in used[1:]:
        assert p is not None and not torch.allclose(p, graph.propagated)
    assert torch.equal(used[steps], used[2 * steps - 1])  # held for a later epoch


def test_evaluation_uses_the_p_of_the_last_training_step(fit_with_four_first_epoch_refreshes):
    model, trainer, _, valid_data, _, used, valid_scores = fit_with_four_first_epoch_refreshes
    torch.testing.assert_close(model.structure["user"].propagated, used[-1])
    # The best checkpoint, reloaded, is scored with the P of its own epoch's last step.
    result = trainer.evaluate(valid_data, load_best_model=True)
    steps = len(used) // 3
    # RecBole keeps the later of two epochs with the same (4-decimal) score (early_stopping's >=)
    best_epoch = max(range(3), key=lambda epoch: (valid_scores[epoch], epoch))
    torch.testing.assert_close(model.structure["user"].propagated, used[(best_epoch + 1) * steps - 1])
    assert model.structure_used()
    assert result["purchase_auc"] == pytest.approx(valid_scores[best_epoch])


def test_refresh_every_n_steps(make_config):
    model, trainer, train_data, _, _, used, _ = _fit_recording_p(make_config, sm_refresh_steps=2)
    steps = len(train_data)
    later = [step for step in range(steps, 3 * steps) if step % 2 == 0]
    assert trainer.structure_updates == trainer.first_epoch_refresh_steps(steps) + later
    torch.testing.assert_close(model.structure["user"].propagated, used[-1])


def test_batch_mode_is_not_scheduled(make_config):
    _, trainer, _, _, _, used, _ = _fit_recording_p(make_config, sm_mode="batch")
    assert trainer.structure_updates == [] and all(p is None for p in used)


@pytest.mark.parametrize("sm_mode", ["epoch", "update", "batch"])
def test_model_kept_after_its_first_epoch_trained_and_is_scored_with_the_structure(make_config, sm_mode):
    """One epoch: the kept checkpoint is the first epoch's; it must have used the Structure
    Migrator in training, hold what it used, and be scored with it."""
    config = make_config("CSTWA", epochs=1, cstwa_cache=False, sm_mode=sm_mode)
    init_seed(config["seed"], True)
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    model = CSTWA(config, train_data._dataset)
    trainer = CSTWATrainer(config, model)
    trainer.fit(train_data, valid_data, saved=True)
    steps = len(train_data)
    first_refresh = 0 if sm_mode == "batch" else trainer.first_epoch_refresh_steps(steps)[0]
    state = load_checkpoint(trainer.saved_model_file)["state_dict"]
    assert int(state["structure_steps"]) == steps - first_refresh > 0
    assert int(state["trained_steps"]) == steps  # the kept model's training steps, with P or not
    if sm_mode != "batch":
        assert bool(state["structure.user.ready"]) and bool(state["structure.item.ready"])
    result = trainer.evaluate(valid_data, load_best_model=True)
    assert model.structure_used()
    assert model.kept_model_facts() == {
        "sm_used": True,
        "sm_steps": steps - first_refresh,
        "trained_steps": steps,
    }
    if sm_mode == "epoch":  # scoring reads the held P: without it the scores change
        for graph in model.structure.values():
            graph.ready.fill_(False)
        assert trainer.evaluate(valid_data, load_best_model=False)["purchase_auc"] != result["purchase_auc"]
    assert len(trainer.curse_escaper_epochs) == 1
    assert trainer.curse_escaper_epochs[0]["rows"] == len(train_data.dataset)
    quarter = trainer.curse_escaper_first_quarter  # the first steps // 4 steps, logged apart
    assert quarter["rows"] == (steps // 4) * config["train_batch_size"] > 0


def test_a_checkpoint_written_before_steps_were_counted_loads_without_them(build):
    model, _, _ = build()
    state = model.state_dict()
    del state["trained_steps"]
    from recbole_cstwa.checkpoint import check_parameters_fit

    check_parameters_fit(model, {"state_dict": state}, "old.pth")  # the check every reader makes
    model.load_state_dict(state)  # strict, as the trainers load
    assert model.kept_model_facts() == {"sm_used": False, "sm_steps": 0, "trained_steps": None}
    del state["structure_steps"]  # what no earlier version lacked is still a mismatch
    with pytest.raises(CheckpointError, match="structure_steps"):
        check_parameters_fit(model, {"state_dict": state}, "edited.pth")


def test_update_mode_writes_eq_10_into_the_id_rows_only(build):
    # one row an id (min_count 0), so that the id rows are a slice of the table
    model, train_data, _ = build(sm_mode="update", sm_lambda=0.3, min_count=0)
    user_graph, _ = _give_graphs(model)
    embedding = model.purchase_embedding
    table_before = embedding.token_table.weight.detach().clone()
    start, users = embedding.token_offset["user_id"], model.num_entities("user")
    item_start, items = embedding.token_offset["item_id"], model.num_entities("item")
    assert not model.structure_acts()
    model.update_structure()
    assert model.structure_acts()
    table = embedding.token_table.weight.detach()
    ids = table_before[start : start + users]
    torch.testing.assert_close(table[start : start + users], 0.7 * ids + 0.3 * (user_graph.to_dense() @ ids))
    changed = torch.zeros(len(table), dtype=torch.bool)
    changed[start : start + users] = True
    changed[item_start : item_start + items] = True
    assert torch.equal(table[~changed], table_before[~changed])  # profile and context rows stay
    batch = next(iter(train_data))
    with torch.no_grad():  # the input reads the updated rows, with nothing mixed in
        torch.testing.assert_close(model.purchase_input(batch), model.embed_input(batch, embedding))


# ----- all switches off = MLP ---------------------------------------------------------------------
def test_all_switches_off_is_the_mlp(build):
    off = {"use_sm": False, "use_cp": False, "use_ce": False, "use_calibration": False}
    cstwa, train_data, _ = build(**off)
    mlp, _, _ = build(MLP)
    cstwa_state, mlp_state = cstwa.state_dict(), mlp.state_dict()
    assert {k: v.shape for k, v in cstwa_state.items()} == {k: v.shape for k, v in mlp_state.items()}
    for name, value in mlp_state.items():  # same seed, same construction order: same values
        torch.testing.assert_close(cstwa_state[name], value)
    batch = next(iter(train_data))
    cstwa.eval()
    mlp.eval()
    cstwa_losses, mlp_losses = cstwa.calculate_loss(batch), mlp.calculate_loss(batch)
    assert len(cstwa_losses) == len(mlp_losses) == 2
    for ours, theirs in zip(cstwa_losses, mlp_losses):
        torch.testing.assert_close(ours, theirs)
    # The ablation rows keep the calibration term: a third loss part.
    assert len(build(**{**off, "use_calibration": True})[0].calculate_loss(batch)) == 3


# ----- trainer: stages and cache ---------------------------------------------------------------------
@pytest.mark.slow
def test_artifact_cache_is_reused_and_rebuilt_when_k_changes(cstwa_stages):
    stages = cstwa_stages
    first, first_model = stages()
    assert [event[:2] for event in first.cache_events] == [("pretrain", "computed"), ("graphs", "computed")]
    again, again_model = stages()
    assert [event[:2] for event in again.cache_events] == [("pretrain", "loaded"), ("graphs", "loaded")]
    for group in ("user", "item"):
        torch.testing.assert_close(first_model.graph(group).values, again_model.graph(group).values)
    other_k, _ = stages(graph_top_k=4)
    assert [event[:2] for event in other_k.cache_events] == [("pretrain", "loaded"), ("graphs", "computed")]
    uncached, _ = stages(cstwa_cache=False)
    assert [event[:2] for event in uncached.cache_events] == [
        ("pretrain", "computed"),
        ("graphs", "computed"),
    ]
    off, _ = stages(use_sm=False)
    assert off.pre_training_stages() == [] and off.cache_events == []


def test_cache_miss_names_the_changed_setting(tmp_path):
    cache = ArtifactCache(str(tmp_path), "CSTWA-x")
    cache.save("graphs", {"graph_top_k": 8, "seed": 1}, {"values": torch.ones(2)})
    artifact, _, _ = cache.load("graphs", {"graph_top_k": 8, "seed": 1})
    torch.testing.assert_close(artifact["values"], torch.ones(2))
    artifact, _, reason = cache.load("graphs", {"graph_top_k": 4, "seed": 1})
    assert artifact is None and "graph_top_k: 8 -> 4" in reason and "seed" not in reason


#: Keys the pre-training and graph stages read that their cache key leaves out, and why it may.
READ_WITHOUT_SHAPING = {
    "device": "where the stages run, not what they compute",
    "checkpoint_dir": "where the cache lies",
    "cstwa_cache": "whether the cache is used",
    # the click AUC that pre-training logs after each epoch (progress only)
    "eval_args": "the logged click AUC",
    "metric_decimal_place": "the logged click AUC",
    "topk": "the logged click AUC",
    "reg_weight": "RecBole's optimizer builder reads it for a warning only",
    # with embedding_update and learner they decide whether sparse updates apply
    "single_spec": "keyed as sparse_updates",
    "enable_amp": "keyed as sparse_updates",
    "enable_scaler": "keyed as sparse_updates",
    # which fields are embedded
    "PURCHASE_FIELD": "keyed as fields",
    "LABEL_FIELD": "keyed as fields",
    "numerical_features": "keyed as fields",
}


@pytest.mark.slow
def test_every_key_the_cached_stages_read_is_in_their_cache_key(make_config, monkeypatch):
    """The cache keys come from the settings table (its ``shapes``), not from a hand-kept list:
    every config key the pre-training stage reads, or the model's shared pieces read (the CTR
    model is built from its embedding, tower and Eq. 7 input), is in the pre-trained
    embedding's key; every key the graph stage reads is in the graphs' key."""
    config = make_config("CSTWA")
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    read = {"pretrain": set(), "graphs": set()}
    recording = []  # the stage whose reads are recorded now, if any

    def recorded_getitem(self, key, getitem=Config.__getitem__):
        if recording and self is config:
            read[recording[-1]].add(key)
        return getitem(self, key)

    def recorded_init(self, *args, base_init=MultiTaskRecommender.__init__):
        recording.append("pretrain")
        try:
            base_init(self, *args)
        finally:
            recording.pop()

    monkeypatch.setattr(Config, "__getitem__", recorded_getitem)
    monkeypatch.setattr(MultiTaskRecommender, "__init__", recorded_init)
    trainer = CSTWATrainer(config, CSTWA(config, train_data._dataset))
    for name, stage in trainer.pre_training_stages():
        recording.append(name)
        stage(train_data, valid_data, False)
        recording.pop()
    assert [event[:2] for event in trainer.cache_events] == [("pretrain", "computed"), ("graphs", "computed")]
    pretrain_key = set(trainer._pretrain_settings(train_data._dataset))
    graph_key = set(trainer._graph_settings(train_data._dataset))
    assert read["pretrain"] - pretrain_key - set(READ_WITHOUT_SHAPING) == set()
    assert read["graphs"] - graph_key - set(READ_WITHOUT_SHAPING) == set()
    assert {"graph_top_k", "graph_self_loop", "embedding_size", "pretrain_epochs"} <= read["graphs"] | read[
        "pretrain"
    ]


def test_cache_keys_hold_the_settings_that_apply(make_config):
    """The table marks what shapes each stage; a graph index's own settings shape the graphs
    only under that index, and nothing is keyed when the stages do not run."""
    values = dict(make_config("CSTWA").final_config_dict)

    def keys(stage, **overrides):
        return set(shaping_keys(SETTINGS, stage, {**values, **overrides}, "CSTWA", multitask=True))

    assert keys("pretrain") == {
        "embedding_update",
        "embedding_size",
        "embedding_init_std",
        "min_count",
        "context_pooling",
        "tower_hidden_size",
        "tower_dropout",
        "learner",
        "weight_decay",
        "train_batch_size",
        "seed",
        "shuffle",
        "pretrain_epochs",
        "pretrain_learning_rate",
    }
    graphs = {"graph_top_k", "graph_self_loop", "graph_symmetric", "graph_index"}
    ivf, hnsw = {"graph_ivf_nlist", "graph_nprobe"}, {"graph_hnsw_m", "graph_hnsw_ef_search"}
    assert keys("graphs", graph_index="exact") == graphs
    assert keys("graphs", graph_index="ivf") == graphs | ivf
    assert keys("graphs", graph_index="hnsw") == graphs | hnsw
    assert keys("graphs", graph_index="auto") == graphs | ivf | hnsw | {"graph_exact_max_nodes"}
    assert keys("graphs", use_sm=False) == set()


# ----- end to end ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_one_epoch_epoch_mode_same_result_from_cache(run_tiny):
    first = run_tiny("CSTWA")
    assert set(first["stage_times"]) == {"pretrain", "graphs", "train"}
    second = run_tiny("CSTWA")  # pre-trained embedding and graphs now read from the cache
    assert second["test_result"] == first["test_result"]


@pytest.mark.slow
def test_one_epoch_batch_mode_two_layers(run_tiny):
    result = run_tiny("CSTWA", sm_mode="batch", sm_layers=2)
    # The kept model propagated its two-hop neighbourhoods in training and is scored with them.
    assert result["sm_used"] is True and result["epochs_trained"] == 1
    assert result["sm_steps"] == result["trained_steps"] > 0  # batch mode: P in every step
