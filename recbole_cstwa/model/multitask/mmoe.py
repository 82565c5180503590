r"""MMoE
################################################
Reference:
    Jiaqi Ma et al. "Modeling Task Relationships in Multi-task Learning with Multi-gate
    Mixture-of-Experts." in KDD 2018.
"""

from recbole_cstwa.model.abstract_recommender import MultiTaskRecommender
from recbole_cstwa.model.layers import ExpertMixture, ProbabilityHead


class MMoE(MultiTaskRecommender):
    r"""Expert-Bottom sharing with one softmax gate per task (click, purchase).

    ``num_experts`` MLP experts read the shared embedding input; each task's gate mixes them and
    the task's output layer turns its mixture into a probability. Both heads are trained with
    BCE on their labels over all impressions.

    [reading] The CSTWA paper's expert sizes were lost from its text; the experts use the same
    MLP as every other model's towers ([128, 64, 32], dropout [0.1, 0.3, 0.3]) and
    ``num_experts = 8`` as in torch-rechub's and PaddleRec's Ali-CCP settings.
    """

    #: One gate per task; OMoE sets 1 (a single gate shared by the tasks).
    num_gates = 2

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding = self.make_embedding(dataset)
        self.experts = ExpertMixture(
            self.input_size(),
            config["num_experts"],
            self.num_gates,
            self.hidden_sizes,
            self.dropouts,
        )
        self.click_head = ProbabilityHead(self.experts.output_size)
        self.purchase_head = ProbabilityHead(self.experts.output_size)
        self.init_weights()

    def forward(self, interaction):
        mixtures = self.experts(self.embed_input(interaction, self.embedding))
        click_mixture, purchase_mixture = mixtures[0], mixtures[-1]
        return {
            "click": self.click_head(click_mixture),
            "purchase": self.purchase_head(purchase_mixture),
        }
