r"""PLE
################################################
Reference:
    Hongyan Tang et al. "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL)
    Model for Personalized Recommendations." in RecSys 2020.
"""

import torch.nn as nn

from recbole_cstwa.model.abstract_recommender import MultiTaskRecommender
from recbole_cstwa.model.layers import ExtractionLayer, TaskTowers


class PLE(MultiTaskRecommender):
    r"""Expert-Bottom sharing with task-specific and shared experts, stacked in levels.

    Each of the ``ple_num_levels`` levels is an :class:`~recbole_cstwa.model.layers.ExtractionLayer`
    (a CGC layer): ``ple_specific_experts`` experts per task, ``ple_shared_experts`` shared ones,
    one gate per task over its own and the shared experts and, below the last level, a shared
    gate over all experts. Every expert is an MLP (``expert_hidden_size``); a higher level's
    experts read the level below's mixtures. Each task's tower (``task_tower_hidden_size``, then
    a Linear + sigmoid output layer) reads its last-level mixture, as the PLE paper (Fig. 5:
    "Tower A / Tower B") and torch-rechub / MTReclib / PaddleRec; both heads are trained with
    BCE on their labels over all impressions.

    [reading] The CSTWA paper gives no PLE settings beyond "Expert-Bottom pattern". Defaults are
    torch-rechub's Ali-CCP example (``examples/ranking/run_ali_ccp_multi_task.py``), the only
    reference with Ali-CCP settings: ``ple_num_levels`` 1, ``ple_specific_experts`` 2,
    ``ple_shared_experts`` 1, experts [16], towers [8], no dropout. MTReclib uses 2 levels
    (one layer of its bottom MLP each) with ``expert_num / 2`` shared and specific experts.
    Difference: torch-rechub's MLP layers carry BatchNorm; ours are the plain Linear-ReLU-Dropout
    layers every model here uses.
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
                config["expert_hidden_size"],
                config["expert_dropout"],
                shared_output=level < num_levels - 1,
            )
            levels.append(layer)
            input_size = layer.output_size
        self.levels = nn.ModuleList(levels)
        self.task_towers = TaskTowers(
            input_size, self.num_tasks, config["task_tower_hidden_size"], config["task_tower_dropout"]
        )
        self.init_weights()

    def forward(self, interaction):
        x = self.embed_input(interaction, self.embedding)
        inputs = [x] * (self.num_tasks + 1)  # each task's input, then the shared input
        for level in self.levels:
            inputs = level(inputs)
        p_click, p_purchase = self.task_towers(inputs)
        return {"click": p_click, "purchase": p_purchase}
