r"""DDPO
################################################
Reference:
    Hongzu Su, Lichao Meng, Lei Zhu, Ke Lu and Jingjing Li. "DDPO: Direct Dual Propensity
    Optimization for Post-Click Conversion Rate Estimation." in SIGIR 2024.

Reference code:
    https://github.com/TL-UESTC/DDPO (the authors' code, MTReclib-based): the model
    ``models/ddpo_ccp.py`` with ``models/layers.py``, its losses in ``train()`` of ``main.py``.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_cstwa.model.abstract_recommender import MultiTaskRecommender
from recbole_cstwa.model.layers import ProbabilityHead
from recbole_cstwa.model.multitask.aitm import AdaptiveInformationTransfer

#: Floor on the click propensity and on one minus it before they are inverted (the official
#: ``main.py``: ``torch.maximum(y[0], 1e-6)`` and ``torch.maximum(1 - y[0], 1e-6)``).
PROPENSITY_FLOOR = 1e-6


def impression_space_cvr_risk(p_click, p_cvr, p_conversion, click, purchase):
    """DDPO's CVR loss ``L_r`` over clicked and unclicked impressions (the paper's Eqs. 9, 10
    and 15; the official ``main.py``'s ``cvr_loss + side_cvr_loss``).

    - Targets (Eq. 9, "dynamic soft labels"): a clicked row's is ``min(r + r_c, 1)`` (its
      purchase label, or the conversion propensity where it did not buy), an unclicked row's the
      conversion propensity ``r_c`` (the pseudo-conversion label);
    - weights (Eq. 15, self-normalised inverse propensities): a clicked row's
      ``(1 / o_hat) / sum_clicked(1 / o_hat)``, an unclicked row's
      ``(1 / (1 - o_hat)) / sum_unclicked(1 / (1 - o_hat))``, each propensity floored at 1e-6;
    - ``L_r = mean_i(weight_i * BCE(p_cvr_i, target_i))`` over the whole batch (Eq. 10's
      ``1 / |D|``).

    Targets and weights carry no gradient (the official code detaches both), so ``L_r`` trains
    the CVR side only (with what feeds it: the causal transfer modules read the click and
    conversion towers).

    Args:
        p_click (Tensor): ``(B,)`` click propensities ``o_hat``.
        p_cvr (Tensor): ``(B,)`` post-click conversion probabilities ``r_hat``.
        p_conversion (Tensor): ``(B,)`` conversion propensities ``r_c``.
        click, purchase (Tensor): ``(B,)`` 0/1 labels.
    """
    with torch.no_grad():
        pseudo_label = p_conversion.detach()
        target = torch.where(click > 0, (purchase + pseudo_label).clamp(max=1.0), pseudo_label)
        clicked_weight = click / p_click.clamp(min=PROPENSITY_FLOOR)
        unclicked_weight = (1 - click) / (1 - p_click).clamp(min=PROPENSITY_FLOOR)
        # Each inverse propensity is >= 1, so a non-empty sum is >= 1 and the clamp only turns an
        # empty side's 0 / 0 into 0 (the official code's branch for a batch without clicks, or
        # without non-clicks, also gives that side 0: its weights multiply zero losses there).
        weight = clicked_weight / clicked_weight.sum().clamp(min=1.0)
        weight += unclicked_weight / unclicked_weight.sum().clamp(min=1.0)
    return (weight * F.binary_cross_entropy(p_cvr, target, reduction="none")).mean()


class DDPO(MultiTaskRecommender):
    r"""Click propensity, conversion propensity and CVR networks; the CVR network reads the other
    two through causal transfer modules and is trained over clicked and unclicked impressions.

    Structure (the paper's Section 3 and ``models/ddpo_ccp.py``), on the common input of every
    model here (:meth:`embed_input`):

    - three towers (click propensity ``theta_o``, CVR ``theta_r``, conversion propensity
      ``theta_c``), each an MLP tower with the shared sizes ``tower_hidden_size`` /
      ``tower_dropout``, each with a :class:`ProbabilityHead`: ``o_hat = p_click``,
      ``r_hat = p_cvr``, ``r_c`` (the conversion propensity);
    - causal transfer modules (Eqs. 12-14): the click tower's output through an info layer
      Linear(d, d) + ReLU (the code's ``ctr_info``) and the CVR tower's output are attended over
      (attention over two items as AITM's, with biased ``d x d`` query / key / value projections:
      the code's ``Attention``), likewise the conversion tower's (``ctcvr_info``); the two
      results are concatenated and fused by Linear(2d, d) + ReLU (``cvr_info``, Eq. 14's
      ``theta_t``) before the CVR head;
    - outputs: ``click`` = ``o_hat``, ``cvr`` = ``r_hat`` (the post-click conversion
      probability), ``purchase`` = ``o_hat * r_hat`` (pCTCVR, Eq. 17, the impression-level
      purchase probability scored against the purchase label), ``conversion_propensity``.

    Loss (Eq. 18, the official ``loss``), returned as the four weighted parts
    ``(lambda_o L_o, lambda_c L_c, lambda_r L_r, lambda_t L_t)``:

    - ``L_o`` = BCE(o_hat, click) over all impressions (Eq. 16);
    - ``L_c`` = ``mean_i(click_i * BCE(r_c_i, purchase_i))``: the conversion propensity trained on
      the clicked rows, averaged over the batch (Eq. 6);
    - ``L_r``: :func:`impression_space_cvr_risk` (Eqs. 9, 10, 15);
    - ``L_t`` = BCE(o_hat * r_hat, purchase) over all impressions (Eq. 17).

    The weights ``ddpo_click_weight``, ``ddpo_conversion_weight``, ``ddpo_cvr_weight`` and
    ``ddpo_ctcvr_weight`` are the paper's and the official ``main.py``'s (their defaults and
    sources: ``properties/model/DDPO.yaml``). All parts are trained together in every step (the paper's Algorithm 1),
    so no propensity pre-training and no trainer of its own. Readings and differences:

    - [reading] Towers: the shared MLP towers (``tower_hidden_size``, ``tower_dropout``, no batch
      normalisation) encode, the transfer modules act on their outputs and each prediction is one
      linear layer + sigmoid, as the paper's implementation details say ("the prediction network
      is implemented with a single fully connected layer"). The official code encodes with
      MTReclib MLPs (Linear + BatchNorm + ReLU + Dropout 0.2) of (128, 64), transfers at 64 and
      predicts with another such MLP of (64, 32) and a linear layer.
    - Input: the common input takes the **mean** of the context field vectors; the official code
      (``models/ddpo_ccp.py``, ``DDPO.forward``) concatenates every field's vector, which
      ``context_pooling: concat`` gives.
    - Initialisation: Xavier-uniform linear weights and zero biases, N(0, 0.01) embeddings, as
      every model here; the official code keeps PyTorch's default linear init and draws its
      embeddings Xavier-uniform.
    - The official code clips the inverse propensities to [-15, 15] only in a batch without
      clicks (or without non-clicks), where they multiply zero losses; that clip is not kept
      (the value is the same: 0).
    - The released ``main.py`` only evaluates the released checkpoints; its ``train()`` (read
      here) is not called and its ``criterion`` is not shown: it is read as PyTorch's per-row BCE
      (``BCELoss(reduction="none")``), which its per-row products and means need.
    - Self-normalisation is over the rows one step sees: with DDP, each rank's batch.
    - MDDPO (the paper's MMoE + DDPO) is not built.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.click_weight = config["ddpo_click_weight"]
        self.conversion_weight = config["ddpo_conversion_weight"]
        self.cvr_weight = config["ddpo_cvr_weight"]
        self.ctcvr_weight = config["ddpo_ctcvr_weight"]

        self.embedding = self.make_embedding(dataset)
        self.click_tower = self.tower()
        self.cvr_tower = self.tower()
        self.conversion_tower = self.tower()
        size = self.click_tower.output_size
        self.click_info = nn.Sequential(nn.Linear(size, size), nn.ReLU())
        self.conversion_info = nn.Sequential(nn.Linear(size, size), nn.ReLU())
        self.click_transfer = AdaptiveInformationTransfer(size, bias=True)
        self.conversion_transfer = AdaptiveInformationTransfer(size, bias=True)
        self.cvr_fusion = nn.Sequential(nn.Linear(2 * size, size), nn.ReLU())
        self.click_head = ProbabilityHead(size)
        self.cvr_head = ProbabilityHead(size)
        self.conversion_head = ProbabilityHead(size)
        self.init_weights()

    def forward(self, interaction):
        x = self.embed_input(interaction, self.embedding)
        click_hidden = self.click_tower(x)
        cvr_hidden = self.cvr_tower(x)
        conversion_hidden = self.conversion_tower(x)
        from_click = self.click_transfer(torch.stack([self.click_info(click_hidden), cvr_hidden], dim=1))
        from_conversion = self.conversion_transfer(
            torch.stack([self.conversion_info(conversion_hidden), cvr_hidden], dim=1)
        )
        p_click = self.click_head(click_hidden)
        p_cvr = self.cvr_head(self.cvr_fusion(torch.cat([from_click, from_conversion], dim=1)))
        return {
            "click": p_click,
            "cvr": p_cvr,
            "purchase": p_click * p_cvr,
            "conversion_propensity": self.conversion_head(conversion_hidden),
        }

    def calculate_loss(self, interaction):
        output = self.forward(interaction)
        click, purchase = self.labels(interaction)
        p_click, p_cvr, p_conversion = output["click"], output["cvr"], output["conversion_propensity"]
        conversion_loss = (click * F.binary_cross_entropy(p_conversion, purchase, reduction="none")).mean()
        cvr_loss = impression_space_cvr_risk(p_click, p_cvr, p_conversion, click, purchase)
        return (
            self.click_weight * self.bce(p_click, click),
            self.conversion_weight * conversion_loss,
            self.cvr_weight * cvr_loss,
            self.ctcvr_weight * self.bce(output["purchase"], purchase),
        )
