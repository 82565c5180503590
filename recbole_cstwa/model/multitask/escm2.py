r"""ESCM2
################################################
Reference:
    Hao Wang et al. "ESCM²: Entire Space Counterfactual Multi-Task Model for Post-Click Conversion
    Rate Estimation." in SIGIR 2022.

Reference code:
    PaddleRec ``models/multitask/escm2`` (``counterfact_ipw`` / ``counterfact_dr`` in
    ``static_model.py`` and ``dygraph_model.py``, defaults in ``config_bigdata.yaml``); no code of
    the authors themselves was found.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_cstwa.model.abstract_recommender import MultiTaskRecommender
from recbole_cstwa.model.layers import ExpertMixture, MLPTower, ProbabilityHead

#: Floor on the propensity before it is inverted (PaddleRec: ``maximum(PS, 1e-6)``).
PROPENSITY_FLOOR = 1e-6
#: PaddleRec's ESCM2 MMoE: every linear layer's bias starts at 0.1 (``Constant(value=0.1)``).
PADDLE_BIAS_INIT = 0.1
#: PaddleRec clips each two-class softmax output to [1e-15, 1 - 1e-15].
PADDLE_PROBABILITY_CLIP = 1e-15


class TwoClassSoftmaxHead(nn.Module):
    """PaddleRec's ESCM2 output layer: ``Linear(d, 2)`` -> softmax -> clip to [1e-15, 1 - 1e-15];
    the probability of class 1, shape ``(B,)``. (The same function class as a Linear + sigmoid on
    the two logits' difference, with PaddleRec's parameters.)"""

    def __init__(self, input_size):
        super().__init__()
        self.linear = nn.Linear(input_size, 2)

    def forward(self, x):
        probabilities = torch.softmax(self.linear(x), dim=-1)
        probabilities = probabilities.clamp(PADDLE_PROBABILITY_CLIP, 1 - PADDLE_PROBABILITY_CLIP)
        return probabilities[:, 1]


def ips_counterfactual_risk(p_click, cvr_loss, click, max_weight):
    """ESCM2-IPS counterfactual CVR risk, as PaddleRec's ``counterfact_ipw``.

    ``w_i = B * min(1 / max(p_click_i * N_c, 1e-6), max_weight)``, with ``N_c`` the batch's
    clicks and ``B`` its size, computed without gradient; the risk is ``mean_i(o_i * w_i * e_i)``,
    i.e. ``sum_i o_i * e_i * min(1 / (N_c p_click_i), max_weight)``: IPS normalised by the
    batch's clicks. (Paddle also clips at ``-max_weight``; the weights are positive, so it never
    binds.)

    Args:
        p_click (Tensor): ``(B,)`` click propensities.
        cvr_loss (Tensor): ``(B,)`` per-impression CVR losses ``e_i``.
        click (Tensor): ``(B,)`` 0/1 click labels ``o_i``.
        max_weight (float): the clip on the inverse propensity.
    """
    with torch.no_grad():
        num_clicks = click.sum()
        inverse = 1.0 / (p_click * num_clicks).clamp(min=PROPENSITY_FLOOR)
        weight = len(click) * inverse.clamp(max=max_weight)
    return (click * weight * cvr_loss).mean()


def dr_counterfactual_risk(p_click, p_imputed, cvr_loss, click, max_weight):
    """ESCM2-DR counterfactual CVR risk, as PaddleRec's ``counterfact_dr``.

    With ``err_i = e_i - p_imputed_i`` and ``w_i = min(o_i / max(p_click_i, 1e-6), max_weight)``
    (no gradient), the risk is ``mean_i(p_imputed_i + w_i * err_i + w_i * err_i^2)``: the doubly
    robust error estimate plus the imputation loss, optimised jointly.
    """
    with torch.no_grad():
        weight = (click / p_click.clamp(min=PROPENSITY_FLOOR)).clamp(max=max_weight)
    error = cvr_loss - p_imputed
    return (p_imputed + weight * error + weight * error.pow(2)).mean()


class ESCM2(MultiTaskRecommender):
    r"""ESMM plus a counterfactual CVR risk as regulariser (IPS or doubly robust).

    Shared embedding layer, a CTR tower and a CVR tower (``pCTCVR = pCTR * pCVR``), and for DR an
    imputation tower whose probability ``p_imp`` imputes the CVR error. The loss is
    ``L_ctr + escm2_counterfactual_weight * L_cvr + escm2_global_weight * L_ctcvr``, returned as
    the three weighted parts: ``L_ctr`` = BCE(pCTR, click) and ``L_ctcvr`` = BCE(pCTCVR,
    purchase) over all impressions (ESMM's two losses), ``L_cvr`` the counterfactual risk of
    :func:`ips_counterfactual_risk` or :func:`dr_counterfactual_risk` (``escm2_mode``) on the
    per-impression losses ``e_i = BCE(pCVR_i, purchase_i)``; propensity weights are computed
    without gradient (Paddle's ``stop_gradient``), so no gradient of ``L_cvr`` flows through
    the propensities (it still trains what the CVR side shares: the embedding, and with
    ``escm2_backbone: mmoe`` the shared experts).
    The purchase prediction scored against the purchase label is pCTCVR, the impression-level
    purchase probability (as ESMM); ``forward`` also returns ``cvr`` (and ``imputation``).

    Defaults are PaddleRec's ``config_bigdata.yaml`` and code defaults, each on its line of
    ``properties/model/ESCM2.yaml`` (its sample-data ``config.yaml`` weights the risks 0.01 /
    1.0); the inverse propensities are floored at 1e-6 and clipped at ``escm2_max_weight``
    (PaddleRec's "online trick"). Readings and differences:

    - [reading] Backbone ``escm2_backbone: mlp`` (default): the CSTWA paper's description, ESMM
      with the counterfactual regulariser, with the same MLP towers as every model of the
      comparison (the imputation tower is one more such tower).
    - ``escm2_backbone: mmoe`` is PaddleRec's backbone (``models/multitask/escm2/net.py``,
      ``config_bigdata.yaml``): ``num_experts`` experts Linear(input -> 16) + ReLU
      (``escm2_expert_hidden_size``); one softmax gate Linear(input -> num_experts) per task (3
      with DR's imputation task); per task a tower Linear(16 -> 8) + ReLU
      (``escm2_tower_hidden_size``) and Linear(8 -> 2) -> softmax, clipped to
      [1e-15, 1 - 1e-15], class 1's probability (:class:`TwoClassSoftmaxHead`); no dropout;
      Xavier-uniform weights and every bias 0.1, as PaddleRec. Its input is the common input of
      every model here (PaddleRec: 23 fields of up to 3 ids, sum-pooled, embedding 12).
    - Training settings (both backbones): the shared ones of every model here, not PaddleRec's
      (``models/multitask/escm2``): its embedding table is drawn Uniform(-1, 1) (``net.py``,
      ``ESCMLayer.__init__``: Paddle's ``Uniform()`` default; only the embedding, its linear
      layers are the Xavier-uniform / 0.1 above), here N(0, 0.01); its Adam (lr 1e-3) has no
      weight decay (``dygraph_model.py``, ``create_optimizer``), here the shared 1e-6; its batch
      is 1024 (``config_bigdata.yaml``), here 2000.
    - Input: the common input takes the **mean** of the context field vectors; PaddleRec sums the
      ids inside each field and concatenates the 23 fields (``net.py``, ``ESCMLayer.forward``),
      which ``context_pooling: concat`` gives for one-id fields.
    - BCE: PyTorch's exact BCE (log clamped at -100), as every other model here, not Paddle's
      ``log_loss`` with eps 1e-4, which caps each per-impression loss near 9.2 and shifts it
      by about ``1e-4 / p``; the two differ only on near-saturated predictions.
    - ``e_i`` keeps its gradient inside the DR error (as Paddle), so the CVR tower is trained by
      both ``w_i * err_i`` and the imputation loss ``w_i * err_i^2``.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.mode = config["escm2_mode"]
        self.backbone = config["escm2_backbone"]
        self.counterfactual_weight = config["escm2_counterfactual_weight"]
        self.global_weight = config["escm2_global_weight"]
        self.max_weight = config["escm2_max_weight"]

        self.tasks = ("click", "cvr", "imputation") if self.mode == "dr" else ("click", "cvr")
        self.embedding = self.make_embedding(dataset)
        if self.backbone == "mlp":
            self.towers = nn.ModuleDict({task: self.tower() for task in self.tasks})
            output_size = self.towers["click"].output_size
            self.heads = nn.ModuleDict({task: ProbabilityHead(output_size) for task in self.tasks})
            self.init_weights()
        else:  # PaddleRec's MMoE: one gate, tower and two-class output layer per task
            self.experts = ExpertMixture(
                self.input_size(),
                config["num_experts"],
                len(self.tasks),
                config["escm2_expert_hidden_size"],
                0.0,
            )
            self.towers = nn.ModuleDict(
                {
                    task: MLPTower(self.experts.output_size, config["escm2_tower_hidden_size"], 0.0)
                    for task in self.tasks
                }
            )
            output_size = self.towers["click"].output_size
            self.heads = nn.ModuleDict({task: TwoClassSoftmaxHead(output_size) for task in self.tasks})
            self.init_weights()
            for layer in self.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.constant_(layer.bias, PADDLE_BIAS_INIT)

    def forward(self, interaction):
        x = self.embed_input(interaction, self.embedding)
        if self.backbone == "mlp":
            hidden = [self.towers[task](x) for task in self.tasks]
        else:
            hidden = [self.towers[task](mixture) for task, mixture in zip(self.tasks, self.experts(x))]
        p = {task: self.heads[task](h) for task, h in zip(self.tasks, hidden)}
        output = {"click": p["click"], "cvr": p["cvr"], "purchase": p["click"] * p["cvr"]}
        if "imputation" in p:
            output["imputation"] = p["imputation"]
        return output

    def calculate_loss(self, interaction):
        output = self.forward(interaction)
        click, purchase = self.labels(interaction)
        cvr_loss = F.binary_cross_entropy(output["cvr"], purchase, reduction="none")
        if self.mode == "ips":
            counterfactual = ips_counterfactual_risk(output["click"], cvr_loss, click, self.max_weight)
        else:
            counterfactual = dr_counterfactual_risk(
                output["click"], output["imputation"], cvr_loss, click, self.max_weight
            )
        return (
            self.bce(output["click"], click),
            self.counterfactual_weight * counterfactual,
            self.global_weight * self.bce(output["purchase"], purchase),
        )
