"""The abstract two-task (click, purchase) model every plugin model derives from."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import InputType, ModelType

from recbole_cstwa.model.layers import FieldEmbedding, MLPTower, group_fields, mean_of_present


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
        self.context_pooling = config["context_pooling"]
        if self.context_pooling not in ("mean", "concat"):
            raise ValueError(
                f"context_pooling must be 'mean' (the paper's Eq. 7) or 'concat', got "
                f"{self.context_pooling!r}."
            )
        self.field_groups = group_fields(dataset, config)

    # ----- shared pieces -------------------------------------------------------------------
    def make_embedding(self, dataset):
        """A new embedding layer over every feature field (models may own several)."""
        return FieldEmbedding(
            dataset, self.field_groups, self.embedding_size, self.config["embedding_init_std"]
        )

    def input_size(self):
        """Width of :meth:`embed_input`'s output."""
        d = self.embedding_size
        n_user = len(self.field_groups["user"])
        n_item = len(self.field_groups["item"])
        n_context = len(self.field_groups["context"])
        context = (d if n_context else 0) if self.context_pooling == "mean" else n_context * d
        return (n_user + n_item) * d + context

    def embed_input(self, interaction, embedding, user_item=None):
        """The paper's Eq. 7: ``[user field vectors || item field vectors || context term]``.

        Args:
            embedding (FieldEmbedding): the embedding layer to read.
            user_item (tuple, optional): ``(user_part, item_part)``, flattened ``(B, f*d)``
                tensors that replace the looked-up user and item parts (CSTWA's Structure
                Migrator feeds its mixed rows here).
        """
        if user_item is None:
            user = embedding(interaction, "user")[0].flatten(1)
            item = embedding(interaction, "item")[0].flatten(1)
        else:
            user, item = user_item
        context, present = embedding(interaction, "context")
        if self.context_pooling == "mean":
            context = mean_of_present(context, present) if context.shape[1] else context.flatten(1)
        else:
            context = context.flatten(1)
        return torch.cat([user, item, context], dim=1)

    def tower(self, input_size=None):
        """An MLP tower with the configured sizes and dropouts."""
        return MLPTower(input_size or self.input_size(), self.hidden_sizes, self.dropouts)

    def init_weights(self):
        """Xavier-uniform linear weights and zero biases (Keras' defaults, as AITM's code)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

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
