"""Sparse embedding updates (``embedding_update: sparse``): :class:`LazyRowAdam`,
:class:`SplitOptimizer`, gradient clipping of sparse gradients, and which tables the trainers give
row-wise updates, for the plugin's models and RecBole's."""

import logging

import numpy as np
import pytest
import torch
from conftest import Batches

from recbole_cstwa.data import create_dataset, data_preparation
from recbole_cstwa.errors import ConfigError
from recbole_cstwa.optim import LazyRowAdam, SplitOptimizer, sparse_row_parameters
from recbole_cstwa.registry import get_model
from recbole_cstwa.trainer import MultiTaskTrainer


def _table_grads(model):
    return {name: p.grad for name, p in model.named_parameters() if "table" in name and p.grad is not None}


def test_sparse_and_dense_give_the_same_loss_and_first_gradient(model_and_trainer):
    dense_model, _, batches = model_and_trainer(embedding_update="dense")
    sparse_model, _, _ = model_and_trainer(embedding_update="sparse")
    for name, parameter in dense_model.named_parameters():
        torch.testing.assert_close(parameter, sparse_model.state_dict()[name], rtol=0, atol=0)
    losses = []
    for model in (dense_model, sparse_model):
        torch.manual_seed(1)  # the same dropout masks
        loss = sum(model.calculate_loss(batches[0]))
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == losses[1]
    sparse_grads = _table_grads(sparse_model)
    assert sparse_grads and all(grad.is_sparse for grad in sparse_grads.values())
    for name, parameter in dense_model.named_parameters():
        other = dict(sparse_model.named_parameters())[name].grad
        if other is None:
            assert parameter.grad is None or not parameter.grad.any()
            continue
        torch.testing.assert_close(other.to_dense(), parameter.grad, rtol=1e-6, atol=1e-9)


def test_first_step_moves_touched_rows_as_adam_and_leaves_the_others(model_and_trainer):
    """With weight decay: touched rows move as dense Adam moves them; the others stay (dense
    Adam decays them too)."""
    dense_model, dense_trainer, batches = model_and_trainer(embedding_update="dense", weight_decay=1e-3)
    sparse_model, sparse_trainer, _ = model_and_trainer(embedding_update="sparse", weight_decay=1e-3)
    assert isinstance(sparse_trainer.optimizer, SplitOptimizer)
    assert isinstance(dense_trainer.optimizer, torch.optim.Adam)
    before = sparse_model.click_embedding.token_table.weight.detach().clone()
    for model, trainer in ((dense_model, dense_trainer), (sparse_model, sparse_trainer)):
        torch.manual_seed(1)
        trainer.optimizer.zero_grad()
        sum(model.calculate_loss(batches[0])).backward()
        trainer.optimizer.step()
    touched = sparse_model.click_embedding.token_table.weight.grad.coalesce().indices()[0]
    untouched = torch.ones(len(before), dtype=torch.bool)
    untouched[touched] = False
    sparse_table = sparse_model.click_embedding.token_table.weight.detach()
    dense_table = dense_model.click_embedding.token_table.weight.detach()
    torch.testing.assert_close(sparse_table[touched], dense_table[touched], rtol=1e-5, atol=1e-8)
    assert torch.equal(sparse_table[untouched], before[untouched])
    assert not torch.equal(dense_table[untouched], before[untouched])
    for name, parameter in dense_model.named_parameters():  # towers: the same Adam
        if "table" not in name:
            torch.testing.assert_close(dict(sparse_model.named_parameters())[name], parameter)


def test_sparse_optimizer_state_round_trips(model_and_trainer):
    model, trainer, batches = model_and_trainer(embedding_update="sparse")
    trainer._train_epoch(Batches(batches[:1]), 0)
    state = trainer.optimizer.state_dict()
    fresh = MultiTaskTrainer(model.config, model).optimizer
    fresh.load_state_dict(state)
    rows = next(o for o in fresh.optimizers if isinstance(o, LazyRowAdam))
    assert all(s["step"] == 1 for s in rows.state.values())
    with pytest.raises(ValueError, match="embedding_update"):
        fresh.load_state_dict({"state": {}, "param_groups": []})


def test_cstwa_and_its_pretraining_model_use_row_updates_for_their_tables(make_config):
    from recbole_cstwa.model.multitask.cstwa.cstwa import ClickPretrainModel
    from recbole_cstwa.model.multitask.cstwa.trainer import CSTWATrainer

    config = make_config("CSTWA", embedding_update="sparse")
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = get_model("CSTWA")(config, train_data._dataset)
    trainer = CSTWATrainer(config, model)
    pretrain = ClickPretrainModel(model, train_data._dataset)
    for owner, optimizer in (
        (model, trainer.optimizer),
        (pretrain, trainer._build_optimizer(params=pretrain.parameters(), module=pretrain)),
    ):
        tables = {id(p) for name, p in owner.named_parameters() if "table" in name}
        assert len(tables) >= 2
        row_optimizer = next(o for o in optimizer.optimizers if isinstance(o, LazyRowAdam))
        assert {id(p) for g in row_optimizer.param_groups for p in g["params"]} == tables


def test_lazy_row_adam_decoupled_is_torch_adamw_on_touched_rows():
    """learner: adamw's row-wise form: with every row touched it is torch's AdamW, step by step."""
    torch.manual_seed(0)
    table = torch.nn.Parameter(torch.randn(6, 3))
    reference = torch.nn.Parameter(table.detach().clone())
    rows = LazyRowAdam([{"params": [table], "weight_decay": 0.1}], lr=0.01, decoupled=True)
    adamw = torch.optim.AdamW([reference], lr=0.01, weight_decay=0.1)
    for _ in range(3):
        grad = torch.randn(6, 3)
        table.grad = torch.sparse_coo_tensor(torch.arange(6).unsqueeze(0), grad, (6, 3))
        reference.grad = grad.clone()
        rows.step()
        adamw.step()
    assert torch.allclose(table, reference, atol=1e-6)


def test_learner_adamw_trains_end_to_end(model_and_trainer):
    """learner: adamw is accepted by the settings and trains: torch's AdamW for the dense
    parameters (as RecBole's trainer builds it), the decoupled row-wise form for the tables."""
    model, trainer, batches = model_and_trainer(
        embedding_update="sparse", learner="AdamW", learning_rate=0.01, batches=4
    )
    assert model.config["learner"] == "adamw"
    dense, row_wise = trainer.optimizer.optimizers
    assert isinstance(dense, torch.optim.AdamW)
    assert isinstance(row_wise, LazyRowAdam) and all(g["decoupled"] for g in row_wise.param_groups)
    groups = [[p for g in optimizer.param_groups for p in g["params"]] for optimizer in (dense, row_wise)]
    before = [[p.detach().clone() for p in group] for group in groups]
    losses = [sum(trainer._train_epoch(Batches(batches), epoch)) for epoch in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    for group, old in zip(groups, before):  # both optimizers moved their parameters
        assert any(not torch.equal(b, p) for b, p in zip(old, group))
    _, dense_trainer, _ = model_and_trainer(embedding_update="dense", learner="adamw")
    assert isinstance(dense_trainer.optimizer, torch.optim.AdamW)


def test_bad_embedding_update_is_a_config_error(make_config):
    with pytest.raises(ConfigError, match="embedding_update"):
        make_config("MLP", embedding_update="lazy")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [({"learner": "sgd"}, "learner sgd"), ({"enable_amp": True}, "mixed precision")],
)
@pytest.mark.parametrize("model_name", ["MLP", "DeepFM"])
def test_sparse_gives_way_where_it_cannot_apply(make_config, caplog, model_name, overrides, reason):
    """A learner without a row-wise form, or mixed precision (RecBole's epoch, whose clipping
    takes dense gradients only): dense tables and the configured optimizer, with a warning."""
    from recbole_cstwa.registry import get_trainer

    config = make_config(model_name, embedding_update="sparse", clip_grad_norm={"max_norm": 0.1}, **overrides)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = get_model(model_name)(config, train_data._dataset)
    with caplog.at_level(logging.WARNING):
        trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, model)
    assert not sparse_row_parameters(model)
    assert not isinstance(trainer.optimizer, SplitOptimizer)
    assert any(
        "gives way to dense updates" in r.getMessage() and reason in r.getMessage() for r in caplog.records
    )
    trainer._train_epoch(Batches([next(iter(train_data))]), 0)  # trains (clipping included)


def test_sparse_table_with_another_learner_is_refused(model_and_trainer):
    """The optimizer's guard, for tables made sparse by hand."""
    model, trainer, _ = model_and_trainer(embedding_update="sparse")
    trainer.config["learner"] = "sgd"
    with pytest.raises(ConfigError, match="learner"):
        trainer._build_optimizer(learner="sgd")


@pytest.mark.parametrize("written", ["sparse", "dense"])
def test_resuming_with_the_other_embedding_update_names_the_fix(make_config, tmp_path, written):
    from recbole_cstwa.trainer import SingleTaskTrainer

    other = "dense" if written == "sparse" else "sparse"
    config = make_config("DeepFM", embedding_update=written)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    trainer = SingleTaskTrainer(config, get_model("DeepFM")(config, train_data._dataset))
    trainer._save_checkpoint(0, verbose=False)
    config = make_config("DeepFM", embedding_update=other)
    resumed = SingleTaskTrainer(config, get_model("DeepFM")(config, train_data._dataset))
    with pytest.raises(ConfigError, match=f"--embedding_update={written}"):
        resumed.resume_checkpoint(trainer.saved_model_file)
    config = make_config("DeepFM", embedding_update=written)
    same = SingleTaskTrainer(config, get_model("DeepFM")(config, train_data._dataset))
    same.resume_checkpoint(trainer.saved_model_file)
    assert same.start_epoch == 1


def test_gradient_clipping_takes_sparse_gradients(model_and_trainer):
    from recbole_cstwa.optim import clip_gradients

    dense_model, _, batches = model_and_trainer(embedding_update="dense")
    sparse_model, _, _ = model_and_trainer(embedding_update="sparse")
    norms = []
    for model in (dense_model, sparse_model):
        torch.manual_seed(1)
        sum(model.calculate_loss(batches[0])).backward()
        norms.append(clip_gradients(model.parameters(), max_norm=1e-3))
    torch.testing.assert_close(norms[1], norms[0], rtol=1e-5, atol=0)
    for name, parameter in dense_model.named_parameters():
        other = dict(sparse_model.named_parameters())[name].grad
        if other is not None:
            torch.testing.assert_close(other.to_dense(), parameter.grad, rtol=1e-5, atol=1e-10)


def test_coalesced_sums_repeated_and_unordered_rows():
    from recbole_cstwa.optim import coalesced

    indices = torch.tensor([[5, 1, 5, 3]])
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    grad = coalesced(torch.sparse_coo_tensor(indices, values, (8, 2), check_invariants=True))
    assert grad.indices().tolist() == [[1, 3, 5]]
    assert grad.values().tolist() == [[3.0, 4.0], [7.0, 8.0], [6.0, 8.0]]


def _recbole_model(make_config, model_name, **overrides):
    from recbole.utils import init_seed

    from recbole_cstwa.trainer import SingleTaskTrainer

    config = make_config(model_name, **overrides)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    init_seed(0, True)
    model = get_model(model_name)(config, train_data._dataset)
    return model, SingleTaskTrainer(config, model), next(iter(train_data))


def test_recbole_models_get_row_updates_too(make_config):
    """RecBole's DeepFM under the plugin's trainer: sparse table gradients and LazyRowAdam by
    default, moving the touched rows as RecBole's dense Adam moves them and no other row;
    ``embedding_update: dense`` keeps RecBole's optimizer."""
    sparse_model, sparse_trainer, batch = _recbole_model(make_config, "DeepFM")
    dense_model, dense_trainer, _ = _recbole_model(make_config, "DeepFM", embedding_update="dense")
    assert isinstance(sparse_trainer.optimizer, SplitOptimizer)
    assert isinstance(dense_trainer.optimizer, torch.optim.Adam)
    tables = [name for name, module in sparse_model.named_modules() if isinstance(module, torch.nn.Embedding)]
    assert tables and all(dict(sparse_model.named_modules())[name].sparse for name in tables)
    before = {name: p.detach().clone() for name, p in sparse_model.named_parameters()}
    for model, trainer in ((sparse_model, sparse_trainer), (dense_model, dense_trainer)):
        torch.manual_seed(1)
        trainer.optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        trainer.optimizer.step()
    sparse_params, dense_params = dict(sparse_model.named_parameters()), dict(dense_model.named_parameters())
    for name in tables:
        weight = sparse_params[f"{name}.weight"]
        touched = weight.grad.coalesce().indices()[0]
        untouched = torch.ones(len(weight), dtype=torch.bool)
        untouched[touched] = False
        torch.testing.assert_close(
            weight[touched], dense_params[f"{name}.weight"][touched], rtol=1e-5, atol=1e-8
        )
        assert torch.equal(weight[untouched].detach(), before[f"{name}.weight"][untouched])


@pytest.mark.slow
def test_a_table_the_loss_reads_whole_is_updated_as_dense_adam(make_config, caplog):
    """xDeepFM's loss regularises its first-order embedding weights: that table gets a dense
    gradient, and LazyRowAdam then moves every row as torch's Adam (logged once)."""
    model, trainer, batch = _recbole_model(make_config, "xDeepFM")
    reference, reference_trainer, _ = _recbole_model(make_config, "xDeepFM", embedding_update="dense")
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            for each, each_trainer in ((model, trainer), (reference, reference_trainer)):
                torch.manual_seed(1)
                each_trainer.optimizer.zero_grad()
                each.calculate_loss(batch).backward()
                each_trainer.optimizer.step()
    dense_tables = [p for p in sparse_row_parameters(model) if not p.grad.is_sparse]
    assert dense_tables
    reference_params = dict(reference.named_parameters())
    for name, parameter in model.named_parameters():
        if any(parameter is table for table in dense_tables):
            torch.testing.assert_close(parameter, reference_params[name], rtol=1e-5, atol=1e-7)
    assert sum("got a dense gradient" in r.getMessage() for r in caplog.records) == len(dense_tables)
