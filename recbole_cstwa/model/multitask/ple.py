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
    gate over all experts. Every expert is an MLP (:meth:`expert_layers`); a higher level's
    experts read the level below's mixtures. Each task's Linear + sigmoid output layer (after a
    task tower when ``task_tower_hidden_size`` is set) reads its last-level mixture; both heads
    are trained with BCE on their labels over all impressions.

    [reading] Expert sizes as MMoE's (the CSTWA paper, Section 4.1.4: the MLP-Experts are set like
    the MLP-Towers): each expert the common tower, each task's output layer on its mixture. The
    paper gives no expert counts; the defaults are torch-rechub's Ali-CCP example's
    (``examples/ranking/run_ali_ccp_multi_task.py``; ``properties/model/PLE.yaml``). Differences: the
    PLE paper (Fig. 5) and torch-rechub / MTReclib / PaddleRec put a task tower after the last
    level (``task_tower_hidden_size`` adds one; torch-rechub's sizes are
    ``--expert_hidden_size=[16] --expert_dropout=0 --task_tower_hidden_size=[8]
    --task_tower_dropout=0``); MTReclib uses 2 levels (one layer of its bottom MLP each) with
    ``expert_num / 2`` shared and specific experts; torch-rechub's MLP layers carry BatchNorm,
    ours are the plain Linear-ReLU-Dropout layers every model here uses. The common input takes
    the **mean** of the context field vectors; torch-rechub (``models/multi_task/ple.py``,
    ``PLE.forward``) and MTReclib concatenate every field's vector, which
    ``context_pooling: concat`` gives.
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
        expert_sizes, expert_dropouts = self.expert_layers()
        for level in range(num_levels):
            layer = ExtractionLayer(
                input_size,
                self.num_tasks,
                num_shared,
                num_specific,
                expert_sizes,
                expert_dropouts,
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
