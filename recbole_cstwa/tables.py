"""Tables of rows read by name: CSV, TSV, parquet and RecBole's atomic ``.inter`` files, the text
ones (UTF-8) also compressed.

One rule tells a file's format from its name (:func:`table_format`): a compression suffix
(:data:`COMPRESSIONS`) is set aside, then the extension names the kind (:data:`KINDS`). CSV is
comma separated, TSV and ``.inter`` tab separated; an ``.inter`` header names its columns
``name:type``, read as ``name``. The readers give a table's column names (:func:`column_names`)
and stream its rows as Arrow record batches (:func:`read_blocks`: pyarrow's streaming CSV reader,
parquet's row groups), so that memory stays bounded by a block. The importer
(:mod:`recbole_cstwa.tools.importer`) and the predictor (:mod:`recbole_cstwa.serving.predict`)
read their inputs with them.
"""

import csv
import os
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
    """The first line of a text file (decompressed when its name says so), without its end."""
    head = b""
    with pa.input_stream(str(path), compression="detect") as stream:
        while b"\n" not in head:
            block = stream.read(1 << 16)
            if not block:
                break
            head += block
    return head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8-sig")  # a BOM dropped, as pyarrow does


def column_names(path, separator=None):
    """The column names of a table, in file order (``[]`` for an empty text file).

    ``separator``: the cells' separator of a text table, when not the one its kind has (a file
    of no known kind is read as CSV). An ``.inter`` file's ``name:type`` columns give ``name``.
    Raises pyarrow's or the decoder's error for a file that cannot be read.
    """
    table = table_format(path)
    if table.kind == "parquet":
        return list(pq.ParquetFile(str(path)).schema_arrow.names)
    line = _first_line(path)
    if not line:
        return []
    names = next(csv.reader([line], delimiter=separator or table.separator or ","))
    if table.kind == "inter":
        names = [name.split(":")[0] for name in names]
    return names


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
    """Arrow record batches of ``columns`` (names :func:`column_names` gives, all present), in
    file order.

    A text table is read after its header line, ``block_bytes`` of text a block, each column as
    ``column_types`` gives (else as pyarrow infers it); ``strings_can_be_null``: an empty cell of
    a string column is null (else the empty string). A parquet table is read ``batch_rows`` rows
    a batch. Errors are pyarrow's, raised when the reader opens or reads a block.
    """
    table = table_format(path)
    if table.kind == "parquet":
        return pq.ParquetFile(str(path)).iter_batches(
            batch_size=batch_rows, columns=list(columns), use_threads=use_threads
        )
    return pa_csv.open_csv(
        str(path),
        read_options=pa_csv.ReadOptions(
            column_names=column_names(path, separator),
            skip_rows=1,
            block_size=block_bytes,
            use_threads=use_threads,
        ),
        parse_options=pa_csv.ParseOptions(delimiter=separator or table.separator or ","),
        convert_options=pa_csv.ConvertOptions(
            include_columns=list(columns),
            column_types=column_types or {},
            strings_can_be_null=strings_can_be_null,
            quoted_strings_can_be_null=strings_can_be_null,
        ),
    )
