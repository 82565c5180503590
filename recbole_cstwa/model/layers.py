"""Building blocks every multi-task model shares: grouped field embeddings and MLP towers."""

from logging import getLogger

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


def token_counts(dataset, fields):
    """How often each id of each token field occurs in ``dataset``'s impressions.

    A field of the impressions (``.inter``, the user and item ids) counts its rows; a field of
    the ``.user`` (``.item``) file counts the impressions of the users (items) holding each value.
    A model is built on the training split's dataset (RecBole's ``build``), so these are training
    counts.

    Returns:
        dict: field -> ``(dataset.num(field),)`` int64 counts; ``None`` when ``dataset`` holds no
        impressions (a model rebuilt from its checkpoint: :class:`recbole_cstwa.schema.TrainedDataset`).
    """
    impressions = getattr(dataset, "inter_feat", None)
    if impressions is None:
        return None
    per_entity = {}
    for source, id_field, feat in (
        (FeatureSource.USER, dataset.uid_field, getattr(dataset, "user_feat", None)),
        (FeatureSource.ITEM, dataset.iid_field, getattr(dataset, "item_feat", None)),
    ):
        if feat is not None and id_field is not None and id_field in impressions:
            impressions_of = torch.bincount(_column(impressions, id_field), minlength=len(feat)).double()
            per_entity[source] = (feat, impressions_of)
    counts = {}
    for field in fields:
        size = dataset.num(field)
        source = dataset.field2source.get(field)
        if field in impressions:
            counts[field] = torch.bincount(_column(impressions, field), minlength=size)
        elif source in per_entity and field in per_entity[source][0]:
            feat, impressions_of = per_entity[source]
            values = _column(feat, field)
            counts[field] = torch.bincount(values, weights=impressions_of, minlength=size).round().long()
        else:  # never in an impression (no id to join it by)
            counts[field] = torch.zeros(size, dtype=torch.long)
    return counts


def _column(feat, field):
    """A column of an ``Interaction`` (or a pandas frame) as an int64 tensor."""
    column = feat[field]
    if not isinstance(column, torch.Tensor):
        column = torch.from_numpy(column.to_numpy())
    return column.long()


def frequent_id_rows(sizes, counts, min_count):
    """The id -> token-table row map of fields with out-of-vocabulary rows (``min_count`` > 0).

    Each field has ``size + 1`` ids, its tokens then the index a token unseen in training gets
    (``size``), and a block of rows: ``[PAD]``'s own row (id 0, an absent field), the field's
    out-of-vocabulary row (shared by the ids counted fewer than ``min_count`` times and by the
    unseen index), then one row a frequent id, in id order. ``counts`` (one tensor a field, or
    ``None``: every id counts as frequent, a stand-in until a checkpoint's map is loaded).

    Returns:
        torch.Tensor: ``(sum(size + 1),)`` int32 rows, the fields' ids one after the other.
    """
    parts, start = [], 0
    for position, size in enumerate(sizes):
        rows = torch.full((size + 1,), start + 1, dtype=torch.long)  # out-of-vocabulary by default
        rows[0] = start
        frequent = (
            torch.ones(size - 1, dtype=torch.bool) if counts is None else counts[position][1:] >= min_count
        )
        own = int(frequent.sum())
        rows[1:size][frequent] = start + 2 + torch.arange(own)
        parts.append(rows)
        start += 2 + own
    return torch.cat(parts).int() if parts else torch.zeros(0, dtype=torch.int32)


#: In training, the share of a rare user's (item's) impressions in which it is shown as an
#: unknown user (its id's out-of-vocabulary row, no features), drawn each step
#: (:class:`FieldEmbedding`): half, so that both cases train alike (results/unseen-ids.md).
UNKNOWN_SHARE = 0.5


class FieldEmbedding(nn.Module):
    """Embeds each feature field into a ``d``-vector, grouped as user / item / context.

    Token fields share one table (with per-field offsets, one look-up for all groups); a
    token_seq field is the mean of its tokens' vectors; a numerical float field is its value
    times a learned vector (with RecBole's ``discretization``, the bucket's vector).

    With ``min_count`` > 0 (the ``min_count`` setting) each token field's ids counted fewer than
    ``min_count`` times in the training impressions (:func:`token_counts`) share one trained
    out-of-vocabulary row of that field, and the table holds only the frequent ids' rows, the
    out-of-vocabulary rows and ``[PAD]``'s: ids keep their numbers (the feature tables are joined
    by them) and the persistent buffer ``token_rows`` maps an id to its row
    (:func:`frequent_id_rows`), saved with the parameters: loading a state dict takes its map (and
    the table size it gives), so a model rebuilt from its checkpoint without its data, or built on
    another split, maps as in training. Ids seen only in the validation or test split count 0
    times: they are scored with the out-of-vocabulary row. Each field also has an id past its
    vocabulary, its size, for a token unseen in training (the predictor's and the exports'
    ``unseen_index``), mapped to the same row; ``[PAD]`` (id 0, a missing cell) stays the absent
    field. A user or item unseen at predict time has no features to join: it is an unknown
    user (item), its id's out-of-vocabulary row and ``[PAD]`` features. In training, a user or
    item seen fewer than ``min_count`` times is shown as an unknown one in a share
    (:data:`UNKNOWN_SHARE`) of its impressions, drawn each step, and with its features in the
    others: the model learns the rare users with their features (as a user of the validation or
    test split, in the vocabulary with its features, is scored) and users without any (as a new
    one at predict time). ``min_count: 0`` keeps one row an id, no buffer, no draw.

    The user's (item's) token fields are looked up by the user (item) id: an index table holds,
    for each user, the table rows of all its token fields (its ``.user`` features joined by id,
    as RecBole's ``Dataset.join``), so a batch takes one row of it instead of one column a
    feature; the table is built from the dataset's ``get_user_feature()`` (the feature columns in
    the interaction are then not read). A model's embedding layers built on one dataset share
    these index tables (``shared``, a dict the model keeps).

    With ``sparse=True`` (``embedding_update: sparse``) the tables give sparse gradients (only
    the rows a batch looked up) and their weights are marked for the trainer, which updates them
    with a row-wise lazy Adam (:class:`recbole_cstwa.optim.LazyRowAdam`): a step then costs the
    same whatever the vocabulary size. ``row_weight_decay`` is the L2 weight on the touched rows:
    ``None`` (the optimizer's ``weight_decay``) or a number a model sets (AITM's ``aitm_l2``);
    :func:`recbole_cstwa.optim.sparse_row_parameters` lists the tables for the optimizer.
    """

    def __init__(
        self, dataset, groups, embedding_size, init_std=0.01, sparse=False, min_count=0, shared=None
    ):
        super().__init__()
        self.groups = groups
        self.embedding_size = embedding_size
        self.sparse = bool(sparse)
        self.row_weight_decay = None
        self.min_count = int(min_count or 0)
        #: A :class:`JointLookup` and this layer's place in it, while scoring (``None``: own look-ups).
        self.joint = None
        self._shared = {} if shared is None else shared
        token_fields = [f for g in GROUPS for f, t in groups[g] if t == FeatureType.TOKEN]
        float_fields = [f for g in GROUPS for f, t in groups[g] if t == FeatureType.FLOAT]
        seq_fields = [f for g in GROUPS for f, t in groups[g] if t == FeatureType.TOKEN_SEQ]
        self._token_fields = {g: [f for f, t in groups[g] if t == FeatureType.TOKEN] for g in GROUPS}

        token_sizes = [dataset.num(field) for field in token_fields]
        self.token_size = dict(zip(token_fields, token_sizes))
        id_sizes = [size + 1 for size in token_sizes] if self.min_count else token_sizes
        token_offsets = torch.tensor([0] + id_sizes[:-1]).cumsum(0)
        #: Where each token field's ids start (in the table's rows, or with ``min_count`` in
        #: ``token_rows``).
        self.token_offset = dict(zip(token_fields, token_offsets.tolist()))
        if self.min_count:
            key = ("token_rows", self.min_count)
            if key not in self._shared:
                counts = token_counts(dataset, token_fields)
                listed = None if counts is None else [counts[field] for field in token_fields]
                self._shared[key] = frequent_id_rows(token_sizes, listed, self.min_count)
                if counts is not None:
                    self._log_rows(token_fields, token_sizes, self._shared[key])
            self.register_buffer("token_rows", self._shared[key])
            table_rows = int(self.token_rows.max()) + 1 if len(self.token_rows) else 0
        else:
            self.register_buffer("token_rows", None)
            table_rows = sum(token_sizes)
        self.token_table = nn.Embedding(max(table_rows, 1), embedding_size, sparse=self.sparse)

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
            self.register_buffer(
                f"_{group}_offsets",
                torch.tensor([self.token_offset[f] for f in self._token_fields[group]], dtype=torch.long),
                persistent=False,
            )
        self._entity_ids = self._entity_id_tables(dataset)
        self._entity_field, self._entity_position = {}, {}
        self._set_entity_rows()
        for table in [self.token_table, self.float_table, *self.seq_tables.values()]:
            nn.init.normal_(table.weight, std=init_std)

    # ----- ids -> rows ---------------------------------------------------------------------
    def _log_rows(self, fields, sizes, rows):
        starts = [self.token_offset[field] for field in fields]
        own = [
            int((rows[start + 1 : start + size] != rows[start + size]).sum())
            for start, size in zip(starts, sizes)
        ]
        shown = ", ".join(f"{field} {count:,}/{size - 1:,}" for field, size, count in zip(fields, sizes, own))
        getLogger().info(
            f"min_count {self.min_count}: ids with a row of their own (the others share their "
            f"field's out-of-vocabulary row): {shown}"
        )

    def rows_of(self, field, ids):
        """The token-table rows of ``field``'s ``ids`` (int64)."""
        ids = ids + self.token_offset[field]
        return self.token_rows[ids].long() if self.token_rows is not None else ids

    def oov_row(self, field):
        """``field``'s out-of-vocabulary row, or ``None`` without ``min_count``."""
        if self.token_rows is None:
            return None
        return int(self.token_rows[self.token_offset[field] + self.token_size[field]])

    def _entity_id_tables(self, dataset):
        """group -> ``(id field, its column, ids)``: ``ids`` holds, row i for the user (item)
        with id i, the ids of the group's token fields (its features joined by id) plus their
        offsets, int32; with ``min_count`` one row more, the unseen entity (the id field's unseen
        index, no features). Groups whose token fields are not all in the feature table are left
        out (they are read from the interaction). Held once for a model's layers (``shared``)."""
        tables = {}
        for group, id_field, read in (
            ("user", dataset.uid_field, dataset.get_user_feature),
            ("item", dataset.iid_field, dataset.get_item_feature),
        ):
            fields = self._token_fields[group]
            if id_field is None or id_field not in fields:
                continue
            key = ("entity ids", group, self.min_count)
            if key not in self._shared:
                feat = read()
                if feat is None or any(field not in feat for field in fields):
                    self._shared[key] = None
                else:
                    position = fields.index(id_field)
                    ids = torch.stack([feat[field].long() for field in fields], dim=1)
                    if self.min_count:
                        unseen = torch.zeros(1, len(fields), dtype=torch.long)
                        unseen[0, position] = self.token_size[id_field]
                        ids = torch.cat([ids, unseen])
                    self._shared[key] = (position, (ids + getattr(self, f"_{group}_offsets")).int())
            if self._shared[key] is not None:
                tables[group] = (id_field, *self._shared[key])
        return tables

    def _set_entity_rows(self):
        """Builds (or takes from ``shared``) the per-user and per-item index tables of rows."""
        for group, (id_field, position, ids) in self._entity_ids.items():
            key = (group, self.min_count, id(self.token_rows))
            if key not in self._shared:
                pad_rows, unknown_row = getattr(self, f"_{group}_offsets").int(), None
                rows = ids  # one row an id: the ids are the rows
                if self.token_rows is not None:
                    rows, pad_rows = self.token_rows[ids.long()], self.token_rows[pad_rows.long()]
                    unknown_row = rows[-1].clone()  # the unseen entity's: OOV id, no features
                self._shared[key] = (rows, pad_rows, unknown_row)
            rows, pad_rows, unknown_row = self._shared[key]
            self.register_buffer(f"_{group}_rows", rows, persistent=False)
            self.register_buffer(f"_{group}_pad_rows", pad_rows, persistent=False)
            self.register_buffer(f"_{group}_unknown_row", unknown_row, persistent=False)
            if self.token_rows is not None:  # to map them again when a state dict brings its map
                self.register_buffer(f"_{group}_ids", ids, persistent=False)
            self._entity_field[group] = id_field
            self._entity_position[group] = position

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The id -> row map is part of the trained state: a stored map other than this layer's
        # (a model rebuilt from its checkpoint alone, with a stand-in map; or built on another
        # split than the training one, with other counts) replaces it, with the table size it
        # gives, before the tensors are copied in. Vocabularies of other sizes stay an error.
        stored = state_dict.get(prefix + "token_rows")
        weight = state_dict.get(prefix + "token_table.weight")
        if stored is not None and weight is not None and self.token_rows is not None:
            stored = stored.to(self.token_rows.device)
            if stored.shape == self.token_rows.shape and not torch.equal(stored, self.token_rows):
                self._adopt_rows(stored, weight.shape[0])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _adopt_rows(self, stored, table_rows):
        key = ("stored token_rows", self.min_count)
        if key not in self._shared or not torch.equal(self._shared[key], stored):
            self._shared[key] = stored.clone()  # one copy for the model's layers
        replaced, self.token_rows = self.token_rows, self._shared[key]
        for stale in [k for k, v in self._shared.items() if v is replaced or k[-1] == id(replaced)]:
            del self._shared[stale]  # the replaced map's tables: held by no layer once all adopt
        table = self.token_table.weight
        if table.shape[0] != table_rows:
            self.token_table.weight = nn.Parameter(
                table.new_empty(table_rows, table.shape[1]), requires_grad=table.requires_grad
            )
        self._set_entity_rows()

    # ----- look-ups ------------------------------------------------------------------------
    def forward(self, interaction, group):
        """Embeds one group's fields: ``lookup(interaction, (group,))[group]``."""
        return self.lookup(interaction, (group,))[group]

    def token_rows_of(self, interaction, group):
        """``(rows, present)``: the ``(B, n)`` table rows of ``group``'s token fields and whether
        each field is present (not ``[PAD]``), or ``None`` for a group without token fields."""
        fields = self._token_fields[group]
        if not fields:
            return None
        id_field = self._entity_field.get(group)
        if id_field is not None and id_field in interaction:
            # index_select: a row gather three times as fast as indexing with a tensor
            rows = getattr(self, f"_{group}_rows").index_select(0, interaction[id_field].long().reshape(-1))
            rows = self._unknown_in_training(rows, group)
            return rows, rows != getattr(self, f"_{group}_pad_rows")
        tokens = torch.stack([interaction[f].long() for f in fields], dim=1)
        ids = tokens + getattr(self, f"_{group}_offsets")
        if self.token_rows is None:
            return ids, tokens != 0
        rows = self.token_rows.index_select(0, ids.reshape(-1)).view(ids.shape)
        if group in self._entity_field:  # a rare user (item) as in its index table
            rows = self._unknown_in_training(rows, group)
            return rows, rows != getattr(self, f"_{group}_pad_rows")
        return rows, tokens != 0

    def found_rows(self, interaction, groups=GROUPS):
        """``(found, rows)``: group -> :meth:`token_rows_of` for the ``groups`` with token fields,
        and their rows side by side, ``(B, n)`` (``None`` when no group has any): one gather
        serves them all."""
        found = {}
        for group in groups:
            group_rows = self.token_rows_of(interaction, group)
            if group_rows is not None:
                found[group] = group_rows
        if not found:
            return found, None
        rows = [group_rows for group_rows, _ in found.values()]
        return found, torch.cat(rows, dim=1) if len(rows) > 1 else rows[0]

    def _unknown_in_training(self, rows, group):
        """``rows`` of users (items), with the rare ones shown as unknown (:data:`UNKNOWN_SHARE`)
        while training (with gradients: not in the graph stage or a refresh of CSTWA's P)."""
        unknown_row = getattr(self, f"_{group}_unknown_row", None)
        if unknown_row is None or not (self.training and torch.is_grad_enabled()):
            return rows
        position = self._entity_position[group]
        rare = rows[:, position] == unknown_row[position]
        shown_unknown = rare & (torch.rand(len(rows), device=rows.device) < UNKNOWN_SHARE)
        return torch.where(shown_unknown[:, None], unknown_row.to(rows.dtype), rows)

    def gather(self, rows):
        """Token-table rows ``rows`` (any shape): ``(..., d)``."""
        weight = self.token_table.weight
        if self.sparse and weight.requires_grad and torch.is_grad_enabled():
            unique, inverse = torch.unique(rows, return_inverse=True)
            return gather_unique_rows(weight, unique.long())[inverse]
        return nn.functional.embedding(rows, weight)

    def lookup(self, interaction, groups=GROUPS):
        """Embeds the fields of ``groups``, with one look-up of the token table for all of them.

        One look-up a step gives the table one gradient, not one a group summed by autograd
        (with sparse gradients each sum concatenates the index lists). Under ``sparse`` (while
        training) the table's rows are gathered once for the batch's distinct rows
        (:func:`gather_unique_rows`), so the gradient comes coalesced.

        Returns:
            dict: group -> ``(embeddings, present)``: ``(B, n_fields, d)`` vectors and a
            ``(B, n_fields)`` bool mask of the fields present in each row (a token is absent when
            it is RecBole's padding id 0, a sequence when it is empty).
        """
        if self.joint is not None and tuple(groups) == GROUPS:
            joint, slot = self.joint
            token_vectors, present = joint.lookup(interaction, slot)
        else:
            found, rows = self.found_rows(interaction, groups)
            token_vectors, present = {}, {group: mask for group, (_, mask) in found.items()}
            if rows is not None:
                widths = [group_rows.shape[1] for group_rows, _ in found.values()]
                token_vectors = dict(zip(found, self.gather(rows).split(widths, dim=1)))
        return {group: self._group_vectors(interaction, group, present, token_vectors) for group in groups}

    def _group_vectors(self, interaction, group, token_present, token_vectors):
        fields = self.groups[group]
        vectors, present = [], []
        if group in token_vectors:
            vectors.append(token_vectors[group])
            present.append(token_present[group])
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
            batch = (
                len(next(iter(interaction.values()))) if isinstance(interaction, dict) else len(interaction)
            )
            device = self.token_table.weight.device
            return (
                torch.zeros(batch, 0, self.embedding_size, device=device),
                torch.zeros(batch, 0, dtype=torch.bool, device=device),
            )
        if len(vectors) == 1:
            return vectors[0], present[0]
        return torch.cat(vectors, dim=1), torch.cat(present, dim=1)


class JointLookup(nn.Module):
    """One look-up for several embedding layers that map ids to rows alike (a model's click and
    purchase embeddings), for scoring: their token tables side by side as one ``(N, k * d)``
    table, so a batch gathers ``k * d``-wide rows once instead of ``d``-wide rows ``k`` times (a
    random row of a large table costs about one cache miss whatever its width) and computes the
    rows once. The table is a copy (no gradient reaches the layers; a layer alone shares its
    own): built for a model in eval mode. Each layer's :meth:`FieldEmbedding.lookup` of all
    groups reads its part, and :meth:`inputs` gives every layer's Eq. 7 input at once (fewer,
    larger operations); the last batch's look-ups are kept until the next batch.

    With ``entity_vectors`` each user (item) looked up by id has its token fields' vectors of
    every layer in one row of a table of its own, ``(users, k, n * d)``, laid out as Eq. 7 reads
    them: a batch then takes one contiguous row a user instead of its index-table row and ``n``
    random rows of the token table (15-20% more rows a second for a model with 8 user and 4
    item fields, ``results/serving.md``). The same numbers, more memory (each user's ``n``
    vectors stored again): the predictor uses it, the exports keep the compact tables.
    """

    def __init__(self, layers, entity_vectors=False):
        super().__init__()
        self.layer = layers[0]  # whose index tables compute the rows (every layer's are equal)
        self.width = layers[0].embedding_size
        self.slots = len(layers)
        tables = [layer.token_table.weight.detach() for layer in layers]
        # side by side (a copy); a layer alone reads its own table
        self.register_buffer("table", torch.cat(tables, dim=1) if len(tables) > 1 else tables[0])
        # Eq. 7's input from the token vectors alone: no sequence or numerical field.
        self.tokens_only = all(
            kind == FeatureType.TOKEN for fields in layers[0].groups.values() for _, kind in fields
        )
        #: group -> the name of its ``(entities, k, n * d)`` buffer (``entity_vectors``).
        self.entity_vectors = {}
        if entity_vectors and self.tokens_only:
            for group in self.layer._entity_field:
                rows = getattr(self.layer, f"_{group}_rows").long()
                name = f"{group}_vectors"
                self.register_buffer(name, self._slot_major(nn.functional.embedding(rows, self.table)))
                self.entity_vectors[group] = name
        self._last = (None, None)
        for slot, layer in enumerate(layers):
            layer.joint = (self, slot)

    def _slot_major(self, vectors):
        """``(..., n, k * d)`` looked-up rows as ``(..., k, n * d)``: each layer's ``n`` vectors
        side by side, as its Eq. 7 input reads them."""
        return vectors.unflatten(-1, (self.slots, self.width)).transpose(-3, -2).flatten(-2)

    @staticmethod
    def joinable(first, other):
        """Whether ``other`` maps ids to rows as ``first`` does (then one look-up serves both)."""
        same_rows = (first.token_rows is None and other.token_rows is None) or (
            first.token_rows is not None
            and other.token_rows is not None
            and torch.equal(first.token_rows, other.token_rows)
        )
        return (
            same_rows
            and first.groups == other.groups
            and first.token_offset == other.token_offset
            and first.embedding_size == other.embedding_size
            and first.token_table.weight.shape == other.token_table.weight.shape
            and first.token_table.weight.dtype == other.token_table.weight.dtype
            and first.token_table.weight.device == other.token_table.weight.device
            and first._entity_field == other._entity_field
        )

    def _computed(self, interaction):
        """A dict for what is derived from ``interaction`` (kept until the next batch)."""
        batch, computed = self._last
        if batch is not interaction:
            computed = {}
            self._last = (interaction, computed)
        return computed

    def _looked_up(self, interaction):
        """``(found, vectors)`` of ``interaction``: group -> ``(rows, present)`` and the
        ``(B, n, k, d)`` vectors of every layer (``None`` without token fields)."""
        computed = self._computed(interaction)
        if "looked up" not in computed:
            found, rows = self.layer.found_rows(interaction)
            vectors = None
            if rows is not None:
                vectors = nn.functional.embedding(rows, self.table).unflatten(-1, (self.slots, self.width))
            computed["looked up"] = (found, vectors)
        return computed["looked up"]

    def lookup(self, interaction, slot):
        """``(token_vectors, present)`` of all groups for layer ``slot``, contiguous."""
        found, vectors = self._looked_up(interaction)
        if vectors is None:
            return {}, {}
        parts, start = {}, 0
        for group, (rows, _) in found.items():
            parts[group] = vectors[:, start : start + rows.shape[1], slot].contiguous()
            start += rows.shape[1]
        return parts, {group: mask for group, (_, mask) in found.items()}

    def inputs(self, interaction, slot, context_pooling):
        """Layer ``slot``'s :meth:`~recbole_cstwa.model.abstract_recommender.MultiTaskRecommender.embed_input`
        (the user and item vectors, then the context term), computed for every layer at once, or
        ``None`` where the layers have other fields than tokens."""
        if not self.tokens_only:
            return None
        computed = self._computed(interaction)
        if context_pooling not in computed:
            computed[context_pooling] = self._inputs(interaction, context_pooling)
        inputs = computed[context_pooling]
        return None if inputs is None else inputs[:, slot]

    def _inputs(self, interaction, context_pooling):
        """``(B, k, width)``: every layer's Eq. 7 input, written by one concatenation of the
        groups' ``(B, k, n * d)`` vectors (no in-place writes: the ONNX export traces this too).
        A layer's input is a strided view of it, which the tower's first product reads as is."""
        parts = []
        for group in GROUPS:
            id_field = self.layer._entity_field.get(group)
            if group in self.entity_vectors and id_field in interaction:
                ids = interaction[id_field].long().reshape(-1)
                parts.append(getattr(self, self.entity_vectors[group]).index_select(0, ids))
                continue
            found = self.layer.token_rows_of(interaction, group)
            if found is None:
                continue
            rows, present = found
            vectors = nn.functional.embedding(rows, self.table)  # (B, n, k * d)
            if group == "context" and context_pooling == "mean":  # mean_of_present, a field at a time
                vectors = vectors.unflatten(-1, (self.slots, self.width))
                weights = present.to(vectors.dtype)
                total = vectors[:, 0] * weights[:, :1, None]
                for field in range(1, rows.shape[1]):
                    total = total + vectors[:, field] * weights[:, field : field + 1, None]
                parts.append(total / weights.sum(dim=1).clamp(min=1)[:, None, None])  # (B, k, d)
            else:
                parts.append(self._slot_major(vectors))
        if not parts:
            return None
        return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


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
