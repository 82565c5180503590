r"""ESMM
################################################
Reference:
    Xiao Ma et al. "Entire Space Multi-Task Model: An Effective Approach for Estimating Post-Click
    Conversion Rate." in SIGIR 2018.
"""

from recbole_cstwa.model.abstract_recommender import MultiTaskRecommender
from recbole_cstwa.model.layers import ProbabilityHead


class ESMM(MultiTaskRecommender):
    r"""Shared embedding layer, a CTR tower and a CVR tower; ``pCTCVR = pCTR * pCVR``.

    The losses are BCE(pCTR, click) and BCE(pCTCVR, purchase) over all impressions, so the
    post-click CVR tower is learned over the entire space without its own loss (as the paper and
    torch-rechub's ``sum(loss_list[1:])``). The purchase prediction scored against the purchase
    label is pCTCVR, the impression-level purchase probability; ``forward`` also returns ``cvr``.
    Towers follow the CSTWA paper's common settings (``tower_hidden_size``, ``tower_dropout``)
    instead of the ESMM paper's, so that every model of the comparison has the same MLP.
    Difference: the common input takes the **mean** of the context field vectors; torch-rechub's
    ESMM (``models/multi_task/esmm.py``, ``ESMM.forward``) concatenates every field's vector (its
    Ali-CCP example counts the context fields among the user features), which
    ``context_pooling: concat`` gives.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding = self.make_embedding(dataset)
        self.click_tower = self.tower()
        self.cvr_tower = self.tower()
        self.click_head = ProbabilityHead(self.click_tower.output_size)
        self.cvr_head = ProbabilityHead(self.cvr_tower.output_size)
        self.init_weights()

    def forward(self, interaction):
        x = self.embed_input(interaction, self.embedding)
        p_click = self.click_head(self.click_tower(x))
        p_cvr = self.cvr_head(self.cvr_tower(x))
        return {"click": p_click, "cvr": p_cvr, "purchase": p_click * p_cvr}
