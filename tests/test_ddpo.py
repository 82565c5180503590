"""DDPO: its loss against the paper's Eqs. 6, 9, 10, 15-18 on a hand-computable batch, its
outputs, sparse embedding updates and one epoch of training."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from recbole_cstwa.config import Config
from recbole_cstwa.data import create_dataset, data_preparation
from recbole_cstwa.registry import get_model
from recbole_cstwa.tools.generator import generate
from recbole_cstwa.trainer import MultiTaskTrainer

AUC_DATA = "ddpo-auc"
SEED = 0
#: A four-row batch: a click with a purchase, a click without, two rows without a click.
CLICKS = [1.0, 1.0, 0.0, 0.0]
PURCHASES = [1.0, 0.0, 0.0, 0.0]
P_CLICK = [0.5, 0.25, 0.2, 0.6]
P_CVR = [0.4, 0.1, 0.3, 0.05]
P_CONVERSION = [0.3, 0.2, 0.1, 0.4]


@pytest.fixture
def build(make_config):
    """``build(**config)`` -> (DDPO in eval mode, train data, valid data), seeded."""

    def make(**overrides):
        config = make_config("DDPO", **overrides)
        train_data, valid_data, _ = data_preparation(config, create_dataset(config))
        torch.manual_seed(0)
        model = get_model("DDPO")(config, train_data._dataset)
        model.eval()
        return model, train_data, valid_data

    return make


def _bce(p, y):
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def _fixed_outputs(model, requires_grad=False):
    """Makes ``model.forward`` return the fixed probabilities above (leaf tensors)."""
    leaves = {
        "click": torch.tensor(P_CLICK, dtype=torch.float32, requires_grad=requires_grad),
        "cvr": torch.tensor(P_CVR, dtype=torch.float32, requires_grad=requires_grad),
        "conversion_propensity": torch.tensor(P_CONVERSION, dtype=torch.float32, requires_grad=requires_grad),
    }
    model.forward = lambda interaction: {**leaves, "purchase": leaves["click"] * leaves["cvr"]}
    return leaves


def _labelled_batch(train_data):
    batch = next(iter(train_data))[: len(CLICKS)]
    batch["click"] = torch.tensor(CLICKS)
    batch["purchase"] = torch.tensor(PURCHASES)
    return batch


def test_loss_parts_are_the_papers_equations_by_hand(build):
    weights = {
        "ddpo_click_weight": 0.5,
        "ddpo_conversion_weight": 2.0,
        "ddpo_cvr_weight": 3.0,
        "ddpo_ctcvr_weight": 0.25,
    }
    model, train_data, _ = build(**weights)
    _fixed_outputs(model)
    click_part, conversion_part, cvr_part, ctcvr_part = (
        p.item() for p in model.calculate_loss(_labelled_batch(train_data))
    )
    n = len(CLICKS)
    # Eq. 16: click propensity BCE over all rows.
    click_loss = sum(_bce(p, o) for p, o in zip(P_CLICK, CLICKS)) / n
    # Eq. 6: conversion propensity BCE on the clicked rows, divided by all rows.
    conversion_loss = (_bce(0.3, 1.0) + _bce(0.2, 0.0)) / n
    # Eqs. 9, 10, 15: soft labels min(r + r_c, 1) = 1 and 0.2 on the clicked rows, r_c = 0.1 and 0.4
    # on the others; self-normalised inverse propensities: 1/0.5 = 2 and 1/0.25 = 4 -> 1/3, 2/3;
    # 1/(1-0.2) = 1.25 and 1/(1-0.6) = 2.5 -> 1/3, 2/3.
    clicked = (1 / 3) * _bce(0.4, 1.0) + (2 / 3) * _bce(0.1, 0.2)
    unclicked = (1 / 3) * _bce(0.3, 0.1) + (2 / 3) * _bce(0.05, 0.4)
    cvr_loss = (clicked + unclicked) / n
    # Eq. 17: CTCVR = o_hat * r_hat against the purchase label, all rows.
    ctcvr_loss = sum(_bce(o * r, y) for o, r, y in zip(P_CLICK, P_CVR, PURCHASES)) / n
    assert click_part == pytest.approx(0.5 * click_loss, rel=1e-6)
    assert conversion_part == pytest.approx(2.0 * conversion_loss, rel=1e-6)
    assert cvr_part == pytest.approx(3.0 * cvr_loss, rel=1e-6)
    assert ctcvr_part == pytest.approx(0.25 * ctcvr_loss, rel=1e-6)


def test_cvr_loss_trains_the_cvr_side_only_and_each_side_may_be_empty(build):
    """Targets and propensity weights carry no gradient (the official code detaches them); a
    batch without clicks (or without non-clicks) gives that side 0, not 0 / 0."""
    model, train_data, _ = build()
    leaves = _fixed_outputs(model, requires_grad=True)
    batch = _labelled_batch(train_data)
    cvr_part = model.calculate_loss(batch)[2]
    cvr_part.backward()
    assert leaves["click"].grad is None or not leaves["click"].grad.any()
    assert leaves["conversion_propensity"].grad is None or not leaves["conversion_propensity"].grad.any()
    assert leaves["cvr"].grad.abs().min() > 0  # every row, clicked or not, trains the CVR head

    p_cvr, p_conversion, p_click = (
        torch.tensor(v, dtype=torch.float64) for v in (P_CVR, P_CONVERSION, P_CLICK)
    )
    for clicks in ([0.0] * 4, [1.0] * 4):
        batch["click"] = torch.tensor(clicks)
        batch["purchase"] = torch.zeros(4)
        cvr_part = model.calculate_loss(batch)[2]
        # only one side: its weights sum to 1 over the four rows
        if clicks[0]:
            weights = (1 / p_click) / (1 / p_click).sum()
            targets = p_conversion  # no purchase: the soft label is r_c
        else:
            weights = (1 / (1 - p_click)) / (1 / (1 - p_click)).sum()
            targets = p_conversion
        expected = (weights * F.binary_cross_entropy(p_cvr, targets, reduction="none")).sum() / 4
        assert torch.isfinite(cvr_part) and cvr_part.item() == pytest.approx(expected.item(), rel=1e-6)


def test_outputs_are_probabilities_with_their_meaning(build):
    model, train_data, _ = build()
    batch = next(iter(train_data))
    with torch.no_grad():
        output = model(batch)
        tasks = model.predict_tasks(batch)
    assert set(tasks) == {"click", "purchase", "cvr"}
    for name in ("click", "cvr", "purchase", "conversion_propensity"):
        assert output[name].shape == (len(batch),)
        assert ((output[name] > 0) & (output[name] < 1)).all(), name
    # pCTCVR = pCTR * pCVR: the impression-level purchase probability; cvr is its own head
    torch.testing.assert_close(output["purchase"], output["click"] * output["cvr"], rtol=0, atol=0)
    torch.testing.assert_close(tasks["purchase"], model.predict(batch))
    # the CVR head reads the click and conversion towers through the causal transfer modules
    with torch.no_grad():
        model.conversion_info[0].weight.mul_(3.0)
        moved = model(batch)
    assert not torch.allclose(moved["cvr"], output["cvr"])
    torch.testing.assert_close(moved["click"], output["click"])


def test_sparse_and_dense_embedding_updates_give_the_same_loss_and_gradient(build):
    dense, train_data, _ = build(embedding_update="dense")
    sparse, _, _ = build(embedding_update="sparse")
    batch = next(iter(train_data))
    losses = []
    for model in (dense, sparse):
        model.train()
        torch.manual_seed(1)  # the same dropout masks
        loss = sum(model.calculate_loss(batch))
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == losses[1]
    table = sparse.embedding.token_table.weight.grad
    assert table.is_sparse
    torch.testing.assert_close(
        table.to_dense(), dense.embedding.token_table.weight.grad, rtol=1e-6, atol=1e-9
    )
    assert MultiTaskTrainer(sparse.config, sparse).optimizer.__class__.__name__ == "SplitOptimizer"


@pytest.fixture(scope="module")
def auc_data_path(tmp_path_factory):
    """20,000 impressions with many clicks (CTR 0.2): about 120 validation purchases, enough for
    the purchase AUC to move beyond its noise (the 4,000-row tiny set has a handful)."""
    root = tmp_path_factory.mktemp("ddpo-data")
    generate(root, name=AUC_DATA, n_impressions=20000, ctr=0.2, cvr=0.3, seed=5)
    return str(root)


def test_one_epoch_improves_validation_purchase_auc(auc_data_path, tmp_path):
    config = Config(
        model="DDPO",
        config_dict=tiny_config(auc_data_path, tmp_path, dataset=AUC_DATA, train_batch_size=400),
    )
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(SEED)
    model = get_model("DDPO")(config, train_data._dataset)
    trainer = MultiTaskTrainer(config, model)
    before = trainer.evaluate(valid_data, load_best_model=False)["purchase_auc"]
    trainer.fit(train_data, saved=False)
    after = trainer.evaluate(valid_data, load_best_model=False)["purchase_auc"]
    assert after > before + 0.05, (before, after)
