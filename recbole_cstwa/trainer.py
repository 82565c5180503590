"""Trainers: a multi-task trainer for the plugin's models and a single-task one for RecBole's.

Both evaluate the RecBole way (RecBole's metrics, early stopping on ``valid_metric``, best
checkpoint reloaded for the test set), report task-prefixed metrics (``click_auc``, ...) and save
checkpoints that load with ``weights_only=True`` (see :mod:`recbole_cstwa.checkpoint`). A
model's own trainer lives in its package, next to it, and subclasses these (CSTWA's:
:mod:`recbole_cstwa.model.multitask.cstwa.trainer`); this module imports no model.
"""

import os
import uuid
from time import time

import torch
from recbole.trainer import Trainer
from recbole.utils import get_gpu_usage, set_color
from tqdm import tqdm

from recbole_cstwa import distributed
from recbole_cstwa.checkpoint import SafeCheckpointMixin
from recbole_cstwa.errors import ConfigError
from recbole_cstwa.evaluator import TaskEvaluator
from recbole_cstwa.optim import (
    ROW_WISE_LEARNERS,
    LazyRowAdam,
    SplitOptimizer,
    clip_gradients,
    mark_tables_sparse,
    sparse_row_parameters,
    sparse_updates,
)
from recbole_cstwa.tasks import trained_label


class TaskTrainer(SafeCheckpointMixin, Trainer, distributed.DistributedTrainerMixin):
    """RecBole's ``Trainer`` with task-prefixed evaluation and safe checkpoints.

    Under DDP (see :mod:`recbole_cstwa.distributed`) the evaluation gathers every rank's scores
    and labels before the metrics, so they are the single-process metrics of the same parameters.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        # RecBole names checkpoints <model>-<time to the second>: runs started in the same second
        # would share a file, so the name also carries the process id and a random suffix.
        root, extension = os.path.splitext(self.saved_model_file)
        self.saved_model_file = f"{root}-{os.getpid()}-{uuid.uuid4().hex[:6]}{extension}"
        gather = None
        if distributed.is_distributed(config):
            gather = lambda struct: distributed.gather_data_struct(struct, self.device)  # noqa: E731
        self.task_evaluator = TaskEvaluator(config, config["eval_tasks"], gather=gather)
        self.epoch_seconds = []  # training time of each epoch (validation not included)
        _, why_not = sparse_updates(config)
        if why_not:  # embedding_update: sparse asked for, but it cannot apply
            self.logger.warning(
                f"embedding_update: sparse gives way to dense updates with {why_not}: every "
                "embedding row is updated every step (embedding_update: dense)."
            )

    def predict_tasks(self, interaction):
        """Model outputs of one batch: ``click`` / ``purchase`` (/ ``cvr``) -> ``(B,)``
        probabilities; :class:`~recbole_cstwa.evaluator.TaskEvaluator` maps them to the tasks."""
        raise NotImplementedError

    def fit(
        self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None
    ):
        # The training split's rows of each user and item: the evaluation's cold-start slice.
        self.task_evaluator.count_training_rows(train_data._dataset)
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        start = time()
        loss = self._run_epoch(train_data, epoch_idx, loss_func, show_progress)
        self.epoch_seconds.append(time() - start)
        return loss

    def _run_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        """RecBole's training epoch, with less work a step.

        The same steps (``zero_grad``, loss, ``backward``, the configured gradient clipping,
        ``step``) as RecBole's ``Trainer._train_epoch``, which is still used for distributed
        training and mixed precision. Differences, none of which changes the parameters: the
        losses are summed on the device and read once at the end of the epoch (RecBole reads
        every part of every step with ``.item()``), so the NaN check (RecBole's ``_check_nan``)
        runs once on the epoch's sums and a NaN loss stops training at the end of the epoch
        that produced it; the GPU memory text is formatted only when the progress bar shows.
        Returns what RecBole's returns: the sum of the loss (a tuple: of each part) over the
        epoch's steps.
        """
        if not self.config["single_spec"] or self.enable_amp or self.enable_scaler:
            return super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        self.model.train()
        loss_func = loss_func or self.model.calculate_loss
        iterator = (
            tqdm(
                train_data, total=len(train_data), ncols=100, desc=set_color(f"Train {epoch_idx:>5}", "pink")
            )
            if show_progress
            else train_data
        )
        totals, is_tuple = None, False
        for interaction in iterator:
            interaction = interaction.to(self.device)
            self.optimizer.zero_grad()
            losses = loss_func(interaction)
            is_tuple = isinstance(losses, tuple)
            parts = losses if is_tuple else (losses,)
            loss = sum(parts)
            step_losses = torch.stack([part.detach() for part in parts]).double()
            totals = step_losses if totals is None else totals + step_losses
            loss.backward()
            if self.clip_grad_norm:
                clip_gradients(self.model.parameters(), **self.clip_grad_norm)
            self.optimizer.step()
            if self.gpu_available and show_progress:
                iterator.set_postfix_str(set_color("GPU RAM: " + get_gpu_usage(self.device), "yellow"))
        if totals is None:
            return None
        self._check_nan(totals.sum())
        values = totals.tolist()
        return tuple(values) if is_tuple else values[0]

    def _build_optimizer(self, **kwargs):
        """RecBole's optimizer, except for sparse embedding tables (``embedding_update:
        sparse``): those get :class:`LazyRowAdam` (with the configured learning rate and each
        table's L2 weight, on touched rows only), the other parameters the configured learner,
        both stepped as one :class:`SplitOptimizer`. ``module`` (default: the model) is the
        module whose tables are looked for among ``params``."""
        params = list(kwargs.pop("params", self.model.parameters()))
        module = kwargs.pop("module", self.model)
        row_decays = {id(weight): decay for weight, decay in sparse_row_parameters(module).items()}
        tables = [p for p in params if id(p) in row_decays]
        if not tables:
            return super()._build_optimizer(params=params, **kwargs)
        learner = kwargs.get("learner", self.learner).lower()
        if learner not in ROW_WISE_LEARNERS:
            # The config's learner was checked (optim.sparse_updates); this guards a learner
            # passed here, or tables made sparse by hand.
            raise ConfigError(
                f"embedding_update: sparse updates the embedding tables with a row-wise Adam, which "
                f"needs learner {' or '.join(ROW_WISE_LEARNERS)}, got {learner!r}. Set "
                "embedding_update: dense or learner: adam."
            )
        learning_rate = kwargs.get("learning_rate", self.learning_rate)
        weight_decay = kwargs.get("weight_decay", self.weight_decay)
        groups = [
            {"params": [p], "weight_decay": weight_decay if row_decays[id(p)] is None else row_decays[id(p)]}
            for p in tables
        ]
        optimizers = []
        dense = [p for p in params if id(p) not in row_decays]
        if dense:
            optimizers.append(super()._build_optimizer(params=dense, **kwargs))
        optimizers.append(LazyRowAdam(groups, lr=learning_rate, decoupled=ROW_WISE_LEARNERS[learner]))
        return SplitOptimizer(optimizers)

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
        ddp = distributed.is_distributed(self.config)
        if ddp:  # every rank scores with rank 0's model; padded repeats are not scored
            distributed.broadcast_persistent_buffers(self.model)
            rows_left = distributed.unpadded_count(eval_data)
        scored = 0
        for batched_data in batches:
            interaction = batched_data[0]
            if ddp:
                interaction = interaction[: max(0, min(len(interaction), rows_left - scored))]
            interaction = interaction.to(self.device)
            scored += len(interaction)
            if len(interaction):
                self.task_evaluator.collect(interaction, self.predict_tasks(interaction))
        if ddp:
            self.eval_rows = int(distributed.all_sum(scored, self.device))
            if self.eval_rows != len(eval_data.sampler.dataset):
                raise RuntimeError(
                    f"DDP evaluation scored {self.eval_rows} rows of {len(eval_data.sampler.dataset)}."
                )
        result = self.task_evaluator.evaluate()
        self.wandblogger.log_eval_metrics(result, head="eval")
        return result

    def load_best_model(self, model_file=None):
        if not distributed.is_distributed(self.config):
            return super().load_best_model(model_file)
        # Only rank 0 wrote the file: it reads it and sends the parameters to the other ranks.
        if distributed.is_rank_zero():
            super().load_best_model(model_file)
        distributed.broadcast_state(self.model)


class SingleTaskTrainer(TaskTrainer):
    """For RecBole's built-in (single-label) models: trains on ``LABEL_FIELD`` and scores
    ``model.predict`` as that label's output: ``click_*``, or ``purchase_*`` (with ``cvr_*`` on
    the clicked rows and ``ctcvr_*`` when listed in ``eval_tasks``).

    ``embedding_update: sparse`` (the default) applies to them as to the plugin's models: their
    ``nn.Embedding`` tables give sparse gradients and :class:`LazyRowAdam` updates the rows a
    batch used (:func:`~recbole_cstwa.optim.mark_tables_sparse`), so a side-by-side
    trains every model with the same update rule. A table the model's loss reads whole (a
    regulariser over its weights, as xDeepFM's) gets a dense gradient: all its rows are then
    updated every step, as under ``embedding_update: dense`` (logged once). ``dense`` is RecBole's
    own optimizer, and so is every run where sparse updates give way
    (:func:`~recbole_cstwa.optim.sparse_updates`)."""

    def __init__(self, config, model):
        if sparse_updates(config)[0]:
            mark_tables_sparse(model)
        super().__init__(config, model)

    def predict_tasks(self, interaction):
        return {trained_label(self.config): self.model.predict(interaction)}


class MultiTaskTrainer(TaskTrainer):
    """For the plugin's two-task models: both heads scored, per-task losses logged.

    Stages that must run before training (CSTWA's pre-training and graph building) are given by
    :meth:`pre_training_stages`; each is run once at the start of :meth:`fit` and its wall time
    is logged.
    """

    def pre_training_stages(self):
        """``[(name, callable(train_data, valid_data, show_progress))]``, run in order."""
        return []

    def predict_tasks(self, interaction):
        return self.model.predict_tasks(interaction)

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
