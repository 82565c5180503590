"""The baselines' losses and structures: AITM, ESCM2 (IPS, DR), OMoE, MMoE, PLE.

Losses are checked against hand computations on a tiny batch with fixed labels, with the
models in eval mode so that ``forward`` is deterministic (dropout off).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import CLICKS, PURCHASES

from recbole_cstwa.data import create_dataset, data_preparation
from recbole_cstwa.model.layers import ExtractionLayer
from recbole_cstwa.model.multitask.escm2 import dr_counterfactual_risk, ips_counterfactual_risk
from recbole_cstwa.registry import get_model


@pytest.fixture
def build(build_model):
    """``build(model, **config)`` -> (model in eval mode, the crafted 8-row batch)."""
    return build_model


def _bce(p, y):
    return -(y * p.log() + (1 - y) * (1 - p).log())


# ----- AITM ----------------------------------------------------------------------------------
def test_aitm_loss_parts_match_hand_computation(build):
    model, batch = build("AITM", embedding_update="dense")  # the official whole-table L2
    assert model.config["weight_decay"] == 0.0  # the L2 term is the model's own
    output = model(batch)
    p_click, p_purchase = output["click"].double(), output["purchase"].double()
    click_loss, purchase_loss, calibration, l2 = model.calculate_loss(batch)
    clicks, purchases = torch.tensor(CLICKS).double(), torch.tensor(PURCHASES).double()
    assert click_loss.item() == pytest.approx(_bce(p_click, clicks).mean().item(), rel=1e-5)
    assert purchase_loss.item() == pytest.approx(_bce(p_purchase, purchases).mean().item(), rel=1e-5)
    violations = [max(b - a, 0.0) for a, b in zip(p_click.tolist(), p_purchase.tolist())]
    assert calibration.item() == pytest.approx(0.6 * sum(violations) / len(violations), abs=1e-7)
    squares = sum(float(w.detach().double().pow(2).sum()) for w in model.embedding.parameters())
    squares += sum(float(w.detach().double().pow(2).sum()) for w in model.transfer.projection_weights())
    assert l2.item() == pytest.approx(1e-6 * squares / 2, rel=1e-5)


def test_aitm_calibrator_is_the_batch_mean_of_violations(build):
    model, batch = build("AITM")
    # Force p_purchase > p_click on every row: purchase head bias up, click head bias down.
    with torch.no_grad():
        model.purchase_head.linear.bias.fill_(5.0)
        model.click_head.linear.bias.fill_(-5.0)
    output = model(batch)
    calibration = model.calculate_loss(batch)[2]
    expected = 0.6 * (output["purchase"] - output["click"]).mean()
    assert (output["purchase"] > output["click"]).all()
    assert calibration.item() == pytest.approx(expected.item(), rel=1e-6)


def test_aitm_l2_covers_only_embeddings_and_attention_projections(build):
    model, batch = build("AITM", embedding_update="dense")
    l2 = model.calculate_loss(batch)[3].item()
    with torch.no_grad():
        for module in (model.click_tower, model.purchase_tower, model.info_layer, model.click_head):
            for weight in module.parameters():
                weight.mul_(3.0)
    assert model.calculate_loss(batch)[3].item() == pytest.approx(l2, rel=1e-7)
    with torch.no_grad():
        model.transfer.query.weight.mul_(3.0)
    assert model.calculate_loss(batch)[3].item() > l2
    with torch.no_grad():
        model.transfer.query.weight.div_(3.0)
        model.embedding.token_table.weight.mul_(3.0)
    assert model.calculate_loss(batch)[3].item() > l2


def test_aitm_sparse_embeddings_take_their_l2_in_the_row_optimizer(build):
    """Under embedding_update: sparse the embedding L2 (aitm_l2) acts on touched rows, through the
    row-wise optimizer; the loss's L2 part keeps the AIT projections only."""
    from recbole_cstwa.optim import LazyRowAdam
    from recbole_cstwa.trainer import MultiTaskTrainer

    model, batch = build("AITM", embedding_update="sparse")
    squares = sum(float(w.detach().double().pow(2).sum()) for w in model.transfer.projection_weights())
    assert model.calculate_loss(batch)[3].item() == pytest.approx(1e-6 * squares / 2, rel=1e-5)
    optimizer = MultiTaskTrainer(model.config, model).optimizer
    row_optimizer = next(o for o in optimizer.optimizers if isinstance(o, LazyRowAdam))
    tables = {id(p) for p in model.embedding.parameters()}
    row_groups = row_optimizer.param_groups
    assert {id(p) for group in row_groups for p in group["params"]} == tables
    assert all(group["weight_decay"] == model.config["aitm_l2"] for group in row_groups)


def test_ait_attention_weights_sum_to_one_over_the_two_items(build):
    model, batch = build("AITM")
    items, _ = model.transfer_items(batch)
    assert items.shape == (len(batch), 2, model.transfer.size)
    weights = model.transfer.attention_weights(items)
    assert weights.shape == (len(batch), 2)
    assert torch.allclose(weights.sum(dim=1), torch.ones(len(batch)), atol=1e-6)
    # z is the weighted sum of the values
    z = model.transfer(items)
    expected = weights[:, 0:1] * model.transfer.value(items[:, 0]) + weights[:, 1:2] * model.transfer.value(
        items[:, 1]
    )
    assert torch.allclose(z, expected, atol=1e-6)
    for projection in (model.transfer.query, model.transfer.key, model.transfer.value):
        assert projection.bias is None
        assert projection.weight.std().item() == pytest.approx(0.01, rel=0.3)


# ----- ESCM2 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["mlp", "mmoe"])
def test_escm2_ips_loss_matches_hand_computation(build, backbone):
    model, batch = build("ESCM2", escm2_mode="ips", escm2_backbone=backbone)
    output = model(batch)
    assert "imputation" not in output
    ctr_loss, counterfactual, ctcvr_loss = model.calculate_loss(batch)
    p_ctr, p_cvr, p_ctcvr = (output[k].double().tolist() for k in ("click", "cvr", "purchase"))
    n, n_clicks = len(CLICKS), sum(CLICKS)
    expected = 0.0
    for p, q, o, y in zip(p_ctr, p_cvr, CLICKS, PURCHASES):
        e = -(y * math.log(q) + (1 - y) * math.log(1 - q))
        w = n * min(1 / max(p * n_clicks, 1e-6), 15)
        expected += o * w * e / n
    assert counterfactual.item() == pytest.approx(0.5 * expected, rel=1e-5)
    bce = [-(o * math.log(p) + (1 - o) * math.log(1 - p)) for p, o in zip(p_ctr, CLICKS)]
    assert ctr_loss.item() == pytest.approx(sum(bce) / n, rel=1e-5)
    bce = [-(y * math.log(p) + (1 - y) * math.log(1 - p)) for p, y in zip(p_ctcvr, PURCHASES)]
    assert ctcvr_loss.item() == pytest.approx(0.5 * sum(bce) / n, rel=1e-5)


@pytest.mark.parametrize("backbone", ["mlp", "mmoe"])
def test_escm2_dr_loss_matches_hand_computation(build, backbone):
    model, batch = build("ESCM2", escm2_mode="dr", escm2_backbone=backbone)
    output = model(batch)
    counterfactual = model.calculate_loss(batch)[1]
    p_ctr, p_cvr, p_imp = (output[k].double().tolist() for k in ("click", "cvr", "imputation"))
    expected = 0.0
    for p, q, imputed, o, y in zip(p_ctr, p_cvr, p_imp, CLICKS, PURCHASES):
        e = -(y * math.log(q) + (1 - y) * math.log(1 - q))
        w = min(o / max(p, 1e-6), 15)
        expected += (imputed + w * (e - imputed) + w * (e - imputed) ** 2) / len(CLICKS)
    assert counterfactual.item() == pytest.approx(0.5 * expected, rel=1e-5)


def test_escm2_weights_clip_and_floor():
    # IPS: 1 / (p * N_c) clipped at 15, times B; DR: o / max(p, 1e-6) clipped at 15.
    p_ctr = torch.tensor([1e-9, 0.5, 0.01, 0.9])
    click = torch.tensor([1.0, 1.0, 1.0, 0.0])
    e = torch.ones(4)
    ips = ips_counterfactual_risk(p_ctr, e, click, max_weight=15)
    n_clicks = 3
    assert ips.item() == pytest.approx(15 + 1 / (0.5 * n_clicks) + 15, rel=1e-6)
    dr = dr_counterfactual_risk(p_ctr, torch.zeros(4), e, click, max_weight=15)
    assert dr.item() == pytest.approx((2 * 15 + 2 * 2 + 2 * 15) / 4, rel=1e-6)
    # no click in the batch: finite, zero risk
    zero = ips_counterfactual_risk(p_ctr, e, torch.zeros(4), max_weight=15)
    assert zero.item() == 0.0


@pytest.mark.parametrize("mode", ["ips", "dr"])
def test_escm2_propensity_weights_pass_no_gradient(mode):
    p_ctr = torch.tensor([0.2, 0.6, 0.05, 0.9], requires_grad=True)
    p_cvr = torch.tensor([0.3, 0.1, 0.5, 0.2], requires_grad=True)
    p_imp = torch.tensor([0.4, 0.2, 0.3, 0.1], requires_grad=True)
    click, purchase = torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0, 1.0])
    e = F.binary_cross_entropy(p_cvr, purchase, reduction="none")
    if mode == "ips":
        risk = ips_counterfactual_risk(p_ctr, e, click, max_weight=15)
        inputs = (p_ctr, p_cvr)
    else:
        risk = dr_counterfactual_risk(p_ctr, p_imp, e, click, max_weight=15)
        inputs = (p_ctr, p_cvr, p_imp)
    grads = torch.autograd.grad(risk, inputs, allow_unused=True)
    assert grads[0] is None  # the propensity enters only through detached weights
    assert all(g is not None and g.abs().sum() > 0 for g in grads[1:])


@pytest.mark.parametrize("mode", ["ips", "dr"])
def test_escm2_counterfactual_risk_does_not_train_the_ctr_tower(build, mode):
    model, batch = build("ESCM2", escm2_mode=mode, escm2_backbone="mlp")
    model.train()
    counterfactual = model.calculate_loss(batch)[1]
    ctr_parameters = [*model.towers["click"].parameters(), *model.heads["click"].parameters()]
    grads = torch.autograd.grad(counterfactual, ctr_parameters, allow_unused=True)
    assert all(g is None for g in grads)
    cvr_grads = torch.autograd.grad(counterfactual, list(model.heads["cvr"].parameters()))
    assert all(g.abs().sum() > 0 for g in cvr_grads)


def test_escm2_purchase_output_is_pctcvr(build):
    model, batch = build("ESCM2")
    assert model.mode == "dr" and model.backbone == "mlp"
    output = model(batch)
    assert torch.allclose(output["purchase"], output["click"] * output["cvr"])
    assert torch.equal(model.predict(batch), output["purchase"])


def test_escm2_mmoe_backbone_has_one_gate_per_task(build):
    assert len(build("ESCM2", escm2_backbone="mmoe", escm2_mode="dr")[0].experts.gates) == 3
    assert len(build("ESCM2", escm2_backbone="mmoe", escm2_mode="ips")[0].experts.gates) == 2


def test_escm2_mmoe_backbone_has_paddlerecs_structure(build):
    """PaddleRec's net.py with config_bigdata.yaml: 8 experts Linear(in, 16) + ReLU, a gate
    Linear(in, 8) + softmax, a tower Linear(16, 8) + ReLU and Linear(8, 2) + softmax per task,
    no dropout, biases 0.1."""
    model, batch = build("ESCM2", escm2_backbone="mmoe", escm2_mode="dr")
    width = model.input_size()

    def shapes(module):
        return [
            (layer.in_features, layer.out_features)
            for layer in module.modules()
            if isinstance(layer, torch.nn.Linear)
        ]

    assert [shapes(expert) for expert in model.experts.experts] == [[(width, 16)]] * 8
    assert [shapes(gate) for gate in model.experts.gates] == [[(width, 8)]] * 3
    assert [shapes(model.towers[task]) + shapes(model.heads[task]) for task in model.tasks] == [
        [(16, 8), (8, 2)]
    ] * 3
    assert {layer.p for layer in model.modules() if isinstance(layer, torch.nn.Dropout)} == {0.0}
    assert "(0-7): 8 x MLPTower" in str(model)
    linears = [layer for layer in model.modules() if isinstance(layer, torch.nn.Linear)]
    assert len(linears) == 8 + 3 * 3 and all(torch.all(layer.bias == 0.1) for layer in linears)
    expected = 8 * (width * 16 + 16) + 3 * (width * 8 + 8) + 3 * (16 * 8 + 8) + 3 * (8 * 2 + 2)
    assert sum(p.numel() for n, p in model.named_parameters() if not n.startswith("embedding")) == expected
    output = model(batch)  # class 1 of a clipped two-class softmax
    logits = model.heads["cvr"].linear(
        model.towers["cvr"](model.experts(model.embed_input(batch, model.embedding))[1])
    )
    torch.testing.assert_close(output["cvr"], torch.sigmoid(logits[:, 1] - logits[:, 0]))


@pytest.mark.parametrize(
    "key, value", [("escm2_mode", "ipw"), ("escm2_backbone", "ple"), ("escm2_max_weight", 0)]
)
def test_escm2_bad_settings_name_the_key(build, key, value):
    with pytest.raises(ValueError, match=key):
        build("ESCM2", **{key: value})


# ----- MLP -----------------------------------------------------------------------------------
def test_mlp_on_clicked_trains_the_purchase_side_on_clicked_rows_only(build):
    model, batch = build("MLP", purchase_on_clicked=True)
    output = model(batch)
    clicked = torch.tensor(CLICKS) == 1
    click_loss, purchase_loss = model.calculate_loss(batch)
    torch.testing.assert_close(click_loss, _bce(output["click"], batch["click"]).mean())
    torch.testing.assert_close(purchase_loss, _bce(output["purchase"], batch["purchase"])[clicked].mean())
    assert torch.equal(output["cvr"], output["purchase"])  # its purchase head is a pCVR head
    # A batch without clicks: zero purchase loss and no gradient to the purchase side.
    no_clicks = batch[~clicked]
    no_clicks["purchase"] = torch.zeros(len(no_clicks))
    _, purchase_loss = model.calculate_loss(no_clicks)
    assert purchase_loss.item() == 0
    purchase_side = [p for name, p in model.named_parameters() if name.startswith("purchase_")]
    grads = torch.autograd.grad(purchase_loss, purchase_side, allow_unused=True)
    assert all(g is None or not g.to_dense().any() for g in grads)
    # The purchase label of a row without a click is never read.
    clicked_loss = model.calculate_loss(batch)[1]
    batch["purchase"] = torch.where(clicked, batch["purchase"], torch.ones(len(batch)))
    torch.testing.assert_close(model.calculate_loss(batch)[1], clicked_loss)


def test_mlp_over_all_impressions_is_the_default(build):
    model, batch = build("MLP")
    output = model(batch)
    assert not model.purchase_on_clicked and "cvr" not in output
    torch.testing.assert_close(
        model.calculate_loss(batch)[1], _bce(output["purchase"], batch["purchase"]).mean()
    )


# ----- Expert-Bottom models ------------------------------------------------------------------
def _dense_parameters(model):
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("embedding"))


def _mlp_parameters(sizes):
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


@pytest.mark.parametrize("model_name", ["MMoE", "OMoE"])
def test_expert_models_are_the_papers_size_by_default(build, model_name):
    model, batch = build(model_name)
    width, gates = model.input_size(), 2 if model_name == "MMoE" else 1
    for expert in model.experts.experts:  # each expert is the common tower with its dropout
        linears = [layer for layer in expert.layers if isinstance(layer, torch.nn.Linear)]
        dropouts = [layer.p for layer in expert.layers if isinstance(layer, torch.nn.Dropout)]
        assert [(layer.in_features, layer.out_features) for layer in linears] == [
            (width, 128),
            (128, 64),
            (64, 32),
        ]
        assert dropouts == [0.1, 0.3, 0.3]
    assert all(len(tower.layers) == 0 for tower in model.task_towers.towers)  # heads read the mixture
    expected = 8 * _mlp_parameters([width, 128, 64, 32]) + gates * (width * 8 + 8) + 2 * (32 + 1)
    assert _dense_parameters(model) == expected


def test_ple_is_the_papers_size_by_default(build):
    model, _ = build("PLE")
    width = model.input_size()
    (level,) = model.levels
    experts = [*level.shared_experts, *level.specific_experts[0], *level.specific_experts[1]]
    assert len(experts) == 5
    expected = 5 * _mlp_parameters([width, 128, 64, 32]) + 2 * (width * 3 + 3) + 2 * (32 + 1)
    assert _dense_parameters(model) == expected


def test_expert_sizes_follow_the_settings(build):
    model, _ = build(
        "MMoE", num_experts=3, expert_hidden_size=[16], expert_dropout=0, task_tower_hidden_size=[8],
        task_tower_dropout=0, tower_hidden_size=[64, 32], tower_dropout=[0.2, 0.2],
    )  # fmt: skip
    width = model.input_size()
    expected = 3 * (width * 16 + 16) + 2 * (width * 3 + 3) + 2 * (16 * 8 + 8 + 8 + 1)  # torch-rechub's sizes
    assert _dense_parameters(model) == expected
    tower_sized, _ = build("MMoE", tower_hidden_size=[64, 32], tower_dropout=[0.2, 0.2])
    first = tower_sized.experts.experts[0].layers
    assert (first[0].out_features, first[3].out_features, first[2].p) == (64, 32, 0.2)


def test_expert_dropout_must_fit_the_expert_layers(build):
    with pytest.raises(ValueError, match="expert_dropout .* needs one value per expert layer"):
        build("MMoE", expert_hidden_size=[16])  # empty expert_dropout: the tower's three values


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["OMoE", "MMoE", "PLE"])
def test_no_dead_task_output_after_training(make_config, model_name):
    """A few hundred steps, several seeds: each task's probability still varies across rows
    (OMoE's click tower died on some seeds with torch-rechub's small experts and towers)."""
    for seed in (2020, 2021, 2022):
        config = make_config(model_name, seed=seed, embedding_update="dense", train_batch_size=100)
        train_data, valid_data, _ = data_preparation(config, create_dataset(config))
        torch.manual_seed(seed)
        model = get_model(model_name)(config, train_data._dataset)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        steps = 0
        while steps < 200:
            for batch in train_data:
                optimizer.zero_grad()
                sum(model.calculate_loss(batch)).backward()
                optimizer.step()
                steps += 1
        model.eval()
        with torch.no_grad():
            output = model(next(iter(valid_data))[0])
        for task in ("click", "purchase"):
            assert output[task].std() > 1e-3, (model_name, seed, task, output[task].std())


def test_omoe_has_one_gate_mmoe_one_per_task(build):
    omoe, batch = build("OMoE")
    mmoe, _ = build("MMoE")
    assert len(omoe.experts.gates) == 1 and len(mmoe.experts.gates) == 2
    assert len(omoe.experts.experts) == len(mmoe.experts.experts) == 8
    weights = omoe.experts.gate_weights(omoe.embed_input(batch, omoe.embedding))
    assert weights.shape == (1, len(batch), 8)
    assert torch.allclose(weights.sum(-1), torch.ones(1, len(batch)))


def test_ple_has_shared_and_specific_experts(build):
    model, batch = build("PLE")
    (level,) = model.levels
    assert isinstance(level, ExtractionLayer)
    assert len(level.shared_experts) == 1  # torch-rechub's Ali-CCP example: 1 shared, 2 specific
    assert [len(experts) for experts in level.specific_experts] == [2, 2]
    assert len(level.task_gates) == 2 and level.shared_gate is None  # last level: no shared gate
    assert level.task_gates[0].out_features == 3


def _linear(layer, x):
    return x @ layer.weight.T + layer.bias


def _hand_tower_and_head(model, task, mixture):
    """Task tower (Linear-ReLU layers; dropout is off in eval) and Linear + sigmoid, by hand."""
    hidden = mixture
    for layer in model.task_towers.towers[task].layers:
        if isinstance(layer, torch.nn.Linear):
            hidden = torch.relu(_linear(layer, hidden))
    return torch.sigmoid(_linear(model.task_towers.heads[task].linear, hidden)).squeeze(-1)


def _hand_expert(expert, x):
    for layer in expert.layers:
        if isinstance(layer, torch.nn.Linear):
            x = torch.relu(_linear(layer, x))
    return x


def test_mmoe_gate_mixture_and_task_tower_by_hand(build):
    model, batch = build(
        "MMoE", num_experts=3, expert_hidden_size=[4], expert_dropout=0, task_tower_hidden_size=[2],
        task_tower_dropout=0,
    )  # fmt: skip
    x = model.embed_input(batch, model.embedding)
    experts = [_hand_expert(expert, x) for expert in model.experts.experts]  # each (B, 4)
    output = model(batch)
    for task, name in enumerate(("click", "purchase")):
        gate = model.experts.gates[task]
        weights = torch.exp(_linear(gate, x))
        weights = weights / weights.sum(dim=1, keepdim=True)  # softmax by hand
        mixture = sum(weights[:, k : k + 1] * experts[k] for k in range(3))
        expected = _hand_tower_and_head(model, task, mixture)
        assert torch.allclose(output[name], expected, atol=1e-6)
    # The towers sit after the gates: a change of the purchase tower moves only the purchase head.
    with torch.no_grad():
        model.task_towers.towers[1].layers[0].bias.add_(1.0)
    changed = model(batch)
    assert torch.allclose(changed["click"], output["click"])
    assert not torch.allclose(changed["purchase"], output["purchase"])


def test_ple_gate_mixture_and_task_tower_by_hand(build):
    model, batch = build(
        "PLE", expert_hidden_size=[4], expert_dropout=0, task_tower_hidden_size=[2], task_tower_dropout=0
    )
    (level,) = model.levels
    x = model.embed_input(batch, model.embedding)
    shared = [_hand_expert(expert, x) for expert in level.shared_experts]
    output = model(batch)
    for task, name in enumerate(("click", "purchase")):
        own = [_hand_expert(expert, x) for expert in level.specific_experts[task]]
        candidates = own + shared  # the task's gate: its own experts, then the shared ones
        logits = _linear(level.task_gates[task], x)
        weights = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
        mixture = sum(weights[:, k : k + 1] * candidates[k] for k in range(len(candidates)))
        expected = _hand_tower_and_head(model, task, mixture)
        assert torch.allclose(output[name], expected, atol=1e-6)


def test_ple_levels_chain_shared_gates(build):
    model, batch = build("PLE", ple_num_levels=2, ple_shared_experts=1, ple_specific_experts=2)
    first, last = model.levels
    assert first.shared_gate is not None and first.shared_gate.out_features == 2 * 2 + 1
    assert last.shared_gate is None
    assert first.shared_experts[0].layers[0].in_features == model.input_size()
    assert last.shared_experts[0].layers[0].in_features == first.output_size
    output = model(batch)
    assert output["click"].shape == output["purchase"].shape == (len(batch),)


def test_ple_task_mixture_reads_only_its_own_and_shared_experts(build):
    model, batch = build("PLE")
    (level,) = model.levels
    x = model.embed_input(batch, model.embedding)
    before = level([x, x, x])
    with torch.no_grad():  # change task 1's (purchase) specific experts only
        for expert in level.specific_experts[1]:
            expert.layers[0].bias.add_(1.0)
    after = level([x, x, x])
    assert torch.allclose(before[0], after[0])
    assert not torch.allclose(before[1], after[1])


@pytest.mark.parametrize("key, value", [("ple_num_levels", 0), ("ple_shared_experts", -1)])
def test_ple_bad_settings_name_the_key(build, key, value):
    with pytest.raises(ValueError, match=key):
        build("PLE", **{key: value})
