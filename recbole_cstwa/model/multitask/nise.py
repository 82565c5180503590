r"""NISE
################################################
Reference:
    Jiahui Huang et al. "Utilizing Non-click Samples via Semi-supervised Learning for Conversion
    Rate Prediction." in RecSys 2024.

Reference code:
    The authors' ``Hjh233/NISE`` (a modified torch-rechub): the network is
    ``torch_rechub/models/multi_task/ucvrlc.py`` (``UCVRLC``), the loss is the ``UCVRLC`` branch of
    ``torch_rechub/trainers/mtl_trainer.py`` with ``--strategy adaptive_ucvrlc`` (lines 269-300),
    the defaults are those of ``baselines/mlp_model.py`` (``--weight 50``, ``--ablation_weight 1``).
"""

import torch
import torch.nn.functional as F

from recbole_cstwa.model.multitask.esmm import ESMM

#: The pseudo-label term reads the prediction clamped to [1e-7, 1 - 1e-7]: a pCVR that saturates
#: to exactly 0 or 1 in float32 would otherwise give ``0 * inf`` = NaN in the backward pass of
#: ``log`` and poison the CVR tower (the reference's ``BCELoss(p, p)`` has the same hazard). Away
#: from saturation the value and the gradient are the reference's; a saturated row adds at most
#: about 1.7e-6 and no gradient.
ENTROPY_CLAMP = 1e-7


def pseudo_label_losses(p_cvr, click, purchase):
    """NISE's two CVR terms over all impressions, each averaged over the whole batch.

    - clicked: ``(1/B) * sum_i o_i * BCE(p_i, r_i)``, the CVR loss on clicked impressions with their
      purchase labels ``r_i``;
    - non-clicked: ``(1/B) * sum_i (1 - o_i) * BCE(p_i, p_i)``: each non-clicked impression's own
      prediction is its pseudo-label. As in the reference code the pseudo-label is not detached,
      so the term is the binary entropy ``H(p) = -(p log p + (1 - p) log(1 - p))`` with its full
      gradient ``log((1 - p) / p)``: an entropy-minimisation regulariser that pushes each
      non-clicked pCVR away from 0.5, towards the side the model already leans to. (With the
      pseudo-label detached the gradient of ``BCE(p, sg(p))`` is 0 and the term would train
      nothing.)

    Both divide by the batch size ``B``, as torch's ``BCELoss(weight=...)`` with the mean
    reduction the code uses (not by the number of clicked or non-clicked rows).

    Args:
        p_cvr (Tensor): ``(B,)`` post-click conversion probabilities.
        click (Tensor): ``(B,)`` 0/1 click labels ``o_i``.
        purchase (Tensor): ``(B,)`` 0/1 purchase labels ``r_i``.

    Returns:
        tuple: ``(clicked, non_clicked)`` scalar losses.
    """
    clicked = F.binary_cross_entropy(p_cvr, purchase, weight=click)
    p = p_cvr.clamp(ENTROPY_CLAMP, 1 - ENTROPY_CLAMP)  # see ENTROPY_CLAMP
    entropy = -(p * torch.log(p) + (1 - p) * torch.log(1 - p))
    return clicked, ((1 - click) * entropy).mean()


def adaptive_cvr_weight(ctr_loss, cvr_loss, scale, cap):
    """NISE's per-batch CVR weight ``alpha * min(L_ctr / L_cvr, beta)``, without gradient.

    It keeps the CVR loss on the scale of the CTR loss (CVR losses are far smaller: conversions
    are rare), capped at ``beta``. The code reads both losses with ``.item()``; here they stay
    on the device (no synchronisation a step), with the same value. A CVR loss of exactly 0
    (every prediction saturated), where the code would divide by zero, takes the cap.
    """
    with torch.no_grad():
        ratio = ctr_loss / cvr_loss
        ratio = torch.where(cvr_loss > 0, ratio, torch.full_like(ratio, cap))
        return scale * ratio.clamp(max=cap)


class NISE(ESMM):
    r"""ESMM's network trained NISE's way: no CTCVR loss; the CVR tower learns over the entire
    space, from the purchase labels of clicked impressions and from its own predictions as
    pseudo-labels on the non-clicked ones; the CTR task is an auxiliary task sharing the
    embedding.

    Network (the code's ``UCVRLC``, the same as its ``ESMM``): one shared embedding layer, a CTR
    tower and a CVR tower, ``pCTCVR = pCTR * pCVR``. Built as this plugin's :class:`ESMM` (the
    CSTWA paper's common input and towers, as every model of the comparison).

    Loss (``adaptive_ucvrlc``), with ``o`` the click label, ``r`` the purchase label and
    :func:`pseudo_label_losses`::

        L_ctr = mean_i BCE(pCTR_i, o_i)
        L_cvr = L_clicked + L_non_clicked
        lambda = nise_weight_scale * min(L_ctr / L_cvr, nise_weight_cap)   (no gradient)
        L = L_ctr + lambda * L_cvr

    returned as the parts ``(L_ctr, lambda * L_clicked, lambda * L_non_clicked)``, with
    ``nise_weight_cap`` beta and ``nise_weight_scale`` alpha at the code's defaults
    (``properties/model/NISE.yaml``).

    Outputs: ``cvr`` is the CVR tower (a real pCVR head); ``purchase`` is ``pCTR * pCVR``, the
    impression-level purchase probability the ``purchase`` task scores (NISE trains no CTCVR
    loss, but its pCTCVR is the same product as ESMM's); ``click`` is pCTR.

    Readings and differences:

    - Only the paper's abstract was found (its full text was not): it says the CTCVR task is
      discarded, non-click samples are treated as unlabeled, their predicted conversion
      probabilities serve as pseudo-labels, and a CTR task is auxiliary; the loss above follows
      the code, which agrees with that description.
    - The pseudo-label keeps its gradient, as in the code (see :func:`pseudo_label_losses`).
    - The code clamps pCVR and pCTR to ``[1e-15, 1 - 1e-15]`` before the losses; in float32 the
      upper bound is 1 and the lower one binds only below 1e-15, where BCE's log clamp at -100
      already bounds the loss, so that clamp is not applied here. The pseudo-label term instead
      reads pCVR clamped to ``[1e-7, 1 - 1e-7]`` (:data:`ENTROPY_CLAMP`): a prediction saturated
      to 0 or 1 gives the code a NaN or infinite gradient; here it gives none.
    - Tower sizes, embedding, optimiser and batch are the comparison's shared settings (the code:
      16-dimensional embeddings concatenated, towers [160, 80] with BatchNorm and no dropout,
      Adam lr 1e-3 with weight decay 1e-5, batch 2048).
    - Initialisation: the shared one (Xavier-uniform linear weights with zero biases, embeddings
      N(0, 0.01)); the code draws its embeddings N(0, std 1e-4) (torch-rechub's
      ``SparseFeature`` default, ``basic/features.py``) and keeps PyTorch's default init for its
      linear layers (``basic/layers.py``, ``MLP``, sets none).
    - Early stopping: on the validation split's ``valid_metric`` (``purchase_auc``, the AUC of
      pCTCVR) with ``stopping_step`` patience, as every model here. The code
      (``baselines/mlp_model.py``, ``train``; ``trainers/mtl_trainer.py``, ``MTLTrainer.fit``;
      ``basic/callback.py``, ``EarlyStopper``) trains at most 10 epochs and stops after 3 in
      which the AUC of pCVR (the CVR tower) against the purchase label over all impressions did
      not rise, keeping the best epoch; it passes the test split as the validation data.
    - Input: the common input takes the **mean** of the context field vectors; the code
      (``models/multi_task/ucvrlc.py``, ``UCVRLC.forward``) concatenates every field's vector,
      which ``context_pooling: concat`` gives.
    - The paper applies NISE to other backbones too (the code: DeepFM, DCNv2, MMoE); only this
      shared two-tower backbone is built here.
    - Under DDP each process weighs its own shard of the batch (the code is single-process).
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.weight_scale = config["nise_weight_scale"]
        self.weight_cap = config["nise_weight_cap"]

    def calculate_loss(self, interaction):
        output = self.forward(interaction)
        click, purchase = self.labels(interaction)
        ctr_loss = self.bce(output["click"], click)
        clicked, non_clicked = pseudo_label_losses(output["cvr"], click, purchase)
        weight = adaptive_cvr_weight(ctr_loss, clicked + non_clicked, self.weight_scale, self.weight_cap)
        return ctr_loss, weight * clicked, weight * non_clicked
