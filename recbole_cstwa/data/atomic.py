"""RecBole atomic files (``name:type`` header, one row a line) read column by column with pyarrow.

:class:`~recbole_cstwa.data.dataset.MultiTaskDataset` reads its files with these functions: the
header (:func:`read_header`), then the kept columns, streamed in blocks (:func:`read_columns`:
token cells become int32 codes at once, so the text of a whole file is never resident), then
sequence cells split as RecBole splits them (:func:`sequence_cells`). Missing cells are the
strings pandas reads as missing, as RecBole reads with pandas.
"""

import ctypes

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from pandas._libs.parsers import STR_NA_VALUES
from recbole.utils import FeatureType

# The strings pandas reads as missing: RecBole reads with pandas, so the same cells are missing here.
_MISSING_STRINGS = sorted(STR_NA_VALUES)


try:
    _LIBC = ctypes.CDLL("libc.so.6")
    _LIBC.malloc_trim  # noqa: B018 (glibc only)
except (OSError, AttributeError):
    _LIBC = None
# Bytes of text parsed per block of the streamed CSV reader.
READ_BLOCK_BYTES = 1 << 24
def _release_free_memory():
    """Hands freed blocks back to the system: the reader's threads leave freed memory in
    Arrow's pool and in glibc's per-thread arenas, which otherwise grows the peak RSS by
    about half of what the columns themselves take."""
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


_POWERS_OF_TEN = 10 ** np.arange(1, 19, dtype=np.int64)


def _encode_tokens(array):
    """One block of token cells as (int32 codes, distinct values); code -1 is a missing cell.

    Cells that are all integers written canonically (no sign, no leading zero, ...) are
    factorized as int64: the same tokens as their strings, hashed ~10x faster. Any other
    column goes through Arrow's dictionary encoding of the strings.
    """
    missing = array.is_null().to_numpy(zero_copy_only=False)
    try:
        integers = pc.cast(array, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        integers = None
    if integers is not None:
        values = integers.fill_null(0).to_numpy()
        lengths = pc.binary_length(array).fill_null(0).to_numpy()
        digits = np.searchsorted(_POWERS_OF_TEN, np.abs(values), side="right") + 1 + (values < 0)
        if np.all((lengths == digits) | missing):
            if missing.any():
                codes = np.full(len(values), -1, dtype=np.int32)
                present_codes, uniques = pd.factorize(values[~missing])
                codes[~missing] = present_codes
            else:
                codes, uniques = pd.factorize(values)
            return codes.astype(np.int32, copy=False), uniques
    encoded = array.dictionary_encode()
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return codes, encoded.dictionary.to_numpy(zero_copy_only=False)


def as_strings(values):
    """Distinct token values as Python strings (integers factorized as int64 become text)."""
    return values if values.dtype == object else values.astype(str).astype(object)


def merge_token_blocks(blocks):
    """Blocks of (codes, distinct values) as one pandas categorical over all distinct values."""
    if not blocks:
        return pd.Categorical([], categories=pd.Index([], dtype=object))
    if any(uniques.dtype == object for _, uniques in blocks):
        blocks = [(codes, as_strings(uniques)) for codes, uniques in blocks]
    if len(blocks) == 1:
        codes, categories = blocks[0]
    else:
        categories = pd.unique(np.concatenate([uniques for _, uniques in blocks]))
        index = pd.Index(categories)
        codes = np.empty(sum(len(block_codes) for block_codes, _ in blocks), dtype=np.int32)
        start = 0
        for block_codes, uniques in blocks:
            lookup = np.append(index.get_indexer(uniques), -1).astype(np.int32)
            codes[start : start + len(block_codes)] = lookup[block_codes]
            start += len(block_codes)
    return pd.Categorical.from_codes(codes, categories=pd.Index(categories))


def read_header(filepath, field_separator, encoding):
    """``[(column name, field, FeatureType)]`` of a file's header, in file order; the column name
    (``<position>:<name>:<type>``) is unique even if a field name repeats."""
    with open(filepath, encoding=encoding) as file:
        header = file.readline().rstrip("\r\n").split(field_separator)
    columns = []
    for position, field_type in enumerate(header):
        field, ftype = field_type.split(":")
        try:
            ftype = FeatureType(ftype)
        except ValueError:
            raise ValueError(f"Type {ftype} from field {field} is not supported.") from None
        columns.append((f"{position}:{field_type}", field, ftype))
    return columns


def read_columns(filepath, names, columns, field_separator, encoding):
    """The ``columns`` (``[(field, column name, FeatureType)]``) of a file whose header columns are
    ``names``, as a DataFrame: token columns as pandas categoricals, float columns as float64,
    other columns (sequences) as their text."""
    column_types = {name: pa.float64() if ftype == FeatureType.FLOAT else pa.string() for _, name, ftype in columns}
    # Streamed in blocks: each block's token cells become int32 codes at once, so the
    # text of the whole file is never resident.
    reader = pa_csv.open_csv(
        filepath,
        read_options=pa_csv.ReadOptions(column_names=names, skip_rows=1, encoding=encoding, block_size=READ_BLOCK_BYTES),
        parse_options=pa_csv.ParseOptions(delimiter=field_separator),
        convert_options=pa_csv.ConvertOptions(
            include_columns=[name for _, name, _ in columns],
            column_types=column_types,
            null_values=_MISSING_STRINGS,
            strings_can_be_null=True,
        ),
    )
    parts = {field: [] for field, _, _ in columns}
    for block, batch in enumerate(reader):
        if block % 8 == 7:
            _release_free_memory()
        for field, name, ftype in columns:
            array = batch.column(name)
            if ftype == FeatureType.TOKEN:
                parts[field].append(_encode_tokens(array))
            elif ftype == FeatureType.FLOAT:
                parts[field].append(array.to_numpy(zero_copy_only=False))
            else:
                parts[field].append(array.to_pandas())
    reader = batch = array = None  # drop the last block before trimming
    _release_free_memory()
    frame = {}
    for field, _, ftype in columns:
        if ftype == FeatureType.TOKEN:
            frame[field] = merge_token_blocks(parts.pop(field))
        elif ftype == FeatureType.FLOAT:
            frame[field] = np.concatenate(parts.pop(field) or [np.empty(0)])
        else:
            blocks = parts.pop(field)
            frame[field] = pd.concat(blocks, ignore_index=True) if blocks else pd.Series([], dtype=object)
    return pd.DataFrame(frame)


def sequence_cells(cells, token, seq_separator, limit=None):
    """RecBole's parsing of a sequence column: ``(one array a cell, the field's sequence length)``.

    ``token``: a ``token_seq`` column (strings; else ``float_seq``); ``limit``: the field's
    ``seq_len``, which cuts every sequence to that length.
    """
    values = cells.fillna("").values
    if token:
        sequences = [np.array(list(filter(None, cell.split(seq_separator)))) for cell in values]
    else:
        sequences = [np.array(list(map(float, filter(None, cell.split(seq_separator))))) for cell in values]
    max_seq_len = max(map(len, sequences))
    if limit is not None:
        return [seq[:limit] for seq in sequences], min(limit, max_seq_len)
    return sequences, max_seq_len
