"""A cache of the processed dataset that loads without pickle: one ``.npy`` per column plus a JSON
manifest, keyed by the content of the data files and every setting that changes the result.

Layout: ``<dataset_cache_dir or checkpoint_dir>/<dataset>-dataset-<key>/`` holding
``manifest.json`` (field types and sources, id tokens as plain lists, split sizes, the shape and
dtype of every array) and ``<feat>.<field>.npy``. Arrays are read with
``np.load(allow_pickle=False, mmap_mode="c")``: copy-on-write memory maps, so several processes
reading the same cache share its pages. The directory is written under a temporary name and
renamed into place, so a reader never sees half a cache.

The key hashes every byte of the atomic files the dataset reads (BLAKE2b, streamed in 16 MiB
blocks: about 1 GB/s on one core, a few seconds for Ali-CCP's files, and a changed cell anywhere
in a file gives another key, which a size / modification-time check would not).
"""

import hashlib
import json
import os
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

# 2: cells such as NA, null or None are tokens (version 1 read them as missing, the padding id).
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
_BLOCK = 16 << 20

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
    }
)


class CacheError(Exception):
    """A cache directory that cannot be used (truncated, foreign, or of another format)."""


def data_files(config):
    """The atomic files a dataset reads, in a fixed order (those that exist)."""
    folder = config["data_path"]
    token = config["dataset"]
    if config["benchmark_filename"]:
        names = [f"{token}.{name}.inter" for name in config["benchmark_filename"]]
    else:
        names = [f"{token}.inter"]
    names += [f"{token}.user", f"{token}.item"]
    names += [f"{token}.{suffix}" for suffix in config["additional_feat_suffix"] or []]
    return [os.path.join(folder, name) for name in names if os.path.isfile(os.path.join(folder, name))]


def file_digest(path):
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as file:
        while block := file.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def cache_key(config, dataset_class):
    """The content fingerprint: file bytes, result-affecting settings, class and format."""
    description = {
        "format": FORMAT_VERSION,
        "recbole": recbole.__version__,
        "class": f"{dataset_class.__module__}.{dataset_class.__qualname__}",
        "files": [[os.path.basename(path), file_digest(path)] for path in data_files(config)],
        "settings": {key: config[key] for key in RESULT_SETTINGS},
    }
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest(), description


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
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        arrays = {}
        for feat_name in dataset.feat_name_list:
            feat = getattr(dataset, feat_name)
            for field in feat.columns:
                array = np.ascontiguousarray(feat[field].numpy())
                file_name = f"{feat_name}.{field}.npy"
                np.save(os.path.join(temporary, file_name), array, allow_pickle=False)
                arrays[file_name] = {"dtype": array.dtype.str, "shape": list(array.shape)}
        for field, matrix in dataset._preloaded_weight.items():
            file_name = f"preload.{field}.npy"
            np.save(os.path.join(temporary, file_name), np.asarray(matrix), allow_pickle=False)
            arrays[file_name] = {"dtype": np.asarray(matrix).dtype.str, "shape": list(np.shape(matrix))}
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
        if os.path.isdir(directory):  # a broken cache under the same key: replace it
            shutil.rmtree(directory, ignore_errors=True)
        os.rename(temporary, directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def load(dataset_class, config, directory, key):
    """The dataset cached in ``directory``; raises :class:`CacheError` if it cannot be used."""
    try:
        with open(os.path.join(directory, MANIFEST), encoding="utf-8") as file:
            manifest = json.load(file)
    except (OSError, ValueError) as error:
        raise CacheError(f"unreadable manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION or manifest.get("key") != key:
        raise CacheError("manifest of another format or dataset")

    def array(file_name):
        expected = manifest["arrays"].get(file_name)
        if expected is None:
            raise CacheError(f"{file_name} missing from the manifest")
        try:
            value = np.load(os.path.join(directory, file_name), allow_pickle=False, mmap_mode="c")
        except (OSError, ValueError) as error:
            raise CacheError(f"{file_name}: {error}") from None
        if value.dtype.str != expected["dtype"] or list(value.shape) != expected["shape"]:
            raise CacheError(f"{file_name}: {value.dtype.str}{list(value.shape)}, expected {expected}")
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
        dataset._preloaded_weight = {field: np.asarray(array(f"preload.{field}.npy")) for field in manifest["preloaded_weight"]}
    except (KeyError, TypeError, ValueError) as error:
        raise CacheError(f"inconsistent manifest ({error!r})") from None
    return dataset
