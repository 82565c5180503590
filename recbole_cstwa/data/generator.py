"""Deterministic synthetic Ali-CCP-like impressions with a known truth.

Real post-click conversion data (Ali-CCP) only reveals sampled labels, so a
model's AUC cannot be compared with what is achievable on that data. This
module draws a world of users, items and impressions in which every row's
true click probability ``P(click | impression)`` and true purchase
probability ``P(click and purchase | impression)`` are known, writes the
features as RecBole atomic files and keeps the truth in separate gzip files
that RecBole never loads. The oracle AUC/logloss of a split (scoring with the
truth itself) is the ceiling any model can reach on that split.

How the truth is built (and why):

* Users carry Ali-CCP-like profile fields. Their latent tastes are a sum of
  embeddings of a segment (gender x age x consumption level) and of the other
  profile values, plus a small individual part, so users with similar
  profiles behave alike and a model can share what it learns between them.
* Items carry category, shop and brand; their latents are sums of embeddings
  of those fields plus a small individual part, for the same reason.
* Click and purchase only partly agree: the purchase affinity is
  ``rho * click_affinity + sqrt(1 - rho**2) * independent_affinity``, and
  categories come in kinds: "clickbait" categories draw clicks but rarely
  sell, "everyday" categories sell well on few clicks. Position affects the
  click only.
* Users and items have skewed, sparse exposure (few impressions each), as in
  Ali-CCP.
* The click bias is calibrated numerically so the mean true click rate equals
  ``ctr``; the conversion bias so the click-weighted mean
  ``P(purchase | click)`` equals ``cvr``.

Everything is drawn from ``numpy.random.default_rng`` seeded by ``seed`` and
vectorised over impressions; the same arguments give byte-identical files
(on the same platform and numpy version).

Command line::

    python -m recbole_cstwa.data.generator generate --output dataset
    python -m recbole_cstwa.data.generator oracle --dataset-dir dataset/synthetic-ccp

This module deliberately imports only numpy, pandas, scikit-learn and the
standard library so that it runs without RecBole or torch.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

DEFAULT_NAME = "synthetic-ccp"
DEFAULT_N_IMPRESSIONS = 300_000
DEFAULT_N_CATEGORIES = 100
DEFAULT_CTR = 0.04
DEFAULT_CVR = 0.25
DEFAULT_RHO = 0.4
DEFAULT_SEED = 2023
DEFAULT_SPLIT = (0.8, 0.1, 0.1)
SPLIT_NAMES = ("train", "valid", "test")

# Below this the calibration and the three splits become meaningless.
MIN_IMPRESSIONS = 1000
MIN_USERS = 10
MIN_ITEMS = 10
MIN_CATEGORIES = 2
# Average exposure per entity when n_users / n_items are not given: users are
# seen a few dozen times each; crosses pair user and item attributes, so no
# field identifies a single row.
IMPRESSIONS_PER_USER = 30
IMPRESSIONS_PER_ITEM = 30
ITEMS_PER_BRAND = 20
ITEMS_PER_SHOP = 10

LATENT_DIM = 8
FORMAT_VERSION = 1
CHUNK_ROWS = 1 << 18  # bounds the (rows x LATENT_DIM) temporaries
PROBABILITY_FORMAT = "%.6g"

# (field name, Ali-CCP field id, number of values)
USER_PROFILE_FIELDS = (
    ("profile_category", "121", 98),
    ("profile_group", "122", 13),
    ("gender", "124", 2),
    ("age", "125", 7),
    ("consumption_level", "126", 3),
    ("occupation", "128", 2),
    ("geography", "129", 4),
)
SEGMENT_FIELDS = ("gender", "age", "consumption_level")
ITEM_FIELDS = (("category", "206"), ("shop", "207"), ("brand", "216"))
CROSS_FIELDS = ("user_category", "user_shop", "user_brand")

# Ali-CCP field 301 has three values; the first slot draws the most clicks.
POSITION_PROBS = (0.45, 0.35, 0.20)
POSITION_CLICK_EFFECT = (0.5, 0.0, -0.5)

# Category kinds: (name, share of categories, click effect, purchase effect).
CATEGORY_KINDS = (
    ("regular", 0.73, 0.0, 0.0),
    ("clickbait", 0.12, 0.8, -1.5),
    ("everyday", 0.15, -0.5, 1.0),
)
CATEGORY_EFFECT_SD = 0.3

# Scales of the latent affinities in the click and conversion logits.
CLICK_AFFINITY_SCALE = 0.9
PURCHASE_AFFINITY_SCALE = 1.0

INTER_COLUMNS = (
    "user_id:token",
    "item_id:token",
    "position:token",
    "user_category:token",
    "user_shop:token",
    "user_brand:token",
    "click:float",
    "purchase:float",
)
TRUTH_COLUMNS = ("p_click", "p_purchase")


@dataclass(frozen=True)
class _World:
    """Users and items with their (hidden) propensities; index 0-based."""

    user_profiles: np.ndarray  # (n_users, n_profile_fields) value indices
    user_exposure: np.ndarray  # probability of a user in an impression
    user_click_latent: np.ndarray
    user_purchase_latent: np.ndarray
    user_click_effect: np.ndarray
    user_purchase_effect: np.ndarray
    item_category: np.ndarray
    item_shop: np.ndarray
    item_brand: np.ndarray
    item_exposure: np.ndarray
    item_click_latent: np.ndarray
    item_purchase_latent: np.ndarray
    item_click_effect: np.ndarray
    item_purchase_effect: np.ndarray
    category_kind: np.ndarray  # index into CATEGORY_KINDS
    n_brands: int
    n_shops: int


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Logistic function, accurate for large negative logits (tiny cvr)."""
    return np.exp(-np.logaddexp(0.0, -logits))


def default_n_users(n_impressions: int) -> int:
    """Number of users used when ``n_users`` is not given."""
    return max(MIN_USERS * 10, n_impressions // IMPRESSIONS_PER_USER)


def default_n_items(n_impressions: int) -> int:
    """Number of items used when ``n_items`` is not given."""
    return max(MIN_ITEMS * 10, n_impressions // IMPRESSIONS_PER_ITEM)


def _validate(
    name: str,
    n_impressions: int,
    n_users: int,
    n_items: int,
    n_categories: int,
    ctr: float,
    cvr: float,
    rho: float,
    split: Sequence[float],
) -> tuple[int, int, int]:
    """Check the parameters; return the row counts of train/valid/test."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"name (--name) must be a plain folder name; got {name!r}.")
    if int(n_impressions) != n_impressions or n_impressions < MIN_IMPRESSIONS:
        raise ValueError(
            f"n_impressions (--n-impressions) must be an integer >= {MIN_IMPRESSIONS}"
            f" so that every split gets clicks; got {n_impressions!r}."
        )
    if int(n_users) != n_users or n_users < MIN_USERS:
        raise ValueError(
            f"n_users (--n-users) must be an integer >= {MIN_USERS}; got {n_users!r}."
            " Leave it out to scale it with n_impressions."
        )
    if int(n_items) != n_items or n_items < MIN_ITEMS:
        raise ValueError(
            f"n_items (--n-items) must be an integer >= {MIN_ITEMS}; got {n_items!r}."
            " Leave it out to scale it with n_impressions."
        )
    if int(n_categories) != n_categories or not MIN_CATEGORIES <= n_categories <= n_items:
        raise ValueError(
            f"n_categories (--n-categories) must be an integer in [{MIN_CATEGORIES},"
            f" n_items={n_items}]; got {n_categories!r}."
        )
    if not 0.0 < ctr < 1.0:
        raise ValueError(
            f"ctr (--ctr) is the mean click probability and must lie strictly"
            f" between 0 and 1 (e.g. 0.04); got {ctr!r}."
        )
    if not 0.0 < cvr < 1.0:
        raise ValueError(
            f"cvr (--cvr) is the mean P(purchase | click) and must lie strictly"
            f" between 0 and 1 (e.g. 0.25, or 0.005 as in Ali-CCP); got {cvr!r}."
        )
    if not -1.0 <= rho <= 1.0:
        raise ValueError(
            f"rho (--rho) is the correlation of click and purchase affinity and"
            f" must lie in [-1, 1]; got {rho!r}."
        )
    fractions = [float(fraction) for fraction in split]
    if len(fractions) != 3 or any(fraction <= 0 for fraction in fractions):
        raise ValueError(
            f"split (--split) must be three positive fractions for train, valid"
            f" and test, e.g. 0.8 0.1 0.1; got {list(split)!r}."
        )
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            f"split (--split) must sum to 1 (e.g. 0.8 0.1 0.1); got {fractions!r}"
            f" summing to {sum(fractions):.6g}."
        )
    n_train = round(n_impressions * fractions[0])
    n_valid = round(n_impressions * fractions[1])
    n_test = int(n_impressions) - n_train - n_valid
    if min(n_train, n_valid, n_test) < 1:
        raise ValueError(
            f"split (--split) {fractions!r} leaves a split empty with"
            f" n_impressions={n_impressions}; use larger fractions or more impressions."
        )
    return n_train, n_valid, n_test


def _skewed_probabilities(rng: np.random.Generator, size: int, concentration: float) -> np.ndarray:
    """Uneven but never-zero probabilities over ``size`` values."""
    probabilities = rng.dirichlet(np.full(size, concentration))
    probabilities = probabilities + 1e-3 / size
    return probabilities / probabilities.sum()


def _exposure(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Log-normal popularity: a long tail of rarely shown entities."""
    weights = rng.lognormal(0.0, sigma, size)
    return weights / weights.sum()


def _mixed_latent(
    rng: np.random.Generator,
    parts: Sequence[tuple[np.ndarray, int, float]],
    n_rows: int,
) -> np.ndarray:
    """Latent vectors as a variance-weighted sum of shared field embeddings.

    ``parts`` are (value index per row, number of values, share of variance);
    the remaining share goes to individual noise, so every component has unit
    variance and dot products of two such latents have a known scale.
    """
    latent = np.zeros((n_rows, LATENT_DIM))
    shared_share = 0.0
    for value_index, n_values, share in parts:
        table = rng.standard_normal((n_values, LATENT_DIM))
        latent += math.sqrt(share) * table[value_index]
        shared_share += share
    latent += math.sqrt(max(0.0, 1.0 - shared_share)) * rng.standard_normal((n_rows, LATENT_DIM))
    return latent


def _scalar_effect(
    rng: np.random.Generator,
    parts: Sequence[tuple[np.ndarray, int, float]],
    noise_sd: float,
    n_rows: int,
) -> np.ndarray:
    """Additive logit effect: per-value effects (sd given) plus noise."""
    effect = noise_sd * rng.standard_normal(n_rows)
    for value_index, n_values, sd in parts:
        effect += sd * rng.standard_normal(n_values)[value_index]
    return effect


def _draw_world(rng: np.random.Generator, n_users: int, n_items: int, n_categories: int) -> _World:
    """Draw users, items and their hidden click/purchase propensities."""
    # Users: profile values with skewed marginals, as in Ali-CCP.
    field_sizes = [size for _, _, size in USER_PROFILE_FIELDS]
    profiles = np.column_stack(
        [rng.choice(size, n_users, p=_skewed_probabilities(rng, size, 2.0)) for size in field_sizes]
    )
    profile = {name: profiles[:, j] for j, (name, _, _) in enumerate(USER_PROFILE_FIELDS)}
    n_values = dict(zip((name for name, _, _ in USER_PROFILE_FIELDS), field_sizes))
    segment_sizes = [n_values[name] for name in SEGMENT_FIELDS]
    segment = np.ravel_multi_index([profile[name] for name in SEGMENT_FIELDS], segment_sizes)
    n_segments = int(np.prod(segment_sizes))
    user_latent_parts = [
        (segment, n_segments, 0.4),
        (profile["profile_category"], n_values["profile_category"], 0.15),
        (profile["profile_group"], n_values["profile_group"], 0.1),
        (profile["occupation"], n_values["occupation"], 0.05),
        (profile["geography"], n_values["geography"], 0.1),
    ]
    user_click_latent = _mixed_latent(rng, user_latent_parts, n_users)
    user_purchase_latent = _mixed_latent(rng, user_latent_parts, n_users)
    user_click_effect = _scalar_effect(
        rng,
        [
            (profile["age"], n_values["age"], 0.2),
            (profile["occupation"], n_values["occupation"], 0.15),
            (profile["geography"], n_values["geography"], 0.15),
            (profile["profile_group"], n_values["profile_group"], 0.15),
        ],
        0.25,
        n_users,
    )
    # Higher consumption levels buy more once they click.
    consumption_shift = np.linspace(-0.5, 0.5, n_values["consumption_level"])[profile["consumption_level"]]
    user_purchase_effect = consumption_shift + _scalar_effect(
        rng,
        [
            (profile["gender"], n_values["gender"], 0.15),
            (profile["age"], n_values["age"], 0.15),
        ],
        0.2,
        n_users,
    )

    # Items: brands belong to one category, so brand is informative beyond it.
    n_brands = max(n_categories, n_items // ITEMS_PER_BRAND)
    n_shops = max(2, n_items // ITEMS_PER_SHOP)
    category_probs = _skewed_probabilities(rng, n_categories, 0.8)
    kind_shares = [share for _, share, _, _ in CATEGORY_KINDS]
    category_kind = rng.choice(len(CATEGORY_KINDS), n_categories, p=kind_shares)
    # Every category gets at least one brand; the rest follow category sizes.
    brand_category = np.concatenate(
        [
            np.arange(n_categories),
            rng.choice(n_categories, n_brands - n_categories, p=category_probs),
        ]
    )
    item_category = rng.choice(n_categories, n_items, p=category_probs)
    brands_by_category = np.argsort(brand_category, kind="stable")
    brand_count = np.bincount(brand_category, minlength=n_categories)
    brand_start = np.concatenate([[0], np.cumsum(brand_count)[:-1]])
    within_category = rng.random(n_items) * brand_count[item_category]
    brand_offset = within_category.astype(np.int64)  # floor: values are >= 0
    item_brand = brands_by_category[brand_start[item_category] + brand_offset]
    item_shop = rng.choice(n_shops, n_items, p=_exposure(rng, n_shops, 1.0))

    item_latent_parts = [
        (item_category, n_categories, 0.45),
        (item_brand, n_brands, 0.3),
        (item_shop, n_shops, 0.1),
    ]
    item_click_latent = _mixed_latent(rng, item_latent_parts, n_items)
    item_purchase_latent = _mixed_latent(rng, item_latent_parts, n_items)
    kind_click = np.array([click for _, _, click, _ in CATEGORY_KINDS])
    kind_purchase = np.array([purchase for _, _, _, purchase in CATEGORY_KINDS])
    category_noise = CATEGORY_EFFECT_SD * rng.standard_normal((2, n_categories))
    category_click = kind_click[category_kind] + category_noise[0]
    category_purchase = kind_purchase[category_kind] + category_noise[1]
    item_click_effect = category_click[item_category] + _scalar_effect(
        rng, [(item_brand, n_brands, 0.2)], 0.2, n_items
    )
    # Brand trust and shop service matter more for buying than for clicking.
    item_purchase_effect = category_purchase[item_category] + _scalar_effect(
        rng, [(item_brand, n_brands, 0.4), (item_shop, n_shops, 0.2)], 0.2, n_items
    )

    return _World(
        user_profiles=profiles,
        user_exposure=_exposure(rng, n_users, 1.0),
        user_click_latent=user_click_latent,
        user_purchase_latent=user_purchase_latent,
        user_click_effect=user_click_effect,
        user_purchase_effect=user_purchase_effect,
        item_category=item_category,
        item_shop=item_shop,
        item_brand=item_brand,
        item_exposure=_exposure(rng, n_items, 1.0),
        item_click_latent=item_click_latent,
        item_purchase_latent=item_purchase_latent,
        item_click_effect=item_click_effect,
        item_purchase_effect=item_purchase_effect,
        category_kind=category_kind,
        n_brands=n_brands,
        n_shops=n_shops,
    )


def _logit_offsets(
    world: _World,
    users: np.ndarray,
    items: np.ndarray,
    positions: np.ndarray,
    rho: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Click and conversion logits of each impression, without global biases."""
    n_rows = len(users)
    click_affinity = np.empty(n_rows)
    purchase_own_affinity = np.empty(n_rows)
    scale = 1.0 / math.sqrt(LATENT_DIM)  # unit-variance latents -> unit-variance dot
    for start in range(0, n_rows, CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        user, item = users[rows], items[rows]
        click_affinity[rows] = scale * np.einsum(
            "ij,ij->i", world.user_click_latent[user], world.item_click_latent[item]
        )
        purchase_own_affinity[rows] = scale * np.einsum(
            "ij,ij->i",
            world.user_purchase_latent[user],
            world.item_purchase_latent[item],
        )
    purchase_affinity = rho * click_affinity + math.sqrt(1.0 - rho * rho) * purchase_own_affinity
    click_offset = (
        world.user_click_effect[users]
        + world.item_click_effect[items]
        + np.asarray(POSITION_CLICK_EFFECT)[positions]
        + CLICK_AFFINITY_SCALE * click_affinity
    )
    conversion_offset = (
        world.user_purchase_effect[users]
        + world.item_purchase_effect[items]
        + PURCHASE_AFFINITY_SCALE * purchase_affinity
    )
    return click_offset, conversion_offset


def _calibrate_bias(offsets: np.ndarray, target: float, weights: np.ndarray | None = None) -> float:
    """Bias b with weighted mean of sigmoid(b + offsets) equal to ``target``.

    Safeguarded Newton: the mean is increasing in b, so a bisection bracket
    guarantees convergence while Newton steps make it take a few passes.
    """
    low, high = -60.0, 60.0
    bias = math.log(target / (1.0 - target)) - float(np.median(offsets))
    for _ in range(200):
        probabilities = sigmoid(bias + offsets)
        gap = float(np.average(probabilities, weights=weights)) - target
        if abs(gap) <= 1e-12 * target:
            break
        if gap < 0:
            low = bias
        else:
            high = bias
        slope = float(np.average(probabilities * (1.0 - probabilities), weights=weights))
        step = bias - gap / slope if slope > 0 else math.nan
        bias = step if low < step < high else 0.5 * (low + high)
        if high - low < 1e-13:
            break
    return bias


def _cross_ids(left: np.ndarray, right: np.ndarray, n_right: int) -> np.ndarray:
    """Compact 1-based id per distinct (left, right) pair, like Ali-CCP crosses."""
    codes = left.astype(np.int64) * n_right + right
    _, dense = np.unique(codes, return_inverse=True)
    return dense.astype(np.int64) + 1


def _write_table(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, sep="\t", index=False, lineterminator="\n")


def _write_truth(p_click: np.ndarray, p_purchase: np.ndarray, path: Path) -> None:
    """Gzip'd truth with a fixed header time, so reruns are byte-identical."""
    buffer = io.StringIO()
    frame = pd.DataFrame({TRUTH_COLUMNS[0]: p_click, TRUTH_COLUMNS[1]: p_purchase})
    frame.to_csv(
        buffer,
        sep="\t",
        index=False,
        lineterminator="\n",
        float_format=PROBABILITY_FORMAT,
    )
    path.write_bytes(gzip.compress(buffer.getvalue().encode("ascii"), compresslevel=6, mtime=0))


def generate(
    output_dir: str | Path = "dataset",
    name: str = DEFAULT_NAME,
    n_impressions: int = DEFAULT_N_IMPRESSIONS,
    n_users: int | None = None,
    n_items: int | None = None,
    n_categories: int = DEFAULT_N_CATEGORIES,
    ctr: float = DEFAULT_CTR,
    cvr: float = DEFAULT_CVR,
    rho: float = DEFAULT_RHO,
    seed: int = DEFAULT_SEED,
    split: Sequence[float] = DEFAULT_SPLIT,
) -> Path:
    """Write the dataset ``<output_dir>/<name>/`` and return that folder.

    Args:
        output_dir: parent folder (RecBole's ``data_path``).
        name: dataset name; also the folder and file prefix.
        n_impressions: number of impressions over all splits.
        n_users, n_items: population sizes; ``None`` scales them with
            ``n_impressions`` (about 30 impressions per user and per item).
        n_categories: number of item categories.
        ctr: mean true click probability (Ali-CCP: about 0.04).
        cvr: click-weighted mean true P(purchase | click) (Ali-CCP: ~0.005).
        rho: correlation of the click and purchase affinities.
        seed: the only source of randomness.
        split: fractions of train/valid/test (rows are i.i.d., split in order).

    Raises:
        ValueError: a parameter is out of range (the message names it).
    """
    if n_users is None:
        n_users = default_n_users(int(n_impressions))
    if n_items is None:
        n_items = default_n_items(int(n_impressions))
    split_rows = _validate(name, n_impressions, n_users, n_items, n_categories, ctr, cvr, rho, split)
    n_impressions, n_users, n_items = int(n_impressions), int(n_users), int(n_items)
    n_categories = int(n_categories)

    # Separate streams: the world does not change when only n_impressions does.
    world_seed, impression_seed, label_seed = np.random.SeedSequence(seed).spawn(3)
    world = _draw_world(np.random.default_rng(world_seed), n_users, n_items, n_categories)

    impression_rng = np.random.default_rng(impression_seed)
    users = impression_rng.choice(n_users, n_impressions, p=world.user_exposure)
    items = impression_rng.choice(n_items, n_impressions, p=world.item_exposure)
    positions = impression_rng.choice(len(POSITION_PROBS), n_impressions, p=POSITION_PROBS)

    click_offset, conversion_offset = _logit_offsets(world, users, items, positions, rho)
    click_bias = _calibrate_bias(click_offset, ctr)
    p_click = sigmoid(click_bias + click_offset)
    # Weighting by p_click makes expected purchases / expected clicks == cvr.
    conversion_bias = _calibrate_bias(conversion_offset, cvr, weights=p_click)
    p_conversion = sigmoid(conversion_bias + conversion_offset)
    p_purchase = p_click * p_conversion

    label_rng = np.random.default_rng(label_seed)
    click = label_rng.random(n_impressions) < p_click
    purchase = click & (label_rng.random(n_impressions) < p_conversion)

    item_category = world.item_category[items]
    profile_column = {field: j for j, (field, _, _) in enumerate(USER_PROFILE_FIELDS)}
    user_attribute = {
        field: world.user_profiles[users, profile_column[field]]
        for field in ("profile_category", "consumption_level", "age")
    }
    inter = pd.DataFrame(
        {
            "user_id:token": users + 1,
            "item_id:token": items + 1,
            "position:token": positions + 1,
            # Crosses pair a user attribute with an item attribute (Ali-CCP's 508 pairs the
            # user's past categories with the item's category): shared by many impressions,
            # not row identifiers a model could memorise.
            "user_category:token": _cross_ids(
                user_attribute["profile_category"], item_category, n_categories
            ),
            "user_shop:token": _cross_ids(
                user_attribute["consumption_level"], world.item_shop[items], world.n_shops
            ),
            "user_brand:token": _cross_ids(user_attribute["age"], world.item_brand[items], world.n_brands),
            "click:float": click.astype(np.int8),
            "purchase:float": purchase.astype(np.int8),
        },
        columns=list(INTER_COLUMNS),
    )

    dataset_dir = Path(output_dir) / name
    dataset_dir.mkdir(parents=True, exist_ok=True)
    user_table = {"user_id:token": np.arange(1, n_users + 1)}
    for j, (field, _, _) in enumerate(USER_PROFILE_FIELDS):
        user_table[f"{field}:token"] = world.user_profiles[:, j] + 1
    _write_table(pd.DataFrame(user_table), dataset_dir / f"{name}.user")
    item_table = {
        "item_id:token": np.arange(1, n_items + 1),
        "category:token": world.item_category + 1,
        "shop:token": world.item_shop + 1,
        "brand:token": world.item_brand + 1,
    }
    _write_table(pd.DataFrame(item_table), dataset_dir / f"{name}.item")

    counts = {}
    start = 0
    for split_name, n_rows in zip(SPLIT_NAMES, split_rows):
        rows = slice(start, start + n_rows)
        start += n_rows
        _write_table(inter.iloc[rows], dataset_dir / f"{name}.{split_name}.inter")
        _write_truth(
            p_click[rows],
            p_purchase[rows],
            dataset_dir / f"{name}.{split_name}.truth.gz",
        )
        counts[split_name] = {
            "rows": int(n_rows),
            "users": int(np.unique(users[rows]).size),
            "items": int(np.unique(items[rows]).size),
            "clicks": int(click[rows].sum()),
            "purchases": int(purchase[rows].sum()),
            "expected_clicks": round(float(p_click[rows].sum()), 3),
            "expected_purchases": round(float(p_purchase[rows].sum()), 3),
        }
    counts["all"] = {
        "rows": int(n_impressions),
        "users": int(np.unique(users).size),
        "items": int(np.unique(items).size),
        "clicks": int(click.sum()),
        "purchases": int(purchase.sum()),
        "expected_clicks": round(float(p_click.sum()), 3),
        "expected_purchases": round(float(p_purchase.sum()), 3),
    }

    parameters = {
        "name": name,
        "n_impressions": int(n_impressions),
        "n_users": n_users,
        "n_items": n_items,
        "n_categories": n_categories,
        "ctr": float(ctr),
        "cvr": float(cvr),
        "rho": float(rho),
        "seed": int(seed),
        "split": [float(fraction) for fraction in split],
    }
    regenerate = " ".join(
        ["python -m recbole_cstwa.data.generator generate --output <dir>"]
        + [f"--{key.replace('_', '-')} {value}" for key, value in parameters.items() if key != "split"]
        + ["--split " + " ".join(str(fraction) for fraction in parameters["split"])]
    )
    meta = {
        "generator": "recbole_cstwa.data.generator",
        "format_version": FORMAT_VERSION,
        "parameters": parameters,
        "regenerate": regenerate,
        "derived": {
            "n_brands": world.n_brands,
            "n_shops": world.n_shops,
            "latent_dim": LATENT_DIM,
            "click_bias": click_bias,
            "conversion_bias": conversion_bias,
            "category_kinds": {
                kind: (np.flatnonzero(world.category_kind == k) + 1).tolist()
                for k, (kind, _, _, _) in enumerate(CATEGORY_KINDS)
                if kind != "regular"
            },
        },
        "truth": {
            "files": [f"{name}.{split_name}.truth.gz" for split_name in SPLIT_NAMES],
            "columns": {
                "p_click": "P(click | impression)",
                "p_purchase": "P(click and purchase | impression)",
            },
        },
        "counts": counts,
    }
    (dataset_dir / f"{name}.meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return dataset_dir


def _dataset_files(dataset_dir: Path, split: str) -> tuple[Path, Path]:
    """The .inter and truth files of a split; the name is the folder's name."""
    name = dataset_dir.name
    inter_path = dataset_dir / f"{name}.{split}.inter"
    if not inter_path.exists():
        candidates = sorted(dataset_dir.glob(f"*.{split}.inter"))
        if len(candidates) != 1:
            raise FileNotFoundError(f"no single *.{split}.inter file in {dataset_dir}")
        inter_path = candidates[0]
        name = inter_path.name[: -len(f".{split}.inter")]
    truth_path = dataset_dir / f"{name}.{split}.truth.gz"
    if not truth_path.exists():
        raise FileNotFoundError(f"truth file {truth_path} is missing")
    return inter_path, truth_path


def _auc_or_nan(labels: np.ndarray, scores: np.ndarray) -> float:
    if labels.min() == labels.max():
        return math.nan  # AUC is undefined with a single class
    return float(roc_auc_score(labels, scores))


def oracle_metrics(dataset_dir: str | Path, split: str = "test") -> dict:
    """Metrics of scoring a split with its own truth: the achievable ceiling.

    Returns counts (rows, clicks, purchases), ``click_auc`` (p_click vs click),
    ``purchase_auc`` (p_purchase vs purchase over all impressions, i.e. the
    CTCVR task), ``cvr_auc`` (P(purchase | click) vs purchase on clicked rows),
    and the oracle ``click_logloss`` and ``purchase_logloss``.
    """
    if split not in SPLIT_NAMES:
        raise ValueError(f"split (--split) must be one of {SPLIT_NAMES}; got {split!r}.")
    inter_path, truth_path = _dataset_files(Path(dataset_dir), split)
    labels = pd.read_csv(inter_path, sep="\t", usecols=["click:float", "purchase:float"])
    truth = pd.read_csv(truth_path, sep="\t")
    if len(labels) != len(truth):
        raise ValueError(f"{truth_path.name} has {len(truth)} rows but {inter_path.name} has {len(labels)}.")
    click = labels["click:float"].to_numpy()
    purchase = labels["purchase:float"].to_numpy()
    p_click = truth["p_click"].to_numpy()
    p_purchase = truth["p_purchase"].to_numpy()
    clicked = click == 1
    return {
        "split": split,
        "rows": len(click),
        "clicks": int(click.sum()),
        "purchases": int(purchase.sum()),
        "click_auc": _auc_or_nan(click, p_click),
        "purchase_auc": _auc_or_nan(purchase, p_purchase),
        "cvr_auc": _auc_or_nan(purchase[clicked], p_purchase[clicked] / p_click[clicked])
        if clicked.any()
        else math.nan,
        "click_logloss": float(log_loss(click, p_click, labels=[0, 1])),
        "purchase_logloss": float(log_loss(purchase, p_purchase, labels=[0, 1])),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_cstwa.data.generator",
        description="Synthetic Ali-CCP-like impressions with a known click/purchase truth.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("generate", help="write the RecBole atomic files and the truth")
    make.add_argument("--output", default="dataset", help="parent folder (default: dataset)")
    make.add_argument("--name", default=DEFAULT_NAME)
    make.add_argument("--n-impressions", type=int, default=DEFAULT_N_IMPRESSIONS)
    make.add_argument("--n-users", type=int, default=None, help="default: n_impressions / 30")
    make.add_argument("--n-items", type=int, default=None, help="default: n_impressions / 30")
    make.add_argument("--n-categories", type=int, default=DEFAULT_N_CATEGORIES)
    make.add_argument("--ctr", type=float, default=DEFAULT_CTR, help="mean P(click)")
    make.add_argument("--cvr", type=float, default=DEFAULT_CVR, help="mean P(purchase | click)")
    make.add_argument(
        "--rho",
        type=float,
        default=DEFAULT_RHO,
        help="click/purchase affinity correlation",
    )
    make.add_argument("--seed", type=int, default=DEFAULT_SEED)
    make.add_argument(
        "--split",
        type=float,
        nargs=3,
        default=list(DEFAULT_SPLIT),
        metavar=("TRAIN", "VALID", "TEST"),
    )
    oracle = commands.add_parser("oracle", help="print the oracle metrics of a split")
    oracle.add_argument("--dataset-dir", required=True)
    oracle.add_argument("--split", default="test", choices=SPLIT_NAMES)
    oracle.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "generate":
        started = time.perf_counter()
        try:
            path = generate(
                output_dir=args.output,
                name=args.name,
                n_impressions=args.n_impressions,
                n_users=args.n_users,
                n_items=args.n_items,
                n_categories=args.n_categories,
                ctr=args.ctr,
                cvr=args.cvr,
                rho=args.rho,
                seed=args.seed,
                split=args.split,
            )
        except ValueError as error:
            parser.error(str(error))
        elapsed = time.perf_counter() - started
        counts = json.loads((path / f"{args.name}.meta.json").read_text())["counts"]
        print(f"wrote {path} in {elapsed:.1f} s")
        for split_name in (*SPLIT_NAMES, "all"):
            row = counts[split_name]
            print(
                f"{split_name:>5}: rows={row['rows']} users={row['users']} items={row['items']}"
                f" clicks={row['clicks']} purchases={row['purchases']}"
            )
        return 0
    metrics = oracle_metrics(args.dataset_dir, args.split)
    if args.json:
        print(json.dumps(metrics))
    else:
        for key, value in metrics.items():
            print(f"{key}: {value:.6f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
