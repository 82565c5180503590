"""Every setting the plugin reads, described once: type, range, choices and the source's value.

:func:`check_settings` runs once, when the :class:`~recbole_cstwa.config.Config` is built, before
any data is read; the models then read their settings without checking them again. A bad value
raises :class:`~recbole_cstwa.errors.ConfigError` with one line naming the key, the value, what
is allowed and the source's value, e.g.::

    tower_dropout must be a list of numbers in [0, 1) (or one such number), got [1.5, 0.3, 0.3].
    Fix: --tower_dropout=[0.1,0.3,0.3] (the CSTWA paper, Section 4.1.4) or another such value.

Defaults are written once, in the YAML files RecBole loads (``properties/overall.yaml`` and
``properties/model/<Model>.yaml``, each with a comment); the table reads them from there
(:func:`default_value`) for its messages. To add a setting, write its default in the model's
YAML file and add a :class:`Setting` (key, kind, source, models, range; no default) to
:data:`SETTINGS`; a test checks that every setting has its default there. For a condition between
settings, add a :class:`Rule` to :data:`RULES`.
"""

import functools
import math
import os
from dataclasses import dataclass
from typing import Callable, Optional

import recbole
import yaml

from recbole_cstwa.errors import ConfigError
from recbole_cstwa.values import SettingsYamlLoader

#: ``models`` value of a setting every model run through the plugin reads (RecBole's included).
ANY_MODEL = "*"
#: ``models`` value of a setting every two-task model of the plugin reads.
MULTITASK = "multi-task"

_KINDS = ("int", "number", "bool", "choice", "int_list", "number_list")


@dataclass(frozen=True)
class Setting:
    """One setting.

    Args:
        key: the config key.
        kind: ``int``, ``number`` (int or float), ``bool``, ``choice`` (one of ``choices``; text
            is matched in any letter case and stored as written in ``choices``), ``int_list`` or
            ``number_list`` (each element in the range).
        source: where the default comes from (paper section, reference code), for the message.
        models: model names that read it, or :data:`ANY_MODEL` / :data:`MULTITASK`.
        low, high: inclusive bounds; ``low_open`` / ``high_open`` make them exclusive.
        length: a list's exact length.
        scalar_ok: a ``number_list`` may also be one number (used for every element).
        optional: ``None`` is allowed (a list setting then reads as ``[]``).
        when: the setting is checked only when ``when(config)`` holds (e.g. a component is on).
        note: extra words after the requirement (why the range).
    """

    key: str
    kind: str
    source: str
    models: tuple = (MULTITASK,)
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    length: Optional[int] = None
    scalar_ok: bool = False
    optional: bool = False
    when: Optional[Callable] = None
    note: str = ""

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise TypeError(f"Setting {self.key}: kind must be one of {_KINDS}, got {self.kind!r}.")
        # A row written with a default (key, kind, default, source, ...) fails here: the default
        # belongs in the YAML file only.
        if not isinstance(self.source, str) or not isinstance(self.models, tuple):
            raise TypeError(
                f"Setting {self.key}: write Setting(key, kind, source, models=(...), ...); the "
                "default goes in properties/ (overall.yaml or model/<Model>.yaml) only."
            )


@dataclass(frozen=True)
class Rule:
    """A condition between settings: ``check(config)`` returns a message (without the fix) or None."""

    keys: tuple
    check: Callable
    models: tuple = (MULTITASK,)
    when: Optional[Callable] = None


def _use_sm(config):
    return config.get("use_sm") is True


def dropout_setting(key, source, models=(MULTITASK,)):
    """A dropout list: one probability in [0, 1) a layer, or one number for every layer."""
    return Setting(key, "number_list", source, models=models, low=0, high=1, high_open=True, scalar_ok=True)


PAPER = "the CSTWA paper, Section 4.1.4"
CSTWA = ("CSTWA",)
EXPERT_MODELS = ("MMoE", "OMoE", "PLE")

#: The settings table. Defaults are in ``properties/overall.yaml`` and
#: ``properties/model/<Model>.yaml`` (read by :func:`default_value`); ``source`` says where each
#: comes from.
SETTINGS = (
    # ----- shared (overall.yaml) ---------------------------------------------------------------
    Setting("embedding_size", "int", PAPER, models=(ANY_MODEL,), low=1),
    Setting(
        "embedding_update",
        "choice",
        "measured (results/training-step.md): sparse updates only the rows a batch used",
        choices=("sparse", "dense"),
    ),
    Setting("cache_dataset", "bool", "cache on", models=(ANY_MODEL,)),
    Setting("embedding_init_std", "number", "N(0, 0.01), AITM's official code", low=0, low_open=True),
    Setting("context_pooling", "choice", "the paper's Eq. 7 (mean); concat", choices=("mean", "concat")),
    Setting("tower_hidden_size", "int_list", PAPER, low=1),
    dropout_setting("tower_dropout", PAPER),
    Setting(
        "learner",
        "choice",
        PAPER,
        models=(ANY_MODEL,),
        choices=("adam", "adamw", "sgd", "adagrad", "rmsprop", "sparse_adam"),
        note="RecBole's optimizers; any other name would silently train with Adam",
    ),
    Setting("learning_rate", "number", PAPER, models=(ANY_MODEL,), low=0, low_open=True),
    Setting("train_batch_size", "int", PAPER, models=(ANY_MODEL,), low=1),
    Setting("eval_batch_size", "int", "RecBole's default", models=(ANY_MODEL,), low=1),
    Setting("epochs", "int", PAPER, models=(ANY_MODEL,), low=1),
    Setting("weight_decay", "number", PAPER, models=(ANY_MODEL,), low=0),
    # RecBole's training settings, passed through to its trainer.
    Setting(
        "seed",
        "int",
        "RecBole's default",
        models=(ANY_MODEL,),
        low=0,
        high=2**32 - 1,
        note="numpy's seed range",
    ),
    Setting(
        "stopping_step",
        "int",
        "RecBole's default",
        models=(ANY_MODEL,),
        low=1,
        note="validations without improvement before early stopping",
    ),
    Setting(
        "eval_step",
        "int",
        "RecBole's default",
        models=(ANY_MODEL,),
        low=0,
        note="epochs between validations; 0 validates never and keeps the last epoch's model",
    ),
    Setting(
        "threads",
        "int",
        "measured: one torch thread a process trains fastest on a small shared machine (results/threads.md)",
        models=(ANY_MODEL,),
        low=0,
        note="torch's threads a process; 0: torch's default, one a core; OMP_NUM_THREADS, when set, "
        "wins over the default",
    ),
    Setting(
        "invalid_purchase",
        "choice",
        "drop rows with purchase=1 and click=0 (logged) or stop with an error",
        models=(ANY_MODEL,),
        choices=("drop", "error"),
    ),
    # ----- CSTWA (properties/model/CSTWA.yaml) -------------------------------------------------
    Setting("use_sm", "bool", "the full model (Table 3)", models=CSTWA),
    Setting("use_cp", "bool", "the full model (Table 3)", models=CSTWA),
    Setting("use_ce", "bool", "the full model (Table 3)", models=CSTWA),
    Setting("use_calibration", "bool", "Eq. 19 on in the full model", models=CSTWA),
    Setting(
        "loss_weights",
        "number_list",
        "the paper's (1, 1, 0.6), Section 3.4.3; [click, purchase, calibration] of Eq. 20",
        models=CSTWA,
        low=0,
        length=3,
    ),
    Setting(
        "sm_mode",
        "choice",
        "the project's reading: epoch holds P = A_hat^L E between refreshes, batch propagates "
        "each batch's neighbours, update writes Eq. 10 into the id rows (the paper's words)",
        models=CSTWA,
        choices=("epoch", "batch", "update"),
    ),
    Setting(
        "sm_refresh_steps",
        "int",
        "the project's reading: 0 refreshes P at the start of every epoch after the first",
        models=CSTWA,
        low=0,
    ),
    Setting(
        "sm_first_epoch_refreshes",
        "int",
        "the project's reading: P refreshed this often inside the first epoch, so a model kept "
        "after it has used the Structure Migrator; 1 measured ahead of 4 and 8 "
        "(results/cstwa-candidates.md)",
        models=CSTWA,
        low=1,
    ),
    Setting("sm_layers", "int", PAPER + ", L = 1", models=CSTWA, low=1),
    Setting("sm_lambda", "number", PAPER + ", lambda = 0.3 (searched 0.1-0.9)", models=CSTWA, low=0, high=1),
    Setting("graph_top_k", "int", PAPER + ", K = 8 (searched 4-32)", models=CSTWA, low=1, when=_use_sm),
    Setting("graph_self_loop", "bool", "the project's reading", models=CSTWA, when=_use_sm),
    Setting("graph_symmetric", "bool", "the project's reading", models=CSTWA, when=_use_sm),
    Setting(
        "graph_index",
        "choice",
        "auto: exact up to graph_exact_max_nodes nodes, IVF above; exact: faiss IndexFlatIP; ivf: "
        "IndexIVFFlat; hnsw: IndexHNSWFlat",
        models=CSTWA,
        choices=("auto", "exact", "ivf", "hnsw"),
        when=_use_sm,
    ),
    Setting(
        "graph_exact_max_nodes",
        "int",
        "measured (results/training-step.md)",
        models=CSTWA,
        low=1,
        when=_use_sm,
    ),
    Setting("graph_ivf_nlist", "int", "faiss's usual scale", models=CSTWA, low=1, when=_use_sm),
    Setting("graph_nprobe", "int", "faiss's usual scale", models=CSTWA, low=1, when=_use_sm),
    Setting("graph_hnsw_m", "int", "faiss's common choice", models=CSTWA, low=1, when=_use_sm),
    Setting("graph_hnsw_ef_search", "int", "faiss's common choice", models=CSTWA, low=1, when=_use_sm),
    Setting("pretrain_epochs", "int", "the project's reading", models=CSTWA, low=1, when=_use_sm),
    Setting(
        "pretrain_learning_rate",
        "number",
        PAPER,
        models=CSTWA,
        low=0,
        low_open=True,
        when=_use_sm,
    ),
    Setting("cstwa_cache", "bool", "cache on", models=CSTWA, when=_use_sm),
    Setting(
        "info_hidden_size",
        "int_list",
        "the project's reading: one Linear layer (Eq. 13)",
        models=CSTWA,
        low=1,
        optional=True,
    ),
    Setting("ce_window", "int", PAPER + ", 10,000", models=CSTWA, low=1),
    Setting("ce_high_percentile", "number", PAPER + ", 99th", models=CSTWA, low=0, high=100),
    Setting("ce_low_percentile", "number", PAPER + ", 10th", models=CSTWA, low=0, high=100),
    Setting("ce_alpha", "number", PAPER + ", alpha = 3 (searched 2-10)", models=CSTWA, low=0),
    Setting("ce_max_weight", "number", "the paper's Section 3.4.3, below 4", models=CSTWA, low=1),
    Setting(
        "ce_weight_form",
        "choice",
        "the paper's Section 3.4.3: ratio terms with upper limits searched 2-10 (margin: terms in [0, 1])",
        models=CSTWA,
        choices=("ratio", "margin"),
    ),
    # ----- MLP ---------------------------------------------------------------------------------
    Setting(
        "purchase_on_clicked",
        "bool",
        "the entire-space MLP (Table 3's base); True: the purchase side on clicked impressions only, "
        "the paper's Table 2 MLP (Section 4.2 (a))",
        models=("MLP",),
    ),
    # ----- AITM --------------------------------------------------------------------------------
    Setting(
        "aitm_calibration_weight",
        "number",
        "--weight 0.6 of AITM's official run line",
        models=("AITM",),
        low=0,
        note="0 switches the term off",
    ),
    Setting("aitm_l2", "number", "--lamda 1e-6 of AITM's official run line", models=("AITM",), low=0),
    # ----- ESCM2 -------------------------------------------------------------------------------
    Setting(
        "escm2_mode", "choice", "PaddleRec's config_bigdata.yaml", models=("ESCM2",), choices=("ips", "dr")
    ),
    Setting(
        "escm2_backbone",
        "choice",
        "mlp: ESMM towers, the CSTWA paper's description; mmoe: PaddleRec's backbone",
        models=("ESCM2",),
        choices=("mlp", "mmoe"),
    ),
    Setting(
        "escm2_counterfactual_weight", "number", "PaddleRec's config_bigdata.yaml", models=("ESCM2",), low=0
    ),
    Setting("escm2_global_weight", "number", "PaddleRec's config_bigdata.yaml", models=("ESCM2",), low=0),
    Setting(
        "escm2_max_weight",
        "number",
        "PaddleRec's clip on inverse propensities",
        models=("ESCM2",),
        low=0,
        low_open=True,
    ),
    Setting(
        "escm2_expert_hidden_size",
        "int_list",
        "escm2_backbone mmoe: expert_size 16 in PaddleRec's config_bigdata.yaml",
        models=("ESCM2",),
        low=1,
    ),
    Setting(
        "escm2_tower_hidden_size",
        "int_list",
        "escm2_backbone mmoe: tower_size 8 in PaddleRec's config_bigdata.yaml",
        models=("ESCM2",),
        low=1,
    ),
    # ----- NISE --------------------------------------------------------------------------------
    Setting(
        "nise_weight_cap",
        "number",
        "beta: --weight 50 in NISE's baselines/mlp_model.py (used in mtl_trainer.py's adaptive_ucvrlc)",
        models=("NISE",),
        low=0,
        low_open=True,
    ),
    Setting(
        "nise_weight_scale",
        "number",
        "alpha: --ablation_weight 1 in NISE's baselines/mlp_model.py (used in mtl_trainer.py's adaptive_ucvrlc)",
        models=("NISE",),
        low=0,
        note="0 leaves the CTR loss alone",
    ),
    # ----- DCMT --------------------------------------------------------------------------------
    Setting(
        "dcmt_cvr_weight",
        "number",
        "w^cvr: weight 1 in NISE's mtl_trainer.py and EVI's DcmtLoss (re-implementations' code)",
        models=("DCMT",),
        low=0,
    ),
    Setting(
        "dcmt_ctcvr_weight",
        "number",
        "w^ctcvr: weight 1 in NISE's mtl_trainer.py and EVI's DcmtLoss (re-implementations' code)",
        models=("DCMT",),
        low=0,
    ),
    Setting(
        "dcmt_constraint_weight",
        "number",
        "lambda_1: 1e-3 in NISE's mtl_trainer.py and EVI's DcmtLoss (re-implementations' code)",
        models=("DCMT",),
        low=0,
        note="0 switches the counterfactual constraint off",
    ),
    Setting(
        "dcmt_propensity_clip",
        "number",
        "EVI's DcmtLoss clamps pCTR to [0.001, 0.999] (code; the paper states no clip)",
        models=("DCMT",),
        low=0,
        high=0.5,
        low_open=True,
        high_open=True,
        note="pCTR is clamped to [c, 1 - c] before its inverse and that of 1 - pCTR are taken",
    ),
    # ----- DDPO (Eq. 18's task weights: 1 in the paper, Section 4.4 RQ5, and in main.py) --------
    Setting(
        "ddpo_click_weight",
        "number",
        "lambda_o: 1 in the DDPO paper (Section 4.4, RQ5) and --parao 1.0 in its main.py",
        models=("DDPO",),
        low=0,
    ),
    Setting(
        "ddpo_conversion_weight",
        "number",
        "lambda_c: 1 in the DDPO paper (Section 4.4, RQ5) and --parac 1.0 in its main.py",
        models=("DDPO",),
        low=0,
    ),
    Setting(
        "ddpo_cvr_weight",
        "number",
        "lambda_r: 1 in the DDPO paper (Section 4.4, RQ5) and --parar 1.0 in its main.py",
        models=("DDPO",),
        low=0,
    ),
    Setting(
        "ddpo_ctcvr_weight",
        "number",
        "lambda_t: 1 in the DDPO paper (Section 4.4, RQ5) and --paract 1.0 in its main.py",
        models=("DDPO",),
        low=0,
    ),
    # ----- experts: MMoE, OMoE, ESCM2's mmoe backbone, PLE -------------------------------------
    Setting(
        "num_experts",
        "int",
        "torch-rechub's and PaddleRec's Ali-CCP settings",
        models=("MMoE", "OMoE", "ESCM2"),
        low=1,
    ),
    Setting("ple_num_levels", "int", "torch-rechub's Ali-CCP example", models=("PLE",), low=1),
    Setting("ple_shared_experts", "int", "torch-rechub's n_expert_shared=1", models=("PLE",), low=0),
    Setting("ple_specific_experts", "int", "torch-rechub's n_expert_specific=2", models=("PLE",), low=0),
    Setting(
        "expert_hidden_size",
        "int_list",
        "[]: tower_hidden_size, the CSTWA paper's Section 4.1.4 (torch-rechub's Ali-CCP example: [16])",
        models=EXPERT_MODELS,
        low=1,
        optional=True,
    ),
    Setting(
        "expert_dropout",
        "number_list",
        "[]: tower_dropout, the CSTWA paper's Section 4.1.4 (torch-rechub: 0)",
        models=EXPERT_MODELS,
        low=0,
        high=1,
        high_open=True,
        scalar_ok=True,
        optional=True,
    ),
    Setting(
        "task_tower_hidden_size",
        "int_list",
        "[]: each task's output layer reads its mixture, the CSTWA paper's Section 4.1.4 "
        "(torch-rechub's Ali-CCP example: [8])",
        models=EXPERT_MODELS,
        low=1,
        optional=True,
    ),
    dropout_setting("task_tower_dropout", "no task tower by default (torch-rechub: 0)", models=EXPERT_MODELS),
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
    if not (_is_number(max_norm) and math.isfinite(max_norm) and max_norm > 0):
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

_BY_KEY = {setting.key: setting for setting in SETTINGS}


def setting(key):
    """The :class:`Setting` of ``key`` (KeyError if the plugin does not describe it)."""
    return _BY_KEY[key]


def applies(models, model_name, multitask):
    """Whether a setting or rule with ``models`` is read by ``model_name``."""
    return ANY_MODEL in models or (MULTITASK in models and multitask) or model_name in models


# ----- checking ------------------------------------------------------------------------------------
def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    """An int or a finite float (NaN and inf are no setting's value: ``--learning_rate=1e999``)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _in_range(spec, value):
    if spec.low is not None and (value <= spec.low if spec.low_open else value < spec.low):
        return False
    return not (spec.high is not None and (value >= spec.high if spec.high_open else value > spec.high))


def _bound(value):
    return str(value) if isinstance(value, int) else f"{value:g}"


def _range_text(spec):
    low = None if spec.low is None else f"{'>' if spec.low_open else '>='} {_bound(spec.low)}"
    high = None if spec.high is None else f"{'<' if spec.high_open else '<='} {_bound(spec.high)}"
    if low and high:
        return (
            f"in {'(' if spec.low_open else '['}{_bound(spec.low)}, {_bound(spec.high)}"
            f"{')' if spec.high_open else ']'}"
        )
    return low or high or ""


def requirement(spec):
    """What ``spec`` accepts, in words (``an integer >= 1``, ``one of 'mean', 'concat'``)."""
    bounds = _range_text(spec)
    if spec.kind == "bool":
        text = "True or False"
    elif spec.kind == "choice":
        text = "one of " + ", ".join(repr(choice) for choice in spec.choices)
    elif spec.kind in ("int", "number"):
        text = ("an integer" if spec.kind == "int" else "a number") + (f" {bounds}" if bounds else "")
    else:
        element = "integers" if spec.kind == "int_list" else "numbers"
        size = f"{spec.length} " if spec.length else ""
        text = f"a list of {size}{element}" + (f" {bounds}" if bounds else "")
        if spec.scalar_ok:
            text += " (or one such number)"
        if spec.optional:
            text += " (or empty)"
    return text + (f" ({spec.note})" if spec.note else "")


def _command_line(value):
    """``value`` as written after ``--key=`` (no spaces, so no shell quoting is needed)."""
    if isinstance(value, str):
        return value
    return repr(value).replace(" ", "")


#: :func:`default_value` of a key no defaults file sets.
NO_DEFAULT = object()


@functools.cache
def _defaults_file(path):
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as file:
        return yaml.load(file.read(), Loader=SettingsYamlLoader) or {}


def properties_dir():
    """The plugin's YAML defaults: inside the installed package, else at the top of a checkout."""
    package = os.path.dirname(os.path.abspath(__file__))
    for candidate in (
        os.path.join(package, "properties"),
        os.path.join(os.path.dirname(package), "properties"),
    ):
        if os.path.isfile(os.path.join(candidate, "overall.yaml")):
            return candidate
    raise FileNotFoundError(
        "recbole-cstwa's YAML defaults (properties/overall.yaml) are missing: reinstall with "
        "`pip install -e .` from the repository."
    )


def recbole_properties_dir():
    """RecBole's own YAML defaults (``recbole/properties``)."""
    return os.path.join(os.path.dirname(os.path.abspath(recbole.__file__)), "properties")


def default_value(key, model_name):
    """The default of ``key`` for ``model_name``, read where it is written: the plugin's
    ``properties/model/<Model>.yaml``, then its ``overall.yaml``, then RecBole's ``overall.yaml``
    (the order in which the config lets them win). :data:`NO_DEFAULT` when none sets it."""
    root = properties_dir()
    for path in (
        os.path.join(root, "model", f"{model_name}.yaml"),
        os.path.join(root, "overall.yaml"),
        os.path.join(recbole_properties_dir(), "overall.yaml"),
    ):
        defaults = _defaults_file(path)
        if key in defaults:
            return defaults[key]
    return NO_DEFAULT


def _message(spec, value, model_name):
    default = NO_DEFAULT if model_name is None else default_value(spec.key, model_name)
    fix = "another such value" if default is NO_DEFAULT else f"--{spec.key}={_command_line(default)}"
    return (
        f"{spec.key} must be {requirement(spec)}, got {value!r}. Fix: {fix} ({spec.source})"
        + ("" if default is NO_DEFAULT else " or another such value")
        + "."
    )


def check_value(spec, value, model_name=None):
    """``value`` checked against ``spec``; returns it normalised (a choice as written in the table,
    ``None`` of an optional list as ``[]``). Raises :class:`ConfigError`, whose fix proposes
    ``model_name``'s default."""
    if spec.kind == "bool":
        ok = isinstance(value, bool)
    elif spec.kind == "choice":
        matches = [c for c in spec.choices if isinstance(value, str) and c.lower() == value.lower()]
        ok = bool(matches)
        value = matches[0] if ok else value
    elif spec.kind == "int":
        ok = _is_int(value) and _in_range(spec, value)
    elif spec.kind == "number":
        ok = _is_number(value) and _in_range(spec, value)
    else:
        if value is None and spec.optional:
            return []
        is_element = _is_int if spec.kind == "int_list" else _is_number
        if spec.scalar_ok and is_element(value):
            ok = _in_range(spec, value)
        else:
            ok = (
                isinstance(value, (list, tuple))
                and (spec.length is None or len(value) == spec.length)
                and all(is_element(item) and _in_range(spec, item) for item in value)
            )
            value = list(value) if ok else value
    if not ok:
        raise ConfigError(_message(spec, value, model_name))
    return value


def check_settings(config, model_name, multitask):
    """Checks every setting ``model_name`` reads in ``config`` (a dict, changed in place:
    choices and optional lists are normalised), then the rules between them.

    Settings absent from ``config`` are skipped (their model's YAML file always sets them).

    Raises:
        ConfigError: the first bad value, in table order.
    """
    for spec in SETTINGS:
        if spec.key not in config or not applies(spec.models, model_name, multitask):
            continue
        if spec.when is not None and not spec.when(config):
            continue
        config[spec.key] = check_value(spec, config[spec.key], model_name)
    for rule in RULES:
        if not applies(rule.models, model_name, multitask) or any(key not in config for key in rule.keys):
            continue
        if rule.when is not None and not rule.when(config):
            continue
        message = rule.check(config)
        if message:
            raise ConfigError(message)
