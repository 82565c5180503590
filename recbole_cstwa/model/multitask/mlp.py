r"""MLP
################################################
Reference:
    Kai Ouyang et al. "Click-aware Structure Transfer with Sample Weight Assignment for Post-Click
    Conversion Rate Estimation." in ECML-PKDD 2023 (the baseline "MLP" of its Tables 2 and 3).
"""

import torch.nn.functional as F

from recbole_cstwa.model.abstract_recommender import MultiTaskRecommender
from recbole_cstwa.model.layers import ProbabilityHead


class MLP(MultiTaskRecommender):
    r"""Two independent single-task models: click and purchase each have their own embedding
    layer, Click/Conversion Tower and output layer, trained with plain BCE.

    Two readings of the CSTWA paper's MLP baseline ("the base structure of our framework, which
    consists of the Click/Conversion Tower and Click/Conversion Layer"):

    - ``purchase_on_clicked: False`` (default, the entire-space MLP): both heads trained over all
      impressions. This is CSTWA with the Structure Migrator, Click Perceptron and Curse Escaper
      all switched off (CSTWA keeps a separate embedding layer per task, Eq. 6, so the base does
      too) and no calibration term: Table 3's base row.
    - ``purchase_on_clicked: True`` (the classic CVR model, [reading] the paper's Table 2 row: it
      explains its MLP's low purchase AUC with "if the CVR model is trained solely with samples
      of clicked impressions, many of the feature embeddings may not be trained sufficiently",
      Section 4.2 (a)): the purchase side's BCE is the mean over the batch's clicked impressions
      only (0, with no gradient, for a batch without clicks), so its head is a post-click pCVR.
      It is scored with the paper's protocol: that head against the purchase label over all
      impressions (``purchase``), and as its own ``cvr`` over the clicked ones.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.purchase_on_clicked = config["purchase_on_clicked"]
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
        output = {
            "click": self.click_head(self.click_tower(click_input)),
            "purchase": self.purchase_head(self.purchase_tower(purchase_input)),
        }
        if self.purchase_on_clicked:  # the purchase head is a post-click CVR head
            output["cvr"] = output["purchase"]
        return output

    def calculate_loss(self, interaction):
        if not self.purchase_on_clicked:
            return super().calculate_loss(interaction)
        output = self.forward(interaction)
        click, purchase = self.labels(interaction)
        per_row = F.binary_cross_entropy(output["purchase"], purchase, reduction="none")
        clicked_mean = (per_row * click).sum() / click.sum().clamp_min(1)
        return self.bce(output["click"], click), clicked_mean
