"""The shared model layers: the field embedding's look-up and sparse gradient, and dropout."""

import torch


def test_sparse_table_gradient_has_one_value_a_row_and_matches_torch_coalesce(model_and_trainer):
    """The embedding layer gathers each distinct token once: its sparse gradient comes with
    distinct ascending rows, which ``coalesced`` takes without sorting, equal to torch's
    ``coalesce`` of the same gradient."""
    from recbole_cstwa.optim import coalesced

    model, _, batches = model_and_trainer(embedding_update="sparse")
    torch.manual_seed(1)
    sum(model.calculate_loss(batches[0])).backward()
    grad = model.click_embedding.token_table.weight.grad
    rows = grad._indices()[0]
    assert len(rows) > 1 and bool((rows[1:] > rows[:-1]).all())
    ours, torchs = coalesced(grad), grad.coalesce()
    assert ours.is_coalesced()
    assert torch.equal(ours.indices(), torchs.indices()) and torch.equal(ours.values(), torchs.values())


def test_one_lookup_a_table_equals_the_per_group_lookups(model_and_trainer):
    """``FieldEmbedding.lookup`` (one table look-up for all groups) gives every group's vectors,
    masks and table gradient as the per-group look-ups, sparse and dense."""
    for update in ("sparse", "dense"):
        model, _, batches = model_and_trainer(embedding_update=update)
        embedding, batch = model.click_embedding, batches[0]
        torch.manual_seed(2)  # the same draws of rare users shown as unknown (min_count) in both
        together = embedding.lookup(batch)
        weights = torch.randn(sum(v.numel() for v, _ in together.values()))
        torch.cat([v.flatten() for v, _ in together.values()]).mul(weights).sum().backward()
        grad_together = embedding.token_table.weight.grad.to_dense().clone()
        embedding.token_table.weight.grad = None
        torch.manual_seed(2)
        apart = {group: embedding(batch, group) for group in together}
        torch.cat([v.flatten() for v, _ in apart.values()]).mul(weights).sum().backward()
        for group in together:
            assert torch.equal(together[group][0], apart[group][0])
            assert torch.equal(together[group][1], apart[group][1])
        torch.testing.assert_close(embedding.token_table.weight.grad.to_dense(), grad_together)


def test_dropout_keeps_each_element_with_probability_one_minus_p():
    from recbole_cstwa.model.layers import Dropout

    torch.manual_seed(0)
    layer = Dropout(0.3)
    x = torch.ones(400, 500, requires_grad=True)
    out = layer(x)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.7))
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())  # the gradient is the scaled mask
    layer.eval()
    assert layer(x) is x
    assert Dropout(0.0).train()(x) is x
    assert not Dropout(1.0).train()(x).any()
