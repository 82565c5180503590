"""The trainer's training epoch: RecBole's steps with less work a step."""

import numpy as np
import torch
from conftest import Batches


def test_dense_path_is_bit_for_bit_the_plain_adam_loop(model_and_trainer):
    """embedding_update: dense and the trainer's epoch give the same parameters as a plain loop
    with RecBole's Adam over every parameter (the code before sparse updates)."""
    model, trainer, batches = model_and_trainer(embedding_update="dense", batches=4)
    reference, _, _ = model_and_trainer(embedding_update="dense", batches=4)
    optimizer = torch.optim.Adam(
        reference.parameters(),
        lr=reference.config["learning_rate"],
        weight_decay=reference.config["weight_decay"],
    )
    torch.manual_seed(3)
    trainer._train_epoch(Batches(batches), 0)
    torch.manual_seed(3)
    reference.train()
    for batch in batches:
        optimizer.zero_grad()
        losses = reference.calculate_loss(batch)
        loss = sum(losses)
        loss.backward()
        optimizer.step()
    for name, parameter in reference.named_parameters():
        assert torch.equal(parameter, dict(model.named_parameters())[name]), name


def test_training_epoch_returns_the_summed_loss_parts(model_and_trainer):
    model, trainer, batches = model_and_trainer(embedding_update="sparse")
    torch.manual_seed(5)
    totals = trainer._train_epoch(Batches(batches[:1]), 0)
    assert isinstance(totals, tuple) and len(totals) == 2
    assert all(np.isfinite(totals))


def test_sparse_training_converges_on_a_tiny_case(model_and_trainer):
    model, trainer, batches = model_and_trainer(embedding_update="sparse", learning_rate=0.01, batches=8)
    torch.manual_seed(0)
    losses = [sum(trainer._train_epoch(Batches(batches), epoch)) for epoch in range(6)]
    assert losses[-1] < 0.8 * losses[0]
