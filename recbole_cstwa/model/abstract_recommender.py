"""The abstract two-task (click, purchase) model every plugin model derives from."""

from logging import getLogger

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import InputType, ModelType

from recbole_cstwa.model.layers import GROUPS, FieldEmbedding, MLPTower, group_fields, mean_of_present
from recbole_cstwa.optim import sparse_updates

#: More context fields than this mean-pooled into one vector earn a warning (Eq. 7's mean suits
#: Ali-CCP's five context fields; with many, concatenation keeps them apart).
MEAN_POOLING_WARN_FIELDS = 8


def init_linear_weights(module):
    """Xavier-uniform weights and zero biases for every linear layer inside ``module`` (Keras'
    defaults, as AITM's code); embeddings keep their own N(0, embedding_init_std) init."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class MultiTaskRecommender(AbstractRecommender):
    """Click and purchase prediction over all impressions, RecBole style.

    Subclasses implement :meth:`forward`, which returns a dict with at least ``click`` and
    ``purchase``: the probabilities, shape ``(B,)``, of a click and of a purchase (click and
    conversion) for each impression. "Purchase" is scored against the purchase label over every
    impression, as AITM and the CSTWA paper do.

    - :meth:`calculate_loss` returns the per-task losses as a tuple (RecBole sums them for the
      step and logs each part as ``train_loss1``, ``train_loss2``, ...);
    - :meth:`predict` gives the purchase head, for RecBole's single-label code paths;
    - :meth:`predict_tasks` gives both heads (and a separate pCVR head as ``cvr`` where the model
      has one), for the evaluation tasks of :mod:`recbole_cstwa.evaluator`.

    Shared pieces: :meth:`embed_input` (the paper's Eq. 7 input: user field vectors, item field
    vectors and the mean of the present context fields' vectors) and :meth:`tower` (Linear-ReLU-
    Dropout towers with the paper's sizes).
    """

    type = ModelType.CONTEXT
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__()
        self.config = config
        self.device = config["device"]
        self.CLICK = config["CLICK_FIELD"]
        self.PURCHASE = config["PURCHASE_FIELD"]
        self.embedding_size = config["embedding_size"]
        self.hidden_sizes = list(config["tower_hidden_size"])
        self.dropouts = config["tower_dropout"]
        self.context_pooling = config["context_pooling"]  # settings are checked by the Config
        self.field_groups = group_fields(dataset, config)
        # What this model's embedding layers derive alike from the data (the id -> row map, the
        # user / item index tables): held once (FieldEmbedding's ``shared``).
        self._embedding_indexes = {}
        self._log_input_layout()

    def _log_input_layout(self):
        """Logs the feature groups and the tower input width, once per model built."""
        logger = getLogger()
        for group in GROUPS:
            fields = [f"{field}:{ftype.value}" for field, ftype in self.field_groups[group]]
            shown = ", ".join(fields[:12]) + (f", ... ({len(fields)} in all)" if len(fields) > 12 else "")
            logger.info(f"{type(self).__name__} {group} fields ({len(fields)}): [{shown}]")
        n_context = len(self.field_groups["context"])
        logger.info(
            f"{type(self).__name__} input width: {MultiTaskRecommender.input_size(self)} "
            f"(embedding_size {self.embedding_size}, context_pooling {self.context_pooling})"
        )
        if self.context_pooling == "mean" and n_context > MEAN_POOLING_WARN_FIELDS:
            logger.warning(
                f"context_pooling: mean averages {n_context} context fields into one "
                f"{self.embedding_size}-vector (the paper's Eq. 7, made for a handful of fields); "
                "with this many, consider context_pooling: concat (--context_pooling=concat)."
            )

    # ----- shared pieces -------------------------------------------------------------------
    def make_embedding(self, dataset):
        """A new embedding layer over every feature field (models may own several); its tables
        give sparse gradients under ``embedding_update: sparse`` (see :class:`FieldEmbedding`),
        except where :func:`~recbole_cstwa.optim.sparse_updates` says sparse updates give way
        (DDP, mixed precision, a learner other than Adam: docs/training-at-scale.md); ids seen
        fewer than ``min_count`` times in ``dataset`` share their field's out-of-vocabulary row."""
        return FieldEmbedding(
            dataset,
            self.field_groups,
            self.embedding_size,
            self.config["embedding_init_std"],
            sparse=sparse_updates(self.config)[0],
            min_count=self.config["min_count"] or 0,
            shared=self._embedding_indexes,
        )

    def input_size(self):
        """Width of :meth:`embed_input`'s output."""
        d = self.embedding_size
        n_user = len(self.field_groups["user"])
        n_item = len(self.field_groups["item"])
        n_context = len(self.field_groups["context"])
        context = (d if n_context else 0) if self.context_pooling == "mean" else n_context * d
        return (n_user + n_item) * d + context

    def embed_input(self, interaction, embedding, lookups=None):
        """The paper's Eq. 7: ``[user field vectors || item field vectors || context term]``.

        Args:
            embedding (FieldEmbedding): the embedding layer to read.
            lookups (dict, optional): ``embedding.lookup(interaction)``'s output to use instead
                of looking up again (CSTWA's Structure Migrator replaces the user and item rows
                in it).
        """
        if lookups is None and embedding.joint is not None:  # scoring: every layer's at once
            joint, slot = embedding.joint
            joint_input = joint.inputs(interaction, slot, self.context_pooling)
            if joint_input is not None:
                return joint_input
        lookups = embedding.lookup(interaction) if lookups is None else lookups
        user = lookups["user"][0].flatten(1)
        item = lookups["item"][0].flatten(1)
        context, present = lookups["context"]
        if self.context_pooling == "mean":
            context = mean_of_present(context, present) if context.shape[1] else context.flatten(1)
        else:
            context = context.flatten(1)
        return torch.cat([user, item, context], dim=1)

    def tower(self, input_size=None):
        """An MLP tower with the configured sizes and dropouts."""
        return MLPTower(input_size or self.input_size(), self.hidden_sizes, self.dropouts)

    def expert_layers(self):
        """``(sizes, dropouts)`` of an Expert-Bottom model's experts: ``expert_hidden_size`` and
        ``expert_dropout``, each the tower's (``tower_hidden_size``, ``tower_dropout``) when left
        empty, as the CSTWA paper sets its MLP-Experts like its MLP-Towers (Section 4.1.4)."""
        sizes = list(self.config["expert_hidden_size"] or []) or self.hidden_sizes
        dropouts = self.config["expert_dropout"]
        if isinstance(dropouts, list) and not dropouts:
            dropouts = self.dropouts
        return sizes, dropouts

    def init_weights(self):
        """Xavier-uniform linear weights and zero biases (:func:`init_linear_weights`)."""
        init_linear_weights(self)

    def labels(self, interaction):
        return interaction[self.CLICK].float(), interaction[self.PURCHASE].float()

    @staticmethod
    def bce(probability, label, weight=None):
        """Binary cross-entropy on probabilities, mean over the batch."""
        return F.binary_cross_entropy(probability, label, weight=weight)

    @staticmethod
    def calibration_loss(p_purchase, p_click):
        """AITM's calibrator (the CSTWA paper's Eq. 19): ``mean(max(p_purchase - p_click, 0))``."""
        return F.relu(p_purchase - p_click).mean()

    # ----- RecBole interface ---------------------------------------------------------------
    def forward(self, interaction):
        raise NotImplementedError

    def calculate_loss(self, interaction):
        """Default: plain BCE of each head on its label over all impressions."""
        output = self.forward(interaction)
        click, purchase = self.labels(interaction)
        return self.bce(output["click"], click), self.bce(output["purchase"], purchase)

    def predict_tasks(self, interaction):
        """``{"click": p_click, "purchase": p_purchase}``, each of shape ``(B,)``, plus ``"cvr"``
        (the post-click conversion probability) for a model with a separate pCVR head."""
        output = self.forward(interaction)
        return {name: output[name] for name in ("click", "purchase", "cvr") if name in output}

    def predict(self, interaction):
        return self.predict_tasks(interaction)["purchase"]

    def kept_model_facts(self):
        """Facts about this (kept) model for the run's result dict; CSTWA says whether it used
        its Structure Migrator (``sm_used``)."""
        return {}

    def completed_state(self, state_dict):
        """``state_dict`` of a checkpoint written by an earlier version, with the entries this
        version's model added since (a counter, say) at the values that mean "not recorded";
        used before a checkpoint's parameters are checked and loaded."""
        return state_dict

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if not prefix:  # the model itself (its sub-modules load their own entries)
            completed = self.completed_state(dict(state_dict))
            state_dict.update({name: value for name, value in completed.items() if name not in state_dict})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
