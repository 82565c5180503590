"""Trainers: a multi-task trainer for the plugin's models and a single-task one for RecBole's.

Both evaluate the RecBole way (RecBole's metrics, early stopping on ``valid_metric``, best
checkpoint reloaded for the test set), report task-prefixed metrics (``click_auc``, ...) and save
checkpoints that load with ``weights_only=True`` (see :mod:`recbole_cstwa.compat`).
"""

import os
import random
import uuid
from contextlib import contextmanager
from time import time

import numpy as np
import torch
from recbole.trainer import Trainer
from recbole.utils import set_color
from tqdm import tqdm

from recbole_cstwa import distributed
from recbole_cstwa.compat import SafeCheckpointMixin
from recbole_cstwa.evaluator import TaskEvaluator
from recbole_cstwa.model.multitask.cstwa import ClickPretrainModel
from recbole_cstwa.model.structure import (
    ArtifactCache,
    build_graph,
    dataset_fingerprint,
    graph_from_state,
    graph_summary,
    graph_to_state,
    group_representations,
)


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

    def predict_tasks(self, interaction):
        """Scores of one batch: task name -> ``(B,)`` probabilities."""
        raise NotImplementedError

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        start = time()
        loss = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        self.epoch_seconds.append(time() - start)
        return loss

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

    Both artifacts are cached under ``checkpoint_dir`` (``cstwa_cache: False`` disables it),
    keyed by a content fingerprint of the training data and user / item features and by the
    settings they depend on; a change of a graph setting alone (say ``graph_top_k``) reuses the
    pre-trained embedding and rebuilds the graphs. With ``use_sm: False`` neither stage runs.
    """

    PRETRAIN_SETTINGS = (
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
            path = self._cache().save("pretrain", settings, {"embedding": state})
            self.logger.info(f"saved the pre-trained CTR embedding to {path}")
        self.cache_events.append(("pretrain", "computed", path))

    def _pretrain(self, model, train_data, valid_data, show_progress):
        epochs = self.config["pretrain_epochs"]
        optimizer = self._build_optimizer(
            params=model.parameters(), learning_rate=self.config["pretrain_learning_rate"]
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
                graphs = {group: graph_from_state(cached[group]) for group in ("user", "item")}
                self.cache_events.append(("graphs", "loaded", path))
                self.logger.info(f"loaded cached user and item graphs from {path}")
            else:
                self.logger.info(f"building the user and item graphs: {reason}")
        if graphs is None:
            if self.pretrained_embedding is None:
                raise RuntimeError("the graphs stage needs the pretrain stage's embedding first.")
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
                )
                self.logger.info(f"{group} graph built in {time() - start:.2f}s")
            path = None
            if self.config["cstwa_cache"]:
                state = {group: graph_to_state(graph) for group, graph in graphs.items()}
                path = self._cache().save("graphs", settings, state)
                self.logger.info(f"saved the user and item graphs to {path}")
            self.cache_events.append(("graphs", "computed", path))
        for group, graph in graphs.items():
            self.logger.info(f"{group} graph: {graph_summary(graph)}")
        if distributed.is_distributed(self.config):
            self.graphs = graphs  # for _share_graphs_stage
        self.model.set_graphs(graphs["user"], graphs["item"])

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
