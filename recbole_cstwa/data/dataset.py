"""The two-label impressions dataset: RecBole's ``Dataset`` with checked click and purchase labels.

The atomic files are read column by column with pyarrow (:mod:`recbole_cstwa.data.atomic_files`: token
columns dictionary-encoded, so no Python string is built per row), ids are remapped exactly as
RecBole remaps them, and token ids stay in the smallest integer type that holds them until a
batch is taken.
"""

import os
from collections import defaultdict
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from recbole.data.dataset import Dataset
from recbole.data.interaction import Interaction
from recbole.utils import FeatureSource, FeatureType

from recbole_cstwa.data.atomic_files import (
    as_strings,
    merge_token_blocks,
    read_columns,
    read_header,
    sequence_cells,
)
from recbole_cstwa.data.truth import meta_file, read_truth, truth_files
from recbole_cstwa.errors import DataFormatError
from recbole_cstwa.tasks import TRUTH_FIELDS

SPLIT_NAMES = ("train", "valid", "test")


class TokenIds(Mapping):
    """RecBole's ``field2token_id`` entry (token -> id), built on first use: most runs never
    look a token up, and the dict of 0.7M tokens costs seconds."""

    def __init__(self, tokens):
        self._tokens = tokens
        self._ids = None

    def _mapping(self):
        if self._ids is None:
            self._ids = {token: i for i, token in enumerate(self._tokens)}
        return self._ids

    def __getitem__(self, token):
        return self._mapping()[token]

    def __iter__(self):
        return iter(self._mapping())

    def __len__(self):
        return len(self._tokens)


def smallest_int_dtype(largest):
    """The smallest signed integer numpy type that holds ``0 .. largest``."""
    for dtype in (np.int8, np.int16, np.int32):
        if largest <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def take_rows(interaction, index):
    """Rows ``index`` of an ``Interaction``, as RecBole's ``interaction[index]``.

    RecBole turns an array index into a Python list and indexes every column with it (a large share
    of a training step: ``results/training-step.md``); an index array or tensor is gathered here
    with one ``index_select`` a column. Other indexes go to RecBole.
    """
    if isinstance(index, np.ndarray):
        index = torch.from_numpy(index)
    if not isinstance(index, torch.Tensor) or index.dtype == torch.bool:
        return interaction[index]
    index = index.long().reshape(-1)
    return Interaction(
        {
            field: column.index_select(0, index.to(column.device))
            for field, column in interaction.interaction.items()
        }
    )


def _as_long(interaction):
    """``interaction`` with every integer column as ``long`` (torch embeddings and indexing need it)."""
    for field, value in interaction.interaction.items():
        if value.dtype in (torch.int8, torch.int16, torch.int32, torch.uint8):
            interaction.interaction[field] = value.long()
    return interaction


def _line_numbers(mask, limit=5):
    """1-based file line numbers (the header is line 1) of the first ``limit`` rows in ``mask``."""
    rows = np.flatnonzero(np.asarray(mask))[:limit]
    return ", ".join(str(row + 2) for row in rows)


class MultiTaskDataset(Dataset):
    """Impressions with a click label and a purchase label (``CLICK_FIELD``, ``PURCHASE_FIELD``).

    Both labels are read as RecBole ``float`` columns and are never features. Every interaction
    file is checked when it is read: each label column exists, is declared ``float``, holds no
    missing value and only 0 or 1, and the file is not empty. Rows with a purchase but no click
    cannot happen in the click -> purchase funnel: they are dropped with a logged count, or
    rejected when ``invalid_purchase: error``. Splits come from RecBole's ``eval_args`` ratios or
    from pre-split files through ``benchmark_filename``; an empty split is an error.

    With ``truth_metrics`` on and a truth file beside an evaluation file (the generator's, see
    :mod:`recbole_cstwa.data.truth`), every row gets its true probabilities as the float fields
    :data:`~recbole_cstwa.tasks.TRUTH_FIELDS` (NaN where a file has none, as the training
    file), added when the file is read, so every later drop, split or shuffle moves them with
    their rows. They are never features (no model reads a float field outside
    ``numerical_features``, where they may not be listed) and are left out of RecBole's
    missing-value filling and normalisation.

    ``file_digests`` (path -> BLAKE2b digest), when given, are the data files' digests already
    computed (the dataset cache's key): the truth check then hashes no ``.inter`` file again.
    """

    def __init__(self, config, file_digests=None):
        self.file_digests = dict(file_digests or {})
        super().__init__(config)

    def _get_field_from_config(self):
        super()._get_field_from_config()
        self.click_field = self.config["CLICK_FIELD"]
        self.purchase_field = self.config["PURCHASE_FIELD"]
        self.label_fields = (self.click_field, self.purchase_field)
        self.dropped_invalid_purchases = 0
        self.truth_files = truth_files(self.config)
        self.truth_fields = tuple(TRUTH_FIELDS.values()) if self.truth_files else ()

    def _load_data(self, token, dataset_path):
        if not os.path.isdir(dataset_path):
            # RecBole would try to download a dataset it knows by name; ours are local files.
            raise DataFormatError(
                f"Dataset folder [{dataset_path}] does not exist: put the atomic files "
                f"({token}.inter or {token}.<split>.inter, {token}.user, {token}.item) there, or "
                "set data_path to the folder that holds the dataset's folder (the embedded "
                "synthetic-ccp is found from an editable install, pip install -e .)."
            )
        super()._load_data(token, dataset_path)

    def _check_inter_files(self, token, dataset_path):
        single_file = os.path.join(dataset_path, f"{token}.inter")
        if self.benchmark_filename_list is None and not os.path.isfile(single_file):
            split_files = [
                name
                for name in SPLIT_NAMES
                if os.path.isfile(os.path.join(dataset_path, f"{token}.{name}.inter"))
            ]
            hint = (
                f"; pre-split files for {split_files} are there: set benchmark_filename: "
                f'{split_files} (command line: --benchmark_filename="{split_files}")'
                if split_files
                else ""
            )
            raise DataFormatError(f"Interaction file [{single_file}] does not exist{hint}.")
        if self.benchmark_filename_list is not None:
            for name in self.benchmark_filename_list:
                path = os.path.join(dataset_path, f"{token}.{name}.inter")
                if not os.path.isfile(path):
                    raise DataFormatError(
                        f"Interaction file [{path}] named by benchmark_filename "
                        f"{list(self.benchmark_filename_list)} does not exist."
                    )

    def _load_inter_feat(self, token, dataset_path):
        self._check_inter_files(token, dataset_path)
        if self.benchmark_filename_list is None:
            super()._load_inter_feat(token, dataset_path)
            return
        # RecBole's loop, with token columns concatenated as categoricals (pd.concat would turn
        # categoricals with different categories into per-row Python strings).
        parts, seqlen = [], defaultdict(int)
        for name in self.benchmark_filename_list:
            parts.append(
                self._load_feat(
                    os.path.join(dataset_path, f"{token}.{name}.inter"), FeatureSource.INTERACTION
                )
            )
            for field, length in self.field2seqlen.items():
                seqlen[field] = max(seqlen[field], length)
        self.file_size_list = [len(part) for part in parts]
        fields = list(parts[0].columns)
        # One column at a time, each file's copy dropped once merged: the peak holds the files'
        # columns plus one merged column, not two copies of everything.
        parts = [{field: part[field] for field in fields} for part in parts]
        columns = {}
        for field in fields:
            pieces = [part.pop(field) for part in parts]
            if all(isinstance(piece.dtype, pd.CategoricalDtype) for piece in pieces):
                columns[field] = merge_token_blocks(
                    [(piece.array.codes, np.asarray(piece.array.categories)) for piece in pieces]
                )
            elif all(piece.dtype.kind == "f" for piece in pieces):
                columns[field] = np.concatenate([piece.to_numpy() for piece in pieces])
            else:
                columns[field] = pd.concat(pieces, ignore_index=True)
            del pieces
        self.inter_feat = pd.DataFrame(columns, copy=False)
        self.field2seqlen = seqlen

    def _read_atomic_file(self, filepath, source):
        """RecBole's ``_load_feat`` with the streamed pyarrow reader of
        :mod:`recbole_cstwa.data.atomic_files`: the same header parsing (``name:type``), ``load_col`` /
        ``unload_col``, missing cells and field properties, but token columns come back as pandas
        categoricals (codes + the distinct strings)."""
        field_separator = self.config["field_separator"]
        encoding = self.config["encoding"] or "utf-8"
        if len(field_separator) != 1:
            # pyarrow needs one character; RecBole's pandas reader would turn NA, null, ... into
            # missing cells.
            raise DataFormatError(
                f"field_separator must be one character, got {field_separator!r} (reading "
                f'[{filepath}]). Fix: write the atomic files tab separated (field_separator: "\\t").'
            )
        load_col, unload_col = self._get_load_and_unload_col(source)
        if load_col == set():
            return None
        header = read_header(filepath, field_separator, encoding)
        columns = []
        for name, field, ftype in header:
            if load_col is not None and field not in load_col:
                continue
            if unload_col is not None and field in unload_col:
                continue
            if isinstance(source, FeatureSource) or source != "link":
                self.field2source[field] = source
                self.field2type[field] = ftype
                if not ftype.value.endswith("seq"):
                    self.field2seqlen[field] = 1
                if "float" in ftype.value:
                    self.field2bucketnum[field] = 2
            columns.append((field, name, ftype))
        if not columns:
            self.logger.warning(f"No columns has been loaded from [{source}]")
            return None
        frame = read_columns(filepath, [name for name, _, _ in header], columns, field_separator, encoding)
        seq_len = self.config["seq_len"]
        for field, _, ftype in columns:
            if ftype.value.endswith("seq"):  # RecBole's own parsing of sequence cells (rare in CVR data)
                limit = seq_len[field] if seq_len and field in seq_len else None
                frame[field], self.field2seqlen[field] = sequence_cells(
                    frame[field], ftype == FeatureType.TOKEN_SEQ, self.config["seq_separator"], limit
                )
        return frame

    def _load_feat(self, filepath, source):
        try:
            feat = self._read_atomic_file(filepath, source)
        except DataFormatError:
            raise
        except ValueError as error:
            raise DataFormatError(
                f"Cannot read [{filepath}]: {error}. Check the header (name:type, separated by "
                f"field_separator {self.config['field_separator']!r}) and that the label columns "
                f"{list(self.label_fields)} are declared float and hold 0 or 1."
            ) from None
        if source == FeatureSource.INTERACTION:
            feat = self._check_labels(self._add_truth(feat, filepath), filepath)
        elif source in (FeatureSource.USER, FeatureSource.ITEM):
            feat = self._drop_duplicate_ids(feat, filepath, source)
        return feat

    def _add_truth(self, feat, filepath):
        """``feat`` (rows of ``filepath``) with the truth fields: the checked truth file's values,
        or NaN for a file without one. Nothing is added when the dataset has no truth file."""
        if not self.truth_fields or feat is None or len(feat) == 0:
            return feat
        clashing = [field for field in self.truth_fields if field in feat.columns]
        if clashing:
            raise DataFormatError(
                f"[{filepath}] has columns {clashing}, the names of the true probabilities read "
                "from the truth files beside it. Rename those columns, or set "
                "--truth_metrics=False."
            )
        truth_path = self.truth_files.get(filepath)
        if truth_path is None:
            values = [np.full(len(feat), np.nan, dtype=np.float32) for _ in self.truth_fields]
        else:
            values = read_truth(
                truth_path,
                filepath,
                meta_file(self.config),
                len(feat),
                inter_digest=self.file_digests.get(filepath),
            )
        for field, column in zip(self.truth_fields, values):
            feat[field] = column
            self.field2type[field] = FeatureType.FLOAT
            self.field2source[field] = FeatureSource.INTERACTION
            self.field2seqlen[field] = 1
            self.field2bucketnum[field] = 2
        return feat

    @property
    def float_like_fields(self):
        """RecBole's float fields (``normalize_all`` normalises them), the truth fields aside."""
        return [field for field in super().float_like_fields if field not in self.truth_fields]

    def _check_labels(self, feat, filepath):
        if feat is None or len(feat) == 0:
            raise DataFormatError(
                f"[{filepath}] holds no impressions: every split needs rows (check the file, or "
                "benchmark_filename / eval_args)."
            )
        for field in self.label_fields:
            if field not in feat.columns:
                raise DataFormatError(
                    f"[{filepath}] has no label column [{field}] (columns read: "
                    f"{list(feat.columns)}). Add a column '{field}:float' with 0/1 values, set "
                    "CLICK_FIELD / PURCHASE_FIELD to the names your file uses, or add it to "
                    "load_col."
                )
            if self.field2type[field] != FeatureType.FLOAT:
                raise DataFormatError(
                    f"[{filepath}] declares label [{field}] as {self.field2type[field].value}: "
                    f"declare it '{field}:float' in the header."
                )
            values = feat[field].to_numpy()
            missing = np.isnan(values)
            if missing.any():
                raise DataFormatError(
                    f"[{filepath}] label [{field}] is missing in {int(missing.sum())} rows "
                    f"(lines {_line_numbers(missing)}). Fill or drop those rows: a missing "
                    "label would otherwise be filled with the column mean."
                )
            not_binary = (values != 0) & (values != 1)
            if not_binary.any():
                examples = sorted(set(values[not_binary][:5].tolist()))
                raise DataFormatError(
                    f"[{filepath}] label [{field}] must be 0 or 1, found {examples} in "
                    f"{int(not_binary.sum())} rows (lines {_line_numbers(not_binary)})."
                )

        invalid = (feat[self.purchase_field].to_numpy() == 1) & (feat[self.click_field].to_numpy() == 0)
        if invalid.any():
            count = int(invalid.sum())
            if self.config["invalid_purchase"] == "error":
                raise DataFormatError(
                    f"[{filepath}] has {count} rows with {self.purchase_field}=1 and "
                    f"{self.click_field}=0 (lines {_line_numbers(invalid)}): a purchase needs a "
                    "click. Fix them, or set invalid_purchase: drop to drop them."
                )
            feat = feat.loc[~invalid].reset_index(drop=True)
            self.dropped_invalid_purchases += count
            self.logger.warning(
                f"[{filepath}]: dropped {count} rows with {self.purchase_field}=1 and "
                f"{self.click_field}=0 (a purchase needs a click; invalid_purchase: drop)."
            )
            if len(feat) == 0:
                raise DataFormatError(f"[{filepath}] holds no valid impressions after the drop.")
        return feat

    def _drop_duplicate_ids(self, feat, filepath, source):
        """Keeps the first row of an id listed twice in ``.user`` / ``.item`` (RecBole's rule),
        saying once how many rows were dropped and which ids."""
        field = self.uid_field if source == FeatureSource.USER else self.iid_field
        if feat is None or field is None or field not in feat:
            return feat
        duplicated = feat[field].duplicated(keep="first").to_numpy()
        if duplicated.any():
            examples = pd.unique(np.asarray(feat[field].to_numpy()[duplicated][:5], dtype=object))
            self.logger.warning(
                f"[{filepath}]: {int(duplicated.sum())} rows repeat a {field} listed earlier in the "
                f"file (first: {list(examples)}); the first row of each {field} is kept."
            )
            feat = feat.loc[~duplicated].reset_index(drop=True)
        return feat

    def _filter_inter_by_user_or_item(self):
        before = len(self.inter_feat)
        super()._filter_inter_by_user_or_item()
        dropped = before - len(self.inter_feat)
        if dropped:
            self.logger.warning(
                f"Dropped {dropped} of {before} impressions whose {self.uid_field} / {self.iid_field} "
                "is not listed in the .user / .item file (filter_inter_by_user_or_item: True; set it "
                "to False to keep them with padding features)."
            )

    def _filter_by_inter_num(self):
        # RecBole counts interactions per user / item in a Python Counter over every row even
        # when the interval keeps everything (its default "[0,inf)"); skip that no-op.
        keeps_all = [("[", 0.0, float("inf"), ")")]
        intervals = [self.config["user_inter_num_interval"], self.config["item_inter_num_interval"]]
        if all(value is None or self._parse_intervals_str(value) == keeps_all for value in intervals):
            return
        super()._filter_by_inter_num()

    def _remap(self, remap_list):
        """RecBole's ``_remap`` on categorical columns: the same ids without per-row strings.

        RecBole factorizes the concatenation of every column of one id space (inter first, then
        user / item files) and numbers tokens by first appearance from 1 (0 is ``[PAD]``, also
        given to missing cells). The first appearance of a token in the concatenation is its
        first appearance in the earliest column holding it, so the per-column first-appearance
        orders, concatenated and de-duplicated, give RecBole's order.
        """
        if not remap_list:
            return
        if not all(
            ftype == FeatureType.TOKEN and isinstance(feat[field].dtype, pd.CategoricalDtype)
            for feat, field, ftype in remap_list
        ):
            super()._remap(remap_list)
            return
        columns = [feat[field].array for feat, field, _ in remap_list]
        categories = [np.asarray(column.categories) for column in columns]
        if any(values.dtype == object for values in categories):  # integers and strings: as strings
            categories = [as_strings(values) for values in categories]
        ordered = []
        for column, values in zip(columns, categories):
            first_codes = pd.unique(column.codes)
            ordered.append(values[first_codes[first_codes >= 0]])
        tokens = pd.unique(np.concatenate(ordered))
        token_index = pd.Index(tokens)
        id_dtype = smallest_int_dtype(len(tokens))
        mapping = np.concatenate([np.array(["[PAD]"]), tokens.astype(str)])
        token_id = TokenIds(mapping)
        for (feat, field, _), column, values in zip(remap_list, columns, categories):
            # one entry per category, plus a last 0 that code -1 (a missing cell) picks
            lookup = np.append(token_index.get_indexer(values) + 1, 0).astype(id_dtype)
            feat[field] = lookup[column.codes]
            if field not in self.field2id_token:
                self.field2id_token[field] = mapping
                self.field2token_id[field] = token_id

    def _user_item_feat_preparation(self):
        for source, field, name in (
            (FeatureSource.USER, self.uid_field, "user"),
            (FeatureSource.ITEM, self.iid_field, "item"),
        ):
            feat = getattr(self, f"{name}_feat")
            if feat is None or field not in self.inter_feat:
                continue
            listed = np.zeros(self.num(field), dtype=bool)
            listed[feat[field].to_numpy()] = True
            missing_rows = ~listed[self.inter_feat[field].to_numpy()]
            if missing_rows.any():
                missing_ids = np.unique(self.inter_feat[field].to_numpy()[missing_rows])
                self.logger.warning(
                    f"{len(missing_ids)} {field}s of {int(missing_rows.sum())} impressions are not "
                    f"listed in the .{source.value} file: their {name} features are RecBole's "
                    "padding (id 0)."
                )
        super()._user_item_feat_preparation()

    def _fill_nan(self):
        # RecBole fills a float field's missing values with its mean: the training rows' NaN
        # truth stays NaN (no truth there), so the truth columns sit this step out.
        truth = {field: self.inter_feat.pop(field) for field in self.truth_fields if field in self.inter_feat}
        super()._fill_nan()
        for field, column in truth.items():
            self.inter_feat[field] = column
        # The left join of user / item features makes token columns float; back to ids.
        for feat_name in self.feat_name_list:
            feat = getattr(self, feat_name)
            for field in feat:
                if self.field2type[field] == FeatureType.TOKEN and field in self.field2id_token:
                    dtype = smallest_int_dtype(len(self.field2id_token[field]))
                    if feat[field].dtype != dtype:
                        feat[field] = feat[field].to_numpy().astype(dtype)

    def _dataframe_to_interaction(self, data):
        """RecBole's conversion, keeping token ids in their small integer type and floats as
        float32 (one copy less); other field types go through RecBole's code."""
        tensors, rest = {}, []
        for field in data:
            ftype = self.field2type[field]
            if ftype == FeatureType.TOKEN:
                tensors[field] = torch.from_numpy(np.ascontiguousarray(data[field].to_numpy()))
            elif ftype == FeatureType.FLOAT and field not in self.config["numerical_features"]:
                tensors[field] = torch.from_numpy(data[field].to_numpy(dtype=np.float32))
            else:
                rest.append(field)
        if rest:
            tensors.update(super()._dataframe_to_interaction(data[rest]).interaction)
        return Interaction({field: tensors[field] for field in data})

    def _change_feat_format(self):
        for feat_name in self.feat_name_list:
            if not isinstance(getattr(self, feat_name), Interaction):  # loaded from the cache
                setattr(self, feat_name, self._dataframe_to_interaction(getattr(self, feat_name)))

    def join(self, df):
        """RecBole's join; ids may be stored in small integer types, torch indexes with ``long``."""
        _as_long(df)
        if self.user_feat is not None and self.uid_field in df:
            df.update(take_rows(self.user_feat, df[self.uid_field]))
        if self.item_feat is not None and self.iid_field in df:
            df.update(take_rows(self.item_feat, df[self.iid_field]))
        return _as_long(df)

    def __getitem__(self, index, join=True):
        df = take_rows(self.inter_feat, index)  # a column name goes on to RecBole's indexing
        if not isinstance(df, Interaction):  # one column by name
            return df
        return self.join(df) if join else _as_long(df)

    # RecBole counts actions with a Python Counter over every impression (about a minute apiece
    # at Ali-CCP's 85M, paid each time the dataset is logged); the same mean from a bincount.
    @property
    def avg_actions_of_users(self):
        return self._average_actions(self.uid_field)

    @property
    def avg_actions_of_items(self):
        return self._average_actions(self.iid_field)

    def _average_actions(self, field):
        """Impressions per distinct value of ``field`` (RecBole's ``np.mean`` of its counts)."""
        column = self.inter_feat[field]
        values = column.to_numpy() if isinstance(column, pd.Series) else column.numpy()
        distinct = np.count_nonzero(np.bincount(values.astype(np.int64, copy=False)))
        return np.float64(len(values)) / distinct

    def get_user_feature(self):
        if self.user_feat is None:
            return super().get_user_feature()
        return _as_long(Interaction(dict(self.user_feat.interaction)))

    def get_item_feature(self):
        if self.item_feat is None:
            return super().get_item_feature()
        return _as_long(Interaction(dict(self.item_feat.interaction)))

    def build(self):
        datasets = super().build()
        for name, split in zip(SPLIT_NAMES, datasets):
            if len(split) == 0:
                raise DataFormatError(
                    f"The {name} split of dataset [{self.dataset_name}] is empty "
                    f"({len(self.inter_feat)} impressions, eval_args split "
                    f"{self.config['eval_args']['split']}). Use more data or larger ratios."
                )
            if name != "train" and len(split) < 2:
                # RecBole's AUC and LogLoss fail on a single impression (an IndexError).
                raise DataFormatError(
                    f"The {name} split of dataset [{self.dataset_name}] holds {len(split)} impression "
                    f"({len(self.inter_feat)} in all, eval_args split "
                    f"{self.config['eval_args']['split']}): scoring needs at least 2. Use more data "
                    "or larger ratios."
                )
        return datasets
