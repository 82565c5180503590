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
  ``rho * click_affinity + sqrt(1 - rho**2) * purchase_only_affinity``, and
  categories come in kinds: "clickbait" categories (a share
  ``clickbait_share`` of them) draw clicks but rarely sell, "everyday"
  categories (0.15) sell well on few clicks, "regular" ones take the rest.
  Position affects the click only.
* The logits of an impression of user u, item i at position k are::

      click_logit = click_bias + user_click_effect[u] + item_click_effect[i]
                    + position_effect[k] + 0.9 * click_affinity
                    + selection_bias * purchase_only_affinity
      conversion_logit = conversion_bias + user_purchase_effect[u]
                         + item_purchase_effect[i] + 1.0 * purchase_affinity
      p_click = sigmoid(click_logit)
      p_purchase = p_click * sigmoid(conversion_logit)

  where ``click_affinity`` and ``purchase_only_affinity`` are scaled dot
  products of independent user and item latents (unit variance each). With
  ``selection_bias > 0`` users click more where they would buy, so clicked
  impressions over-represent converting ones: the selection bias of the
  post-click CVR that entire-space models claim to correct (it has no effect
  on the conversion when ``rho`` is +-1).
* Users and items have skewed, sparse exposure (few impressions each), as in
  Ali-CCP.
* Cold start: a seeded share ``new_user_share`` of the users (``new_item_share``
  of the items) is held out of train: train impressions are drawn from the
  other users (items), valid and test impressions from all, so valid and test
  hold users and items never seen in training. ``meta.json`` names them.
* The click bias is calibrated numerically so the mean true click rate equals
  ``ctr``; the conversion bias so the click-weighted mean
  ``P(purchase | click)`` equals ``cvr``.

Everything is drawn from numpy's PCG64 seeded by ``seed`` and vectorised over
impressions; the same arguments give byte-identical files (on the same
platform and numpy version). Impressions are drawn, labelled and written in
blocks of ``STREAM_ROWS``, each column from its own stream advanced to the
block's first row, so the files do not depend on the block size and memory
stays bounded (about 16 bytes an impression for the logit offsets the global
calibration needs, plus one block): an Ali-CCP-sized dataset of 85M
impressions fits in a few GB. A block that straddles the end of train draws
each part with its split's probabilities from the same stream positions.

``<name>.meta.json`` records the parameters, a command line that regenerates
the files, the derived values and counts, and per split a BLAKE2b digest
(``hashlib.blake2b``, ``digest_size=16``, hex) of the written ``.inter`` and
``.truth.gz`` files (``truth.digests``), so that a reader can check that a
truth file belongs to the ``.inter`` file beside it.

Command line::

    recbole-cstwa-generate generate --output dataset
    recbole-cstwa-generate oracle --dataset-dir dataset/synthetic-ccp

This module deliberately imports only numpy, pandas, scikit-learn and the
standard library so that it runs without RecBole or torch.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_cstwa.file_writes import atomic_file, write_text

DEFAULT_NAME = "synthetic-ccp"
DEFAULT_N_IMPRESSIONS = 300_000
DEFAULT_N_CATEGORIES = 100
DEFAULT_CTR = 0.04
DEFAULT_CVR = 0.25
DEFAULT_RHO = 0.4
DEFAULT_SEED = 2023
DEFAULT_SPLIT = (0.8, 0.1, 0.1)
DEFAULT_CLICKBAIT_SHARE = 0.12
DEFAULT_SELECTION_BIAS = 0.0
DEFAULT_NEW_USER_SHARE = 0.0
DEFAULT_NEW_ITEM_SHARE = 0.0
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
# Impressions drawn, labelled and written per block: memory stays bounded at any size
# (about 16 bytes per impression for the two logit offsets the calibration needs).
STREAM_ROWS = 1 << 22
CALIBRATION_ROWS = 1 << 22
PROBABILITY_FORMAT = "%.6g"
DIGEST_SIZE = 16  # BLAKE2b-128 of the written files, in meta.json

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

# Category kinds: (name, share of categories, click effect, purchase effect). The clickbait
# share is the default of ``clickbait_share``; "regular" takes what the other two leave.
CATEGORY_KINDS = (
    ("regular", 0.73, 0.0, 0.0),
    ("clickbait", DEFAULT_CLICKBAIT_SHARE, 0.8, -1.5),
    ("everyday", 0.15, -0.5, 1.0),
)
EVERYDAY_SHARE = CATEGORY_KINDS[2][1]
CATEGORY_EFFECT_SD = 0.3

# Scales of the latent affinities in the click and conversion logits.
CLICK_AFFINITY_SCALE = 0.9
PURCHASE_AFFINITY_SCALE = 1.0
# Far beyond the click affinity's own weight: the click is then ruled by the purchase-only
# affinity alone.
MAX_SELECTION_BIAS = 10.0
# meta.json lists the held-out user (item) ids up to this many; always their count and digest.
MAX_LISTED_NEW_IDS = 10_000

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
    clickbait_share: float,
    selection_bias: float,
    new_user_share: float,
    new_item_share: float,
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
    max_clickbait_share = 1.0 - EVERYDAY_SHARE
    if not 0.0 <= clickbait_share <= max_clickbait_share:
        raise ValueError(
            f"clickbait_share (--clickbait-share) is the share of clickbait categories and must"
            f" lie in [0, {max_clickbait_share:.2f}] (everyday categories keep {EVERYDAY_SHARE},"
            f" regular ones take the rest; default {DEFAULT_CLICKBAIT_SHARE}); got {clickbait_share!r}."
        )
    if not -MAX_SELECTION_BIAS <= selection_bias <= MAX_SELECTION_BIAS:
        raise ValueError(
            f"selection_bias (--selection-bias) is the weight of the purchase-only affinity in the"
            f" click logit (0: none; the click affinity weighs {CLICK_AFFINITY_SCALE}) and must be"
            f" a number in [{-MAX_SELECTION_BIAS:g}, {MAX_SELECTION_BIAS:g}]; got {selection_bias!r}."
        )
    for knob, share, population, count, minimum in (
        ("new_user_share", new_user_share, "users", n_users, MIN_USERS),
        ("new_item_share", new_item_share, "items", n_items, MIN_ITEMS),
    ):
        held_out = _held_out_count(share, count) if 0.0 <= share < 1.0 else 0
        if not (0.0 <= share < 1.0 and (share == 0.0 or 1 <= held_out <= count - minimum)):
            raise ValueError(
                f"{knob} (--{knob.replace('_', '-')}) is the share of {population} held out of"
                f" train and must lie in [0, 1), holding out at least one of the {count}"
                f" {population} and leaving at least {minimum} for train; got {share!r}."
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


def _held_out_count(share: float, population: int) -> int:
    """Number of users (items) held out of train for ``share``."""
    return round(share * population)


def _category_kind_shares(clickbait_share: float) -> list[float]:
    """Probabilities of the kinds in ``CATEGORY_KINDS`` order: regular takes the rest."""
    return [max(0.0, 1.0 - clickbait_share - EVERYDAY_SHARE), clickbait_share, EVERYDAY_SHARE]


def _held_out(seed: np.random.SeedSequence, population: int, share: float) -> np.ndarray:
    """Sorted 0-based ids of the held-out users (items): a seeded prefix of a permutation, so
    a larger share holds out a superset."""
    order = np.random.default_rng(seed).permutation(population)
    return np.sort(order[: _held_out_count(share, population)])


def _without(exposure: np.ndarray, held_out: np.ndarray) -> np.ndarray:
    """``exposure`` with the held-out entries at zero probability, renormalised."""
    if len(held_out) == 0:
        return exposure
    restricted = exposure.copy()
    restricted[held_out] = 0.0
    return restricted / restricted.sum()


def _ids_digest(ids: np.ndarray) -> str:
    """BLAKE2b-128 of the ids written one a line (decimal, ``\\n`` after each)."""
    text = "".join(f"{value}\n" for value in ids.tolist())
    return hashlib.blake2b(text.encode("ascii"), digest_size=DIGEST_SIZE).hexdigest()


class _DigestWriter(io.RawIOBase):
    """Writes to ``file`` and hashes the very bytes written (BLAKE2b-128)."""

    def __init__(self, file):
        super().__init__()
        self._file = file
        self.digest = hashlib.blake2b(digest_size=DIGEST_SIZE)

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.digest.update(data)
        self._file.write(data)  # a buffered file: writes all or raises
        return memoryview(data).nbytes


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


def _draw_world(
    rng: np.random.Generator, n_users: int, n_items: int, n_categories: int, clickbait_share: float
) -> _World:
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
    kind_shares = _category_kind_shares(clickbait_share)
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
    selection_bias: float,
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
    if selection_bias:  # users click more where they would buy
        click_offset += selection_bias * purchase_own_affinity
    conversion_offset = (
        world.user_purchase_effect[users]
        + world.item_purchase_effect[items]
        + PURCHASE_AFFINITY_SCALE * purchase_affinity
    )
    return click_offset, conversion_offset


def _calibrate_bias(offsets: np.ndarray, target: float, weights=None) -> float:
    """Bias b with weighted mean of sigmoid(b + offsets) equal to ``target``.

    Safeguarded Newton: the mean is increasing in b, so a bisection bracket
    guarantees convergence while Newton steps make it take a few passes.
    ``weights`` is ``None`` or a function of a row slice (so that no second
    full-length array is held); sums run over ``CALIBRATION_ROWS`` blocks.
    """
    low, high = -60.0, 60.0
    bias = math.log(target / (1.0 - target)) - float(np.median(offsets))
    blocks = [slice(start, start + CALIBRATION_ROWS) for start in range(0, len(offsets), CALIBRATION_ROWS)]
    block_weights = (
        [None if weights is None else weights(rows) for rows in blocks] if len(blocks) == 1 else None
    )
    for _ in range(200):
        totals = np.zeros(3)  # sum of weights, of weighted p, of weighted p (1 - p)
        for index, rows in enumerate(blocks):
            probabilities = sigmoid(bias + offsets[rows])
            weight = (
                block_weights[index]
                if block_weights is not None
                else (None if weights is None else weights(rows))
            )
            if weight is None:
                totals += (
                    len(probabilities),
                    probabilities.sum(),
                    (probabilities * (1.0 - probabilities)).sum(),
                )
            else:
                totals += (
                    weight.sum(),
                    np.multiply(probabilities, weight).sum(),
                    np.multiply(probabilities * (1.0 - probabilities), weight).sum(),
                )
        gap = float(totals[1] / totals[0]) - target
        if abs(gap) <= 1e-12 * target:
            break
        if gap < 0:
            low = bias
        else:
            high = bias
        slope = float(totals[2] / totals[0])
        step = bias - gap / slope if slope > 0 else math.nan
        bias = step if low < step < high else 0.5 * (low + high)
        if high - low < 1e-13:
            break
    return bias


def _stream(seed: np.random.SeedSequence, skip: int) -> np.random.Generator:
    """A generator on ``seed`` advanced by ``skip`` 64-bit draws (one per uniform double)."""
    bit_generator = np.random.PCG64(seed)
    bit_generator.advance(skip)
    return np.random.Generator(bit_generator)


# Per-split row counts of cold-start rows, in the order _counts' ``cold_rows`` holds them.
COLD_ROW_COUNTS = (
    "rows_new_user",
    "rows_new_item",
    "rows_user_unseen_in_train",
    "rows_item_unseen_in_train",
)


def _counts(
    n_rows: int,
    users_seen: np.ndarray,
    items_seen: np.ndarray,
    totals: np.ndarray,
    cold_rows: np.ndarray,
) -> dict:
    return {
        "rows": int(n_rows),
        "users": int(users_seen.sum()),
        "items": int(items_seen.sum()),
        "clicks": int(totals[0]),
        "purchases": int(totals[1]),
        "expected_clicks": round(float(totals[2]), 3),
        "expected_purchases": round(float(totals[3]), 3),
        **{key: int(count) for key, count in zip(COLD_ROW_COUNTS, cold_rows)},
    }


def _held_out_record(held_out: np.ndarray, share: float) -> dict:
    """meta.json's account of the held-out users (items): 1-based ids, listed if not too many."""
    ids = held_out + 1
    record = {"share": float(share), "count": len(ids), "ids_blake2b": _ids_digest(ids)}
    if len(ids) <= MAX_LISTED_NEW_IDS:
        record["ids"] = ids.tolist()
    return record


def _write_table(frame: pd.DataFrame, path: Path) -> None:
    with atomic_file(path, "w", newline="") as file:
        frame.to_csv(file, sep="\t", index=False, lineterminator="\n")


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
    clickbait_share: float = DEFAULT_CLICKBAIT_SHARE,
    selection_bias: float = DEFAULT_SELECTION_BIAS,
    new_user_share: float = DEFAULT_NEW_USER_SHARE,
    new_item_share: float = DEFAULT_NEW_ITEM_SHARE,
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
        clickbait_share: probability of a category being "clickbait" (draws
            clicks, rarely sells); "everyday" keeps 0.15, "regular" the rest.
        selection_bias: weight of the purchase-only affinity in the click
            logit (module docstring); > 0 makes clicked impressions
            over-represent converting ones.
        new_user_share, new_item_share: shares of users / items held out of
            train (cold start in valid and test); seeded by ``seed``.

    Raises:
        ValueError: a parameter is out of range (the message names it).
    """
    if n_users is None:
        n_users = default_n_users(int(n_impressions))
    if n_items is None:
        n_items = default_n_items(int(n_impressions))
    split_rows = _validate(
        name,
        n_impressions,
        n_users,
        n_items,
        n_categories,
        ctr,
        cvr,
        rho,
        split,
        clickbait_share,
        selection_bias,
        new_user_share,
        new_item_share,
    )
    n_impressions, n_users, n_items = int(n_impressions), int(n_users), int(n_items)
    n_categories = int(n_categories)

    # Separate streams: the world does not change when only n_impressions does; the held-out
    # users and items have their own (spawn(5)[:3] are the three streams of spawn(3)).
    streams = np.random.SeedSequence(seed).spawn(5)
    world_seed, impression_seed, label_seed, new_user_seed, new_item_seed = streams
    world = _draw_world(
        np.random.default_rng(world_seed), n_users, n_items, n_categories, float(clickbait_share)
    )
    new_users = _held_out(new_user_seed, n_users, new_user_share)
    new_items = _held_out(new_item_seed, n_items, new_item_share)
    user_is_new = np.zeros(n_users, dtype=bool)
    user_is_new[new_users] = True
    item_is_new = np.zeros(n_items, dtype=bool)
    item_is_new[new_items] = True
    # (size, probabilities in train, probabilities in valid and test) of each drawn column.
    impression_columns = (
        (n_users, _without(world.user_exposure, new_users), world.user_exposure),
        (n_items, _without(world.item_exposure, new_items), world.item_exposure),
        (len(POSITION_PROBS), POSITION_PROBS, POSITION_PROBS),
    )
    train_end = split_rows[0]

    # Every column is its own stream on one generator state, advanced so that drawing a block
    # of rows gives exactly the values of drawing all rows at once (one 64-bit draw a value).
    # A block across the end of train draws each part with its split's probabilities.
    def impression_block(rows: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts = [
            (part, is_train)
            for part, is_train in (
                (slice(rows.start, min(rows.stop, train_end)), True),
                (slice(max(rows.start, train_end), rows.stop), False),
            )
            if part.start < part.stop
        ]
        draws = []
        for column, (size, train_p, other_p) in enumerate(impression_columns):
            pieces = [
                _stream(impression_seed, column * n_impressions + part.start).choice(
                    size, part.stop - part.start, p=train_p if is_train else other_p
                )
                for part, is_train in parts
            ]
            draws.append(pieces[0] if len(pieces) == 1 else np.concatenate(pieces))
        return draws[0], draws[1], draws[2]

    blocks = [slice(s, min(s + STREAM_ROWS, n_impressions)) for s in range(0, n_impressions, STREAM_ROWS)]
    # Pass 1: the logit offsets (the biases are calibrated on all impressions) and which
    # user x item attribute crosses occur (their compact ids are numbered over all rows).
    click_offset = np.empty(n_impressions)
    conversion_offset = np.empty(n_impressions)
    profile_column = {field: j for j, (field, _, _) in enumerate(USER_PROFILE_FIELDS)}
    crosses = (
        ("user_category:token", "profile_category", world.item_category, n_categories),
        ("user_shop:token", "consumption_level", world.item_shop, world.n_shops),
        ("user_brand:token", "age", world.item_brand, world.n_brands),
    )
    cross_seen = {
        column: np.zeros(USER_PROFILE_FIELDS[profile_column[field]][2] * n_right, dtype=bool)
        for column, field, _, n_right in crosses
    }

    def cross_codes(users: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        return {
            column: world.user_profiles[users, profile_column[field]].astype(np.int64) * n_right
            + attribute[items]
            for column, field, attribute, n_right in crosses
        }

    for rows in blocks:
        users, items, positions = impression_block(rows)
        click_offset[rows], conversion_offset[rows] = _logit_offsets(
            world, users, items, positions, rho, selection_bias
        )
        for column, codes in cross_codes(users, items).items():
            cross_seen[column][codes] = True
    # Crosses pair a user attribute with an item attribute (Ali-CCP's 508 pairs the user's past
    # categories with the item's category): shared by many impressions, not row identifiers a
    # model could memorise. Ids are 1-based in the order of the pair code, over all rows.
    cross_id = {column: np.cumsum(seen) for column, seen in cross_seen.items()}

    click_bias = _calibrate_bias(click_offset, ctr)
    # Weighting by p_click makes expected purchases / expected clicks == cvr.
    conversion_bias = _calibrate_bias(
        conversion_offset, cvr, weights=lambda rows: sigmoid(click_bias + click_offset[rows])
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

    # Pass 2: labels and files, block by block within each split.
    counts = {}
    users_seen_all = np.zeros(n_users, dtype=bool)
    items_seen_all = np.zeros(n_items, dtype=bool)
    totals_all = np.zeros(4)
    cold_rows_all = np.zeros(len(COLD_ROW_COUNTS), dtype=np.int64)
    train_users_seen = train_items_seen = None
    digests = {}
    start = 0
    for split_name, n_rows in zip(SPLIT_NAMES, split_rows):
        split_blocks = [
            slice(s, min(s + STREAM_ROWS, start + n_rows)) for s in range(start, start + n_rows, STREAM_ROWS)
        ]
        start += n_rows
        users_seen = np.zeros(n_users, dtype=bool)
        items_seen = np.zeros(n_items, dtype=bool)
        totals = np.zeros(4)  # clicks, purchases, expected clicks, expected purchases
        cold_rows = np.zeros(len(COLD_ROW_COUNTS), dtype=np.int64)
        inter_path = dataset_dir / f"{name}.{split_name}.inter"
        truth_path = dataset_dir / f"{name}.{split_name}.truth.gz"
        # zlib's gzip wrapper, streamed: the bytes gzip.compress(level 6, mtime 0) gives.
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        with (
            atomic_file(inter_path, "wb") as inter_binary,
            atomic_file(truth_path, "wb") as truth_binary,
        ):
            # Both files are hashed as they are written (no second read).
            inter_digest = _DigestWriter(inter_binary)
            truth_file = _DigestWriter(truth_binary)
            inter_file = io.TextIOWrapper(io.BufferedWriter(inter_digest), encoding="ascii", newline="")
            for index, rows in enumerate(split_blocks):
                users, items, positions = impression_block(rows)
                p_click = sigmoid(click_bias + click_offset[rows])
                p_conversion = sigmoid(conversion_bias + conversion_offset[rows])
                p_purchase = p_click * p_conversion
                size = rows.stop - rows.start
                click = _stream(label_seed, rows.start).random(size) < p_click
                purchase = click & (
                    _stream(label_seed, n_impressions + rows.start).random(size) < p_conversion
                )
                codes = cross_codes(users, items)
                inter = pd.DataFrame(
                    {
                        "user_id:token": users + 1,
                        "item_id:token": items + 1,
                        "position:token": positions + 1,
                        **{column: cross_id[column][codes[column]] for column in codes},
                        "click:float": click.astype(np.int8),
                        "purchase:float": purchase.astype(np.int8),
                    },
                    columns=list(INTER_COLUMNS),
                )
                inter.to_csv(inter_file, sep="\t", index=False, header=index == 0, lineterminator="\n")
                truth = pd.DataFrame({TRUTH_COLUMNS[0]: p_click, TRUTH_COLUMNS[1]: p_purchase})
                text = truth.to_csv(
                    sep="\t",
                    index=False,
                    header=index == 0,
                    lineterminator="\n",
                    float_format=PROBABILITY_FORMAT,
                )
                truth_file.write(compressor.compress(text.encode("ascii")))
                users_seen[users] = True
                items_seen[items] = True
                totals += (click.sum(), purchase.sum(), p_click.sum(), p_purchase.sum())
                in_train = train_users_seen is None
                cold_rows += (
                    user_is_new[users].sum(),
                    item_is_new[items].sum(),
                    0 if in_train else (~train_users_seen[users]).sum(),
                    0 if in_train else (~train_items_seen[items]).sum(),
                )
            inter_file.detach()  # flushes the text and its buffer; the file stays open
            truth_file.write(compressor.flush())
        digests[split_name] = {
            "inter": inter_digest.digest.hexdigest(),
            "truth": truth_file.digest.hexdigest(),
        }
        if train_users_seen is None:
            train_users_seen, train_items_seen = users_seen, items_seen
        users_seen_all |= users_seen
        items_seen_all |= items_seen
        totals_all += totals
        cold_rows_all += cold_rows
        counts[split_name] = _counts(n_rows, users_seen, items_seen, totals, cold_rows)
    counts["all"] = _counts(n_impressions, users_seen_all, items_seen_all, totals_all, cold_rows_all)

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
        "clickbait_share": float(clickbait_share),
        "selection_bias": float(selection_bias),
        "new_user_share": float(new_user_share),
        "new_item_share": float(new_item_share),
    }
    regenerate = " ".join(
        ["recbole-cstwa-generate generate --output <dir>"]
        + [f"--{key.replace('_', '-')} {value}" for key, value in parameters.items() if key != "split"]
        + ["--split " + " ".join(str(fraction) for fraction in parameters["split"])]
    )
    meta = {
        "generator": "recbole_cstwa.tools.generator",
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
            # A truth file belongs to the .inter file beside it only if both digests match.
            "digest": f"blake2b, digest_size={DIGEST_SIZE}, hex, of each written file's bytes",
            "digests": digests,
        },
        "cold_start": {
            "new_users": _held_out_record(new_users, new_user_share),
            "new_items": _held_out_record(new_items, new_item_share),
            "row_counts": "counts.<split>.rows_new_user / rows_new_item (held out of train),"
            " rows_user_unseen_in_train / rows_item_unseen_in_train (held out or never drawn in train)",
        },
        "counts": counts,
    }
    write_text(dataset_dir / f"{name}.meta.json", json.dumps(meta, indent=2) + "\n")
    return dataset_dir
