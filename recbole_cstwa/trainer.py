"""Trainers: a multi-task trainer for the plugin's models and a single-task one for RecBole's.

Both evaluate the RecBole way (RecBole's metrics, early stopping on ``valid_metric``, best
checkpoint reloaded for the test set), report task-prefixed metrics (``click_auc``, ...) and save
checkpoints that load with ``weights_only=True`` (see :mod:`recbole_cstwa.compat`).
"""

from time import time

import torch
from recbole.trainer import Trainer
from recbole.utils import set_color
from tqdm import tqdm

from recbole_cstwa.compat import SafeCheckpointMixin
from recbole_cstwa.evaluator import TaskEvaluator


class TaskTrainer(SafeCheckpointMixin, Trainer):
    """RecBole's ``Trainer`` with task-prefixed evaluation and safe checkpoints."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.task_evaluator = TaskEvaluator(config, config["eval_tasks"])

    def predict_tasks(self, interaction):
        """Scores of one batch: task name -> ``(B,)`` probabilities."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return None
        if load_best_model:
            self.load_best_model(model_file)
        self.model.eval()
        batches = (
            tqdm(eval_data, total=len(eval_data), ncols=100, desc=set_color("Evaluate   ", "pink"))
            if show_progress
            else eval_data
        )
        for batched_data in batches:
            interaction = batched_data[0].to(self.device)
            self.task_evaluator.collect(interaction, self.predict_tasks(interaction))
        result = self.task_evaluator.evaluate()
        self.wandblogger.log_eval_metrics(result, head="eval")
        return result


class SingleTaskTrainer(TaskTrainer):
    """For RecBole's built-in (single-label) models: trains on ``LABEL_FIELD`` and scores
    ``model.predict`` as that label's task (``click_*`` or ``purchase_*``)."""

    def predict_tasks(self, interaction):
        task = next(iter(self.config["eval_tasks"]))
        return {task: self.model.predict(interaction)}


class MultiTaskTrainer(TaskTrainer):
    """For the plugin's two-task models: both heads scored, per-task losses logged.

    Stages that must run before training (CSTWA's pre-training and graph building) are given by
    :meth:`pre_training_stages`; each is run once at the start of :meth:`fit` and its wall time
    is logged. ``model.on_epoch_start(epoch)`` is called before every training epoch.
    """

    def pre_training_stages(self):
        """``[(name, callable(train_data, valid_data, show_progress))]``, run in order."""
        return []

    def predict_tasks(self, interaction):
        click, purchase = self.model.predict_tasks(interaction)
        return {"click": click, "purchase": purchase}

    def fit(
        self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None
    ):
        self.stage_times = {}
        for name, stage in self.pre_training_stages():
            start = time()
            if verbose:
                self.logger.info(set_color(f"stage [{name}] starts", "green"))
            stage(train_data, valid_data, show_progress)
            self.stage_times[name] = time() - start
            if verbose:
                self.logger.info(
                    set_color(f"stage [{name}] done", "green") + f" in {self.stage_times[name]:.2f}s"
                )
        start = time()
        result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        self.stage_times["train"] = time() - start
        return result

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.on_epoch_start(epoch_idx)
        return super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
