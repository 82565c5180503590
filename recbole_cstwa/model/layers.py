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
    """

    def __init__(self, dataset, groups, embedding_size, init_std=0.01):
        super().__init__()
        self.groups = groups
        self.embedding_size = embedding_size
        token_fields = [f for g in GROUPS for f, t in groups[g] if t == FeatureType.TOKEN]
        float_fields = [f for g in GROUPS for f, t in groups[g] if t == FeatureType.FLOAT]
        seq_fields = [f for g in GROUPS for f, t in groups[g] if t == FeatureType.TOKEN_SEQ]

        token_sizes = [dataset.num(field) for field in token_fields]
        token_offsets = torch.tensor([0] + token_sizes[:-1]).cumsum(0)
        self.token_offset = dict(zip(token_fields, token_offsets.tolist()))
        self.token_table = nn.Embedding(max(sum(token_sizes), 1), embedding_size)

        float_sizes = [dataset.num(field) for field in float_fields]
        float_offsets = torch.tensor([0] + float_sizes[:-1]).cumsum(0)
        self.float_offset = dict(zip(float_fields, float_offsets.tolist()))
        self.float_table = nn.Embedding(max(sum(float_sizes), 1), embedding_size)

        self.seq_tables = nn.ModuleDict(
            {field: nn.Embedding(dataset.num(field), embedding_size, padding_idx=0) for field in seq_fields}
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

    def num_fields(self, group):
        return len(self.groups[group])

    def forward(self, interaction, group):
        """Embeds one group's fields.

        Returns:
            tuple: ``(embeddings, present)``: ``(B, n_fields, d)`` vectors and a ``(B, n_fields)``
            bool mask of the fields present in each row (a token is absent when it is RecBole's
            padding id 0, a sequence when it is empty).
        """
        fields = self.groups[group]
        vectors, present = [], []
        token_fields = [f for f, t in fields if t == FeatureType.TOKEN]
        if token_fields:
            tokens = torch.stack([interaction[f] for f in token_fields], dim=1)
            vectors.append(self.token_table(tokens + getattr(self, f"_{group}_offsets")))
            present.append(tokens != 0)
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


def mean_of_present(embeddings, present):
    """Mean of the present fields' vectors (the paper's Eq. 7 context term): ``(B, d)``."""
    weights = present.unsqueeze(-1).to(embeddings.dtype)
    return (embeddings * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


class MLPTower(nn.Module):
    """Linear -> ReLU -> Dropout per layer (the paper's Click / Conversion Tower)."""

    def __init__(self, input_size, hidden_sizes, dropouts):
        super().__init__()
        hidden_sizes = list(hidden_sizes)
        if isinstance(dropouts, (int, float)):
            dropouts = [dropouts] * len(hidden_sizes)
        dropouts = list(dropouts)
        if len(dropouts) != len(hidden_sizes):
            raise ValueError(
                f"tower_dropout {dropouts} needs one value per layer of tower_hidden_size {hidden_sizes}."
            )
        layers = []
        for size, dropout in zip(hidden_sizes, dropouts):
            layers += [nn.Linear(input_size, size), nn.ReLU(), nn.Dropout(dropout)]
            input_size = size
        self.layers = nn.Sequential(*layers)
        self.output_size = input_size

    def forward(self, x):
        return self.layers(x)


class ExpertMixture(nn.Module):
    """Expert-Bottom sharing: MLP experts mixed by softmax gates (MMoE, OMoE).

    Each gate is a linear map of the input to one weight per expert, softmax-normalised; gate
    ``g``'s output is the weighted sum of the experts' outputs. MMoE has one gate per task, OMoE
    one gate whose mixture every task reads.
    """

    def __init__(self, input_size, num_experts, num_gates, hidden_sizes, dropouts):
        super().__init__()
        self.experts = nn.ModuleList(MLPTower(input_size, hidden_sizes, dropouts) for _ in range(num_experts))
        self.gates = nn.ModuleList(nn.Linear(input_size, num_experts) for _ in range(num_gates))
        self.output_size = self.experts[0].output_size

    def gate_weights(self, x):
        """``(num_gates, B, num_experts)`` softmax weights."""
        return torch.stack([torch.softmax(gate(x), dim=-1) for gate in self.gates])

    def forward(self, x):
        """Returns a list with each gate's mixture, ``(B, output_size)``."""
        expert_outputs = torch.stack([expert(x) for expert in self.experts], dim=1)
        weights = self.gate_weights(x)
        return [torch.einsum("be,beh->bh", w, expert_outputs) for w in weights]


class ProbabilityHead(nn.Module):
    """Linear -> sigmoid: a tower's output to a probability of shape ``(B,)``."""

    def __init__(self, input_size):
        super().__init__()
        self.linear = nn.Linear(input_size, 1)

    def forward(self, x):
        return torch.sigmoid(self.linear(x)).squeeze(-1)
