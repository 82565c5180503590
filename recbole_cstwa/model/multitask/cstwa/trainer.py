"""CSTWA's trainer: its pre-training and graph stages, their cache, and the Structure Migrator's
schedule, on top of the plugin's :class:`~recbole_cstwa.trainer.MultiTaskTrainer`.

:func:`recbole_cstwa.registry.get_trainer` finds it here, next to the model, by its name
(``CSTWATrainer``).
"""

from time import time

import torch
from recbole.utils import set_color
from tqdm import tqdm

from recbole_cstwa import distributed
from recbole_cstwa.evaluator import TaskEvaluator
from recbole_cstwa.model.multitask.cstwa.artifact_cache import ArtifactCache, dataset_fingerprint
from recbole_cstwa.model.multitask.cstwa.cstwa import ClickPretrainModel
from recbole_cstwa.model.multitask.cstwa.structure import (
    build_graph,
    graph_from_state,
    graph_summary,
    graph_to_state,
    group_representations,
)
from recbole_cstwa.optim import sparse_updates
from recbole_cstwa.random_state import isolated_random_state
from recbole_cstwa.setting_checks import shaping_keys
from recbole_cstwa.settings import SETTINGS
from recbole_cstwa.trainer import MultiTaskTrainer


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

    - ``train``: CSTWA itself. With ``sm_mode: epoch`` (or ``update``) this trainer schedules the
      Structure Migrator's ``P = A_hat^L E`` (or the update of the id rows;
      :meth:`CSTWA.update_structure
      <recbole_cstwa.model.multitask.cstwa.cstwa.CSTWA.update_structure>`, the way RecBole's trainer
      calls KGAT's ``update_attentive_A``): ``sm_first_epoch_refreshes`` times inside the first
      epoch, spread evenly over its steps (at least once, so a model kept after its first epoch
      has trained with the Structure Migrator and is scored with it), then with
      ``sm_refresh_steps: 0`` at the start of every later epoch, otherwise before every
      ``sm_refresh_steps``-th training step (counted over the whole run). Never before the first
      step: no step trains on a ``P`` of the randomly initialised embedding; until the first
      refresh the CVR input is the live rows. Evaluation uses the ``P`` the last training step
      used (it is saved with the model). Each epoch logs the Curse Escaper's re-weighted shares
      and mean weights (and the share of the purchases weighted as false negatives; the first
      epoch's first quarter also on its own) and the steps the Structure Migrator acted in;
      loading the kept model logs whether it used the Structure Migrator.

    Both artifacts are cached under ``checkpoint_dir`` (``cstwa_cache: False`` disables it),
    keyed by a content fingerprint of the training data and user / item features and by the
    settings that shape them (the settings table's ``shapes``, :mod:`recbole_cstwa.settings`); a
    change of a graph setting alone (say ``graph_top_k``) reuses the pre-trained embedding and
    rebuilds the graphs. A cache file that does not fit the model or the data (other shapes) is
    rebuilt, and a failed cache write is a warning: the run goes on. With ``use_sm: False``
    neither stage runs.
    """

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
        # The schedule is the trainer's, not the model's.
        self.sm_refresh_steps = config["sm_refresh_steps"]
        self.sm_first_epoch_refreshes = config["sm_first_epoch_refreshes"]
        self.curse_escaper_epochs = []  # each epoch's CurseEscaperTally summary (logs, tests)
        self.curse_escaper_first_quarter = None  # the first epoch's first quarter's summary

    # ----- the Structure Migrator's schedule --------------------------------------------------
    def _schedules_structure(self):
        return self.model.use_sm and self.model.sm_mode in ("epoch", "update")

    def _update_structure(self):
        self.model.update_structure()
        self.structure_updates.append(self.training_steps)

    def first_epoch_refresh_steps(self, steps):
        """Steps of the first epoch (of ``steps``) before which the structure is refreshed:
        ``sm_first_epoch_refreshes`` steps spread evenly, never the first one."""
        count = self.sm_first_epoch_refreshes
        return sorted({step * steps // (count + 1) for step in range(1, count + 1)} - {0})

    def _with_first_quarter_tally(self, loss_func, steps, epoch_idx):
        """``loss_func`` (None: the model's ``calculate_loss``), logging once the first epoch's
        first ``steps // 4`` steps are done what the Curse Escaper re-weighted in them: the steps
        whose window lags the falling click head most (results/cstwa-candidates.md). The epoch's
        own tally goes on."""
        quarter = steps // 4
        if not self.model.use_ce or epoch_idx != 0 or quarter == 0:
            return loss_func
        step_loss = loss_func or self.model.calculate_loss
        done = 0

        def tallied_loss(interaction):
            nonlocal done
            if done == quarter:
                tally = self.model.ce_tally.summary(reset=False)
                self.curse_escaper_first_quarter = tally
                self.logger.info(f"epoch 0, first {quarter} steps: " + self._curse_escaper_text(tally))
            done += 1
            return step_loss(interaction)

        return tallied_loss

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        loss_func = self._with_first_quarter_tally(loss_func, len(train_data), epoch_idx)
        if not self._schedules_structure():
            loss = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
            self._log_components(epoch_idx)
            return loss
        every = self.sm_refresh_steps
        first_epoch = epoch_idx == 0
        refresh_at = set(self.first_epoch_refresh_steps(len(train_data))) if first_epoch else set()
        if not first_epoch and every == 0:
            self._update_structure()  # epoch start, from the second epoch on
        step_loss = loss_func or self.model.calculate_loss
        epoch_step = 0

        def scheduled_loss(interaction):
            nonlocal epoch_step
            if first_epoch:
                due = epoch_step in refresh_at
            else:
                due = every and self.training_steps % every == 0
            if due:
                self._update_structure()
            self.training_steps += 1
            epoch_step += 1
            return step_loss(interaction)

        loss = super()._train_epoch(train_data, epoch_idx, scheduled_loss, show_progress)
        self._log_components(epoch_idx)
        return loss

    def _log_components(self, epoch_idx):
        """Once an epoch: what the Curse Escaper re-weighted and whether the Structure Migrator acted."""
        model = self.model
        parts = []
        if model.use_ce:
            tally = model.ce_tally.summary()
            parts.append(self._curse_escaper_text(tally))
            self.curse_escaper_epochs.append(tally)
        if model.use_sm:
            parts.append(
                f"Structure Migrator ({model.sm_mode}) acted in {int(model.structure_steps)} training "
                f"steps so far ({len(self.structure_updates)} structure updates)"
            )
        if parts:
            self.logger.info(f"epoch {epoch_idx}: " + "; ".join(parts))

    def _curse_escaper_text(self, tally):
        return (
            f"Curse Escaper ({self.model.ce_weight_form}) re-weighted {tally['fp_share']:.4%} of "
            f"{tally['rows']} impressions as false positives (mean weight "
            f"{tally['fp_mean_weight']:.3f}) and {tally['fn_share']:.4%} as false negatives "
            f"(mean weight {tally['fn_mean_weight']:.3f}; {tally['fn_purchase_share']:.2%} of "
            f"the {tally['purchases']} purchases)"
        )

    def load_best_model(self, model_file=None):
        super().load_best_model(model_file)
        if self.model.use_sm:
            if self.model.structure_used():
                self.logger.info(
                    f"the kept model used the Structure Migrator ({self.model.sm_mode}) in "
                    f"{int(self.model.structure_steps)} training steps and is scored with it"
                )
            else:
                self.logger.warning("the kept model did not use the Structure Migrator in training")

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

    def _shaping_settings(self, stage):
        """The settings that shape ``stage`` (``pretrain`` or ``graphs``) in this run, with their
        values: the rows of the settings table whose ``shapes`` name it and that the run reads
        (a graph index's own settings only under that index)."""
        values = self.config.final_config_dict
        keys = shaping_keys(SETTINGS, stage, values, values["model"], multitask=True)
        return {key: self.config[key] for key in keys}

    def _pretrain_settings(self, dataset):
        """The pre-trained embedding's cache key: the settings that shape it, the data and the
        fields it embeds."""
        if self._data_fingerprint is None:
            self._data_fingerprint = dataset_fingerprint(dataset)
        groups = self.model.field_groups
        settings = self._shaping_settings("pretrain")
        settings.update(
            cache_format=self.CACHE_FORMAT,
            dataset=self.config["dataset"],
            data_fingerprint=self._data_fingerprint,
            fields={group: [field for field, _ in fields] for group, fields in groups.items()},
            field_sizes={field: dataset.num(field) for fields in groups.values() for field, _ in fields},
            CLICK_FIELD=self.config["CLICK_FIELD"],  # the pre-training's label
            # embedding_update as this run applies it (dense under DDP or mixed precision)
            sparse_updates=sparse_updates(self.config)[0],
        )
        return settings

    def _graph_settings(self, dataset):
        """The graphs' cache key: the pre-trained embedding's (they are mined from it) and the
        settings that shape the graphs."""
        settings = self._pretrain_settings(dataset)
        settings.update(self._shaping_settings("graphs"))
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
            path = self._save_to_cache(
                "pretrain", settings, {"embedding": state}, "the pre-trained CTR embedding"
            )
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
            params=model.parameters(),
            module=model,
            learner=self.config["learner"],
            learning_rate=self.config["pretrain_learning_rate"],
            weight_decay=self.config["weight_decay"],
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
            size = self.model.num_entities(group)
            try:
                graphs[group] = graph_from_state(cached[group])
            except (KeyError, TypeError, ValueError, RuntimeError) as error:
                return None, f"{group} graph unreadable: {type(error).__name__}"
            if tuple(graphs[group].shape) != (size, size):
                return (
                    None,
                    f"{group} graph is {tuple(graphs[group].shape)}, the data has {size} {group} rows",
                )
        return graphs, None

    def _note_small_groups(self):
        """Says once when graph_top_k is above the nodes a group has: its rows keep every node."""
        top_k = self.config["graph_top_k"]
        small = []
        for group in ("user", "item"):
            nodes = self.model.num_entities(group) - 1  # without RecBole's [PAD] row
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
    wrong = [
        f"{name} {found[name]} != {expected[name]}" for name in expected if found[name] != expected[name]
    ]
    return "; ".join(wrong) or None
