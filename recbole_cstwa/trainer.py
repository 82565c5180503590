"""Trainers: a multi-task trainer for the plugin's models and a single-task one for RecBole's.

Both evaluate the RecBole way (RecBole's metrics, early stopping on ``valid_metric``, best
checkpoint reloaded for the test set), report task-prefixed metrics (``click_auc``, ...) and save
checkpoints that load with ``weights_only=True`` (see :mod:`recbole_cstwa.checkpoint`).
"""

import os
import random
import uuid
from contextlib import contextmanager
from time import time

import numpy as np
import torch
from recbole.trainer import Trainer
from recbole.utils import get_gpu_usage, set_color
from tqdm import tqdm

from recbole_cstwa import distributed
from recbole_cstwa.artifact_cache import ArtifactCache, dataset_fingerprint
from recbole_cstwa.checkpoint import SafeCheckpointMixin
from recbole_cstwa.config import ConfigError
from recbole_cstwa.evaluator import TaskEvaluator
from recbole_cstwa.model.layers import mark_tables_sparse, sparse_row_parameters
from recbole_cstwa.model.multitask.cstwa import ClickPretrainModel
from recbole_cstwa.model.structure import (
    build_graph,
    graph_from_state,
    graph_summary,
    graph_to_state,
    group_representations,
)
from recbole_cstwa.optim import ROW_WISE_LEARNERS, LazyRowAdam, SplitOptimizer, clip_gradients, sparse_updates


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
            tqdm(train_data, total=len(train_data), ncols=100, desc=set_color(f"Train {epoch_idx:>5}", "pink"))
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
            raise ConfigError(
                f"embedding_update: sparse updates the embedding tables with a row-wise Adam, which "
                f"needs learner adam or adamw, got {learner!r}. Set embedding_update: dense or "
                "learner: adam."
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
        optimizers.append(
            LazyRowAdam(groups, lr=learning_rate, decoupled=ROW_WISE_LEARNERS[learner])
        )
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
    batch used (:func:`~recbole_cstwa.model.layers.mark_tables_sparse`), so a side-by-side
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
        trained = "click" if self.config["LABEL_FIELD"] == self.config["CLICK_FIELD"] else "purchase"
        return {trained: self.model.predict(interaction)}


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

class CSTWATrainer(MultiTaskTrainer):
    """CSTWA's three stages: pre-train a CTR MLP, mine the user / item graphs, train CSTWA.

    - ``pretrain`` (Section 3.3.1): a plain CTR model (its own embedding layer -> the Eq. 7
      input, as CSTWA's CTR side -> Click Tower -> Click Layer; ``ClickPretrainModel``) trained
      with BCE on the click label over every training impression, for
      ``pretrain_epochs`` epochs at ``pretrain_learning_rate`` (the configured ``learner``,
      ``weight_decay`` and ``train_batch_size``); only its embedding is kept. It runs under its
      own random state (seeded with ``seed``) and restores the global and data-loader states
      afterwards, so the main training is the same whether this stage ran or was read from cache.
      Each epoch logs its mean loss, its time and (given validation data) the click AUC.
    - ``graphs`` (Sections 3.3.2-3.3.3): the user and item graphs (Eqs. 2-5) from the
      pre-trained embedding, given to the model with ``set_graphs``.

    - ``train``: CSTWA itself. With ``sm_mode: epoch`` this trainer schedules the Structure
      Migrator's ``P = A_hat^L E`` (:meth:`CSTWA.update_structure
      <recbole_cstwa.model.multitask.cstwa.CSTWA.update_structure>`, the way RecBole's trainer
      calls KGAT's ``update_attentive_A``): with ``sm_refresh_steps: 0`` at the start of every
      epoch except the first, otherwise before every ``sm_refresh_steps``-th training step
      (counted over the whole run). Never before the first step: no step trains on a ``P`` of
      the randomly initialised embedding; until the first refresh the CVR input is the live
      rows. Evaluation uses the ``P`` the last training step used (it is saved with the model).

    Both artifacts are cached under ``checkpoint_dir`` (``cstwa_cache: False`` disables it),
    keyed by a content fingerprint of the training data and user / item features and by the
    settings they depend on; a change of a graph setting alone (say ``graph_top_k``) reuses the
    pre-trained embedding and rebuilds the graphs. A cache file that does not fit the model or the
    data (other shapes) is rebuilt, and a failed cache write is a warning: the run goes on. With
    ``use_sm: False`` neither stage runs.
    """

    PRETRAIN_SETTINGS = (
        "embedding_update",
        "embedding_size",
        "embedding_init_std",
        "context_pooling",
        "tower_hidden_size",
        "tower_dropout",
        "learner",
        "weight_decay",
        "train_batch_size",
        "pretrain_epochs",
        "pretrain_learning_rate",
        "seed",
    )
    GRAPH_SETTINGS = ("graph_top_k", "graph_self_loop", "graph_symmetric", "graph_index")
    INDEX_SETTINGS = {
        "auto": ("graph_exact_max_nodes", "graph_ivf_nlist", "graph_nprobe", "graph_hnsw_m", "graph_hnsw_ef_search"),
        "ivf": ("graph_ivf_nlist", "graph_nprobe"),
        "hnsw": ("graph_hnsw_m", "graph_hnsw_ef_search"),
    }
    #: Bump when the cached artifacts' meaning changes.
    CACHE_FORMAT = 1

    def __init__(self, config, model):
        super().__init__(config, model)
        self.pretrained_embedding = None
        self.graphs = None  # under DDP, rank 0's {"user", "item"} graphs until they are sent
        self.cache_events = []  # ("pretrain" / "graphs", "loaded" / "computed", path): for tests and logs
        self._data_fingerprint = None
        self.training_steps = 0  # steps taken in this run: the Structure Migrator's clock
        self.structure_updates = []  # training steps before which P was refreshed (logs, tests)

    # ----- the Structure Migrator's schedule --------------------------------------------------
    def _schedules_structure(self):
        return self.model.use_sm and self.model.sm_mode == "epoch"

    def _update_structure(self):
        self.model.update_structure()
        self.structure_updates.append(self.training_steps)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if not self._schedules_structure():
            return super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        every = self.model.sm_refresh_steps
        if every == 0 and self.training_steps > 0:
            self._update_structure()  # epoch start, from the second epoch on
        step_loss = loss_func or self.model.calculate_loss

        def scheduled_loss(interaction):
            if every and self.training_steps > 0 and self.training_steps % every == 0:
                self._update_structure()
            self.training_steps += 1
            return step_loss(interaction)

        return super()._train_epoch(train_data, epoch_idx, scheduled_loss, show_progress)

    def pre_training_stages(self):
        if not self.model.use_sm:
            self.logger.info(
                "use_sm is False: the Structure Migrator is off, so the CTR pre-training and the "
                "graph building are skipped."
            )
            return []
        stages = [("pretrain", self._pretrain_stage), ("graphs", self._graph_stage)]
        if distributed.is_distributed(self.config):
            return self._distributed_stages(stages)
        return stages

    # ----- cache keys ----------------------------------------------------------------------
    def _cache(self):
        return ArtifactCache(self.config["checkpoint_dir"], f"CSTWA-{self.config['dataset']}")

    def _pretrain_settings(self, dataset):
        if self._data_fingerprint is None:
            self._data_fingerprint = dataset_fingerprint(dataset)
        groups = self.model.field_groups
        settings = {key: self.config[key] for key in self.PRETRAIN_SETTINGS}
        settings.update(
            cache_format=self.CACHE_FORMAT,
            dataset=self.config["dataset"],
            data_fingerprint=self._data_fingerprint,
            fields={group: [field for field, _ in fields] for group, fields in groups.items()},
            field_sizes={field: dataset.num(field) for fields in groups.values() for field, _ in fields},
        )
        return settings

    def _graph_settings(self, dataset):
        settings = self._pretrain_settings(dataset)
        keys = self.GRAPH_SETTINGS + self.INDEX_SETTINGS.get(self.config["graph_index"], ())
        settings.update({key: self.config[key] for key in keys})
        return settings

    # ----- stage 1: pre-training -------------------------------------------------------------
    def _pretrain_stage(self, train_data, valid_data, show_progress):
        dataset = train_data._dataset
        settings = self._pretrain_settings(dataset)
        with isolated_random_state(self.config["seed"], train_data):
            model = ClickPretrainModel(self.model, dataset).to(self.device)
            if self.config["cstwa_cache"]:
                cached, path, reason = self._cache().load("pretrain", settings)
                mismatch = cached is not None and _state_mismatch(cached.get("embedding"), model.embedding)
                if mismatch:
                    cached, reason = None, f"cached file [{path}] does not fit this model ({mismatch})"
                if cached is not None:
                    model.embedding.load_state_dict(cached["embedding"])
                    self.pretrained_embedding = model.embedding.eval()
                    self.cache_events.append(("pretrain", "loaded", path))
                    self.logger.info(f"loaded cached pre-trained CTR embedding from {path}")
                    return
                self.logger.info(f"pre-training the CTR model: {reason}")
            self._pretrain(model, train_data, valid_data, show_progress)
        self.pretrained_embedding = model.embedding.eval()
        path = None
        if self.config["cstwa_cache"]:
            state = {name: tensor.detach().cpu() for name, tensor in model.embedding.state_dict().items()}
            path = self._save_to_cache("pretrain", settings, {"embedding": state}, "the pre-trained CTR embedding")
        self.cache_events.append(("pretrain", "computed", path))

    def _save_to_cache(self, kind, settings, state, what):
        """Writes a cache file; a failed write is a warning (the run goes on without the cache)."""
        try:
            path = self._cache().save(kind, settings, state)
        except (OSError, RuntimeError) as error:
            reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
            self.logger.warning(
                f"could not cache {what} under checkpoint_dir [{self.config['checkpoint_dir']}] "
                f"({reason}): going on without the cache (cstwa_cache: False hides this warning)."
            )
            return None
        self.logger.info(f"saved {what} to {path}")
        return path

    def _pretrain(self, model, train_data, valid_data, show_progress):
        epochs = self.config["pretrain_epochs"]
        optimizer = self._build_optimizer(
            params=model.parameters(), module=model, learning_rate=self.config["pretrain_learning_rate"]
        )
        click_field = self.config["CLICK_FIELD"]
        for epoch in range(epochs):
            start, total, batches = time(), 0.0, 0
            model.train()
            iterator = (
                tqdm(
                    train_data,
                    total=len(train_data),
                    ncols=100,
                    desc=set_color(f"Pretrain {epoch:>3}", "pink"),
                )
                if show_progress
                else train_data
            )
            for interaction in iterator:
                interaction = interaction.to(self.device)
                optimizer.zero_grad()
                loss = self.model.bce(model(interaction), interaction[click_field].float())
                self._check_nan(loss)
                loss.backward()
                optimizer.step()
                total, batches = total + loss.item(), batches + 1
            message = (
                f"pretrain epoch {epoch} [{time() - start:.2f}s]: click BCE {total / max(batches, 1):.4f}"
            )
            if valid_data:
                message += f", valid click AUC {self._click_auc(model, valid_data):.4f}"
            self.logger.info(set_color(message, "blue"))

    @torch.no_grad()
    def _click_auc(self, model, data):
        """Click AUC of the pre-trained CTR model (progress only), with RecBole's AUC as every
        evaluation here; NaN when the data holds one class only."""
        model.eval()
        evaluator = TaskEvaluator(self.config, {"click": self.config["CLICK_FIELD"]}, metrics=["AUC"])
        for batch in data:
            interaction = batch[0].to(self.device)
            evaluator.collect(interaction, {"click": model(interaction)})
        return evaluator.evaluate()["click_auc"]

    # ----- stage 2: graphs -------------------------------------------------------------------
    def _graph_stage(self, train_data, valid_data, show_progress):
        dataset = train_data._dataset
        settings = self._graph_settings(dataset)
        graphs = None
        if self.config["cstwa_cache"]:
            cached, path, reason = self._cache().load("graphs", settings)
            if cached is not None:
                graphs, mismatch = self._cached_graphs(cached)
                if mismatch:
                    reason = f"cached file [{path}] does not fit this dataset ({mismatch})"
            if graphs is not None:
                self.cache_events.append(("graphs", "loaded", path))
                self.logger.info(f"loaded cached user and item graphs from {path}")
            else:
                self.logger.info(f"building the user and item graphs: {reason}")
        if graphs is None:
            if self.pretrained_embedding is None:
                raise RuntimeError("the graphs stage needs the pretrain stage's embedding first.")
            self._note_small_groups()
            graphs = {}
            for group in ("user", "item"):
                start = time()
                with torch.no_grad():
                    representations = group_representations(
                        self.pretrained_embedding, self.model.entity_features(group), group
                    )
                graphs[group] = build_graph(
                    representations,
                    self.config["graph_top_k"],
                    self_loop=self.config["graph_self_loop"],
                    symmetric=self.config["graph_symmetric"],
                    index_type=self.config["graph_index"],
                    ivf_nlist=self.config["graph_ivf_nlist"],
                    nprobe=self.config["graph_nprobe"],
                    hnsw_m=self.config["graph_hnsw_m"],
                    hnsw_ef_search=self.config["graph_hnsw_ef_search"],
                    exact_max_nodes=self.config["graph_exact_max_nodes"],
                    gpu=self.device.type == "cuda",
                    log_name=f"{group} graph",
                )
                self.logger.info(f"{group} graph built in {time() - start:.2f}s")
            path = None
            if self.config["cstwa_cache"]:
                state = {group: graph_to_state(graph) for group, graph in graphs.items()}
                path = self._save_to_cache("graphs", settings, state, "the user and item graphs")
            self.cache_events.append(("graphs", "computed", path))
        for group, graph in graphs.items():
            self.logger.info(f"{group} graph: {graph_summary(graph)}")
        if distributed.is_distributed(self.config):
            self.graphs = graphs  # for _share_graphs_stage
        self.model.set_graphs(graphs["user"], graphs["item"])

    def _cached_graphs(self, cached):
        """``(graphs, None)`` from a cache file, or ``(None, why)`` when they do not fit the data."""
        graphs = {}
        for group in ("user", "item"):
            size = self.model.structure[group].num_entities
            try:
                graphs[group] = graph_from_state(cached[group])
            except (KeyError, TypeError, ValueError, RuntimeError) as error:
                return None, f"{group} graph unreadable: {type(error).__name__}"
            if tuple(graphs[group].shape) != (size, size):
                return None, f"{group} graph is {tuple(graphs[group].shape)}, the data has {size} {group} rows"
        return graphs, None

    def _note_small_groups(self):
        """Says once when graph_top_k is above the nodes a group has: its rows keep every node."""
        top_k = self.config["graph_top_k"]
        small = []
        for group in ("user", "item"):
            nodes = self.model.structure[group].num_entities - 1  # without RecBole's [PAD] row
            reachable = nodes if self.config["graph_self_loop"] else nodes - 1
            if top_k > reachable:
                small.append(f"{nodes} {group}s (K = {max(reachable, 0)})")
        if small:
            self.logger.warning(
                f"graph_top_k={top_k} is above the nodes of the graph: {' and '.join(small)}; "
                "each row keeps all of them."
            )

    # ----- under DDP (recbole_cstwa.distributed) -----------------------------------------------
    def _distributed_stages(self, stages):
        """The stages run once, on rank 0, over the whole training data (not its shard), with the
        same loader, seed and cache as a single process, so the embedding and graphs are those a
        single-process run gets; then every rank receives rank 0's graphs (no shared folder
        needed) and sets them, so all ranks train on the same graphs."""

        def on_rank_zero(stage):
            def run(train_data, valid_data, show_progress):
                if distributed.is_rank_zero():
                    valid_data = distributed.unsharded(valid_data) if valid_data else valid_data
                    stage(distributed.unsharded(train_data), valid_data, show_progress)

            return run

        return [(name, on_rank_zero(stage)) for name, stage in stages] + [
            ("share graphs", self._share_graphs_stage)
        ]

    def _share_graphs_stage(self, train_data, valid_data, show_progress):
        received = {}
        for group in ("user", "item"):
            state = graph_to_state(self.graphs[group]) if distributed.is_rank_zero() else None
            parts = {
                key: distributed.broadcast_tensor(state and torch.as_tensor(state[key]), dtype, self.device)
                for key, dtype in (("indices", torch.long), ("values", torch.float32), ("size", torch.long))
            }
            received[group] = graph_from_state({key: value.cpu() for key, value in parts.items()})
        if not distributed.is_rank_zero():
            self.model.set_graphs(received["user"], received["item"])
            self.cache_events.append(("graphs", "received", None))
        self.graphs = None  # the model holds them now


def _state_mismatch(state, module):
    """Why a cached ``state_dict`` cannot be loaded into ``module`` (names, shapes), or None."""
    expected = {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}
    if not isinstance(state, dict):
        return "no embedding state"
    found = {name: tuple(getattr(tensor, "shape", ())) for name, tensor in state.items()}
    if set(found) != set(expected):
        return f"parameters {sorted(set(found) ^ set(expected))} differ"
    wrong = [f"{name} {found[name]} != {expected[name]}" for name in expected if found[name] != expected[name]]
    return "; ".join(wrong) or None


@contextmanager
def isolated_random_state(seed, data_loader=None):
    """Runs a block under its own seeded random state, then restores the previous one.

    Covers torch (CPU and CUDA), numpy, ``random`` and the data loader's shuffling generator, so
    that a stage run before training (or skipped because it was cached) does not shift the
    random numbers the training itself draws.
    """
    generator = getattr(data_loader, "generator", None)
    saved = (
        torch.get_rng_state(),
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        np.random.get_state(),
        random.getstate(),
        generator.get_state() if generator is not None else None,
    )
    torch.manual_seed(seed)
    if generator is not None:
        generator.manual_seed(seed)
    try:
        yield
    finally:
        torch_state, cuda_states, numpy_state, random_state, generator_state = saved
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        np.random.set_state(numpy_state)
        random.setstate(random_state)
        if generator_state is not None:
            generator.set_state(generator_state)
