r"""MMoE
################################################
Reference:
    Jiaqi Ma et al. "Modeling Task Relationships in Multi-task Learning with Multi-gate
    Mixture-of-Experts." in KDD 2018.
"""

from recbole_cstwa.model.abstract_recommender import MultiTaskRecommender
from recbole_cstwa.model.layers import ExpertMixture, TaskTowers


class MMoE(MultiTaskRecommender):
    r"""Expert-Bottom sharing with one softmax gate per task (click, purchase).

    ``num_experts`` MLP experts read the shared embedding input; each task's gate mixes them, and
    the task's own output layer (Linear + sigmoid; after a task tower when
    ``task_tower_hidden_size`` is set) turns its mixture into a probability. Both heads are
    trained with BCE on their labels over all impressions.

    [reading] Sizes: the CSTWA paper, Section 4.1.4: "In the Expert-Bottom pattern, the dimensions
    of layers in the MLP-Expert are set to [..]. In the Probability-Transfer pattern, the
    dimensions of layers in the MLP-Tower [..] are set to [..]. That is, [..]" (numbers lost),
    and 4.1.3: every model uses "the same fundamental network structure and hyper-parameters in
    their Multi-Layer Perceptron". So each expert is the common tower (``expert_hidden_size``
    and ``expert_dropout`` empty: ``tower_hidden_size`` and ``tower_dropout``) and each task
    reads its mixture with its own Click / Conversion Layer (``task_tower_hidden_size: []``),
    as the paper's MLP and CSTWA read their towers. The paper gives no expert count
    (``num_experts``: ``properties/model/MMoE.yaml``).
    Difference: the MMoE paper (Fig. 1c) and torch-rechub / MTReclib / PaddleRec put a task
    tower after each gate; ``task_tower_hidden_size`` adds one. torch-rechub's Ali-CCP example
    (``examples/ranking/run_ali_ccp_multi_task.py``: experts [16], towers [8], no dropout) is
    ``--expert_hidden_size=[16] --expert_dropout=0 --task_tower_hidden_size=[8]
    --task_tower_dropout=0``; its MLP layers also carry BatchNorm, ours are the plain
    Linear-ReLU-Dropout layers every model here uses. The common input takes the **mean** of the
    context field vectors; torch-rechub (``models/multi_task/mmoe.py``, ``MMOE.forward``) and
    MTReclib concatenate every field's vector, which ``context_pooling: concat`` gives.
    """

    #: One gate per task; OMoE sets 1 (a single gate shared by the tasks).
    num_gates = 2
    num_tasks = 2

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding = self.make_embedding(dataset)
        self.experts = ExpertMixture(
            self.input_size(), config["num_experts"], self.num_gates, *self.expert_layers()
        )
        self.task_towers = TaskTowers(
            self.experts.output_size,
            self.num_tasks,
            config["task_tower_hidden_size"],
            config["task_tower_dropout"],
        )
        self.init_weights()

    def forward(self, interaction):
        mixtures = self.experts(self.embed_input(interaction, self.embedding))
        # OMoE's single mixture feeds both towers.
        p_click, p_purchase = self.task_towers([mixtures[0], mixtures[-1]])
        return {"click": p_click, "purchase": p_purchase}
