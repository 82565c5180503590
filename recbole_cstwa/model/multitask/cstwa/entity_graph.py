"""One graph of CSTWA's Structure Migrator (the user graph or the item graph) and its state.

Reference:
    Kai Ouyang et al. "Click-aware Structure Transfer with Sample Weight Assignment for Post-Click
    Conversion Rate Estimation." in ECML-PKDD 2023, Section 3.4.1 (Eqs. 8-10).

:class:`EntityGraph` is the single owner of everything the Structure Migrator keeps for one
group: the entities' feature rows (to build ``E``, Eq. 8), the normalised graph ``A_hat`` (as CSR
arrays) and the propagation ``P = A_hat^L E`` (Eq. 9) the model trains and is scored on. ``P``
changes only in :meth:`EntityGraph.refresh`, which the model's
:meth:`~recbole_cstwa.model.multitask.cstwa.cstwa.CSTWA.update_structure` calls and the trainer
schedules (as KGAT's ``update_attentive_A`` or NCL's ``e_step``); ``P`` and whether it was ever
computed are saved in checkpoints, so a reloaded model is scored with the ``P`` its training
used last.
"""

import torch
import torch.nn as nn

from recbole_cstwa.model.multitask.cstwa.structure import (
    RowGraph,
    group_representations,
    propagate_all,
    propagate_rows,
)


class EntityGraph(nn.Module):
    """The user (or item) graph of the Structure Migrator and its propagation ``P``.

    Args:
        group (str): ``"user"`` or ``"item"``.
        features (dict): ``field -> (N, ...)`` tensor of every entity's features, row i = id i
            (RecBole's ``get_user_feature()`` / ``get_item_feature()`` columns).
        width (int): width of an entity's representation (``n_fields * d``).
        layers (int): propagation layers L (Eq. 9).
    """

    def __init__(self, group, features, width, layers):
        super().__init__()
        self.group = group
        self.fields = list(features)
        self.layers = int(layers)
        self.num_entities = len(next(iter(features.values())))
        for position, field in enumerate(self.fields):
            self.register_buffer(f"feature_{position}", features[field].clone(), persistent=False)
        # A_hat as CSR arrays: set with set_graph (the trainer builds it before training).
        self.register_buffer("row_pointers", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("columns", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("values", torch.zeros(0), persistent=False)
        # P = A_hat^L E and whether it holds one (sm_mode: update: whether the rows were updated):
        # training state, saved with the model.
        self.register_buffer("propagated", torch.zeros(self.num_entities, width))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))

    def features(self):
        """``field -> (N, ...)`` tensor of every entity's features."""
        return {field: getattr(self, f"feature_{i}") for i, field in enumerate(self.fields)}

    def set_graph(self, graph):
        """Takes ``A_hat`` (an ``(N, N)`` sparse tensor); ``P`` is unset until :meth:`refresh`."""
        if tuple(graph.shape) != (self.num_entities, self.num_entities):
            raise ValueError(
                f"The {self.group} graph is {tuple(graph.shape)} but the dataset has "
                f"{self.num_entities} {self.group} rows ([PAD] included): build it from this "
                f"dataset's get_{self.group}_feature()."
            )
        rows = RowGraph.from_sparse(graph.to(self.propagated.device))
        self.row_pointers, self.columns, self.values = rows.row_pointers, rows.columns, rows.values.float()
        self.ready.fill_(False)

    def csr_state(self):
        """``A_hat``'s CSR arrays, plain tensors (checkpoints)."""
        return {"row_pointers": self.row_pointers, "columns": self.columns, "values": self.values}

    def load_csr_state(self, state):
        """Takes :meth:`csr_state`'s output, checked against the entity count; ``P`` is kept."""
        row_pointers, columns, values = state["row_pointers"], state["columns"], state["values"]
        valid = (
            len(row_pointers) == self.num_entities + 1
            and len(columns) == len(values) == int(row_pointers[-1])
            and bool((row_pointers[1:] >= row_pointers[:-1]).all())
            and (len(columns) == 0 or 0 <= int(columns.min()) <= int(columns.max()) < self.num_entities)
        )
        if not valid:
            raise ValueError(
                f"The saved {self.group} graph does not fit the {self.num_entities} {self.group} "
                "rows of the model: the checkpoint is damaged or from other data."
            )
        device = self.propagated.device
        self.row_pointers = row_pointers.to(device)
        self.columns = columns.to(device)
        self.values = values.float().to(device)

    def has_graph(self):
        return len(self.row_pointers) > 0

    def row_graph(self):
        """``A_hat`` as a :class:`~recbole_cstwa.model.multitask.cstwa.structure.RowGraph`."""
        if not self.has_graph():
            raise RuntimeError(
                "CSTWA's Structure Migrator has no graphs: train it with CSTWATrainer (it builds "
                "them before training), call set_graphs(user_graph, item_graph), or set use_sm: False."
            )
        return RowGraph(self.row_pointers, self.columns, self.values)

    @torch.no_grad()
    def refresh(self, embedding):
        """``P = A_hat^L E`` (Eq. 9) from ``embedding``'s current rows, held until the next call."""
        representations = group_representations(embedding, self.features(), self.group)
        self.propagated.copy_(propagate_all(self.row_graph(), representations, self.layers))
        self.ready.fill_(True)

    @torch.no_grad()
    def update_rows(self, embedding, id_field, sm_lambda):
        """The paper's literal Eq. 10 (``sm_mode: update``, docs/cstwa.md) on the entities' own rows:
        ``E_id <- (1 - lambda) E_id + lambda A_hat^L E_id``, written into ``embedding``'s rows of
        the id field ``id_field`` (one row an entity; profile fields' tokens are shared by many
        entities, so they are left as they are). Marks the graph as having acted (``ready``)."""
        if id_field not in embedding.token_offset:
            raise ValueError(
                f"sm_mode: update writes the {self.group} id rows, but {id_field} is not a token field."
            )
        table = embedding.token_table.weight
        positions = embedding.rows_of(id_field, torch.arange(self.num_entities, device=table.device))
        rows = table[positions]
        propagated = propagate_all(self.row_graph(), rows, self.layers)
        rows.mul_(1 - sm_lambda).add_(propagated.to(rows.dtype), alpha=sm_lambda)
        # with min_count, rare entities share their field's out-of-vocabulary row: left as it is
        oov = embedding.oov_row(id_field)
        own = slice(None) if oov is None else positions != oov
        table[positions[own]] = rows[own]
        self.ready.fill_(True)

    @torch.no_grad()
    def hold_unseen_entity(self, embedding, id_field):
        """Appends to the held ``P`` the row of the entity past the last (``embedding``'s unseen
        index of ``id_field``): its own representation, so mixing leaves it as it is (see
        :meth:`~recbole_cstwa.model.multitask.cstwa.cstwa.CSTWA.hold_unseen_entities`)."""
        if not bool(self.ready) or len(self.propagated) != self.num_entities:
            return
        unseen = {
            field: torch.zeros(1, dtype=torch.long, device=self.propagated.device) for field in self.fields
        }
        unseen[id_field] += embedding.token_size[id_field]
        row = group_representations(embedding, unseen, self.group)
        self.propagated = torch.cat([self.propagated, row.to(self.propagated.dtype)])

    def held_rows(self, ids):
        """Rows ``ids`` of the held ``P`` (no gradient), or ``None`` while it is unset."""
        if not bool(self.ready):
            return None
        rows = self.propagated.index_select(0, ids.reshape(-1).long())  # a row gather: faster than [ids]
        return rows.view(*ids.shape, rows.shape[-1])

    def live_rows(self, ids, embedding):
        """Rows ``ids`` of ``A_hat^L E`` propagated from the live embedding rows (differentiable;
        looks up only the L-hop neighbourhood of ``ids``)."""
        unique, inverse = torch.unique(ids, return_inverse=True)
        features = self.features()

        def representations_of(nodes):
            rows = {field: values[nodes] for field, values in features.items()}
            return embedding(rows, self.group)[0].flatten(1)

        return propagate_rows(self.row_graph(), unique, representations_of, self.layers)[inverse]
