"""Building blocks every multi-task model shares: grouped field embeddings and MLP towers."""

import torch
import torch.nn as nn
from recbole.utils import FeatureSource, FeatureType

#: Feature groups in the order the models concatenate them (the paper's Eq. 7).
GROUPS = ("user", "item", "context")
_GROUP_SOURCES = {
    "user": (FeatureSource.USER_ID, FeatureSource.USER),
    "item": (FeatureSource.ITEM_ID, FeatureSource.ITEM),
    "context": (FeatureSource.INTERACTION,),
}


def group_fields(dataset, config, exclude=()):
    """Splits the dataset's feature fields into user / item / context groups.

    User fields are the ``.user`` file's fields and the user id, item fields likewise, context
    fields the remaining ``.inter`` fields. Labels (and ``exclude``) are never features. Only
    token, token_seq and (listed in ``numerical_features``) float fields are embedded.

    Returns:
        dict: group name -> list of ``(field, FeatureType)``.
    """
    excluded = set(exclude) | {config["CLICK_FIELD"], config["PURCHASE_FIELD"], config["LABEL_FIELD"]}
    numerical = set(config["numerical_features"] or [])
    groups = {}
    for group, sources in _GROUP_SOURCES.items():
        fields = []
        for field in dataset.fields(source=list(sources)):
            ftype = dataset.field2type[field]
            if field in excluded:
                continue
            if ftype in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ) or (
                ftype == FeatureType.FLOAT and field in numerical
            ):
                fields.append((field, ftype))
        groups[group] = fields
    return groups


class FieldEmbedding(nn.Module):
    """Embeds each feature field into a ``d``-vector, grouped as user / item / context.

    Token fields share one table (with per-field offsets, one look-up per group); a token_seq
    field is the mean of its tokens' vectors; a numerical float field is its value times a
    learned vector (with RecBole's ``discretization``, the bucket's vector).

    With ``sparse=True`` (``embedding_update: sparse``) the tables give sparse gradients (only
    the rows a batch looked up) and their weights are marked for the trainer, which updates them
    with a row-wise lazy Adam (:class:`recbole_cstwa.optim.LazyRowAdam`): a step then costs the
    same whatever the vocabulary size. ``row_weight_decay`` is the L2 weight on the touched rows:
    ``None`` (the optimizer's ``weight_decay``) or a number a model sets (AITM's ``aitm_l2``);
    :func:`recbole_cstwa.optim.sparse_row_parameters` lists the tables for the optimizer.
    """

    def __init__(self, dataset, groups, embedding_size, init_std=0.01, sparse=False):
        super().__init__()
        self.groups = groups
        self.embedding_size = embedding_size
        self.sparse = bool(sparse)
        self.row_weight_decay = None
        token_fields = [f for g in GROUPS for f, t in groups[g] if t == FeatureType.TOKEN]
        float_fields = [f for g in GROUPS for f, t in groups[g] if t == FeatureType.FLOAT]
        seq_fields = [f for g in GROUPS for f, t in groups[g] if t == FeatureType.TOKEN_SEQ]

        token_sizes = [dataset.num(field) for field in token_fields]
        token_offsets = torch.tensor([0] + token_sizes[:-1]).cumsum(0)
        self.token_offset = dict(zip(token_fields, token_offsets.tolist()))
        self.token_table = nn.Embedding(max(sum(token_sizes), 1), embedding_size, sparse=self.sparse)

        float_sizes = [dataset.num(field) for field in float_fields]
        float_offsets = torch.tensor([0] + float_sizes[:-1]).cumsum(0)
        self.float_offset = dict(zip(float_fields, float_offsets.tolist()))
        self.float_table = nn.Embedding(max(sum(float_sizes), 1), embedding_size, sparse=self.sparse)

        self.seq_tables = nn.ModuleDict(
            {
                field: nn.Embedding(dataset.num(field), embedding_size, padding_idx=0, sparse=self.sparse)
                for field in seq_fields
            }
        )
        for group in GROUPS:
            fields = [f for f, t in groups[group] if t == FeatureType.TOKEN]
            self.register_buffer(
                f"_{group}_offsets",
                torch.tensor([self.token_offset[f] for f in fields], dtype=torch.long),
                persistent=False,
            )
        for table in [self.token_table, self.float_table, *self.seq_tables.values()]:
            nn.init.normal_(table.weight, std=init_std)

    def forward(self, interaction, group):
        """Embeds one group's fields: ``lookup(interaction, (group,))[group]``."""
        return self.lookup(interaction, (group,))[group]

    def lookup(self, interaction, groups=GROUPS):
        """Embeds the fields of ``groups``, with one look-up of the token table for all of them.

        One look-up a step gives the table one gradient, not one a group summed by autograd
        (with sparse gradients each sum concatenates the index lists). Under ``sparse`` the
        table's rows are gathered once for the batch's distinct tokens
        (:func:`gather_unique_rows`), so the gradient comes coalesced.

        Returns:
            dict: group -> ``(embeddings, present)``: ``(B, n_fields, d)`` vectors and a
            ``(B, n_fields)`` bool mask of the fields present in each row (a token is absent when
            it is RecBole's padding id 0, a sequence when it is empty).
        """
        token_ids = {}
        for group in groups:
            fields = [f for f, t in self.groups[group] if t == FeatureType.TOKEN]
            if fields:
                tokens = torch.stack([interaction[f] for f in fields], dim=1)
                token_ids[group] = tokens
        token_vectors = {}
        if token_ids:
            ids = torch.cat(
                [tokens + getattr(self, f"_{g}_offsets") for g, tokens in token_ids.items()], dim=1
            )
            if self.sparse:
                unique, inverse = torch.unique(ids, return_inverse=True)
                looked_up = gather_unique_rows(self.token_table.weight, unique)[inverse]
            else:
                looked_up = self.token_table(ids)
            widths = [tokens.shape[1] for tokens in token_ids.values()]
            token_vectors = dict(zip(token_ids, looked_up.split(widths, dim=1)))
        return {group: self._group_vectors(interaction, group, token_ids, token_vectors) for group in groups}

    def _group_vectors(self, interaction, group, token_ids, token_vectors):
        fields = self.groups[group]
        vectors, present = [], []
        if group in token_ids:
            vectors.append(token_vectors[group])
            present.append(token_ids[group] != 0)
        for field in (f for f, t in fields if t == FeatureType.TOKEN_SEQ):
            sequence = interaction[field]
            mask = (sequence != 0).float()
            count = mask.sum(dim=1, keepdim=True)
            summed = (self.seq_tables[field](sequence) * mask.unsqueeze(-1)).sum(dim=1)
            vectors.append((summed / count.clamp(min=1)).unsqueeze(1))
            present.append(count > 0)
        for field in (f for f, t in fields if t == FeatureType.FLOAT):
            value, index = interaction[field].float().split(1, dim=-1)
            row = self.float_table(index.long().squeeze(-1) + self.float_offset[field])
            vectors.append((row * value).unsqueeze(1))
            present.append(torch.ones_like(value, dtype=torch.bool))
        if not vectors:
            batch = len(interaction)
            device = self.token_table.weight.device
            return (
                torch.zeros(batch, 0, self.embedding_size, device=device),
                torch.zeros(batch, 0, dtype=torch.bool, device=device),
            )
        return torch.cat(vectors, dim=1), torch.cat(present, dim=1)


class _GatherUniqueRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, rows):
        ctx.save_for_backward(rows)
        ctx.weight_shape = weight.shape
        return weight.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad):
        (rows,) = ctx.saved_tensors
        sparse = torch.sparse_coo_tensor(
            rows.unsqueeze(0), grad.contiguous(), ctx.weight_shape, is_coalesced=True, check_invariants=False
        )
        return sparse, None


def gather_unique_rows(weight, rows):
    """``weight[rows]`` for distinct, ascending ``rows`` (``torch.unique``'s output), whose
    gradient is a sparse tensor marked coalesced: one value a row, so the optimizer need not sort
    and sum the batch's look-ups again (``nn.Embedding(sparse=True)`` gives one value a look-up)."""
    return _GatherUniqueRows.apply(weight, rows)


def mean_of_present(embeddings, present):
    """Mean of the present fields' vectors (the paper's Eq. 7 context term): ``(B, d)``."""
    weights = present.unsqueeze(-1).to(embeddings.dtype)
    return (embeddings * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask is drawn as ``torch.rand(...) >= p``.

    The same dropout (each element kept with probability ``1 - p`` and scaled by
    ``1 / (1 - p)``), drawn from torch's uniform generator instead of its CPU ``bernoulli_``,
    which costs more forward and backward (``benchmarks/bench_step.py``; measured in
    ``results/training-step.md``). The same distribution, another random stream: a run
    is reproducible under its seed but not bit-identical to one with ``nn.Dropout``. On other
    devices torch's fused dropout is used.
    """

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu" or self.p == 1:
            return nn.functional.dropout(x, self.p, True)
        mask = (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * mask


class MLPTower(nn.Module):
    """Linear -> ReLU -> Dropout per layer (the paper's Click / Conversion Tower; the dropout is
    :class:`Dropout`)."""

    def __init__(self, input_size, hidden_sizes, dropouts):
        super().__init__()
        hidden_sizes = list(hidden_sizes)
        if isinstance(dropouts, (int, float)):
            dropouts = [dropouts] * len(hidden_sizes)
        dropouts = list(dropouts)  # one a layer (recbole_cstwa.settings checks tower_dropout)
        layers = []
        for size, dropout in zip(hidden_sizes, dropouts):
            layers += [nn.Linear(input_size, size), nn.ReLU(), Dropout(dropout)]
            input_size = size
        self.layers = nn.Sequential(*layers)
        self.output_size = input_size

    def forward(self, x):
        return self.layers(x)


class SoftmaxGate(nn.Linear):
    """A gate: a linear map of its input to one weight per expert, softmax-normalised.

    A ``nn.Linear`` subclass, so its parameters keep a linear layer's names and initialisation.
    Returns ``(B, num_experts)`` weights that sum to 1.
    """

    def forward(self, x):
        return torch.softmax(super().forward(x), dim=-1)


def mix_experts(weights, expert_outputs):
    """Gate-weighted sum of experts: ``(B, E)`` weights, ``(B, E, H)`` outputs -> ``(B, H)``."""
    return torch.einsum("be,beh->bh", weights, expert_outputs)


class ExpertMixture(nn.Module):
    """Expert-Bottom sharing: MLP experts mixed by softmax gates (MMoE, OMoE).

    Each gate is a linear map of the input to one weight per expert, softmax-normalised; gate
    ``g``'s output is the weighted sum of the experts' outputs. MMoE has one gate per task, OMoE
    one gate whose mixture every task reads.
    """

    def __init__(self, input_size, num_experts, num_gates, hidden_sizes, dropouts):
        super().__init__()
        self.experts = nn.ModuleList(MLPTower(input_size, hidden_sizes, dropouts) for _ in range(num_experts))
        self.gates = nn.ModuleList(SoftmaxGate(input_size, num_experts) for _ in range(num_gates))
        self.output_size = self.experts[0].output_size

    def gate_weights(self, x):
        """``(num_gates, B, num_experts)`` softmax weights."""
        return torch.stack([gate(x) for gate in self.gates])

    def forward(self, x):
        """Returns a list with each gate's mixture, ``(B, output_size)``."""
        expert_outputs = torch.stack([expert(x) for expert in self.experts], dim=1)
        return [mix_experts(w, expert_outputs) for w in self.gate_weights(x)]


class ExtractionLayer(nn.Module):
    """One level of Progressive Layered Extraction (PLE's CGC layer): shared and task-specific
    MLP experts, one softmax gate per task.

    Task ``t``'s gate reads task ``t``'s input and mixes its own specific experts with the shared
    experts. Below the last level a shared gate also reads the shared input and mixes every
    expert (all tasks' specific ones and the shared ones): the next level's shared input. Stacking
    these layers is PLE; one layer alone is CGC.
    """

    def __init__(
        self, input_size, num_tasks, num_shared, num_specific, hidden_sizes, dropouts, shared_output
    ):
        super().__init__()

        def experts(count):
            return nn.ModuleList(MLPTower(input_size, hidden_sizes, dropouts) for _ in range(count))

        self.shared_experts = experts(num_shared)
        self.specific_experts = nn.ModuleList(experts(num_specific) for _ in range(num_tasks))
        self.task_gates = nn.ModuleList(
            SoftmaxGate(input_size, num_specific + num_shared) for _ in range(num_tasks)
        )
        self.shared_gate = (
            SoftmaxGate(input_size, num_tasks * num_specific + num_shared) if shared_output else None
        )
        self.output_size = [*self.shared_experts, *self.specific_experts[0]][0].output_size

    def forward(self, inputs):
        """``inputs``: each task's input then the shared input, each ``(B, input_size)``.

        Returns:
            list: each task's mixture, then (below the last level) the shared mixture, each
            ``(B, output_size)``: the next level's ``inputs``.
        """
        *task_inputs, shared_input = inputs
        shared = [expert(shared_input) for expert in self.shared_experts]
        specific = [
            [expert(x) for expert in experts] for experts, x in zip(self.specific_experts, task_inputs)
        ]
        outputs = [
            mix_experts(gate(x), torch.stack(own + shared, dim=1))
            for gate, x, own in zip(self.task_gates, task_inputs, specific)
        ]
        if self.shared_gate is not None:
            every_expert = [output for own in specific for output in own] + shared
            outputs.append(mix_experts(self.shared_gate(shared_input), torch.stack(every_expert, dim=1)))
        return outputs


class TaskTowers(nn.Module):
    """One task tower (an :class:`MLPTower`) and one :class:`ProbabilityHead` per task, each
    reading its own task's input: what the Expert-Bottom models (MMoE, OMoE, PLE) put after each
    task's gated mixture. Empty ``hidden_sizes``: each task's head reads its mixture directly
    (the CSTWA paper's experts are whole towers); otherwise a task tower first, as the MMoE and
    PLE papers and torch-rechub / MTReclib / PaddleRec have it.
    """

    def __init__(self, input_size, num_tasks, hidden_sizes, dropouts):
        super().__init__()
        self.towers = nn.ModuleList(MLPTower(input_size, hidden_sizes, dropouts) for _ in range(num_tasks))
        self.heads = nn.ModuleList(ProbabilityHead(tower.output_size) for tower in self.towers)

    def forward(self, task_inputs):
        """``task_inputs``: one ``(B, input_size)`` tensor per task -> one ``(B,)`` probability each."""
        return [head(tower(x)) for tower, head, x in zip(self.towers, self.heads, task_inputs)]


class ProbabilityHead(nn.Module):
    """Linear -> sigmoid: a tower's output to a probability of shape ``(B,)``."""

    def __init__(self, input_size):
        super().__init__()
        self.linear = nn.Linear(input_size, 1)

    def forward(self, x):
        return torch.sigmoid(self.linear(x)).squeeze(-1)
