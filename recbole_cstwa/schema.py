"""What a trained model knows about its data, kept in its checkpoint as plain data.

A checkpoint written by the plugin's trainers (:mod:`recbole_cstwa.checkpoint`) carries, besides
the parameters, what is needed to rebuild the model and map new impressions without the training
files:

- ``settings``: the resolved config, every value that is plain JSON data (:func:`stored_settings`);
- ``data``: each field's type, source and size, each token field's vocabulary (token -> index,
  RecBole's ``field2id_token``) and the user / item feature tables the dataset joins to each
  impression (:func:`describe_dataset`).

Vocabularies are stored as one ``uint8`` tensor of newline-joined UTF-8 tokens a field, not as a
list of strings: ``torch.load(weights_only=True)`` unpickles in Python, and 0.7M strings take
seconds there, one tensor none. Tokens of RecBole's atomic files never hold a newline (they are
lines of text).

:class:`TrainedDataset` stands in for RecBole's ``Dataset`` where a model is built from a
checkpoint alone: it answers ``num``, ``fields``, ``field2type``, ``get_user_feature`` ... as the
training dataset did.
"""

import json
import os

import numpy as np
import pyarrow as pa
import torch
from recbole.data.interaction import Interaction
from recbole.utils import FeatureSource, FeatureType

#: Config keys the Config derives itself (or that describe the run, not the model): not stored.
DERIVED_KEYS = frozenset(
    {
        "MODEL_TYPE",
        "MODEL_INPUT_TYPE",
        "eval_type",
        "device",
        "local_rank",
        "single_spec",
        "valid_metric_bigger",
        "model",
        "dataset",
        "world_size",
        "nproc",
        "ip",
        "port",
        "offset",
        # resolved by RecBole from their given form, which is what a Config takes
        "train_neg_sample_args",
        "valid_neg_sample_args",
        "test_neg_sample_args",
    }
)


def _is_plain(value):
    """JSON data: what a checkpoint may hold and a Config can take back."""
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return False
    return True


def stored_settings(config):
    """The resolved settings of ``config`` that are plain data, to rebuild the same Config.

    ``data_path`` is stored as the absolute folder holding the dataset's folder (RecBole's
    ``Config`` appends the dataset name to it).
    """
    settings = {
        key: json.loads(json.dumps(value))  # numpy scalars (float subclasses) as Python numbers
        for key, value in config.final_config_dict.items()
        if key not in DERIVED_KEYS and _is_plain(value)
    }
    settings["data_path"] = os.path.dirname(os.path.abspath(config["data_path"]))
    return settings


def encode_tokens(tokens):
    """A vocabulary (index -> token) as one ``uint8`` tensor of newline-joined UTF-8 text."""
    text = "\n".join(str(token) for token in tokens).encode("utf-8")
    return torch.frombuffer(bytearray(text), dtype=torch.uint8) if text else torch.zeros(0, dtype=torch.uint8)


def decode_tokens(encoded):
    """The inverse of :func:`encode_tokens`: a numpy array of strings, index -> token."""
    text = bytes(encoded.numpy()).decode("utf-8")
    return np.array(text.split("\n"), dtype=object)


def decode_tokens_arrow(encoded):
    """:func:`decode_tokens` as an Arrow string array, built from the bytes with no Python string
    a token (a scorer's look-up tables need no more)."""
    data = encoded.numpy()
    newlines = np.flatnonzero(data == NEWLINE)
    text = data[data != NEWLINE] if len(newlines) else data
    offsets = np.concatenate([[0], newlines - np.arange(len(newlines)), [len(text)]])
    wide = len(text) >= 2**31
    offsets = offsets.astype(np.int64 if wide else np.int32)
    return (pa.LargeStringArray if wide else pa.StringArray).from_buffers(
        len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(text))
    )


NEWLINE = ord("\n")


def _source_name(source):
    return source.value if isinstance(source, FeatureSource) else str(source)


def _columns(feat):
    if feat is None:
        return None
    return {str(field): feat[field].clone() for field in feat.columns}


def describe_dataset(dataset):
    """``dataset``'s fields, vocabularies and user / item feature tables as plain data."""
    fields = {}
    for field, ftype in dataset.field2type.items():
        fields[str(field)] = {
            "type": ftype.value,
            "source": _source_name(dataset.field2source.get(field, FeatureSource.INTERACTION)),
            "seqlen": int(dataset.field2seqlen.get(field, 1)),
            "num": int(dataset.num(field)),
        }
    return {
        "fields": fields,
        "uid_field": None if dataset.uid_field is None else str(dataset.uid_field),
        "iid_field": None if dataset.iid_field is None else str(dataset.iid_field),
        "vocabularies": {
            str(field): encode_tokens(tokens) for field, tokens in dataset.field2id_token.items()
        },
        "user_features": _columns(dataset.user_feat),
        "item_features": _columns(dataset.item_feat),
    }


class TrainedDataset:
    """The parts of RecBole's ``Dataset`` a model reads when it is built, from
    :func:`describe_dataset`'s output: the same fields in the same order, sizes and feature
    tables, so the model has the shapes of its checkpoint."""

    def __init__(self, description, config):
        self.config = config
        self.dataset_name = config["dataset"]
        fields = description["fields"]
        self.field2type = {field: FeatureType(info["type"]) for field, info in fields.items()}
        self.field2source = {field: _as_source(info["source"]) for field, info in fields.items()}
        self.field2seqlen = {field: info["seqlen"] for field, info in fields.items()}
        self._sizes = {field: info["num"] for field, info in fields.items()}
        self.uid_field = description["uid_field"]
        self.iid_field = description["iid_field"]
        self.label_field = config["LABEL_FIELD"]
        self._vocabularies = description["vocabularies"]
        self._decoded = {}
        self.user_feat = _interaction(description["user_features"])
        self.item_feat = _interaction(description["item_features"])

    def vocabulary(self, field):
        """Index -> token of a token field (numpy array of strings; index 0 is ``[PAD]``)."""
        if field not in self._decoded:
            self._decoded[field] = decode_tokens(self._vocabularies[field])
        return self._decoded[field]

    def vocabulary_array(self, field):
        """:meth:`vocabulary` as an Arrow string array (no Python string a token)."""
        return decode_tokens_arrow(self._vocabularies[field])

    @property
    def field2id_token(self):
        return {field: self.vocabulary(field) for field in self._vocabularies}

    def num(self, field):
        if field not in self._sizes:
            raise ValueError(f"Field [{field}] not defined in dataset.")
        return self._sizes[field]

    def fields(self, ftype=None, source=None):
        """RecBole's ``Dataset.fields``: fields of the given types and sources, in field order."""
        ftype = set(ftype) if ftype is not None else set(FeatureType)
        source = set(source) if source is not None else set(FeatureSource)
        return [
            field
            for field, field_type in self.field2type.items()
            if field_type in ftype and self.field2source[field] in source
        ]

    def get_user_feature(self):
        return _as_long(self.user_feat)

    def get_item_feature(self):
        return _as_long(self.item_feat)

    def join(self, interaction):
        """Adds the user and item features of each row (looked up by its user / item id)."""
        for feat, field in ((self.user_feat, self.uid_field), (self.item_feat, self.iid_field)):
            if feat is not None and field in interaction:
                ids = interaction[field].long()
                interaction.update(
                    Interaction({name: column[ids] for name, column in feat.interaction.items()})
                )
        return _as_long(interaction)


def _as_source(name):
    try:
        return FeatureSource(name)
    except ValueError:
        return name


def _interaction(columns):
    return Interaction(dict(columns)) if columns else None


def _as_long(interaction):
    if interaction is None:
        return None
    return Interaction(
        {
            field: value.long()
            if value.dtype in (torch.int8, torch.int16, torch.int32, torch.uint8)
            else value
            for field, value in interaction.interaction.items()
        }
    )
