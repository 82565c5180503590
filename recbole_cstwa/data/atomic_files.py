"""RecBole atomic files (``name:type`` header, one row a line) read column by column with pyarrow.

:class:`~recbole_cstwa.data.dataset.MultiTaskDataset` reads its files with these functions: the
header (:func:`read_header`), then the kept columns, streamed in blocks (:func:`read_columns`:
token cells become int32 codes at once, so the text of a whole file is never resident), then
sequence cells split as RecBole splits them (:func:`sequence_cells`). Only an empty cell is
missing: ``NA``, ``null``, ``None``, ``nan`` ... (pandas' missing-value strings, which RecBole's
pandas reader drops) are tokens like any other, and no number in a float column.
"""

import ctypes
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from recbole.utils import FeatureType

from recbole_cstwa.errors import DataFormatError
from recbole_cstwa.tables import MISSING_CELLS  # only an empty cell is missing (module docstring)

_FIELD_TYPES = tuple(ftype.value for ftype in FeatureType)
# Arrow's message for a float cell that is no number.
_NOT_A_NUMBER = re.compile(
    r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to double: invalid value '(.*)'"
)


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
    factorized as int64: the same tokens as their strings, hashed faster. Any other
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


def header_problem(path, line, separator):
    """What is wrong with an atomic file's header ``line`` (``name:type`` columns separated by
    ``separator``), as one sentence naming ``path`` and the fix; None when it is well formed."""
    if not line.strip():
        return (
            f"[{path}] is empty or starts with an empty line: an atomic file's first line is its "
            f"header, name:type columns separated by field_separator {separator!r} (e.g. "
            "user_id:token, click:float)."
        )
    columns = line.split(separator)
    bad = [
        column for column in columns if column.count(":") != 1 or column.partition(":")[2] not in _FIELD_TYPES
    ]
    if bad:
        others = [sep for sep in ("\t", ",", ";", "|", " ") if sep != separator and sep in bad[0]]
        guess = (
            f" It looks separated by {others[0]!r}: write it with {separator!r} between fields, or "
            f"set field_separator: {others[0]!r}."
            if others
            else ""
        )
        return (
            f"[{path}] header column {bad[0]!r} is not name:type with a type of {list(_FIELD_TYPES)} "
            f"(columns split by field_separator {separator!r}).{guess}"
        )
    names = [column.partition(":")[0] for column in columns]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        return (
            f"[{path}] names column [{repeated[0]}] {names.count(repeated[0])} times in its header: "
            "each column needs its own name. Rename or drop the copies."
        )
    return None


def check_finite(path, field, array, first_row, by_line=True):
    """A float column's cells are numbers: ``nan`` / ``inf`` written in the file are refused (an
    empty cell, Arrow's null, is the missing value). ``first_row``: the data rows before
    ``array``'s first; the bad cell is named by its line (a text file's header is line 1), or by
    its row (from 1) when not ``by_line`` (a parquet file)."""
    written = pc.fill_null(pc.invert(pc.is_finite(array)), False).to_numpy(zero_copy_only=False)
    if written.any():
        at = int(np.flatnonzero(written)[0])
        where = f"line {first_row + at + 2}" if by_line else f"row {first_row + at + 1}"
        raise DataFormatError(
            f"[{path}] float column [{field}] holds {array[at].as_py()!r} at {where}: "
            "a float column holds finite numbers, and only an empty cell is a missing value. Fix: "
            "write a number or leave the cell empty."
        )


def first_line_holding(path, encoding, separator, position, value):
    """`` at line N``: the first data line whose column ``position`` holds ``value`` (error path
    only: Arrow's conversion error names the column and the value, not the line)."""
    with open(path, encoding=encoding) as file:
        next(file, None)
        for number, line in enumerate(file, start=2):
            cells = line.rstrip("\r\n").split(separator)
            if position < len(cells) and cells[position] == value:
                return f" at line {number}"
    return ""


def read_header(filepath, field_separator, encoding="utf-8", errors="strict"):
    """``[(column name, field, FeatureType)]`` of a file's header, in file order; the column name
    (``<position>:<name>:<type>``) is unique even if a field name repeats. A malformed header (an
    empty file, another separator, a repeated name) is a :class:`DataFormatError`
    (:func:`header_problem`). ``errors``: how undecodable bytes are read (``open``'s)."""
    with open(filepath, encoding=encoding, errors=errors) as file:
        header_line = file.readline().rstrip("\r\n")
    problem = header_problem(filepath, header_line, field_separator)
    if problem:
        raise DataFormatError(problem)
    header = header_line.split(field_separator)
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
    column_types = {
        name: pa.float64() if ftype == FeatureType.FLOAT else pa.string() for _, name, ftype in columns
    }
    # Streamed in blocks: each block's token cells become int32 codes at once, so the
    # text of the whole file is never resident.
    parts = {field: [] for field, _, _ in columns}
    first_row = 0
    try:
        reader = pa_csv.open_csv(
            filepath,
            read_options=pa_csv.ReadOptions(
                column_names=names, skip_rows=1, encoding=encoding, block_size=READ_BLOCK_BYTES
            ),
            parse_options=pa_csv.ParseOptions(delimiter=field_separator),
            convert_options=pa_csv.ConvertOptions(
                include_columns=[name for _, name, _ in columns],
                column_types=column_types,
                null_values=MISSING_CELLS,
                strings_can_be_null=True,
            ),
        )
        for block, batch in enumerate(reader):
            if block % 8 == 7:
                _release_free_memory()
            for field, name, ftype in columns:
                array = batch.column(name)
                if ftype == FeatureType.TOKEN:
                    parts[field].append(_encode_tokens(array))
                elif ftype == FeatureType.FLOAT:
                    check_finite(filepath, field, array, first_row)
                    parts[field].append(array.to_numpy(zero_copy_only=False))
                else:
                    parts[field].append(array.to_pandas())
            first_row += batch.num_rows
    except pa.ArrowInvalid as error:
        found = _NOT_A_NUMBER.search(str(error))
        if not found:
            raise
        position, value = int(found.group(1)), found.group(2)
        field = names[position].split(":")[1]
        line = first_line_holding(filepath, encoding, field_separator, position, value)
        raise DataFormatError(
            f"[{filepath}] float column [{field}] holds {value!r}{line}, not a number: a float "
            "column holds numbers, and only an empty cell is a missing value. Fix: write a number "
            f"or leave the cell empty, or declare the column {field}:token if it holds words."
        ) from None
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
