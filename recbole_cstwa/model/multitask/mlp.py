r"""MLP
################################################
Reference:
    Kai Ouyang et al. "Click-aware Structure Transfer with Sample Weight Assignment for Post-Click
    Conversion Rate Estimation." in ECML-PKDD 2023 (the baseline "MLP" of its Tables 2 and 3).
"""

from recbole_cstwa.model.abstract_recommender import MultiTaskRecommender
from recbole_cstwa.model.layers import ProbabilityHead


class MLP(MultiTaskRecommender):
    r"""Two independent single-task models: click and purchase each have their own embedding
    layer, Click/Conversion Tower and output layer, trained with plain BCE over all impressions.

    This is the CSTWA paper's base structure: CSTWA with the Structure Migrator, Click Perceptron
    and Curse Escaper all switched off (CSTWA keeps a separate embedding layer per task, Eq. 6,
    so the base does too), and no calibration term.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.click_embedding = self.make_embedding(dataset)
        self.purchase_embedding = self.make_embedding(dataset)
        self.click_tower = self.tower()
        self.purchase_tower = self.tower()
        self.click_head = ProbabilityHead(self.click_tower.output_size)
        self.purchase_head = ProbabilityHead(self.purchase_tower.output_size)
        self.init_weights()

    def forward(self, interaction):
        click_input = self.embed_input(interaction, self.click_embedding)
        purchase_input = self.embed_input(interaction, self.purchase_embedding)
        return {
            "click": self.click_head(self.click_tower(click_input)),
            "purchase": self.purchase_head(self.purchase_tower(purchase_input)),
        }
