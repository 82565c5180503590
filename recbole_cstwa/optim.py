"""Optimizers for sparse embedding updates (``embedding_update: sparse``).

:class:`LazyRowAdam` moves only the embedding rows a batch looked up, :class:`SplitOptimizer`
steps it together with the configured learner for the dense parameters, and
:func:`clip_gradients` is RecBole's gradient clipping extended to sparse gradients. The trainers
(:mod:`recbole_cstwa.trainer`) build them over the tables :func:`sparse_row_parameters` finds.

Nothing here imports model code: the plugin's embedding layer is recognised by what it declares
(``sparse`` and ``row_weight_decay``), so the trainers below the models need no model import.
"""

import math
from logging import getLogger

import torch
import torch.nn as nn
from torch.nn.utils.clip_grad import clip_grad_norm_

#: Learners whose embedding-table part :class:`LazyRowAdam` reproduces row-wise, with whether
#: their weight decay is decoupled (``adamw``).
ROW_WISE_LEARNERS = {"adam": False, "adamw": True}


def sparse_updates(config):
    """``(applies, why_not)``: whether this run's embedding tables get sparse gradients and
    :class:`LazyRowAdam` (``embedding_update: sparse``), and if not, why.

    ``sparse`` gives way to dense updates, which every case below can train, under distributed
    training (RecBole's DDP step adds every parameter to the loss, which makes embedding
    gradients dense, and nccl all-reduces dense tensors only), mixed precision (RecBole's own
    epoch, whose gradient clipping takes dense gradients only) and a ``learner`` without a
    row-wise form (only Adam's is implemented)."""
    if config["embedding_update"] != "sparse":
        return False, None
    if not config["single_spec"]:
        return False, "distributed training"
    if config["enable_amp"] or config["enable_scaler"]:
        return False, "mixed precision (enable_amp / enable_scaler)"
    learner = str(config["learner"]).lower()
    if learner not in ROW_WISE_LEARNERS:
        return False, f"learner {learner} (the row-wise update is Adam's: learner adam or adamw)"
    return True, None


def sparse_row_parameters(module):
    """``{parameter: row_weight_decay}`` of every sparse embedding table in ``module``.

    An embedding layer that declares ``row_weight_decay`` (the plugin's
    :class:`~recbole_cstwa.model.layers.FieldEmbedding`) and is ``sparse`` gives all its tables
    with that decay (``None``: the optimizer's ``weight_decay``); any other ``nn.Embedding`` with
    ``sparse=True`` gives its weight with ``None``.
    """
    found = {}
    for layer in module.modules():  # parents first: a declaring layer's own decay wins
        if hasattr(layer, "row_weight_decay") and getattr(layer, "sparse", False):
            for weight in layer.parameters():
                found[weight] = layer.row_weight_decay
        elif isinstance(layer, nn.Embedding) and layer.sparse:
            found.setdefault(layer.weight, None)
    return found


def mark_tables_sparse(module):
    """Makes every ``nn.Embedding`` in ``module`` give sparse gradients (``sparse=True``, read by
    ``nn.Embedding.forward``): how RecBole's built-in models get ``embedding_update: sparse``."""
    for layer in module.modules():
        if isinstance(layer, nn.Embedding):
            layer.sparse = True


def coalesced(grad):
    """A sparse gradient with one value a row (``grad.coalesce()``), without sorting when its
    rows already are distinct and ascending: the embedding layers' gradients are built so
    (:func:`recbole_cstwa.model.layers.gather_unique_rows`), but autograd drops the "coalesced"
    flag when it stores them."""
    if grad.is_coalesced():
        return grad
    rows = grad._indices()
    if rows.shape[0] == 1 and bool((rows[0, 1:] > rows[0, :-1]).all()):
        return torch.sparse_coo_tensor(
            rows, grad._values(), grad.shape, is_coalesced=True, check_invariants=False
        )
    return grad.coalesce()


class LazyRowAdam(torch.optim.Optimizer):
    """Adam for embedding tables with sparse gradients: only the rows a batch touched move.

    A dense gradient (a loss that reads the whole table, as a regulariser over its weights)
    moves every row that step, as torch's ``Adam`` does; it is logged once a table.

    The "lazy" Adam of sparse embeddings (as TensorFlow's ``LazyAdamOptimizer``): a touched row's
    moments and value get torch's ``Adam`` update (the same formula, ``eps`` added after the
    bias-corrected square root), with the step count of the whole table for the bias correction;
    rows a batch did not look up keep their value and moments. Its cost is proportional to the
    rows touched, not to the table size. ``weight_decay`` (a group setting) is the L2 weight of
    the touched rows: added to their gradient (``adam``'s coupled decay) or, with
    ``decoupled=True``, multiplied out of them before the step (``adamw``).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled=decoupled)
        super().__init__(params, defaults)

    def _note_dense(self, param):
        noted = self.__dict__.setdefault("_dense_noted", set())  # made here: pickling drops it
        if id(param) not in noted:
            noted.add(id(param))
            getLogger().warning(
                f"An embedding table of shape {tuple(param.shape)} got a dense gradient (the "
                "model's loss reads the whole table, e.g. a regulariser over its weights): all its "
                "rows are updated every step, as with embedding_update: dense, at that cost."
            )

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    grad = coalesced(param.grad)  # one value a row: the update is non-linear
                    rows, values = grad.indices()[0], grad.values()
                else:  # the loss read the whole table: every row has a gradient, as dense Adam
                    self._note_dense(param)
                    rows, values = torch.arange(len(param), device=param.device), param.grad
                if len(rows) == 0:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    # both moments of a row side by side: one gather and one scatter a step
                    state["moments"] = torch.zeros(
                        (len(param), 2, *param.shape[1:]), dtype=param.dtype, device=param.device
                    )
                state["step"] += 1
                current = param.index_select(0, rows)
                if decay and group["decoupled"]:
                    current.mul_(1 - lr * decay)
                elif decay:
                    values = values.add(current, alpha=decay)
                moments = state["moments"].index_select(0, rows)
                exp_avg, exp_avg_sq = moments[:, 0], moments[:, 1]
                exp_avg.mul_(beta1).add_(values, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(values, values, value=1 - beta2)
                state["moments"].index_copy_(0, rows, moments)
                bias_correction1 = 1 - beta1 ** state["step"]
                bias_correction2 = 1 - beta2 ** state["step"]
                denominator = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)
                current.addcdiv_(exp_avg, denominator, value=-lr / bias_correction1)
                param.index_copy_(0, rows, current)
        return loss


def clip_gradients(parameters, max_norm, norm_type=2.0, **options):
    """``torch.nn.utils.clip_grad_norm_`` (RecBole's ``clip_grad_norm``) that also takes sparse
    gradients (``embedding_update: sparse``): they are coalesced, so that their norm is the norm
    of the dense gradient they stand for, and scaled like the others."""
    parameters = [p for p in parameters if p.grad is not None]
    if not any(p.grad.is_sparse for p in parameters):
        return clip_grad_norm_(parameters, max_norm, norm_type=norm_type, **options)
    for p in parameters:
        if p.grad.is_sparse:
            p.grad = coalesced(p.grad)
    parts = [p.grad.values() if p.grad.is_sparse else p.grad for p in parameters]
    norm_type = float(norm_type)
    total = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g, norm_type) for g in parts]), norm_type
    )
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for part in parts:
        part.mul_(scale.to(part.device))
    return total


class SplitOptimizer:
    """Several optimizers over disjoint parameters, stepped as one (the RecBole trainer's
    ``optimizer``): the configured learner for dense parameters, :class:`LazyRowAdam` for the
    sparse embedding tables. Its state dict holds each one's, in order."""

    def __init__(self, optimizers):
        self.optimizers = list(optimizers)

    @property
    def param_groups(self):
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @property
    def state(self):
        return {key: value for optimizer in self.optimizers for key, value in optimizer.state.items()}

    def zero_grad(self, set_to_none=True):
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def state_dict(self):
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict):
        states = state_dict.get("optimizers") if isinstance(state_dict, dict) else None
        if not isinstance(states, list) or len(states) != len(self.optimizers):
            raise ValueError(
                "The optimizer state was not written by this split optimizer (sparse embedding "
                "updates: one state for the dense parameters, one for the tables); it was written "
                "with embedding_update: dense or for another model."
            )
        for optimizer, state in zip(self.optimizers, states):
            optimizer.load_state_dict(state)

    def __repr__(self):
        return f"SplitOptimizer({', '.join(type(o).__name__ for o in self.optimizers)})"
