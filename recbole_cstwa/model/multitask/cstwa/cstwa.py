r"""CSTWA
################################################
Reference:
    Kai Ouyang, Wenhao Zheng, Chen Tang, Xuanji Xiao, Hai-Tao Zheng. "Click-aware Structure
    Transfer with Sample Weight Assignment for Post-Click Conversion Rate Estimation." in
    ECML-PKDD 2023 (arXiv 2304.01169).

The paper's equations were lost in its public text and its authors published no code; this
module implements the project's reading of every equation (written down in docs/cstwa.md); the
readings that are choices between alternatives are config switches.
"""

import torch
import torch.nn as nn

from recbole_cstwa.model.abstract_recommender import MultiTaskRecommender, init_linear_weights
from recbole_cstwa.model.layers import MLPTower, ProbabilityHead
from recbole_cstwa.model.multitask.cstwa.entity_graph import EntityGraph

#: Groups the Structure Migrator works on, with the config key of each group's id field.
SM_GROUPS = {"user": "USER_ID_FIELD", "item": "ITEM_ID_FIELD"}


# ----- Curse Escaper (Eq. 18) ----------------------------------------------------------------
class PredictionWindow(nn.Module):
    """The last ``size`` CTR predictions seen in training (a ring buffer, detached).

    Percentiles are taken over the values it holds, so their order does not matter; a push of
    more than ``size`` values keeps the last ``size``. The buffer is not saved in checkpoints.
    ``batches`` counts the pushes (the training steps of this run): the Curse Escaper's warm-up
    clock (``ce_warmup_steps``), which starts again with the window when a run resumes.
    """

    def __init__(self, size):
        super().__init__()
        self.size = int(size)
        self.register_buffer("values", torch.zeros(self.size), persistent=False)
        self.pushed = 0  # predictions pushed so far (a Python int: no device sync to read it)
        self.batches = 0  # pushes so far

    def __len__(self):
        return min(self.pushed, self.size)

    def held(self):
        """The predictions held now (any order)."""
        return self.values[: len(self)]

    def push(self, predictions):
        predictions = predictions.detach().reshape(-1).to(self.values.dtype)
        self.batches += 1
        count = len(predictions)
        if count == 0:
            return
        kept = predictions[-self.size :]
        positions = (
            self.pushed + count - len(kept) + torch.arange(len(kept), device=kept.device)
        ) % self.size
        self.values[positions] = kept
        self.pushed += count

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


#: Values of ``ce_weight_form``: the two readings of Eq. 18's weights (docs/cstwa.md).
CE_WEIGHT_FORMS = ("ratio", "margin")


def curse_escaper_weights(
    p_ctr, purchase, tau_low, tau_high, alpha, max_weight, form="ratio", eps=1e-12, return_masks=False
):
    """Eq. 18's sample weights, element-wise over a batch, in one of two readings (``form``).

    ``ratio`` (reading B, the paper's words: terms that grow without bound, each with an upper
    limit ``max_weight``):

    - false positive (``p_ctr >= tau_high`` and no purchase): ``min((p_ctr / tau_high) ** alpha, max_weight)``;
    - false negative (``p_ctr <= tau_low`` and a purchase): ``min((tau_low / p_ctr) ** alpha, max_weight)``.

    ``margin`` (reading A: terms in [0, 1], so a weight never exceeds ``1 + alpha``):

    - false positive: ``min(1 + alpha * (p_ctr - tau_high) / (1 - tau_high), max_weight)``;
    - false negative: ``min(1 + alpha * (tau_low - p_ctr) / tau_low, max_weight)``.

    Otherwise 1. Both readings give 1 at the threshold. Zero denominators (``tau_high = 1`` or
    ``tau_low = 0`` for ``margin``, ``tau_high = 0`` or ``p_ctr = 0`` for ``ratio``) are guarded
    with ``eps``; a weight is never below 1 (``ratio`` with ``tau_low = p_ctr = 0`` would give 0).
    ``return_masks``: also return the false-positive and false-negative masks.
    """
    p_ctr = p_ctr.detach()
    tau_low = torch.as_tensor(tau_low, dtype=p_ctr.dtype, device=p_ctr.device)
    tau_high = torch.as_tensor(tau_high, dtype=p_ctr.dtype, device=p_ctr.device)
    false_positive = (p_ctr >= tau_high) & (purchase == 0)
    false_negative = (p_ctr <= tau_low) & (purchase == 1)
    if form == "ratio":
        fp_weight = (p_ctr / tau_high.clamp_min(eps)) ** alpha
        fn_weight = (tau_low / p_ctr.clamp_min(eps)) ** alpha
    elif form == "margin":
        fp_weight = 1 + alpha * (p_ctr - tau_high) / (1 - tau_high).clamp_min(eps)
        fn_weight = 1 + alpha * (tau_low - p_ctr) / tau_low.clamp_min(eps)
    else:
        raise ValueError(f"ce_weight_form must be one of {CE_WEIGHT_FORMS}, got {form!r}.")
    ones = torch.ones_like(p_ctr)
    weights = torch.where(false_positive, fp_weight, torch.where(false_negative, fn_weight, ones))
    weights = weights.clamp(min=1.0, max=max_weight)
    return (weights, false_positive, false_negative) if return_masks else weights


class CurseEscaperTally:
    """What the Curse Escaper did over training steps: rows seen, and for false positives and
    false negatives their count and weight sum, and the purchases seen (device tensors, read once
    when reported)."""

    def __init__(self):
        self.rows = 0
        self.sums = None  # [fp count, fp weight sum, fn count, fn weight sum, purchases]

    def add(self, weights, false_positive, false_negative, purchase):
        step = torch.stack(
            [
                false_positive.sum(),
                weights[false_positive].sum(),
                false_negative.sum(),
                weights[false_negative].sum(),
                (purchase == 1).sum(),
            ]
        ).double()
        self.sums = step if self.sums is None else self.sums + step
        self.rows += len(weights)

    def summary(self, reset=True):
        """``{"rows", "fp_share", "fp_mean_weight", "fn_share", "fn_mean_weight", "purchases",
        "fn_purchase_share"}`` (shares of the rows; ``fn_purchase_share``: false negatives per
        purchase, the share of the purchases weighted as false negatives; a mean weight or
        ``fn_purchase_share`` is NaN without such rows), then starts afresh unless ``reset`` is
        False."""
        fp, fp_sum, fn, fn_sum, purchases = self.sums.tolist() if self.sums is not None else (0.0,) * 5
        rows = max(self.rows, 1)
        result = {
            "rows": self.rows,
            "fp_share": fp / rows,
            "fp_mean_weight": fp_sum / fp if fp else float("nan"),
            "fn_share": fn / rows,
            "fn_mean_weight": fn_sum / fn if fn else float("nan"),
            "purchases": int(purchases),
            "fn_purchase_share": fn / purchases if purchases else float("nan"),
        }
        if reset:
            self.rows, self.sums = 0, None
        return result


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
        init_linear_weights(self)  # the same Xavier/zero init as every model

    def forward(self, interaction):
        return self.head(self.tower(self._embed_input(interaction, self.embedding)))


class CSTWA(MultiTaskRecommender):
    r"""Click-aware Structure Transfer with Sample Weight Assignment (CSTWA).

    Two embedding layers (Eq. 6: ``click_embedding`` for CTR, ``purchase_embedding`` for CVR), a
    Click Tower on ``x_ctr`` (Eqs. 7, 12) and a Conversion Tower on the CVR input, with three
    components, each a switch: the Structure Migrator (``use_sm``, Eqs. 8-11: user and item rows
    of the CVR input mixed with their propagation over user / item graphs mined from a
    pre-trained CTR model, given with :meth:`set_graphs` by
    :class:`~recbole_cstwa.model.multitask.cstwa.trainer.CSTWATrainer`), the Click Perceptron
    (``use_cp``, Eqs. 12-14: the CVR input scaled by ``2 * sigmoid(MLP(h_ctr))``) and the Curse
    Escaper (``use_ce``, Eqs. 17-18: the purchase BCE weighted up for likely false positives and
    false negatives). Loss (Eq. 20): ``loss_weights`` on the click BCE, the weighted purchase BCE
    and the calibration term (Eq. 19); ``calculate_loss`` returns the weighted parts. With all
    four switches off (``use_calibration`` too) it is the
    :class:`~recbole_cstwa.model.multitask.mlp.MLP` model, parameter for parameter (Table 3's
    base).

    The paper's equations were lost from its public text; docs/cstwa.md writes the project's
    reading of each in full. The readings chosen ([reading], each a setting where it is a
    choice): the Structure Migrator's timing (``sm_mode``, ``sm_first_epoch_refreshes``,
    ``sm_refresh_steps``), the graphs' self edge (``graph_self_loop``), direction
    (``graph_symmetric``) and padding entity, the Info Layer's size (``info_hidden_size``), the
    Curse Escaper's weights (``ce_weight_form``), prediction window, click prediction
    (``ce_eval_mode_ctr``) and warm-up (``ce_warmup_steps``), the calibration term in
    the ablations (``use_calibration``), the unnormalised weighted purchase BCE, the pre-trained
    CTR model's settings (``pretrain_epochs``, ``pretrain_learning_rate``).

    Deliberate differences from the paper: none beyond these readings (its authors published no
    code).
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        # Settings are checked once, when the config is built (recbole_cstwa.setting_checks).
        self.use_sm = config["use_sm"]
        self.use_cp = config["use_cp"]
        self.use_ce = config["use_ce"]
        self.use_calibration = config["use_calibration"]
        self.sm_mode, self.sm_layers, self.sm_lambda = (
            config["sm_mode"],
            config["sm_layers"],
            config["sm_lambda"],
        )
        self.ce_window = config["ce_window"]
        self.ce_low_percentile = config["ce_low_percentile"]
        self.ce_high_percentile = config["ce_high_percentile"]
        self.ce_alpha, self.ce_max_weight = config["ce_alpha"], config["ce_max_weight"]
        self.ce_weight_form = config["ce_weight_form"]
        self.ce_eval_mode_ctr = config["ce_eval_mode_ctr"]
        self.ce_warmup_steps = config["ce_warmup_steps"]
        self.ce_tally = CurseEscaperTally()  # read and reset by the trainer once an epoch
        self.loss_weights = [float(weight) for weight in config["loss_weights"]]
        self.info_hidden_size = list(config["info_hidden_size"] or [])

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

    # ----- Structure Migrator (Eqs. 8-11) ----------------------------------------------------
    def _init_structure_migrator(self, config, dataset):
        self.id_fields = {}
        features = {"user": dataset.get_user_feature(), "item": dataset.get_item_feature()}
        graphs = {}
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
            width = len(fields) * self.embedding_size
            graphs[group] = EntityGraph(
                group, {field: features[group][field] for field in fields}, width, self.sm_layers
            )
        self.structure = nn.ModuleDict(graphs)  # the Structure Migrator's whole state
        # Training steps in which the Structure Migrator acted (saved with the model, so a kept
        # checkpoint says whether its training used it).
        self.register_buffer("structure_steps", torch.zeros((), dtype=torch.long))
        # All its training steps, so that the kept model says what share of them had P
        # (-1: a checkpoint written before they were counted).
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.long))

    def num_entities(self, group):
        """Rows of ``group``'s graph: its entities, RecBole's ``[PAD]`` row included."""
        return self.structure[group].num_entities

    def entity_features(self, group):
        """``field -> (N, ...)`` tensor of every user's (item's) features, row i = id i."""
        return self.structure[group].features()

    def set_graphs(self, user_graph, item_graph):
        """Gives the model its normalised user and item graphs (``(N, N)`` sparse tensors).

        ``P`` is unset afterwards: until :meth:`update_structure` runs, the CVR input is the live
        rows (the Structure Migrator does not mix yet).
        """
        if not self.use_sm:
            raise ValueError("set_graphs: the Structure Migrator is off (use_sm: False).")
        self.structure["user"].set_graph(user_graph)
        self.structure["item"].set_graph(item_graph)

    def has_graphs(self):
        return self.use_sm and self.structure["user"].has_graph()

    def graph_state(self):
        """The user and item graphs as CSR tensors, for checkpoints (``None`` without graphs):
        a model rebuilt from its checkpoint scores without the training data."""
        if not self.has_graphs():
            return None
        return {group: graph.csr_state() for group, graph in self.structure.items()}

    def load_graph_state(self, state):
        """Takes :meth:`graph_state`'s output; the held ``P`` (in the parameters) is kept."""
        for group, graph in self.structure.items():
            graph.load_csr_state(state[group])

    def graph(self, group):
        """``A_hat`` of ``group`` as a :class:`~recbole_cstwa.model.multitask.cstwa.structure.RowGraph`."""
        return self.structure[group].row_graph()

    def update_structure(self):
        """Eq. 9-10 on the whole graphs, called by
        :class:`~recbole_cstwa.model.multitask.cstwa.trainer.CSTWATrainer` on its schedule.

        ``sm_mode: epoch``: ``P = A_hat^L E`` for users and items from the current CVR embedding,
        held; the model trains and is scored with the ``P`` of the last call (saved with its
        checkpoints); before the first call it does not mix. ``sm_mode: update``: the CVR
        embedding's user (item) id rows become ``(1 - lambda) E_id + lambda A_hat^L E_id``
        (:meth:`EntityGraph.update_rows`). ``sm_mode: batch`` needs no call.
        """
        for group, graph in self.structure.items():
            if self.sm_mode == "update":
                graph.update_rows(self.purchase_embedding, self.id_fields[group], self.sm_lambda)
            else:
                graph.refresh(self.purchase_embedding)

    def hold_unseen_entities(self):
        """For scoring ids one past the vocabulary (a user or item unseen in training, the
        embedding's unseen index under ``min_count``): the held ``P`` of each graph gets that
        entity's row, its own representation (an entity without edges propagates to itself), so
        the Structure Migrator leaves its CVR input its live rows. For a scoring copy of the
        model: ``P`` is then one row longer than a checkpoint's."""
        for group, graph in self.structure.items():
            graph.hold_unseen_entity(self.purchase_embedding, self.id_fields[group])

    def structure_acts(self):
        """Whether the Structure Migrator changes the CVR input now: always in ``batch`` mode,
        once ``P`` is held (``epoch``) or the rows were updated once (``update``)."""
        if not self.use_sm:
            return False
        return self.sm_mode == "batch" or bool(self.structure["user"].ready)

    def structure_used(self):
        """Whether this model's training used the Structure Migrator and its scoring uses it."""
        return self.structure_acts() and int(self.structure_steps) > 0

    def kept_model_facts(self):
        """``sm_used``; with the Structure Migrator on, also the kept model's training steps
        (``trained_steps``; None when its checkpoint did not count them) and those the
        Structure Migrator acted in (``sm_steps``)."""
        facts = {"sm_used": self.structure_used()}
        if self.use_sm:
            trained = int(self.trained_steps)
            facts.update(sm_steps=int(self.structure_steps), trained_steps=trained if trained >= 0 else None)
        return facts

    def completed_state(self, state_dict):
        if self.use_sm:  # a checkpoint written before training steps were counted: -1, unknown
            state_dict.setdefault("trained_steps", torch.tensor(-1, dtype=torch.long))
        return state_dict

    def migrated_rows(self, interaction, group, live=None):
        """Eq. 10: ``(1 - lambda) * live row + lambda * P[row]`` for the batch's users (items),
        flattened ``(B, f*d)``; the live rows alone while ``sm_mode: epoch`` holds no ``P`` yet.
        ``live``: the batch's looked-up rows of the CVR embedding (looked up when not given)."""
        if live is None:
            live = self.purchase_embedding(interaction, group)[0].flatten(1)
        ids = interaction[self.id_fields[group]]
        graph = self.structure[group]
        if self.sm_mode == "update":  # the rows themselves were updated: nothing to mix
            return live
        if self.sm_mode == "batch":
            propagated = graph.live_rows(ids, self.purchase_embedding)
        else:
            graph.row_graph()  # a clear error when no graphs were given
            propagated = graph.held_rows(ids)
            if propagated is None:
                return live
        return (1 - self.sm_lambda) * live + self.sm_lambda * propagated.to(live.dtype)

    def purchase_input(self, interaction):
        """``x_cvr`` (Eq. 11; Eq. 7 on the CVR embedding when the Structure Migrator is off): Eq. 7's
        ``[user rows || item rows || context term]`` with the user and item rows migrated."""
        x = self.embed_input(interaction, self.purchase_embedding)
        if not self.use_sm:
            return x
        d = self.embedding_size
        widths = [len(self.field_groups["user"]) * d, len(self.field_groups["item"]) * d]
        user, item, context = x.split([*widths, x.shape[1] - sum(widths)], dim=1)
        user = self.migrated_rows(interaction, "user", user)
        item = self.migrated_rows(interaction, "item", item)
        return torch.cat([user, item, context], dim=1)

    # ----- RecBole interface ---------------------------------------------------------------
    def forward(self, interaction):
        x_ctr = self.embed_input(interaction, self.click_embedding)  # Eq. 7
        x_cvr = self.purchase_input(interaction)  # Eqs. 8-11
        h_ctr = self.click_tower(x_ctr)  # Eq. 12
        info = self.info_layer(h_ctr) if self.use_cp else None  # Eq. 13
        h_tilde = x_cvr * info if self.use_cp else x_cvr  # Eq. 14
        h_cvr = self.purchase_tower(h_tilde)  # Eq. 15
        return {
            "click": self.click_head(h_ctr),  # Eq. 16, p_ctr
            "purchase": self.purchase_head(h_cvr),  # Eq. 16, p_cvr
            "click_input": x_ctr,
            "purchase_input": x_cvr,
            "purchase_tower_input": h_tilde,
            "info": info,
        }

    def curse_escaper_ctr(self, output):
        """The CTR prediction the Curse Escaper weighs with and adds to its window, detached: the
        training-mode ``p_ctr`` (dropout on), or with ``ce_eval_mode_ctr`` in training the Click
        Tower and Click Layer run once more on the same ``x_ctr`` in eval mode (no dropout), without
        gradient: the click prediction the model will score with, not a dropout-noised one."""
        if not (self.ce_eval_mode_ctr and self.training):
            return output["click"].detach()
        with torch.no_grad():
            self.click_tower.eval()
            try:
                return self.click_head(self.click_tower(output["click_input"]))
            finally:
                self.click_tower.train()

    def sample_weights(self, p_ctr, purchase, tally=False):
        """The Curse Escaper's weights for a batch (all ones when it is off, has no history or is
        in its first ``ce_warmup_steps`` training steps); ``tally``: count them in
        :attr:`ce_tally`."""
        if not self.use_ce:
            return torch.ones_like(p_ctr)
        thresholds = None
        if self.ctr_window.batches >= self.ce_warmup_steps:  # the warm-up is over
            thresholds = self.ctr_window.percentiles(self.ce_low_percentile, self.ce_high_percentile)
        if thresholds is None:
            weights = torch.ones_like(p_ctr)
            no_row = torch.zeros_like(p_ctr, dtype=torch.bool)
            masks = (no_row, no_row)
        else:
            weights, *masks = curse_escaper_weights(
                p_ctr,
                purchase,
                *thresholds,
                self.ce_alpha,
                self.ce_max_weight,
                form=self.ce_weight_form,
                return_masks=True,
            )
        if tally:
            self.ce_tally.add(weights, *masks, purchase)
        return weights

    def calculate_loss(self, interaction):
        if self.training and self.use_sm:
            self.trained_steps += 1
        if self.training and self.structure_acts():
            self.structure_steps += 1
        output = self.forward(interaction)
        click, purchase = self.labels(interaction)
        p_ctr, p_cvr = output["click"], output["purchase"]
        ce_ctr = self.curse_escaper_ctr(output) if self.use_ce else p_ctr.detach()
        weights = self.sample_weights(ce_ctr, purchase, tally=self.training)
        if self.use_ce and self.training:
            self.ctr_window.push(ce_ctr)  # after the weights: thresholds use the previous predictions
        w_ctr, w_cvr, w_cal = self.loss_weights
        losses = (
            w_ctr * self.bce(p_ctr, click),
            w_cvr * self.bce(p_cvr, purchase, weight=weights),
        )  # Eqs. 17-18
        if self.use_calibration:
            losses += (w_cal * self.calibration_loss(p_cvr, p_ctr),)  # Eq. 19
        return losses
