r"""CSTWA
################################################
Reference:
    Kai Ouyang, Wenhao Zheng, Chen Tang, Xuanji Xiao, Hai-Tao Zheng. "Click-aware Structure
    Transfer with Sample Weight Assignment for Post-Click Conversion Rate Estimation." in
    ECML-PKDD 2023 (arXiv 2304.01169).

The paper's equations were lost in its public text and its authors published no code; this
module implements the project's reading of every equation (written down in the class docstring);
the readings that are choices between alternatives are config switches.
"""

import torch
import torch.nn as nn

from recbole_cstwa.model.abstract_recommender import MultiTaskRecommender
from recbole_cstwa.model.layers import MLPTower, ProbabilityHead
from recbole_cstwa.model.structure import (
    RowGraph,
    check_index_settings,
    group_representations,
    propagate_all,
    propagate_rows,
)

#: Groups the Structure Migrator works on, with the config key of each group's id field.
SM_GROUPS = {"user": "USER_ID_FIELD", "item": "ITEM_ID_FIELD"}
SM_MODES = ("epoch", "batch")


# ----- Curse Escaper (Eq. 18) ----------------------------------------------------------------
class PredictionWindow(nn.Module):
    """The last ``size`` CTR predictions seen in training (a ring buffer, detached).

    Percentiles are taken over the values it holds, so their order does not matter; a push of
    more than ``size`` values keeps the last ``size``. The buffer is not saved in checkpoints.
    """

    def __init__(self, size):
        super().__init__()
        self.size = int(size)
        self.register_buffer("values", torch.zeros(self.size), persistent=False)
        self.pushed = 0  # predictions pushed so far (a Python int: no device sync to read it)

    def __len__(self):
        return min(self.pushed, self.size)

    def held(self):
        """The predictions held now (any order)."""
        return self.values[: len(self)]

    def push(self, predictions):
        predictions = predictions.detach().reshape(-1).to(self.values.dtype)
        count = len(predictions)
        if count == 0:
            return
        kept = predictions[-self.size :]
        positions = (
            self.pushed + count - len(kept) + torch.arange(len(kept), device=kept.device)
        ) % self.size
        self.values[positions] = kept
        self.pushed += count

    def reset(self):
        self.pushed = 0

    def percentiles(self, low, high):
        """``(tau_low, tau_high)``: the ``low``-th and ``high``-th percentiles (0-100, linear
        interpolation as numpy's default), or ``None`` while the window is empty."""
        if len(self) == 0:
            return None
        quantiles = torch.tensor(
            [low / 100.0, high / 100.0], dtype=self.values.dtype, device=self.values.device
        )
        tau_low, tau_high = torch.quantile(self.held(), quantiles)
        return tau_low, tau_high


def curse_escaper_weights(p_ctr, purchase, tau_low, tau_high, alpha, max_weight, eps=1e-12):
    """Eq. 18's sample weights (the project's reading), element-wise over a batch.

    - false positive (``p_ctr >= tau_high`` and no purchase):
      ``min(1 + alpha * (p_ctr - tau_high) / (1 - tau_high), max_weight)``;
    - false negative (``p_ctr <= tau_low`` and a purchase):
      ``min(1 + alpha * (tau_low - p_ctr) / tau_low, max_weight)``;
    - otherwise 1.

    A zero denominator (``tau_high = 1`` or ``tau_low = 0``) has a zero numerator there, so it is
    guarded with ``eps`` and gives weight 1.
    """
    p_ctr = p_ctr.detach()
    tau_low = torch.as_tensor(tau_low, dtype=p_ctr.dtype, device=p_ctr.device)
    tau_high = torch.as_tensor(tau_high, dtype=p_ctr.dtype, device=p_ctr.device)
    false_positive = (p_ctr >= tau_high) & (purchase == 0)
    false_negative = (p_ctr <= tau_low) & (purchase == 1)
    fp_weight = 1 + alpha * (p_ctr - tau_high) / (1 - tau_high).clamp_min(eps)
    fn_weight = 1 + alpha * (tau_low - p_ctr) / tau_low.clamp_min(eps)
    ones = torch.ones_like(p_ctr)
    weights = torch.where(false_positive, fp_weight, torch.where(false_negative, fn_weight, ones))
    return weights.clamp(max=max_weight)


# ----- Click Perceptron's Info Layer (Eq. 13) ---------------------------------------------------
class InfoLayer(nn.Module):
    """``b = 2 * sigmoid(MLP(h_ctr))``, one factor in (0, 2) per CVR input element.

    The MLP is ``hidden_sizes`` Linear-ReLU layers (none by default) and a Linear layer to
    ``output_size`` (= dim(x_cvr)).
    """

    def __init__(self, input_size, output_size, hidden_sizes=()):
        super().__init__()
        self.hidden = MLPTower(input_size, hidden_sizes, 0.0)
        self.linear = nn.Linear(self.hidden.output_size, output_size)

    def forward(self, h_ctr):
        return 2 * torch.sigmoid(self.linear(self.hidden(h_ctr)))


# ----- Stage 1 (Section 3.3.1): the pre-trained CTR model ------------------------------------------
class ClickPretrainModel(nn.Module):
    """The plain CTR MLP that is pre-trained for the graphs: its own embedding layer ->
    concatenation (Eq. 7) -> Click Tower -> Click Layer. Only its embedding is kept."""

    def __init__(self, model, dataset):
        super().__init__()
        self._embed_input = model.embed_input  # the model's Eq. 7, applied to this embedding
        self.embedding = model.make_embedding(dataset)
        self.tower = model.tower()
        self.head = ProbabilityHead(self.tower.output_size)
        MultiTaskRecommender.init_weights(self)  # the same Xavier/zero init as every model

    def forward(self, interaction):
        return self.head(self.tower(self._embed_input(interaction, self.embedding)))


class CSTWA(MultiTaskRecommender):
    r"""Click-aware Structure Transfer with Sample Weight Assignment (CSTWA).

    Two embedding layers (Eq. 6: ``click_embedding`` for CTR, ``purchase_embedding`` for CVR),
    a Click Tower on ``x_ctr`` (Eq. 7, 12), a Conversion Tower on the CVR input, and three
    components, each a switch:

    - Structure Migrator (``use_sm``, Eqs. 8-11): user and item rows of the CVR input are mixed
      with their propagation over a user graph and an item graph mined from a pre-trained CTR
      model (Eqs. 2-5; built by :class:`~recbole_cstwa.trainer.CSTWATrainer` and given with
      :meth:`set_graphs`): ``(1 - sm_lambda) * live row + sm_lambda * (A_hat^L E)[row]``.
    - Click Perceptron (``use_cp``, Eqs. 12-14): ``b = 2 * sigmoid(MLP(h_ctr))``,
      Conversion Tower input ``x_cvr * b``.
    - Curse Escaper (``use_ce``, Eqs. 17-18): the purchase BCE is weighted up for false
      positives (high CTR prediction, no purchase) and false negatives (low CTR prediction, a
      purchase), against percentiles of the previous ``ce_window`` CTR predictions.

    Loss (Eq. 20): ``w1 * BCE(p_ctr, click) + w2 * weighted BCE(p_cvr, purchase) + w3 * L_cal``,
    ``L_cal = mean(max(p_cvr - p_ctr, 0))`` (Eq. 19), ``loss_weights = [w1, w2, w3]``; every BCE
    is over all impressions. ``calculate_loss`` returns the weighted parts as a tuple. The
    purchase output scored against the purchase label is ``p_cvr`` (AITM's protocol, as the
    paper's tables).

    Ablations (the paper's Table 3): ``use_sm`` / ``use_cp`` / ``use_ce`` select the components,
    and ``use_calibration`` switches Eq. 19 off. The Table 3 "MLP" row is all four off: it is
    then parameter for parameter the :class:`~recbole_cstwa.model.multitask.mlp.MLP` model (same
    attribute names, shapes, initialisation order and losses). The other ablation rows keep
    ``use_calibration`` on ([reading]: the paper lists MLP as "the base structure" without the
    calibration term, and the three components as what is added to CSTWA's full loss).

    Readings of the project's spec (``[reading]``), each a setting:

    - ``sm_mode: epoch`` (default): ``P = A_hat^L E`` is computed from the current CVR embedding
      at the start of every training epoch (:meth:`on_epoch_start`), without gradient, and held
      fixed for the epoch; the live rows keep their gradient. For evaluation, P is recomputed
      from the current parameters when the model enters ``eval()`` (and whenever the CVR
      embedding's parameters changed since P was computed, e.g. the best checkpoint was loaded),
      so validation and test always use the P the next epoch would start with.
      ``sm_mode: batch``: each batch gathers the L-hop graph neighbourhood of its users / items
      and propagates the live embedding rows differentiably (exact ``A_hat^L E`` rows for any L;
      the rows looked up grow as K^L).
    - ``sm_layers`` (L = 1, the paper's setting); ``sm_lambda`` (0.3).
    - Graphs (built by the trainer): cosine top-``graph_top_k`` (8) with faiss;
      ``graph_self_loop`` (True): the node itself is one of its K edges; ``graph_symmetric``
      (False): the top-K graph is left directed; D = row sums of A. RecBole's ``[PAD]`` entity
      (row 0) is kept out of the search and gets one self edge, so its row is left unchanged.
    - Info Layer (Eq. 13): "MLP" is one Linear layer from ``h_ctr`` (32) to ``dim(x_cvr)``
      (the paper calls its single-layer Click / Conversion Layers "multi-layer perceptron" too);
      ``info_hidden_size`` (``[]``) adds hidden ReLU layers. ``h_ctr`` is not detached: the CVR
      loss also trains the Click Tower through ``b`` (the paper says nothing to stop it).
    - Curse Escaper weights (detached ``p_ctr``): false positive ``min(1 + alpha * (p -
      tau_high) / (1 - tau_high), ce_max_weight)``, false negative ``min(1 + alpha * (tau_low - p)
      / tau_low, ce_max_weight)``, otherwise 1; ``ce_alpha`` 3, ``ce_max_weight`` 4. The
      thresholds are the ``ce_high_percentile`` (99) / ``ce_low_percentile`` (10) percentiles of
      the last ``ce_window`` (10,000) training CTR predictions *before* the current batch is
      added; an empty window gives weight 1, a partly filled one is used as it is. The window is
      training state only (not updated in evaluation, not checkpointed).
    - ``L_cvr = 1/N * sum_i w_i * BCE_i`` (weights not renormalised).

    Deliberate differences: none in the model beyond the readings above. The pre-training
    settings (``pretrain_epochs``, ``pretrain_learning_rate``) are not given by the paper; see
    ``properties/model/CSTWA.yaml``.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.use_sm = self._flag(config, "use_sm")
        self.use_cp = self._flag(config, "use_cp")
        self.use_ce = self._flag(config, "use_ce")
        self.use_calibration = self._flag(config, "use_calibration")
        self._read_settings(config)

        # Names as in MLP, so that all switches off is exactly the MLP (Table 3's base).
        self.click_embedding = self.make_embedding(dataset)  # Eq. 6, CTR side
        self.purchase_embedding = self.make_embedding(dataset)  # Eq. 6, CVR side
        self.click_tower = self.tower()
        self.purchase_tower = self.tower()  # the paper's Conversion Tower
        self.click_head = ProbabilityHead(self.click_tower.output_size)  # Click Layer
        self.purchase_head = ProbabilityHead(self.purchase_tower.output_size)  # Conversion Layer
        self.info_layer = (
            InfoLayer(self.click_tower.output_size, self.input_size(), self.info_hidden_size)
            if self.use_cp
            else None
        )
        self.ctr_window = PredictionWindow(self.ce_window) if self.use_ce else None
        if self.use_sm:
            self._init_structure_migrator(config, dataset)
        self.init_weights()

    # ----- settings ------------------------------------------------------------------------
    @staticmethod
    def _flag(config, key):
        value = config[key]
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be True or False, got {value!r}.")
        return value

    def _read_settings(self, config):
        def number(key, low=None, high=None, integer=False):
            value = config[key]
            kind = int if integer else (int, float)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"{key} must be a{'n integer' if integer else ' number'}, got {value!r}.")
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = f"at least {low}" if high is None else f"in [{low}, {high}]"
                raise ValueError(f"{key} must be {bounds}, got {value!r}.")
            return value

        self.sm_mode = config["sm_mode"]
        if self.sm_mode not in SM_MODES:
            raise ValueError(
                f"sm_mode must be 'epoch' (propagate once per epoch, the default) or 'batch' "
                f"(propagate each batch's neighbours), got {self.sm_mode!r}."
            )
        self.sm_layers = number("sm_layers", 1, integer=True)
        self.sm_lambda = number("sm_lambda", 0, 1)
        self.ce_window = number("ce_window", 1, integer=True)
        self.ce_low_percentile = number("ce_low_percentile", 0, 100)
        self.ce_high_percentile = number("ce_high_percentile", 0, 100)
        if self.ce_low_percentile >= self.ce_high_percentile:
            raise ValueError(
                f"ce_low_percentile ({self.ce_low_percentile}) must be below ce_high_percentile "
                f"({self.ce_high_percentile}); the paper uses 10 and 99."
            )
        self.ce_alpha = number("ce_alpha", 0)
        self.ce_max_weight = number("ce_max_weight", 1)
        weights = config["loss_weights"]
        if (
            not isinstance(weights, (list, tuple))
            or len(weights) != 3
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights)
        ):
            raise ValueError(
                f"loss_weights must be three non-negative numbers [ctr, cvr, calibration] "
                f"(Eq. 20; the paper's [1, 1, 0.6]), got {weights!r}."
            )
        self.loss_weights = [float(w) for w in weights]
        hidden = config["info_hidden_size"] or []
        if not isinstance(hidden, (list, tuple)) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden
        ):
            raise ValueError(f"info_hidden_size must be a list of positive integers, got {hidden!r}.")
        self.info_hidden_size = list(hidden)
        if self.use_sm:
            check_index_settings(
                config["graph_index"],
                config["graph_top_k"],
                config["graph_ivf_nlist"],
                config["graph_nprobe"],
                config["graph_hnsw_m"],
                config["graph_hnsw_ef_search"],
                config["graph_exact_max_nodes"],
            )
            for key in ("graph_self_loop", "graph_symmetric", "cstwa_cache"):
                self._flag(config, key)
            number("pretrain_epochs", 1, integer=True)
            if number("pretrain_learning_rate", 0) == 0:
                raise ValueError("pretrain_learning_rate must be positive (the paper's rate is 0.001).")

    # ----- Structure Migrator (Eqs. 8-11) ----------------------------------------------------
    def _init_structure_migrator(self, config, dataset):
        self.id_fields = {}
        self.num_entities = {}
        features = {"user": dataset.get_user_feature(), "item": dataset.get_item_feature()}
        for group, id_key in SM_GROUPS.items():
            id_field = config[id_key]
            fields = [field for field, _ in self.field_groups[group]]
            if id_field not in fields:
                raise ValueError(
                    f"use_sm needs the {group} id field {id_key} [{id_field}] among the {group} "
                    f"features {fields} (the graphs have one node per {group} id): load it "
                    "(load_col) or set use_sm: False."
                )
            self.id_fields[group] = id_field
            self.num_entities[group] = len(features[group])
            # Every entity's feature row (row i = id i), to build E_u / E_i (Eq. 8) on any device.
            for position, field in enumerate(fields):
                self.register_buffer(
                    f"_{group}_feature_{position}", features[group][field].clone(), persistent=False
                )
            # The graph A_hat as CSR arrays (set by set_graphs) and the epoch's P = A_hat^L E.
            self.register_buffer(
                f"_{group}_graph_pointers", torch.zeros(0, dtype=torch.long), persistent=False
            )
            self.register_buffer(
                f"_{group}_graph_columns", torch.zeros(0, dtype=torch.long), persistent=False
            )
            self.register_buffer(f"_{group}_graph_values", torch.zeros(0), persistent=False)
            self.register_buffer(f"_{group}_propagated", torch.zeros(0), persistent=False)
        self._propagated_version = None
        self._propagation_stale = True

    def entity_features(self, group):
        """``field -> (N, ...)`` tensor of every user's (item's) features, row i = id i."""
        fields = [field for field, _ in self.field_groups[group]]
        return {field: getattr(self, f"_{group}_feature_{i}") for i, field in enumerate(fields)}

    def set_graphs(self, user_graph, item_graph):
        """Gives the model its normalised user and item graphs (``(N, N)`` sparse tensors)."""
        if not self.use_sm:
            raise ValueError("set_graphs: the Structure Migrator is off (use_sm: False).")
        for group, graph in (("user", user_graph), ("item", item_graph)):
            size = self.num_entities[group]
            if tuple(graph.shape) != (size, size):
                raise ValueError(
                    f"The {group} graph is {tuple(graph.shape)} but the dataset has {size} {group} rows "
                    "([PAD] included): build it from this dataset's get_{group}_feature()."
                )
            rows = RowGraph.from_sparse(graph.to(self._device()))
            setattr(self, f"_{group}_graph_pointers", rows.row_pointers)
            setattr(self, f"_{group}_graph_columns", rows.columns)
            setattr(self, f"_{group}_graph_values", rows.values.float())
        self._propagation_stale = True

    def has_graphs(self):
        return self.use_sm and len(self._user_graph_pointers) > 0

    def graph(self, group):
        """``A_hat`` of ``group`` as a :class:`RowGraph`."""
        if not self.has_graphs():
            raise RuntimeError(
                "CSTWA's Structure Migrator has no graphs: train it with CSTWATrainer (it builds "
                "them before training), call set_graphs(user_graph, item_graph), or set use_sm: False."
            )
        return RowGraph(
            getattr(self, f"_{group}_graph_pointers"),
            getattr(self, f"_{group}_graph_columns"),
            getattr(self, f"_{group}_graph_values"),
        )

    def _device(self):
        return self.click_head.linear.weight.device

    def _embedding_version(self):
        return tuple((p.data_ptr(), p._version) for p in self.purchase_embedding.parameters())

    @torch.no_grad()
    def refresh_propagation(self):
        """``P = A_hat^L E`` (Eq. 9) for users and items from the current CVR embedding."""
        for group in SM_GROUPS:
            graph = self.graph(group)
            representations = group_representations(
                self.purchase_embedding, self.entity_features(group), group
            )
            setattr(self, f"_{group}_propagated", propagate_all(graph, representations, self.sm_layers))
        self._propagated_version = self._embedding_version()
        self._propagation_stale = False

    def _propagated_rows(self, group, ids):
        """``(A_hat^L E)[ids]`` as the current mode defines it."""
        if self.sm_mode == "batch":
            unique, inverse = torch.unique(ids, return_inverse=True)
            features = self.entity_features(group)

            def live_rows(nodes):
                rows = {field: values[nodes] for field, values in features.items()}
                return self.purchase_embedding(rows, group)[0].flatten(1)

            return propagate_rows(self.graph(group), unique, live_rows, self.sm_layers)[inverse]
        stale = len(getattr(self, f"_{group}_propagated")) == 0
        if not self.training:
            stale = stale or self._propagation_stale or self._propagated_version != self._embedding_version()
        if stale:
            self.refresh_propagation()
        return getattr(self, f"_{group}_propagated")[ids]

    def migrated_rows(self, interaction, group):
        """Eq. 10: ``(1 - lambda) * live row + lambda * P[row]`` for the batch's users (items)."""
        live = self.purchase_embedding(interaction, group)[0].flatten(1)
        propagated = self._propagated_rows(group, interaction[self.id_fields[group]])
        return (1 - self.sm_lambda) * live + self.sm_lambda * propagated.to(live.dtype)

    def conversion_input(self, interaction):
        """``x_cvr`` (Eq. 11; Eq. 7 on the CVR embedding when the Structure Migrator is off)."""
        if not self.use_sm:
            return self.embed_input(interaction, self.purchase_embedding)
        user_item = (self.migrated_rows(interaction, "user"), self.migrated_rows(interaction, "item"))
        return self.embed_input(interaction, self.purchase_embedding, user_item=user_item)

    # ----- RecBole interface ---------------------------------------------------------------
    def train(self, mode=True):
        super().train(mode)
        if not mode and self.use_sm:
            self._propagation_stale = True  # evaluation recomputes P from the current parameters
        return self

    def on_epoch_start(self, epoch_idx):
        if self.use_sm and self.sm_mode == "epoch":
            self.refresh_propagation()

    def forward(self, interaction):
        x_ctr = self.embed_input(interaction, self.click_embedding)  # Eq. 7
        x_cvr = self.conversion_input(interaction)  # Eqs. 8-11
        h_ctr = self.click_tower(x_ctr)  # Eq. 12
        info = self.info_layer(h_ctr) if self.use_cp else None  # Eq. 13
        h_tilde = x_cvr * info if self.use_cp else x_cvr  # Eq. 14
        h_cvr = self.purchase_tower(h_tilde)  # Eq. 15
        return {
            "click": self.click_head(h_ctr),  # Eq. 16, p_ctr
            "purchase": self.purchase_head(h_cvr),  # Eq. 16, p_cvr
            "conversion_input": x_cvr,
            "conversion_tower_input": h_tilde,
            "info": info,
        }

    def sample_weights(self, p_ctr, purchase):
        """The Curse Escaper's weights for a batch (all ones when it is off or has no history)."""
        if not self.use_ce:
            return torch.ones_like(p_ctr)
        thresholds = self.ctr_window.percentiles(self.ce_low_percentile, self.ce_high_percentile)
        if thresholds is None:
            return torch.ones_like(p_ctr)
        return curse_escaper_weights(p_ctr, purchase, *thresholds, self.ce_alpha, self.ce_max_weight)

    def calculate_loss(self, interaction):
        output = self.forward(interaction)
        click, purchase = self.labels(interaction)
        p_ctr, p_cvr = output["click"], output["purchase"]
        weights = self.sample_weights(p_ctr.detach(), purchase)
        if self.use_ce and self.training:
            self.ctr_window.push(p_ctr)  # after the weights: thresholds use the previous predictions
        w_ctr, w_cvr, w_cal = self.loss_weights
        losses = (
            w_ctr * self.bce(p_ctr, click),
            w_cvr * self.bce(p_cvr, purchase, weight=weights),
        )  # Eqs. 17-18
        if self.use_calibration:
            losses += (w_cal * self.calibration_loss(p_cvr, p_ctr),)  # Eq. 19
        return losses
