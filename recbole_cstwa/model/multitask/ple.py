r"""PLE
################################################
Reference:
    Hongyan Tang et al. "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL)
    Model for Personalized Recommendations." in RecSys 2020.
"""

import torch.nn as nn

from recbole_cstwa.model.abstract_recommender import MultiTaskRecommender
from recbole_cstwa.model.layers import ExtractionLayer, ProbabilityHead


class PLE(MultiTaskRecommender):
    r"""Expert-Bottom sharing with task-specific and shared experts, stacked in levels.

    Each of the ``ple_num_levels`` levels is an :class:`~recbole_cstwa.model.layers.ExtractionLayer`
    (a CGC layer): ``ple_specific_experts`` experts per task, ``ple_shared_experts`` shared ones,
    one gate per task over its own and the shared experts and, below the last level, a shared
    gate over all experts. Every expert is the common MLP ([128, 64, 32], dropout
    [0.1, 0.3, 0.3]); a higher level's experts read the level below's mixtures. Each task's
    output layer reads its last-level mixture; both heads are trained with BCE on their labels
    over all impressions.

    [reading] The CSTWA paper gives no PLE settings beyond "Expert-Bottom pattern". Defaults:

    - ``ple_num_levels = 1``: torch-rechub's Ali-CCP example uses one level; with experts that
      are the full common MLP, one level keeps PLE as deep as every other model's towers (a
      second level would stack another [128, 64, 32] MLP on the 32-d mixtures). MTReclib uses 2
      levels, but each of its levels is a single layer of its bottom MLP.
    - ``ple_shared_experts = ple_specific_experts = 4``: MTReclib's split of ``expert_num`` into
      ``expert_num / 2`` shared and ``expert_num / 2`` specific per task, applied to the
      ``num_experts = 8`` of our MMoE/OMoE (torch-rechub's and PaddleRec's MMoE setting).
      torch-rechub's Ali-CCP PLE uses 1 shared + 2 specific per task instead.
    """

    num_tasks = 2

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        num_levels = config["ple_num_levels"]
        num_shared = config["ple_shared_experts"]
        num_specific = config["ple_specific_experts"]

        self.embedding = self.make_embedding(dataset)
        levels = []
        input_size = self.input_size()
        for level in range(num_levels):
            layer = ExtractionLayer(
                input_size,
                self.num_tasks,
                num_shared,
                num_specific,
                self.hidden_sizes,
                self.dropouts,
                shared_output=level < num_levels - 1,
            )
            levels.append(layer)
            input_size = layer.output_size
        self.levels = nn.ModuleList(levels)
        self.click_head = ProbabilityHead(input_size)
        self.purchase_head = ProbabilityHead(input_size)
        self.init_weights()

    def forward(self, interaction):
        x = self.embed_input(interaction, self.embedding)
        inputs = [x] * (self.num_tasks + 1)  # each task's input, then the shared input
        for level in self.levels:
            inputs = level(inputs)
        click_mixture, purchase_mixture = inputs
        return {"click": self.click_head(click_mixture), "purchase": self.purchase_head(purchase_mixture)}
