"""NISE: its loss against the reference code's formula on a tiny batch, its outputs, and one epoch
that learns.

Losses are checked against plain torch computations of the formula of ``Hjh233/NISE``'s
``adaptive_ucvrlc`` (``mtl_trainer.py``), with the model in eval mode so that ``forward`` is
deterministic (dropout off).
"""

import functools

import pytest
import torch
from conftest import CLICKS, PURCHASES

from recbole_cstwa.config import Config
from recbole_cstwa.data import create_dataset, data_preparation
from recbole_cstwa.errors import ConfigError
from recbole_cstwa.optim import sparse_row_parameters
from recbole_cstwa.registry import get_model, get_trainer
from recbole_cstwa.tools.generator import generate
from recbole_cstwa.trainer import MultiTaskTrainer


@pytest.fixture
def build(build_model):
    """``build(**config)`` -> (NISE in eval mode, the crafted 8-row batch)."""
    return functools.partial(build_model, "NISE")


def _reference_loss(p_click, p_cvr, cap, scale):
    """The code's adaptive_ucvrlc loss, written out: BCELoss(weight=o) on the clicked rows with the
    purchase label, BCELoss(weight=1-o) on the others with the prediction as its own label, both
    means over the batch; weight alpha * min(L_ctr / L_cvr, beta) as a plain number."""
    o, r = torch.tensor(CLICKS).double(), torch.tensor(PURCHASES).double()
    p_click, p_cvr = p_click.double(), p_cvr.double()
    batch = len(CLICKS)
    ctr = -(o * p_click.log() + (1 - o) * (1 - p_click).log()).sum() / batch
    clicked = (o * -(r * p_cvr.log() + (1 - r) * (1 - p_cvr).log())).sum() / batch
    non_clicked = ((1 - o) * -(p_cvr * p_cvr.log() + (1 - p_cvr) * (1 - p_cvr).log())).sum() / batch
    weight = scale * min(ctr.item() / (clicked + non_clicked).item(), cap)
    return ctr.item(), weight * clicked.item(), weight * non_clicked.item(), weight


@pytest.mark.parametrize("cap, scale, cap_binds", [(50, 1, False), (0.5, 2.0, True)])
def test_loss_matches_the_reference_formula(build, cap, scale, cap_binds):
    model, batch = build(nise_weight_cap=cap, nise_weight_scale=scale)
    output = model(batch)
    ctr, clicked, non_clicked, weight = _reference_loss(output["click"], output["cvr"], cap, scale)
    assert (weight == scale * cap) is cap_binds  # both branches of the min are exercised
    parts = model.calculate_loss(batch)
    assert len(parts) == 3
    assert parts[0].item() == pytest.approx(ctr, rel=1e-5)
    assert parts[1].item() == pytest.approx(clicked, rel=1e-5)
    assert parts[2].item() == pytest.approx(non_clicked, rel=1e-5)
    assert sum(parts).item() == pytest.approx(ctr + clicked + non_clicked, rel=1e-5)


def test_pseudo_label_term_keeps_its_gradient_and_the_weight_has_none():
    """The code's BCELoss(p, p) is not detached: its gradient is that of the binary entropy,
    (1 - o) * log((1 - p) / p) / B; the adaptive weight is a constant (``.item()`` in the code)."""
    from recbole_cstwa.model.multitask.nise import adaptive_cvr_weight, pseudo_label_losses

    p = torch.tensor([0.9, 0.2, 0.6, 0.3, 0.05, 0.5, 0.97, 0.4], dtype=torch.float64, requires_grad=True)
    o, r = torch.tensor(CLICKS).double(), torch.tensor(PURCHASES).double()
    clicked, non_clicked = pseudo_label_losses(p, o, r)
    (gradient,) = torch.autograd.grad(non_clicked, p)
    expected = (1 - o) * torch.log((1 - p.detach()) / p.detach()) / len(o)
    assert torch.allclose(gradient, expected, atol=1e-12)
    ctr = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    weight = adaptive_cvr_weight(ctr, clicked + non_clicked, 1.0, 50.0)
    assert not weight.requires_grad
    assert weight.item() == pytest.approx(0.7 / (clicked + non_clicked).item())
    # a CVR loss of 0 (every prediction saturated) takes the cap instead of dividing by zero
    assert adaptive_cvr_weight(ctr, torch.tensor(0.0, dtype=torch.float64), 2.0, 50.0).item() == 100.0


def test_cvr_terms_do_not_train_the_ctr_tower(build):
    """No CTCVR loss: the click tower learns from L_ctr alone (the CVR weight carries no gradient)."""
    model, batch = build()
    _, clicked, non_clicked = model.calculate_loss(batch)
    (clicked + non_clicked).backward()
    for parameter in list(model.click_tower.parameters()) + list(model.click_head.parameters()):
        assert parameter.grad is None or not parameter.grad.any()
    assert any(p.grad is not None and p.grad.any() for p in model.cvr_tower.parameters())


def test_outputs_are_pctr_pcvr_and_their_product(build):
    model, batch = build()
    with torch.no_grad():
        output = model(batch)
        tasks = model.predict_tasks(batch)
    assert set(tasks) == {"click", "purchase", "cvr"}
    for name in ("click", "cvr", "purchase"):
        assert output[name].shape == (len(CLICKS),)
        assert ((output[name] > 0) & (output[name] < 1)).all()
        assert torch.equal(tasks[name], output[name])
    assert torch.equal(output["purchase"], output["click"] * output["cvr"])  # pCTCVR = pCTR * pCVR
    assert torch.equal(
        output["cvr"], model.cvr_head(model.cvr_tower(model.embed_input(batch, model.embedding)))
    )
    assert torch.equal(model.predict(batch), output["purchase"])


@pytest.mark.parametrize("key, value", [("nise_weight_cap", 0), ("nise_weight_scale", -1)])
def test_bad_settings_name_the_key(make_config, key, value):
    with pytest.raises(ConfigError, match=key):
        make_config("NISE", **{key: value})


def test_one_epoch_improves_validation_purchase_auc(tmp_path):
    """A generated dataset with few users and items and a high click rate, so one short epoch
    (63 steps, learning rate 0.005) has signal to learn from; with the default sparse embedding
    updates."""
    generate(
        tmp_path / "data",
        name="nise-ccp",
        n_impressions=10000,
        n_users=200,
        n_items=200,
        ctr=0.2,
        cvr=0.3,
        seed=5,
    )
    config = Config(
        model="NISE",
        config_dict={
            "dataset": "nise-ccp",
            "data_path": str(tmp_path / "data"),
            "benchmark_filename": ["train", "valid", "test"],
            "checkpoint_dir": str(tmp_path / "saved"),
            "epochs": 1,
            "train_batch_size": 128,
            "learning_rate": 0.005,
            "show_progress": False,
            "state": "ERROR",
            "use_gpu": False,
        },
    )
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = get_model("NISE")(config, train_data._dataset)
    trainer_class = get_trainer(config["MODEL_TYPE"], "NISE")
    assert trainer_class is MultiTaskTrainer  # no trainer of its own: one pass a step, as ESMM
    trainer = trainer_class(config, model)
    untrained = trainer.evaluate(valid_data, load_best_model=False)["purchase_auc"]
    trainer.fit(train_data, valid_data, saved=False)
    tables = sparse_row_parameters(model)  # embedding_update: sparse (the default) applied
    model.zero_grad(set_to_none=True)
    sum(model.calculate_loss(next(iter(train_data)))).backward()
    assert model.embedding.token_table.weight in tables
    assert all(table.grad is None or table.grad.is_sparse for table in tables)  # unused tables: None
    assert model.embedding.token_table.weight.grad.is_sparse
    trained = trainer.evaluate(valid_data, load_best_model=False)["purchase_auc"]
    assert trained > untrained + 0.05, (untrained, trained)


def test_a_saturated_prediction_gives_finite_gradients():
    """A pCVR that rounds to exactly 1 (or 0) in float32 must not turn the gradient into NaN: the
    pseudo-label term reads it clamped, so that row adds no gradient and the others keep theirs."""
    from recbole_cstwa.model.multitask.nise import pseudo_label_losses

    logits = torch.tensor([20.0, 0.3, -1.0, -2.0, -120.0], requires_grad=True)
    p_cvr = torch.sigmoid(logits)
    assert p_cvr[0].item() == 1.0 and p_cvr[4].item() == 0.0  # saturated in float32
    click = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    purchase = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    clicked, non_clicked = pseudo_label_losses(p_cvr, click, purchase)
    (clicked + non_clicked).backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[4].item() == 0.0  # the saturated non-clicked row: no gradient
    # the unsaturated non-clicked rows: the entropy's gradient log((1 - p) / p) * p (1 - p) / B
    p = p_cvr.detach().double()
    expected = torch.log((1 - p) / p) * p * (1 - p) / len(p)
    assert torch.allclose(logits.grad[2:4].double(), expected[2:4], rtol=1e-5)
