"""The settings table: every setting the plugin reads, its kind, range and choices.

Each setting is described once. Its default, meaning and source are on its line of the YAML files
RecBole loads (``properties/overall.yaml`` and ``properties/model/<Model>.yaml``), written as
``key: default  # (type) meaning: source``; its row here says what values it takes, which
models read it and which cached stages it shapes. :mod:`recbole_cstwa.setting_checks` checks a
run's settings against this table and names the YAML line's source in its messages.

To add a setting, write its line in the model's YAML file and add a
:class:`~recbole_cstwa.setting_checks.Setting` (key, kind, models, range; no default, no source)
to :data:`SETTINGS`; tests check that every row has its line, with a source. A setting that
changes what CSTWA's pre-training or graph stage computes names it in ``shapes``
(``"pretrain"``, ``"graphs"``): it is then part of that stage's cache key. For a condition
between settings, add a :class:`~recbole_cstwa.setting_checks.Rule` to :data:`RULES`.
"""

import math

from recbole_cstwa.setting_checks import ANY_MODEL, MULTITASK, Rule, Setting, is_number

CSTWA = ("CSTWA",)
EXPERT_MODELS = ("MMoE", "OMoE", "PLE")
#: The stages of CSTWA's trainer whose results are cached (``shapes``).
PRETRAIN, GRAPHS = ("pretrain",), ("graphs",)


def _use_sm(config):
    return config.get("use_sm") is True


def _index_reads(*indexes):
    """``when`` of a graph index's own setting: read while the graphs are built with one of
    ``indexes`` (``auto`` may pick either approximate index)."""

    def when(config):
        return _use_sm(config) and config.get("graph_index") in indexes

    return when


def dropout_setting(key, models=(MULTITASK,), shapes=(), optional=False):
    """A dropout list: one probability in [0, 1) a layer, or one number for every layer."""
    return Setting(
        key,
        "number_list",
        models=models,
        low=0,
        high=1,
        high_open=True,
        scalar_ok=True,
        shapes=shapes,
        optional=optional,
    )


def layer_sizes_setting(key, models=(MULTITASK,), shapes=(), optional=False):
    """A list of hidden layer widths, each 1 to :data:`MAX_LAYER`."""
    return Setting(
        key,
        "int_list",
        models=models,
        low=1,
        high=MAX_LAYER,
        note=LAYER_NOTE,
        shapes=shapes,
        optional=optional,
    )


# Upper bounds of the settings that size what is allocated (a checkpoint's stored settings are
# checked against them too): generous, hundreds of times the defaults and the papers' values, so
# that a typo or an edited file stops with a message instead of allocating until killed.
MAX_WIDTH = 4096
WIDTH_NOTE = "far above the papers' 5 to 64; larger only allocates memory"
MAX_LAYER = 65_536
LAYER_NOTE = "far above the papers' 16 to 512; larger only allocates memory"
MAX_EXPERTS = 1024
EXPERTS_NOTE = "far above the papers' 8; larger only allocates memory"
MAX_DEPTH = 64
DEPTH_NOTE = "far above the papers' 1 to 3; larger only allocates memory"
MAX_BATCH = 1 << 24
BATCH_NOTE = "far above the defaults' 2,000 and 4,096; larger only allocates memory"

#: The settings table. Defaults, meanings and sources are on each key's line in
#: ``properties/overall.yaml`` and ``properties/model/<Model>.yaml``.
SETTINGS = (
    # ----- shared (overall.yaml) ---------------------------------------------------------------
    Setting(
        "embedding_size", "int", models=(ANY_MODEL,), low=1, high=MAX_WIDTH, note=WIDTH_NOTE, shapes=PRETRAIN
    ),
    Setting("embedding_update", "choice", choices=("sparse", "dense"), shapes=PRETRAIN),
    Setting("cache_dataset", "bool", models=(ANY_MODEL,)),
    Setting("embedding_init_std", "number", low=0, low_open=True, shapes=PRETRAIN),
    Setting("min_count", "int", low=0, shapes=PRETRAIN),
    Setting("context_pooling", "choice", choices=("mean", "concat"), shapes=PRETRAIN),
    layer_sizes_setting("tower_hidden_size", shapes=PRETRAIN),
    dropout_setting("tower_dropout", shapes=PRETRAIN),
    Setting(
        "learner",
        "choice",
        models=(ANY_MODEL,),
        choices=("adam", "adamw", "sgd", "adagrad", "rmsprop", "sparse_adam"),
        note="RecBole's optimizers; any other name would silently train with Adam",
        shapes=PRETRAIN,
    ),
    Setting("learning_rate", "number", models=(ANY_MODEL,), low=0, low_open=True),
    Setting(
        "train_batch_size",
        "int",
        models=(ANY_MODEL,),
        low=1,
        high=MAX_BATCH,
        note=BATCH_NOTE,
        shapes=PRETRAIN,
    ),
    Setting("eval_batch_size", "int", models=(ANY_MODEL,), low=1, high=MAX_BATCH, note=BATCH_NOTE),
    Setting("epochs", "int", models=(ANY_MODEL,), low=1),
    Setting("weight_decay", "number", models=(ANY_MODEL,), low=0, shapes=PRETRAIN),
    # RecBole's training settings, passed through to its trainer and data loaders.
    Setting(
        "seed", "int", models=(ANY_MODEL,), low=0, high=2**32 - 1, note="numpy's seed range", shapes=PRETRAIN
    ),
    Setting("shuffle", "bool", models=(ANY_MODEL,), shapes=PRETRAIN),
    Setting(
        "stopping_step",
        "int",
        models=(ANY_MODEL,),
        low=1,
        note="validations without improvement before early stopping",
    ),
    Setting(
        "eval_step",
        "int",
        models=(ANY_MODEL,),
        low=0,
        note="epochs between validations; 0 validates never and keeps the last epoch's model",
    ),
    Setting(
        "threads",
        "int",
        models=(ANY_MODEL,),
        low=0,
        note="torch's threads a process; 0: torch's default, one a core; OMP_NUM_THREADS, when set, "
        "wins over the default",
    ),
    Setting("invalid_purchase", "choice", models=(ANY_MODEL,), choices=("drop", "error")),
    # ----- evaluation beyond RecBole's metrics (docs/evaluation.md) ----------------------------
    Setting("truth_metrics", "bool", models=(ANY_MODEL,)),
    Setting("calibration_metrics", "bool", models=(ANY_MODEL,)),
    Setting("calibration_bins", "int", models=(ANY_MODEL,), low=1),
    Setting("cold_start_count", "int", models=(ANY_MODEL,), low=0, note="0 reports no cold-start slice"),
    # ----- CSTWA (properties/model/CSTWA.yaml) -------------------------------------------------
    Setting("use_sm", "bool", models=CSTWA),
    Setting("use_cp", "bool", models=CSTWA),
    Setting("use_ce", "bool", models=CSTWA),
    Setting("use_calibration", "bool", models=CSTWA),
    Setting("loss_weights", "number_list", models=CSTWA, low=0, length=3),
    Setting("sm_mode", "choice", models=CSTWA, choices=("epoch", "batch", "update")),
    Setting("sm_refresh_steps", "int", models=CSTWA, low=0),
    Setting("sm_first_epoch_refreshes", "int", models=CSTWA, low=1),
    Setting("sm_layers", "int", models=CSTWA, low=1, high=MAX_DEPTH, note=DEPTH_NOTE),
    Setting("sm_lambda", "number", models=CSTWA, low=0, high=1),
    Setting("graph_top_k", "int", models=CSTWA, low=1, when=_use_sm, shapes=GRAPHS),
    Setting("graph_self_loop", "bool", models=CSTWA, when=_use_sm, shapes=GRAPHS),
    Setting("graph_symmetric", "bool", models=CSTWA, when=_use_sm, shapes=GRAPHS),
    Setting(
        "graph_index",
        "choice",
        models=CSTWA,
        choices=("auto", "exact", "ivf", "hnsw"),
        when=_use_sm,
        shapes=GRAPHS,
    ),
    Setting("graph_exact_max_nodes", "int", models=CSTWA, low=1, when=_index_reads("auto"), shapes=GRAPHS),
    Setting("graph_ivf_nlist", "int", models=CSTWA, low=1, when=_index_reads("auto", "ivf"), shapes=GRAPHS),
    Setting("graph_nprobe", "int", models=CSTWA, low=1, when=_index_reads("auto", "ivf"), shapes=GRAPHS),
    Setting("graph_hnsw_m", "int", models=CSTWA, low=1, when=_index_reads("auto", "hnsw"), shapes=GRAPHS),
    Setting(
        "graph_hnsw_ef_search",
        "int",
        models=CSTWA,
        low=1,
        when=_index_reads("auto", "hnsw"),
        shapes=GRAPHS,
    ),
    Setting("pretrain_epochs", "int", models=CSTWA, low=1, when=_use_sm, shapes=PRETRAIN),
    Setting(
        "pretrain_learning_rate",
        "number",
        models=CSTWA,
        low=0,
        low_open=True,
        when=_use_sm,
        shapes=PRETRAIN,
    ),
    Setting("cstwa_cache", "bool", models=CSTWA, when=_use_sm),
    layer_sizes_setting("info_hidden_size", models=CSTWA, optional=True),
    Setting(
        "ce_window",
        "int",
        models=CSTWA,
        low=1,
        high=MAX_BATCH,
        note="predictions kept in memory; far above the paper's 10,000",
    ),
    Setting("ce_high_percentile", "number", models=CSTWA, low=0, high=100),
    Setting("ce_low_percentile", "number", models=CSTWA, low=0, high=100),
    Setting("ce_alpha", "number", models=CSTWA, low=0),
    Setting("ce_max_weight", "number", models=CSTWA, low=1),
    Setting("ce_weight_form", "choice", models=CSTWA, choices=("ratio", "margin")),
    Setting("ce_eval_mode_ctr", "bool", models=CSTWA),
    Setting("ce_warmup_steps", "int", models=CSTWA, low=0),
    # ----- MLP ---------------------------------------------------------------------------------
    Setting("purchase_on_clicked", "bool", models=("MLP",)),
    # ----- AITM --------------------------------------------------------------------------------
    Setting("aitm_calibration_weight", "number", models=("AITM",), low=0, note="0 switches the term off"),
    Setting("aitm_l2", "number", models=("AITM",), low=0),
    # ----- ESCM2 -------------------------------------------------------------------------------
    Setting("escm2_mode", "choice", models=("ESCM2",), choices=("ips", "dr")),
    Setting("escm2_backbone", "choice", models=("ESCM2",), choices=("mlp", "mmoe")),
    Setting("escm2_counterfactual_weight", "number", models=("ESCM2",), low=0),
    Setting("escm2_global_weight", "number", models=("ESCM2",), low=0),
    Setting("escm2_max_weight", "number", models=("ESCM2",), low=0, low_open=True),
    layer_sizes_setting("escm2_expert_hidden_size", models=("ESCM2",)),
    layer_sizes_setting("escm2_tower_hidden_size", models=("ESCM2",)),
    # ----- NISE --------------------------------------------------------------------------------
    Setting("nise_weight_cap", "number", models=("NISE",), low=0, low_open=True),
    Setting("nise_weight_scale", "number", models=("NISE",), low=0, note="0 leaves the CTR loss alone"),
    # ----- DCMT --------------------------------------------------------------------------------
    Setting("dcmt_cvr_weight", "number", models=("DCMT",), low=0),
    Setting("dcmt_ctcvr_weight", "number", models=("DCMT",), low=0),
    Setting(
        "dcmt_constraint_weight",
        "number",
        models=("DCMT",),
        low=0,
        note="0 switches the counterfactual constraint off",
    ),
    Setting(
        "dcmt_propensity_clip",
        "number",
        models=("DCMT",),
        low=0,
        high=0.5,
        low_open=True,
        high_open=True,
        note="pCTR is clamped to [c, 1 - c] before its inverse and that of 1 - pCTR are taken",
    ),
    # ----- DDPO (Eq. 18's task weights) --------------------------------------------------------
    Setting("ddpo_click_weight", "number", models=("DDPO",), low=0),
    Setting("ddpo_conversion_weight", "number", models=("DDPO",), low=0),
    Setting("ddpo_cvr_weight", "number", models=("DDPO",), low=0),
    Setting("ddpo_ctcvr_weight", "number", models=("DDPO",), low=0),
    # ----- experts: MMoE, OMoE, ESCM2's mmoe backbone, PLE -------------------------------------
    Setting(
        "num_experts", "int", models=("MMoE", "OMoE", "ESCM2"), low=1, high=MAX_EXPERTS, note=EXPERTS_NOTE
    ),
    Setting("ple_num_levels", "int", models=("PLE",), low=1, high=MAX_DEPTH, note=DEPTH_NOTE),
    Setting("ple_shared_experts", "int", models=("PLE",), low=0, high=MAX_EXPERTS, note=EXPERTS_NOTE),
    Setting("ple_specific_experts", "int", models=("PLE",), low=0, high=MAX_EXPERTS, note=EXPERTS_NOTE),
    layer_sizes_setting("expert_hidden_size", models=EXPERT_MODELS, optional=True),
    dropout_setting("expert_dropout", models=EXPERT_MODELS, optional=True),
    layer_sizes_setting("task_tower_hidden_size", models=EXPERT_MODELS, optional=True),
    dropout_setting("task_tower_dropout", models=EXPERT_MODELS),
    # ----- resuming (overall.yaml) -------------------------------------------------------------
    Setting("resume_in_place", "bool", models=(ANY_MODEL,)),
)


def _dropout_per_layer(prefix):
    def check(config):
        dropouts, sizes = config[f"{prefix}_dropout"], config[f"{prefix}_hidden_size"]
        if isinstance(dropouts, list) and len(dropouts) != len(sizes):
            return (
                f"{prefix}_dropout {dropouts} needs one value per layer of {prefix}_hidden_size {sizes} "
                f"({len(dropouts)} values for {len(sizes)} layers). Fix: give {len(sizes)} values, or "
                "one number for every layer."
            )
        return None

    return check


def _expert_dropout_per_layer(config):
    """The experts' dropout against their layers, each the tower's when left empty."""
    sizes = config["expert_hidden_size"] or config["tower_hidden_size"]
    dropouts = config["expert_dropout"]
    if isinstance(dropouts, list) and not dropouts:
        dropouts = config["tower_dropout"]
    if isinstance(dropouts, list) and len(dropouts) != len(sizes):
        return (
            f"expert_dropout {config['expert_dropout']} (empty: tower_dropout) needs one value per "
            f"expert layer {sizes} (expert_hidden_size {config['expert_hidden_size']}, empty: "
            f"tower_hidden_size): {len(dropouts)} values for {len(sizes)} layers. Fix: give "
            f"{len(sizes)} values, or one number for every layer (torch-rechub: --expert_dropout=0)."
        )
    return None


def _percentile_order(config):
    low, high = config["ce_low_percentile"], config["ce_high_percentile"]
    if low >= high:
        return (
            f"ce_low_percentile ({low}) must be below ce_high_percentile ({high}). Fix: the paper "
            "uses --ce_low_percentile=10 --ce_high_percentile=99."
        )
    return None


def _hnsw_breadth(config):
    top_k, ef_search = config["graph_top_k"], config["graph_hnsw_ef_search"]
    if config["graph_index"] == "hnsw" and ef_search < top_k + 1:
        return (
            f"graph_hnsw_ef_search ({ef_search}) must be at least graph_top_k + 1 ({top_k + 1}): HNSW "
            f"cannot return {top_k} neighbours with a narrower search. Fix: "
            f"--graph_hnsw_ef_search={max(64, top_k + 1)}."
        )
    return None


#: The keyword arguments of ``torch.nn.utils.clip_grad_norm_`` that ``clip_grad_norm`` may give.
CLIP_GRAD_NORM_KEYS = ("max_norm", "norm_type", "error_if_nonfinite", "foreach")


def _clip_grad_norm(config):
    value = config["clip_grad_norm"]
    if value is None:
        return None
    fix = "Fix: --clip_grad_norm=\"{'max_norm':5}\" or clip_grad_norm: ~ (no clipping, RecBole's default)."
    if not isinstance(value, dict) or set(value) - set(CLIP_GRAD_NORM_KEYS) or "max_norm" not in value:
        return (
            f"clip_grad_norm must be ~ or a dict with max_norm and optionally "
            f"{', '.join(CLIP_GRAD_NORM_KEYS[1:])} (torch's clip_grad_norm_ arguments), got {value!r}. {fix}"
        )
    max_norm = value["max_norm"]
    if not (is_number(max_norm) and math.isfinite(max_norm) and max_norm > 0):
        return (
            f"clip_grad_norm max_norm must be a finite number > 0, got {max_norm!r}: a negative norm "
            f"turns every gradient step around (gradient ascent). {fix}"
        )
    norm_type = value.get("norm_type", 2.0)
    if isinstance(norm_type, bool) or not isinstance(norm_type, (int, float)) or not norm_type > 0:
        return (
            f"clip_grad_norm norm_type must be a number > 0 (inf for the max norm), got {norm_type!r}. {fix}"
        )
    return None


def _ple_experts(config):
    if config["ple_shared_experts"] + config["ple_specific_experts"] < 1:
        return (
            "ple_shared_experts + ple_specific_experts must be at least 1 (each task's gate needs "
            "an expert), got 0 + 0. Fix: --ple_shared_experts=4 --ple_specific_experts=4 "
            "(MTReclib's split of 8 experts)."
        )
    return None


#: Conditions between settings, checked after every single setting passed.
RULES = (
    Rule(("tower_dropout", "tower_hidden_size"), _dropout_per_layer("tower")),
    Rule(
        ("expert_dropout", "expert_hidden_size", "tower_dropout", "tower_hidden_size"),
        _expert_dropout_per_layer,
        models=EXPERT_MODELS,
    ),
    Rule(
        ("task_tower_dropout", "task_tower_hidden_size"),
        _dropout_per_layer("task_tower"),
        models=EXPERT_MODELS,
    ),
    Rule(("ce_low_percentile", "ce_high_percentile"), _percentile_order, models=CSTWA),
    Rule(("graph_hnsw_ef_search", "graph_top_k", "graph_index"), _hnsw_breadth, models=CSTWA, when=_use_sm),
    Rule(("ple_shared_experts", "ple_specific_experts"), _ple_experts, models=("PLE",)),
    Rule(("clip_grad_norm",), _clip_grad_norm, models=(ANY_MODEL,)),
)
