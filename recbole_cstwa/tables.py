"""Tables of rows read by name: CSV, TSV, parquet and RecBole's atomic ``.inter`` files, the text
ones (UTF-8) also compressed.

One rule tells a file's format from its name (:func:`table_format`): a compression suffix
(:data:`COMPRESSIONS`) is set aside, then the extension names the kind (:data:`KINDS`). CSV is
comma separated, TSV and ``.inter`` tab separated; an ``.inter`` header names its columns
``name:type``, read as ``name``. The readers give a table's column names (:func:`column_names`)
and stream its rows as Arrow record batches (:func:`read_blocks`: pyarrow's streaming CSV reader,
parquet's row groups), so that memory stays bounded by a block. The importer
(:mod:`recbole_cstwa.tools.importer`) and the predictor (:mod:`recbole_cstwa.serving.predict`)
read their inputs with them; :func:`read_problem` says what a reader's error met in the file (the
line and column of a bad cell, a line longer than a block, a damaged parquet file) and the fix.

Only an empty cell is missing (:data:`MISSING_CELLS`, the dataset reader's rule): ``NA``, ``null``,
``nan`` are tokens in a string column, and ``nan`` / ``inf`` are read as written in a float column
(where the reader that uses the column refuses them).
"""

import csv
import os
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

#: Compression suffixes a text table may end in (pyarrow decompresses them while reading).
COMPRESSIONS = (".gz", ".bz2", ".zst", ".lz4")
#: Extension -> kind of table.
KINDS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".inter": "inter",
}
#: Kind -> the separator between the cells of a line.
SEPARATORS = {"csv": ",", "tsv": "\t", "inter": "\t"}
#: Bytes of CSV text parsed a block, and rows of a parquet block, unless a reader asks otherwise.
BLOCK_BYTES = 4 << 20
PARQUET_BATCH_ROWS = 65_536
#: The cells read as missing (null): the empty cell only.
MISSING_CELLS = [""]
#: The longest header line read: pyarrow's streaming reader skips the header within one block.
HEADER_BYTES = BLOCK_BYTES


@dataclass(frozen=True)
class TableFormat:
    """What a file's name says of it: ``kind`` (``csv``, ``tsv``, ``parquet``, ``inter``, or None
    for an extension of none of them), the ``extension`` (lower case, after the compression
    suffix set aside) and the ``compression`` suffix (or None)."""

    kind: object
    extension: str
    compression: object = None

    @property
    def separator(self):
        """The cell separator of a text table of this kind (None: parquet, or an unknown kind)."""
        return SEPARATORS.get(self.kind)


def table_format(path):
    """The :class:`TableFormat` of ``path``, from its name alone."""
    name = os.path.basename(str(path)).lower()
    compression = next((suffix for suffix in COMPRESSIONS if name.endswith(suffix)), None)
    if compression:
        name = name[: -len(compression)]
    extension = os.path.splitext(name)[1]
    return TableFormat(KINDS.get(extension), extension, compression)


def _first_line(path):
    """The first line of a text file (decompressed when its name says so), without its end; a line
    longer than :data:`HEADER_BYTES` is an ``ArrowInvalid``."""
    blocks, size = [], 0
    with pa.input_stream(str(path), compression="detect") as stream:
        while size <= HEADER_BYTES:
            block = stream.read(1 << 16)
            if not block:
                break
            blocks.append(block)
            size += len(block)
            if b"\n" in block:  # only the new block is searched: a long line is read once
                break
    head = b"".join(blocks).split(b"\n", 1)[0].rstrip(b"\r")
    if len(head) > HEADER_BYTES:
        raise pa.ArrowInvalid(f"header line longer than {HEADER_BYTES >> 20} MiB")
    return head.decode("utf-8-sig")  # a BOM dropped, as pyarrow does


def column_names(path, separator=None):
    """The column names of a table, in file order (``[]`` for an empty text file).

    ``separator``: the cells' separator of a text table, when not the one its kind has (a file
    of no known kind is read as CSV). An ``.inter`` file's ``name:type`` columns give ``name``.
    Raises pyarrow's or the decoder's error for a file that cannot be read (a header line over
    :data:`HEADER_BYTES`, or a cell of it over ``csv``'s field limit: ``ArrowInvalid``).
    """
    table = table_format(path)
    if table.kind == "parquet":
        return list(pq.ParquetFile(str(path)).schema_arrow.names)
    line = _first_line(path)
    if not line:
        return []
    try:
        names = next(csv.reader([line], delimiter=separator or table.separator or ","))
    except csv.Error as error:  # a header cell over csv's field limit (128 KiB)
        raise pa.ArrowInvalid(f"header line: {error}") from None
    if table.kind == "inter":
        names = [name.split(":")[0] for name in names]
    return names


#: Parts of pyarrow's messages that :func:`read_problem` reads (the line, the column, what failed).
_ROW = re.compile(r"Row #(\d+)")
_COLUMN = re.compile(r"In CSV column #(\d+)")
_NOT_CONVERTED = re.compile(r"CSV conversion error to (\w+): invalid value '(.*)'")
_NOT_UTF8 = re.compile(r"CSV conversion error to \w+: invalid UTF8 data")
_CELL_COUNT = re.compile(r"Expected (\d+) columns, got (\d+)")
_OUT_OF_SYNC = "parser got out of sync with chunker"
#: pyarrow's words for a file whose header it cannot skip: no line end after it, or a longer
#: header than its block.
_NO_ROWS = "Could not skip initial"
#: The longest part of a reader's own message kept in :func:`read_problem`'s sentence.
MESSAGE_CHARS = 300


def read_blocks(
    path,
    columns,
    separator=None,
    column_types=None,
    block_bytes=BLOCK_BYTES,
    batch_rows=PARQUET_BATCH_ROWS,
    use_threads=True,
    strings_can_be_null=True,
):
    """Yields Arrow record batches of ``columns`` (names :func:`column_names` gives, all present),
    in file order.

    A text table is read after its header line, ``block_bytes`` of text a block, each column as
    ``column_types`` gives (else as pyarrow infers it); only an empty cell is missing
    (:data:`MISSING_CELLS`); ``strings_can_be_null``: an empty cell of a string column is null
    (else the empty string). A parquet table is read ``batch_rows`` rows a batch. Errors are
    pyarrow's (or the decoder's, for the header), raised while the blocks are read
    (:func:`read_problem` words them); a text table read in several threads whose error names no
    line is read again in one thread up to the error, whose message then names it.
    """
    table = table_format(path)
    if table.kind == "parquet":
        yield from pq.ParquetFile(str(path)).iter_batches(
            batch_size=batch_rows, columns=list(columns), use_threads=use_threads
        )
        return

    def reader(threads):
        return pa_csv.open_csv(
            str(path),
            read_options=pa_csv.ReadOptions(
                column_names=column_names(path, separator),
                skip_rows=1,
                block_size=block_bytes,
                use_threads=threads,
            ),
            parse_options=pa_csv.ParseOptions(delimiter=separator or table.separator or ","),
            convert_options=pa_csv.ConvertOptions(
                include_columns=list(columns),
                column_types=column_types or {},
                null_values=MISSING_CELLS,
                strings_can_be_null=strings_can_be_null,
                quoted_strings_can_be_null=strings_can_be_null,
            ),
        )

    try:
        yield from reader(use_threads)
    except pa.ArrowInvalid as error:
        if _NO_ROWS in str(error) and len(_first_line(path).encode()) < block_bytes:
            return  # a header without a line end: no rows
        if not use_threads or _ROW.search(str(error)):
            raise
        try:  # pyarrow names the row of a bad cell only when it reads in one thread
            for _ in reader(False):
                pass
        except pa.ArrowInvalid as located:
            raise located from None
        raise


def read_problem(path, error, names=(), rows_read=None):
    """What a reader's ``error`` (from :func:`column_names` or :func:`read_blocks`) met in
    ``path``, as one sentence with the fix: the line and column of a cell that is no number or
    no UTF-8 text, a line with another number of cells than the header, a line longer than the
    block (an unbalanced quote makes the rest of the file one cell), a damaged parquet file; else
    the first line of the error's message.

    ``names``: the file's columns (:func:`column_names`), to name a column pyarrow gives by its
    position; ``rows_read``: the data rows read before the error, said where the error names no
    line.
    """
    if isinstance(error, UnicodeDecodeError):
        byte = error.object[error.start : error.start + 1].hex()
        return f"its header line is not UTF-8 text (byte 0x{byte} at byte {error.start}). Fix: save the file as UTF-8."
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    row, column = _ROW.search(first), _COLUMN.search(first)
    parquet = table_format(path).kind == "parquet"
    if row:
        at = f"line {row.group(1)}"
    elif rows_read is not None:
        at = f"a row after row {rows_read}" if parquet else f"a line after line {rows_read + 1}"
    else:
        at = None
    cell = at or "a line"
    if column:
        position = int(column.group(1))
        cell += f", column [{names[position] if position < len(names) else f'#{position + 1}'}]"
    if _NOT_UTF8.search(first):
        return f"{cell} is not UTF-8 text. Fix: save the file as UTF-8."
    converted = _NOT_CONVERTED.search(first)
    if converted:
        kind, value = converted.groups()
        wanted = "a number" if kind in ("double", "float", "int64") else f"a {kind} value"
        return (
            f"{cell} holds {value[:MESSAGE_CHARS]!r}, not {wanted}. Fix: write {wanted} there, or "
            "leave the cell empty."
        )
    counted = _CELL_COUNT.search(first)
    if counted:
        return (
            f"{cell} has {counted.group(2)} cells where the header has {counted.group(1)} (an "
            'unbalanced quote " or a separator inside a cell). Fix: close the quote, or quote the cell.'
        )
    if "header line longer than" in first or _NO_ROWS in first:
        return (
            f"the header line is longer than {HEADER_BYTES >> 20} MiB, the most the reader parses "
            "at once. Fix: shorten the column names, or drop columns."
        )
    if "straddling object straddles two block boundaries" in first:
        return (
            f"{cell} is too long: the reader parses {BLOCK_BYTES >> 20} MiB blocks, and a line may "
            'span two at most (an unbalanced quote " also makes the rest of the file one cell). '
            "Fix: close the quote, or shorten the line."
        )
    if _OUT_OF_SYNC in first:
        return (
            f'a quoted cell runs over a line end ({cell}: an unbalanced quote "?). Fix: close the '
            "quote, or write the cell on one line."
        )
    known = f"; {at}" if at else ""
    if parquet:
        return (
            f"it is not a readable parquet file ({first[:MESSAGE_CHARS]}{known}). Fix: write the file again."
        )
    return f"{first[:MESSAGE_CHARS]}{known}."
