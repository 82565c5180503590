r"""OMoE
################################################
Reference:
    Jiaqi Ma et al. "Modeling Task Relationships in Multi-task Learning with Multi-gate
    Mixture-of-Experts." in KDD 2018 (OMoE, the one-gate baseline of its experiments).
"""

from recbole_cstwa.model.multitask.mmoe import MMoE


class OMoE(MMoE):
    r"""Expert-Bottom sharing with a single softmax gate shared by both tasks.

    The MMoE model with one gate: every task's output layer (or tower) reads the same mixture of
    the ``num_experts`` MLP experts (as MTReclib's ``omoe.py``). Experts, output layers, their
    sizes and the losses (BCE of each head over all impressions) are MMoE's: experts the size of
    the common tower, each task's Linear + sigmoid on the mixture. With torch-rechub's small
    experts and an 8-unit ReLU task tower without dropout, OMoE's click tower died on some seeds
    (every ReLU silent, a constant click probability); the default has no ReLU between the
    mixture and the heads. The common input takes the **mean** of the context field vectors;
    MTReclib (``models/omoe.py``, ``OMoEModel.forward``) concatenates every field's vector, which
    ``context_pooling: concat`` gives.
    """

    num_gates = 1
