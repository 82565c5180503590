"""DCMT: its loss against the paper's formula computed by hand, its outputs, and one epoch of
training on a small generated dataset.

The hand computations use plain Python arithmetic on the model's outputs (in eval mode, so
``forward`` is deterministic), never the model's own loss helper.
"""

import functools
import math

import pytest
import torch
from conftest import CLICKS, PURCHASES

from recbole_cstwa.data import create_dataset, data_preparation
from recbole_cstwa.registry import get_model


@pytest.fixture
def build(build_model):
    """``build(**config)`` -> (DCMT in eval mode, the crafted 8-row batch)."""
    return functools.partial(build_model, "DCMT")


def _bce(p, y):
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def _paper_loss_parts(output, clip, cvr_weight, ctcvr_weight, constraint_weight):
    """The paper's E^CTR, w^cvr * (factual, counterfactual, lambda_1 * constraint) and
    w^ctcvr * E^CTCVR, each a mean over the batch, in plain arithmetic."""
    p_ctr, p_cvr, p_cf = (output[k].double().tolist() for k in ("click", "cvr", "counterfactual_cvr"))
    n = len(CLICKS)
    ctr = factual = counterfactual = constraint = ctcvr = 0.0
    for p, q, q_star, o, r in zip(p_ctr, p_cvr, p_cf, CLICKS, PURCHASES):
        propensity = min(max(p, clip), 1 - clip)
        ctr += _bce(p, o) / n
        factual += o * _bce(q, r) / propensity / n
        counterfactual += (1 - o) * _bce(q_star, 1 - r) / (1 - propensity) / n
        constraint += abs(1 - (q + q_star)) / n
        ctcvr += _bce(p * q, r) / n
    return (
        ctr,
        cvr_weight * factual,
        cvr_weight * counterfactual,
        cvr_weight * constraint_weight * constraint,
        ctcvr_weight * ctcvr,
    )


def test_loss_parts_equal_the_papers_formula_by_hand(build):
    model, batch = build()
    assert (model.cvr_weight, model.ctcvr_weight, model.constraint_weight) == (1, 1, 0.001)
    assert model.propensity_clip == 0.001
    parts = model.calculate_loss(batch)
    expected = _paper_loss_parts(model(batch), 0.001, 1, 1, 0.001)
    assert len(parts) == 5
    for name, part, value in zip(
        ("ctr", "factual", "counterfactual", "constraint", "ctcvr"), parts, expected
    ):
        assert part.item() == pytest.approx(value, rel=1e-5), name


@pytest.mark.parametrize("click_bias", [8.0, -8.0])
def test_loss_weights_and_a_binding_propensity_clip(build, click_bias):
    model, batch = build(
        dcmt_cvr_weight=0.7, dcmt_ctcvr_weight=0.4, dcmt_constraint_weight=0.5, dcmt_propensity_clip=0.01
    )
    with torch.no_grad():  # pCTR near 1 (or 0) on every row: 1 - pCTR (or pCTR) is clamped to 0.01
        model.click_head.linear.bias.fill_(click_bias)
    output = model(batch)
    if click_bias < 0:  # the factual part: the clicked rows' BCE, each weighted 1 / 0.01
        assert (output["click"] < 0.01).all()
        parts = model.calculate_loss(batch)
        expected = _paper_loss_parts(output, 0.01, 0.7, 0.4, 0.5)
        for part, value in zip(parts, expected):
            assert part.item() == pytest.approx(value, rel=1e-5)
        p_cvr, purchases = output["cvr"].double().tolist(), batch["purchase"].tolist()
        by_hand = sum(
            -(math.log(q) if r else math.log(1 - q)) / 0.01
            for q, r, o in zip(p_cvr, purchases, CLICKS)
            if o == 1
        ) / len(CLICKS)
        assert parts[1].item() == pytest.approx(0.7 * by_hand, rel=1e-5)
        return
    assert (1 - output["click"] < 0.01).all()
    parts = model.calculate_loss(batch)
    expected = _paper_loss_parts(output, 0.01, 0.7, 0.4, 0.5)
    for part, value in zip(parts, expected):
        assert part.item() == pytest.approx(value, rel=1e-5)
    # the counterfactual part is the non-clicked rows' BCE against 1, each weighted 1 / 0.01
    p_cf = output["counterfactual_cvr"].double().tolist()
    by_hand = sum(-math.log(q) / 0.01 for q, o in zip(p_cf, CLICKS) if o == 0) / len(CLICKS)
    assert parts[2].item() == pytest.approx(0.7 * by_hand, rel=1e-5)


def test_propensities_pass_no_gradient_to_the_ctr_tower(build):
    model, batch = build()
    model.train()
    _, factual, counterfactual, constraint, _ = model.calculate_loss(batch)
    ctr_parameters = [*model.click_tower.parameters(), *model.click_head.parameters()]
    for part in (factual, counterfactual, constraint):
        grads = torch.autograd.grad(part, ctr_parameters, retain_graph=True, allow_unused=True)
        assert all(g is None for g in grads)
    # the factual part trains the factual tower, the counterfactual part the twin tower
    grads = torch.autograd.grad(factual, list(model.cvr_head.parameters()), retain_graph=True)
    assert all(g.abs().sum() > 0 for g in grads)
    grads = torch.autograd.grad(
        counterfactual, list(model.counterfactual_head.parameters()), retain_graph=True
    )
    assert all(g.abs().sum() > 0 for g in grads)


def test_outputs_are_probabilities_with_their_meaning(build):
    model, batch = build()
    output = model(batch)
    for name in ("click", "cvr", "counterfactual_cvr", "purchase"):
        assert output[name].shape == (len(CLICKS),)
        assert ((output[name] > 0) & (output[name] < 1)).all(), name
    torch.testing.assert_close(output["purchase"], output["click"] * output["cvr"])  # pCTCVR
    tasks = model.predict_tasks(batch)
    assert set(tasks) == {"click", "purchase", "cvr"}  # cvr: the factual pCVR head
    for name, value in tasks.items():
        torch.testing.assert_close(value, output[name])
    assert torch.equal(model.predict(batch), tasks["purchase"])


@pytest.mark.parametrize(
    "key, value", [("dcmt_propensity_clip", 0.5), ("dcmt_propensity_clip", 0), ("dcmt_cvr_weight", -1)]
)
def test_bad_settings_name_the_key(build, key, value):
    with pytest.raises(ValueError, match=key):
        build(**{key: value})


@pytest.fixture(scope="module")
def small_data_path(tmp_path_factory):
    """10,000 generated impressions with enough purchases (CTR 0.2, CVR 0.3) for a stable AUC."""
    from recbole_cstwa.tools.generator import generate

    root = tmp_path_factory.mktemp("dcmt-data")
    generate(root, name="dcmt-ccp", n_impressions=10000, ctr=0.2, cvr=0.3, seed=11)
    return str(root)


def test_one_epoch_improves_validation_purchase_auc(small_data_path, tmp_path):
    from recbole.utils import init_seed

    from recbole_cstwa.config import Config
    from recbole_cstwa.registry import get_trainer

    config = Config(
        model="DCMT",
        config_dict={
            "dataset": "dcmt-ccp",
            "data_path": small_data_path,
            "benchmark_filename": ["train", "valid", "test"],
            "checkpoint_dir": str(tmp_path / "saved"),
            "epochs": 1,
            "train_batch_size": 500,
            "learning_rate": 0.005,
            "show_progress": False,
            "state": "ERROR",
            "use_gpu": False,
        },
    )
    assert config["embedding_update"] == "sparse"
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    model = get_model("DCMT")(config, train_data._dataset)
    assert model.embedding.sparse
    trainer = get_trainer(config["MODEL_TYPE"], "DCMT")(config, model)
    before = trainer.evaluate(valid_data, load_best_model=False)
    trainer.fit(train_data, saved=False)
    after = trainer.evaluate(valid_data, load_best_model=False)
    assert after["purchase_auc"] > before["purchase_auc"] + 0.02, (before, after)
    assert math.isfinite(after["cvr_auc"])
