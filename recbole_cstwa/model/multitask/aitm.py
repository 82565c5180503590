r"""AITM
################################################
Reference:
    Dongbo Xi et al. "Modeling the Sequential Dependence among Audience Multi-step Conversions
    with Multi-task Learning in Targeted Display Advertising." in KDD 2021.

Reference code:
    https://github.com/xidongbo/AITM (the authors' TensorFlow code, ``AITM.py``: two tasks,
    click -> purchase).
"""

import logging
import math

import torch
import torch.nn as nn

from recbole_cstwa.model.abstract_recommender import MultiTaskRecommender
from recbole_cstwa.model.layers import Dropout, ProbabilityHead

#: The official code draws the three AIT projection matrices from N(0, 0.01) (std 0.01).
ATTENTION_INIT_STD = 0.01


class AdaptiveInformationTransfer(nn.Module):
    """AITM's AIT module: attention over two items, the current task's tower output and the
    information transferred from the previous task.

    Three bias-free ``d x d`` projections give queries, keys and values; each item's score is
    ``sum(Q * K) / sqrt(d)``, the scores are softmax-normalised over the items and the output is
    the weighted sum of the values. ``bias=True`` gives the projections biases (DDPO's causal
    transfer module, the same attention).
    """

    def __init__(self, size, init_std=ATTENTION_INIT_STD, bias=False):
        super().__init__()
        self.size = size
        self.init_std = init_std
        self.query = nn.Linear(size, size, bias=bias)
        self.key = nn.Linear(size, size, bias=bias)
        self.value = nn.Linear(size, size, bias=bias)
        self.reset_parameters()

    def reset_parameters(self):
        for projection in (self.query, self.key, self.value):
            nn.init.normal_(projection.weight, std=self.init_std)

    def projection_weights(self):
        return [self.query.weight, self.key.weight, self.value.weight]

    def attention_weights(self, items):
        """``items``: ``(B, n_items, d)``. Returns ``(B, n_items)`` weights summing to 1."""
        scores = (self.query(items) * self.key(items)).sum(dim=-1) / math.sqrt(self.size)
        return torch.softmax(scores, dim=1)

    def forward(self, items):
        """``items``: ``(B, n_items, d)``. Returns the transferred representation ``(B, d)``."""
        weights = self.attention_weights(items)
        return (weights.unsqueeze(-1) * self.value(items)).sum(dim=1)


class AITM(MultiTaskRecommender):
    r"""Click and purchase towers on one shared input; the purchase tower receives information
    from the click tower through the AIT attention module, and a calibrator keeps
    ``p_purchase <= p_click``.

    As the official code (xidongbo/AITM ``AITM.py``):

    - one embedding layer feeds both towers (no shared bottom), the common towers
      (``tower_hidden_size``, ``tower_dropout``);
    - info layer: Linear(32) + ReLU + Dropout on the click tower's output, with the tower's last
      dropout (0.3; the official code reuses ``keep_prob[2]``);
    - AIT over the two items [purchase tower output, info] (:class:`AdaptiveInformationTransfer`,
      projections without bias, initialised N(0, 0.01));
    - heads: ``p_click = sigmoid(Linear(click tower))``, ``p_purchase = sigmoid(Linear(z))``;
      other linear layers Xavier-uniform with zero biases (Keras' defaults);
    - loss = BCE(p_click, click) + BCE(p_purchase, purchase), both over all impressions (the
      purchase label is impression-level), + ``aitm_calibration_weight`` * the **mean** over
      the batch of ``max(p_purchase - p_click, 0)``, + ``aitm_l2`` * sum(w^2) / 2 (TF's
      ``l2_regularizer``) over the **embedding tables and the three AIT projections only**.
      :meth:`calculate_loss` returns the four parts ``(click, purchase, calibration, l2)``, each
      already weighted.

    Because the L2 term is the official one, restricted to those weights, ``AITM.yaml`` sets the
    optimizer's ``weight_decay`` to 0 (the shared 1e-6 would decay every weight a second time).
    Readings and differences:

    - [reading] Input: the base's :meth:`embed_input`, i.e. the CSTWA paper's common input (user
      field vectors || item field vectors || mean of the context vectors), the same for every
      model of the comparison. The official code concatenates all its 18 Ali-CCP field vectors;
      ``context_pooling: concat`` gives that here.
    - Calibrator reduction: the official TF code takes the batch mean (``reduce_mean``); the
      PyTorch port adtalos/AITM-torch and PaddleRec sum it over the batch (2000x stronger at
      batch 2000), torch-rechub and MTReclib drop it. We follow the official mean.
    - Optimiser: the official Adam lr 1e-3 and batch 2000 (= the shared settings); the ports'
      lr 1e-4 / 2e-4 with weight decay on every parameter are not followed.
    - BCE: PyTorch's (log clamped at -100) rather than TF's ``log_loss`` (eps 1e-7); the two
      differ only on saturated predictions.
    - ``embedding_update: sparse`` (the default): the embedding part of the L2 term acts on the
      rows a batch looked up only. It leaves the loss and goes to the row-wise optimizer as those
      rows' L2 weight (``aitm_l2``: gradient ``aitm_l2 * w``, as the term's); the official code's
      (TF) gradient of the term also shrinks every row the batch did not use. The fourth loss
      part then holds the AIT projections' L2 alone. ``embedding_update: dense`` is the official
      whole-table term.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.calibration_weight = config["aitm_calibration_weight"]
        self.l2_weight = config["aitm_l2"]
        if self.l2_weight > 0 and config["weight_decay"]:
            logging.getLogger().warning(
                "AITM: weight_decay=%s decays every weight on top of aitm_l2=%s; set weight_decay: 0 "
                "for the official regularisation (embeddings and AIT projections only).",
                config["weight_decay"],
                self.l2_weight,
            )

        self.embedding = self.make_embedding(dataset)
        if self.embedding.sparse:  # the embedding L2 on touched rows, in the row-wise optimizer
            self.embedding.row_weight_decay = self.l2_weight
        self.click_tower = self.tower()
        self.purchase_tower = self.tower()
        size = self.click_tower.output_size
        last_dropout = self.dropouts[-1] if isinstance(self.dropouts, (list, tuple)) else self.dropouts
        self.info_layer = nn.Sequential(nn.Linear(size, size), nn.ReLU(), Dropout(last_dropout))
        self.click_head = ProbabilityHead(size)
        self.purchase_head = ProbabilityHead(size)
        self.transfer = AdaptiveInformationTransfer(size)
        self.init_weights()
        self.transfer.reset_parameters()  # init_weights made them Xavier; the official init is N(0, 0.01)

    def transfer_items(self, interaction):
        """``(B, 2, d)``: [purchase tower output, info from the click tower], and the click tower's output."""
        x = self.embed_input(interaction, self.embedding)
        click_hidden = self.click_tower(x)
        purchase_hidden = self.purchase_tower(x)
        info = self.info_layer(click_hidden)
        return torch.stack([purchase_hidden, info], dim=1), click_hidden

    def forward(self, interaction):
        items, click_hidden = self.transfer_items(interaction)
        return {
            "click": self.click_head(click_hidden),
            "purchase": self.purchase_head(self.transfer(items)),
        }

    def regularised_parameters(self):
        """The weights the loss's L2 term covers: embedding tables (unless they are sparse: then
        their rows' L2 is in the optimizer) and AIT projections."""
        embedding = [] if self.embedding.sparse else [*self.embedding.parameters()]
        return [*embedding, *self.transfer.projection_weights()]

    def calculate_loss(self, interaction):
        output = self.forward(interaction)
        click, purchase = self.labels(interaction)
        p_click, p_purchase = output["click"], output["purchase"]
        calibration = self.calibration_weight * self.calibration_loss(p_purchase, p_click)
        l2 = self.l2_weight / 2 * sum(weight.pow(2).sum() for weight in self.regularised_parameters())
        return self.bce(p_click, click), self.bce(p_purchase, purchase), calibration, l2
