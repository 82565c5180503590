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
    the task's own tower (an MLP and a Linear + sigmoid output layer) turns its mixture into a
    probability, as in the MMoE paper (Fig. 1c: "Tower A / Tower B" on the gated mixtures) and
    torch-rechub / MTReclib / PaddleRec. Both heads are trained with BCE on their labels over all
    impressions.

    [reading] The CSTWA paper's expert sizes were lost from its text. Sizes follow torch-rechub's
    Ali-CCP example (``examples/ranking/run_ali_ccp_multi_task.py``), the only reference with
    Ali-CCP settings, which PaddleRec's ESCM2 MMoE backbone shares: ``num_experts`` 8,
    ``expert_hidden_size`` [16], ``task_tower_hidden_size`` [8], no dropout (torch-rechub's MLP
    default). Difference: torch-rechub's MLP layers carry BatchNorm; ours are the plain
    Linear-ReLU-Dropout layers every model here uses.
    """

    #: One gate per task; OMoE sets 1 (a single gate shared by the tasks).
    num_gates = 2
    num_tasks = 2

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding = self.make_embedding(dataset)
        self.experts = ExpertMixture(
            self.input_size(),
            config["num_experts"],
            self.num_gates,
            config["expert_hidden_size"],
            config["expert_dropout"],
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
