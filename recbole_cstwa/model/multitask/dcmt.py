r"""DCMT
################################################
Reference:
    Feng Zhu et al. "DCMT: A Direct Entire-Space Causal Multi-Task Framework for Post-Click
    Conversion Estimation." in ICDE 2023 (arXiv 2302.06141).

Reference code:
    No code of the authors was found. Two re-implementations were read: the NISE authors'
    (``Hjh233/NISE``: ``torch-rechub/torch_rechub/models/multi_task/dcmt.py`` for the towers,
    the ``DCMT`` branch of ``torch-rechub/torch_rechub/trainers/mtl_trainer.py`` for the loss)
    and EVI's (``q1179897215/EVI`` at commit ``a79a967``, ``src/models/dcmt.py``: ``Dcmt`` and
    ``DcmtLoss``; the file is gone from later commits). The
    paper is followed where they differ (see :class:`DCMT`).
"""

import torch
import torch.nn.functional as F

from recbole_cstwa.model.abstract_recommender import MultiTaskRecommender
from recbole_cstwa.model.layers import ProbabilityHead


def dcmt_cvr_risk(p_click, p_cvr, p_counterfactual, click, purchase, propensity_clip):
    r"""The three parts of DCMT's CVR objective ``E^DCMT``, each a mean over the whole batch
    (the entire exposure space ``D``):

    - factual: ``mean_i( o_i * e(r_i, pCVR_i) / o_hat_i )``, the inverse-propensity-weighted
      BCE of the factual tower against the purchase label on the clicked impressions;
    - counterfactual: ``mean_i( (1 - o_i) * e(1 - r_i, pCVR*_i) / (1 - o_hat_i) )``, the BCE of
      the counterfactual tower against the counterfactual label ``1 - r`` on the non-clicked
      impressions (there ``r = 0``, so the target is 1), weighted by the inverse probability of
      not clicking;
    - constraint: ``mean_i | pCVR_i + pCVR*_i - 1 |``, the soft counterfactual prior
      ``pCVR + pCVR* = 1`` over every impression.

    ``o_hat`` is the CTR tower's ``p_click`` clamped to ``[propensity_clip, 1 - propensity_clip]``
    and taken without gradient: the propensities weight the CVR losses but are trained by the
    CTR loss alone (both re-implementations detach them).

    Args:
        p_click, p_cvr, p_counterfactual (Tensor): ``(B,)`` probabilities of the CTR, factual
            CVR and counterfactual CVR towers.
        click, purchase (Tensor): ``(B,)`` 0/1 labels ``o`` and ``r``.
        propensity_clip (float): the clamp on the propensity, in ``(0, 0.5)``.

    Returns:
        tuple: ``(factual, counterfactual, constraint)``, three scalars.
    """
    with torch.no_grad():
        propensity = p_click.clamp(propensity_clip, 1.0 - propensity_clip)
        factual_weight = click / propensity
        counterfactual_weight = (1.0 - click) / (1.0 - propensity)
    factual = (factual_weight * F.binary_cross_entropy(p_cvr, purchase, reduction="none")).mean()
    counterfactual_loss = F.binary_cross_entropy(p_counterfactual, 1.0 - purchase, reduction="none")
    counterfactual = (counterfactual_weight * counterfactual_loss).mean()
    constraint = (p_cvr + p_counterfactual - 1.0).abs().mean()
    return factual, counterfactual, constraint


class DCMT(MultiTaskRecommender):
    r"""A CTR tower and a twin CVR tower (factual pCVR, counterfactual pCVR*) over the entire space.

    Shared embedding layer; three towers on the common input: CTR (``pCTR``), factual CVR
    (``pCVR``) and counterfactual CVR (``pCVR*``), each an :class:`MLPTower` with the common
    sizes and a :class:`ProbabilityHead`. The paper's objective is
    ``E^CTR + w^cvr * E^DCMT + w^ctcvr * E^CTCVR + lambda_2 ||theta||^2``:

    - ``E^CTR`` = BCE(pCTR, click) and ``E^CTCVR`` = BCE(pCTR * pCVR, purchase) over all
      impressions (ESMM's two losses);
    - ``E^DCMT`` = factual + counterfactual + ``dcmt_constraint_weight`` (``lambda_1``) *
      constraint, the three parts of :func:`dcmt_cvr_risk`;
    - ``lambda_2 ||theta||^2`` is the optimizer's ``weight_decay``, as for every model here.

    :meth:`calculate_loss` returns the five weighted parts (ctr, factual, counterfactual,
    constraint, ctcvr). The outputs: ``click`` = pCTR, ``cvr`` = the factual pCVR (the paper's
    CVR prediction, scored by the ``cvr`` task), ``purchase`` = pCTR * pCVR (pCTCVR, the
    impression-level purchase probability); ``forward`` also returns ``counterfactual_cvr``
    (pCVR*), which no evaluation task reads.

    The weights are both re-implementations' (NISE's ``loss_ctr + (loss_cvr +
    loss_counterfactual_cvr + 1e-3 * loss_constraint) + loss_ctcvr``, EVI's ``DcmtLoss`` the
    same sum); each default and its source is on its line of ``properties/model/DCMT.yaml``.
    Readings and where the paper, the two re-implementations and this model differ:

    - Towers: the paper's towers are wide & deep (a linear part on wide features plus an MLP on
      the shared deep embedding, summed before the sigmoid); NISE's and EVI's are MLPs on the
      concatenated embeddings. Here they are the common MLP towers of every model of the
      comparison (``tower_hidden_size`` / ``tower_dropout``), so that only the objective
      differs from ESMM / ESCM2.
    - Training settings: the shared ones of every model here (embedding 5 drawn N(0, 0.01),
      Xavier-uniform linear weights with zero biases, towers [128, 64, 32] without BatchNorm and
      with dropout [0.1, 0.3, 0.3], Adam lr 1e-3 with weight decay 1e-6, batch 2000), not NISE's:
      its ``baselines/mlp_model.py`` (module settings and ``train``) trains DCMT with 16-dim
      embeddings drawn N(0, std 1e-4) (torch-rechub's ``SparseFeature`` default,
      ``basic/features.py``), PyTorch's default linear init, towers [160, 80] of Linear +
      BatchNorm + ReLU with no dropout (``basic/layers.py``, ``MLP``), Adam lr 1e-3 with weight
      decay 1e-5 and batch 2048. EVI's ``configs/model/dcmt_model.yaml`` (embedding 5, towers
      [128, 64, 32] with dropout, weight decay 1e-6) is close to the shared settings.
    - Early stopping: on the validation split's ``valid_metric`` (``purchase_auc``, the AUC of
      pCTCVR) with ``stopping_step`` patience, as every model here. NISE's ``MTLTrainer.fit``
      (``trainers/mtl_trainer.py``, with ``EarlyStopper`` of ``basic/callback.py``) stops after 3
      epochs (at most 10) in which the factual pCVR's AUC against the purchase label over all
      impressions did not rise, and keeps that best epoch; the script gives it the test split as
      its validation data.
    - Input: the common input (user field vectors, item field vectors, the **mean** of the
      context field vectors); NISE's (``models/multi_task/dcmt.py``, ``DCMT.forward``) and EVI's
      (``src/models/common.py``, ``AlldataEmbeddingLayer``) concatenate every field's vector,
      which ``context_pooling: concat`` gives.
    - Counterfactual target: the paper's label of the counterfactual space is ``1 - r`` (1 on
      the non-clicked impressions), as NISE's ``1 - ys[:, 0]``. EVI scores its counterfactual
      tower against ``r`` itself (0 there); not followed.
    - Reduction and weights: the paper's ``1/|D|`` sums, i.e. batch means of ``o e / o_hat`` and
      ``(1 - o) e* / (1 - o_hat)``, as NISE's weighted ``BCELoss``. EVI normalises the inverse
      propensities to sum to 1 over the batch and then takes the mean again, which divides each
      CVR term by the batch sum of its inverse propensities (about ``B * mean(1 / pCTR)`` for the
      factual term, about ``B`` for the counterfactual one); not followed.
    - Propensity clip: the paper states none; NISE clamps pCTR to
      ``[1e-15, 1 - 1e-15]``, EVI to ``[1e-3, 1 - 1e-3]`` (inverse weights at most 1000). EVI's
      clamp is the default (``dcmt_propensity_clip``), so that a saturated CTR head cannot give
      an infinite weight.
    - The propensities carry no gradient (NISE and EVI detach them), so the CVR objective does
      not train the CTR tower; it trains the shared embedding through the CVR towers.
    - BCE: PyTorch's exact BCE (log clamped at -100), as every model here; NISE clamps every
      probability to ``[1e-15, 1 - 1e-15]`` in the model, which changes nothing at float32
      precision away from saturation.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.cvr_weight = config["dcmt_cvr_weight"]
        self.ctcvr_weight = config["dcmt_ctcvr_weight"]
        self.constraint_weight = config["dcmt_constraint_weight"]
        self.propensity_clip = config["dcmt_propensity_clip"]

        self.embedding = self.make_embedding(dataset)
        self.click_tower = self.tower()
        self.cvr_tower = self.tower()
        self.counterfactual_tower = self.tower()
        output_size = self.click_tower.output_size
        self.click_head = ProbabilityHead(output_size)
        self.cvr_head = ProbabilityHead(output_size)
        self.counterfactual_head = ProbabilityHead(output_size)
        self.init_weights()

    def _factual(self, x):
        p_click = self.click_head(self.click_tower(x))
        p_cvr = self.cvr_head(self.cvr_tower(x))
        return {"click": p_click, "cvr": p_cvr, "purchase": p_click * p_cvr}

    def forward(self, interaction):
        x = self.embed_input(interaction, self.embedding)
        output = self._factual(x)
        output["counterfactual_cvr"] = self.counterfactual_head(self.counterfactual_tower(x))
        return output

    def predict_tasks(self, interaction):
        """pCTR, pCTCVR and the factual pCVR; the counterfactual tower, which no task scores, is
        not run."""
        return self._factual(self.embed_input(interaction, self.embedding))

    def calculate_loss(self, interaction):
        output = self.forward(interaction)
        click, purchase = self.labels(interaction)
        factual, counterfactual, constraint = dcmt_cvr_risk(
            output["click"],
            output["cvr"],
            output["counterfactual_cvr"],
            click,
            purchase,
            self.propensity_clip,
        )
        return (
            self.bce(output["click"], click),
            self.cvr_weight * factual,
            self.cvr_weight * counterfactual,
            self.cvr_weight * self.constraint_weight * constraint,
            self.ctcvr_weight * self.bce(output["purchase"], purchase),
        )
