"""A cache of the processed dataset that loads without pickle: one ``.npy`` per column plus a JSON
manifest, keyed by the content of the data files and every setting that changes the result.

Layout: ``<dataset_cache_dir or checkpoint_dir>/<dataset>-dataset-<key>/`` holding
``manifest.json`` (field types and sources, id tokens as plain lists, split sizes, the shape and
dtype of every array, and its checksum, :func:`recbole_cstwa.digest.array_checksum`) and ``<feat>.<field>.npy``. Arrays are read with
``np.load(allow_pickle=False, mmap_mode="c")``: copy-on-write memory maps, so several processes
reading the same cache share its pages. The directory is written under a temporary name and
renamed into place, so a reader never sees half a cache.

Nothing in a cache folder is trusted: every name in the manifest must be a plain file name in
that folder, every array must match its checksum, and the labels pass the label checks again;
anything else (a parse error included) means the cache is rebuilt, with a log line.

The key hashes every byte of the atomic files the dataset reads, and with ``truth_metrics`` of
the truth files and meta.json it reads (:mod:`recbole_cstwa.data.truth`), with
:func:`recbole_cstwa.digest.file_digest` (BLAKE2b streamed in 16 MiB blocks: seconds for
Ali-CCP's files, and a changed cell anywhere in a file gives another key, which a size /
modification-time check would not). A file that
changes while it is read (its size, modification or status-change time, or inode differ after
loading from before hashing) is not cached: its key would describe other bytes than those read.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from logging import getLogger

import numpy as np
import recbole
import torch
from recbole.data.interaction import Interaction
from recbole.utils import FeatureSource, FeatureType
from recbole.utils.argument_list import dataset_arguments

from recbole_cstwa.data.dataset import TokenIds
from recbole_cstwa.data.truth import meta_file, truth_files
from recbole_cstwa.digest import array_checksum, file_digest
from recbole_cstwa.errors import CacheError
from recbole_cstwa.file_writes import remove_stale_temporaries, replace_directory

# 2: cells such as NA, null or None are tokens (version 1 read them as missing, the padding id).
# 3: arrays carry a checksum.
# 4: the checksum covers each array's dtype and shape too (digest.array_checksum).
FORMAT_VERSION = 4
MANIFEST = "manifest.json"
_FEAT_NAME = re.compile(r"[A-Za-z0-9_]+_feat")

# Settings that change the processed dataset besides RecBole's own dataset arguments.
RESULT_SETTINGS = sorted(
    set(dataset_arguments)
    | {
        "encoding",
        "CLICK_FIELD",
        "PURCHASE_FIELD",
        "invalid_purchase",
        "numerical_features",
        "discretization",
        "normalize_field",
        "normalize_all",
        "benchmark_filename",
        "truth_metrics",
    }
)


def data_files(config):
    """The files a dataset reads, in a fixed order (those that exist): the atomic files, and with
    ``truth_metrics`` the truth files it reads and the meta.json vouching for them."""
    folder = config["data_path"]
    token = config["dataset"]
    if config["benchmark_filename"]:
        names = [f"{token}.{name}.inter" for name in config["benchmark_filename"]]
    else:
        names = [f"{token}.inter"]
    names += [f"{token}.user", f"{token}.item"]
    names += [f"{token}.{suffix}" for suffix in config["additional_feat_suffix"] or []]
    paths = [os.path.join(folder, name) for name in names if os.path.isfile(os.path.join(folder, name))]
    truth = list(truth_files(config).values())
    if truth and os.path.isfile(meta_file(config)):
        truth.append(meta_file(config))
    return paths + truth


def file_identity(path):
    """What changes when a file's bytes change: device, inode, size, modification and status-change
    times (the status-change time cannot be set back by a user, unlike the modification time)."""
    status = os.stat(path)
    return [status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns]


def cache_key(config, dataset_class):
    """The content fingerprint: file bytes, result-affecting settings, class and format.

    ``description["identities"]`` holds each file's :func:`file_identity` taken before it was
    hashed, for :func:`changed_files` after the dataset is read; ``description["digests"]`` each
    file's digest (the dataset's truth check reuses them), neither part of the key.
    """
    paths = data_files(config)
    identities = {path: file_identity(path) for path in paths}
    digests = {path: file_digest(path) for path in paths}
    description = {
        "format": FORMAT_VERSION,
        "recbole": recbole.__version__,
        "class": f"{dataset_class.__module__}.{dataset_class.__qualname__}",
        "files": [[os.path.basename(path), digests[path]] for path in paths],
        "settings": {key: config[key] for key in RESULT_SETTINGS},
    }
    text = json.dumps(description, sort_keys=True, default=str)
    key = hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
    return key, {**description, "identities": identities, "digests": digests}


def changed_files(description):
    """The data files that changed (or vanished) since :func:`cache_key` hashed them."""
    changed = []
    for path, identity in description.get("identities", {}).items():
        try:
            if file_identity(path) != identity:
                changed.append(path)
        except OSError:
            changed.append(path)
    return changed


def is_plain_name(name):
    """True for a file name inside its folder: no separator, no parent, not hidden, no NUL."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not name.startswith(".")
        and os.sep not in name
        and not (os.altsep and os.altsep in name)
        and "\0" not in name
        and os.path.basename(name) == name
    )


def open_cache_root(config):
    """Removes temporary folders that dead writers left in the cache folder (older than a few
    hours, of no live process)."""
    root = config["dataset_cache_dir"] or config["checkpoint_dir"]
    return remove_stale_temporaries(root)


def cache_dir(config, key):
    root = config["dataset_cache_dir"] or config["checkpoint_dir"]
    return os.path.join(root, f"{config['dataset']}-dataset-{key}")


def _enum_value(value):
    return value.value if isinstance(value, (FeatureType, FeatureSource)) else value


def _source(value):
    try:
        return FeatureSource(value)
    except ValueError:  # an additional feature file: RecBole keeps its suffix as a string
        return value


def save(dataset, directory, key, description):
    """Writes ``dataset`` (after ``_change_feat_format``) to ``directory`` atomically."""
    description = {
        name: value for name, value in description.items() if name not in ("identities", "digests")
    }
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    # The process id in the name tells a live writer's folder from one a dead writer left.
    temporary = tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=parent)
    try:
        arrays = {}

        def write(file_name, array):
            np.save(os.path.join(temporary, file_name), array, allow_pickle=False)
            arrays[file_name] = {
                "dtype": array.dtype.str,
                "shape": list(array.shape),
                "blake2b": array_checksum(array),
            }

        for feat_name in dataset.feat_name_list:
            feat = getattr(dataset, feat_name)
            for field in feat.columns:
                write(f"{feat_name}.{field}.npy", np.ascontiguousarray(feat[field].numpy()))
        for field, matrix in dataset._preloaded_weight.items():
            write(f"preload.{field}.npy", np.ascontiguousarray(matrix))
        manifest = {
            "format": FORMAT_VERSION,
            "key": key,
            "description": description,
            "feat_name_list": list(dataset.feat_name_list),
            "columns": {name: list(getattr(dataset, name).columns) for name in dataset.feat_name_list},
            "preloaded_weight": sorted(dataset._preloaded_weight),
            "field2type": {f: _enum_value(t) for f, t in dataset.field2type.items()},
            "field2source": {f: _enum_value(s) for f, s in dataset.field2source.items()},
            "field2seqlen": {f: int(n) for f, n in dataset.field2seqlen.items()},
            "field2bucketnum": {f: int(n) for f, n in dataset.field2bucketnum.items()},
            "field2id_token": {f: [str(t) for t in tokens] for f, tokens in dataset.field2id_token.items()},
            "alias": {name: [str(f) for f in fields] for name, fields in dataset.alias.items()},
            "rest_fields": [str(f) for f in dataset._rest_fields],
            "file_size_list": [int(n) for n in getattr(dataset, "file_size_list", None) or []] or None,
            "dropped_invalid_purchases": int(getattr(dataset, "dropped_invalid_purchases", 0)),
            "arrays": arrays,
        }
        with open(os.path.join(temporary, MANIFEST), "w", encoding="utf-8") as file:
            file.write(json.dumps(manifest))  # json.dumps uses the C encoder; json.dump does not
        old = replace_directory(temporary, directory)  # a broken cache under the same key, or a link
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _read_manifest(directory):
    path = os.path.join(directory, MANIFEST)
    if os.path.islink(directory) or os.path.islink(path):
        raise CacheError("a symbolic link instead of the cache folder or its manifest")
    try:
        with open(path, encoding="utf-8") as file:
            manifest = json.load(file)
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: deeply nested JSON
        raise CacheError(f"unreadable manifest ({type(error).__name__}: {str(error)[:200]})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise CacheError("manifest of another format")
    arrays = manifest.get("arrays")
    if not isinstance(arrays, dict):
        raise CacheError("manifest without its array list")
    for file_name, expected in arrays.items():
        if not is_plain_name(file_name) or not file_name.endswith(".npy"):
            raise CacheError(f"manifest names [{file_name}], not a file name inside the cache folder")
        if not isinstance(expected, dict) or not isinstance(expected.get("blake2b"), str):
            raise CacheError(f"manifest entry of {file_name} has no checksum")
    for feat_name in manifest.get("feat_name_list") or []:
        if not isinstance(feat_name, str) or not _FEAT_NAME.fullmatch(feat_name):
            raise CacheError(f"manifest names the table [{feat_name}]")
    return manifest


def _check_cached_labels(dataset):
    """The label checks of the atomic-file reader, again on the cached labels."""
    labels = {}
    for field in (dataset.config["CLICK_FIELD"], dataset.config["PURCHASE_FIELD"]):
        if field is None or field not in dataset.inter_feat.columns:
            raise CacheError(f"label [{field}] missing from the cached interactions")
        values = dataset.inter_feat[field].numpy()
        if not np.isin(values, (0, 1)).all():
            raise CacheError(f"cached label [{field}] holds values other than 0 and 1")
        labels[field] = values
    click, purchase = labels.values()
    if ((purchase == 1) & (click == 0)).any():
        raise CacheError("cached labels hold a purchase without a click")


def load(dataset_class, config, directory, key):
    """The dataset cached in ``directory``; raises :class:`CacheError` if it cannot be used."""
    manifest = _read_manifest(directory)
    if manifest.get("key") != key:
        raise CacheError("manifest of another dataset")

    def array(file_name):
        expected = manifest["arrays"].get(file_name)
        if expected is None or not is_plain_name(file_name):
            raise CacheError(f"{file_name} missing from the manifest")
        path = os.path.join(directory, file_name)
        if os.path.islink(path):
            raise CacheError(f"{file_name} is a symbolic link")
        try:
            value = np.load(path, allow_pickle=False, mmap_mode="c")
        except (OSError, ValueError) as error:
            raise CacheError(f"{file_name}: {error}") from None
        if value.dtype.str != expected["dtype"] or list(value.shape) != expected["shape"]:
            raise CacheError(f"{file_name}: {value.dtype.str}{list(value.shape)}, expected {expected}")
        if array_checksum(value) != expected["blake2b"]:
            raise CacheError(f"{file_name} does not match its checksum (changed after it was cached)")
        return value

    dataset = dataset_class.__new__(dataset_class)
    torch.utils.data.Dataset.__init__(dataset)
    dataset.config = config
    dataset.dataset_name = config["dataset"]
    dataset.logger = getLogger()
    dataset._get_preset()
    dataset._get_field_from_config()
    try:
        dataset.field2type = {f: FeatureType(t) for f, t in manifest["field2type"].items()}
        dataset.field2source = {f: _source(s) for f, s in manifest["field2source"].items()}
        dataset.field2seqlen = dict(manifest["field2seqlen"])
        dataset.field2bucketnum = dict(manifest["field2bucketnum"])
        dataset.field2id_token = {f: np.array(tokens) for f, tokens in manifest["field2id_token"].items()}
        dataset.field2token_id = {f: TokenIds(tokens) for f, tokens in dataset.field2id_token.items()}
        dataset.alias = {name: np.array(fields) for name, fields in manifest["alias"].items()}
        dataset._rest_fields = np.array(manifest["rest_fields"])
        dataset.feat_name_list = list(manifest["feat_name_list"])
        if manifest["file_size_list"] is not None:
            dataset.file_size_list = list(manifest["file_size_list"])
        dataset.dropped_invalid_purchases = manifest["dropped_invalid_purchases"]
        dataset.user_feat = dataset.item_feat = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for feat_name in dataset.feat_name_list:
                columns = {
                    field: torch.from_numpy(array(f"{feat_name}.{field}.npy"))
                    for field in manifest["columns"][feat_name]
                }
                setattr(dataset, feat_name, Interaction(columns))
        dataset._preloaded_weight = {
            field: np.asarray(array(f"preload.{field}.npy")) for field in manifest["preloaded_weight"]
        }
        _check_cached_labels(dataset)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as error:
        raise CacheError(f"inconsistent manifest ({error!r})"[:300]) from None
    return dataset
