"""Score a file of impressions with a trained model, streamed in blocks.

:func:`predict_file` reads CSV, TSV, parquet or a RecBole atomic ``.inter`` file (the text ones
also compressed; :mod:`recbole_cstwa.tables`) block by block (pyarrow), maps each token field's raw tokens to the model's indices with the vocabularies
stored in the checkpoint (:class:`FieldVocabulary`), scores the block with the model
(:class:`~recbole_cstwa.serving.module.ServingModule`, eagerly) and appends one output row an
input row: the key columns asked for, then ``p_click``, ``p_purchase``, ``p_cvr`` (or the
trained label's probability for a RecBole model).

- Columns are found by name: their order does not matter and other columns are ignored. Every
  feature column the model reads must be there (a cell may be empty: the field is then absent).
- A token the training data never had (an unseen user, item or value) gets the field's
  ``unseen_index`` (:class:`~recbole_cstwa.serving.module.ServingModule`): with ``min_count`` the
  field's trained out-of-vocabulary row scores it; otherwise index 0, RecBole's padding: the
  field counts as absent, as an empty cell. Unseen tokens are counted a field and reported.
- Labels are optional: when the click / purchase columns (``CLICK_FIELD``, ``PURCHASE_FIELD``)
  are there, the rows are also scored with the run's metrics, per task as in training
  (:class:`~recbole_cstwa.evaluator.TaskEvaluator`).
- Memory is bounded by the block, the vocabularies and, with labels, one float a task a row for
  the metrics.
"""

import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from recbole_cstwa.errors import PredictInputError
from recbole_cstwa.evaluator import TaskEvaluator, division_cvr
from recbole_cstwa.serving.module import ServingModule
from recbole_cstwa.tables import COMPRESSIONS, KINDS, column_names, read_blocks, table_format

#: The kinds of table (:data:`recbole_cstwa.tables.KINDS`) scored, and written.
INPUT_KINDS = ("csv", "tsv", "parquet", "inter")
OUTPUT_KINDS = ("csv", "parquet")


class FieldVocabulary:
    """Raw token -> the model's index for one token field; 0 for a missing token,
    ``unseen_index`` for a token not in the vocabulary.

    The look-up tables are built once. A vocabulary whose tokens are all integers written plainly
    (``0``, ``-3``, ``1234``: ids, as most CTR data hold) maps a column by its integer values (an
    array indexed by the value where the tokens fill their range densely, as numbered ids do,
    else a hash of int64; no Python string a cell); a cell that is not such an integer (``007``,
    ``x``) cannot be one of its tokens and counts as unseen. Other vocabularies map the distinct
    strings of a block.
    """

    def __init__(self, tokens, unseen_index=0):
        """``tokens``: index -> token (an Arrow string array or a sequence of strings)."""
        self.unseen_index = int(unseen_index)
        if not isinstance(tokens, pa.Array):
            tokens = pa.array(np.asarray(tokens, dtype=object), type=pa.string())
        # Index 0 is [PAD]: not a token a file can hold (a cell reading "[PAD]" is unseen).
        self._tokens = tokens.slice(1)
        self._strings = None  # pandas Index of the tokens, built on first use
        self._integers = _integer_index(self._tokens)
        self._dense = None if self._integers is None else _dense_table(self._integers.to_numpy())

    def indices(self, column):
        """``(int64 indices, unseen count)`` of an Arrow string column."""
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if pa.types.is_dictionary(column.type):
            column = column.cast(pa.string())
        if self._integers is not None:
            try:
                values = pc.cast(column, pa.int64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass  # a cell that is no integer (an unseen token): by the distinct strings
            else:
                return self._integer_indices(column, values)
        return self._string_indices(column)

    def _integer_indices(self, column, values):
        # Missing cells and cells not plainly written are rare: most columns have neither, and
        # skip the masks.
        present = column.is_valid().to_numpy(zero_copy_only=False) if column.null_count else None
        numbers = (values.fill_null(0) if values.null_count else values).to_numpy(zero_copy_only=False)
        if self._dense is not None:
            below, table = self._dense  # numbers out of the range read the table's end rows, 0
            indices = table[np.clip(numbers, below, below + len(table) - 1) - below]
        else:
            indices = self._integers.get_indexer(numbers) + 1  # 0: not a token
        plain = _plainly_written(column)
        valid = plain if present is None else (present if plain is None else present & plain)
        if valid is not None:
            indices[~valid] = 0
        unseen_cells = indices == 0
        if present is not None:
            unseen_cells &= present
        unseen = int(np.count_nonzero(unseen_cells))
        if unseen and self.unseen_index:
            indices[unseen_cells] = self.unseen_index
        return indices.astype(np.int64, copy=False), unseen

    def _string_indices(self, column):
        if self._strings is None:
            self._strings = pd.Index(self._tokens.to_numpy(zero_copy_only=False))
        encoded = column.dictionary_encode()
        dictionary = encoded.dictionary.to_numpy(zero_copy_only=False)
        found = self._strings.get_indexer(dictionary.astype(object, copy=False)) + 1  # 0: unseen
        codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        lookup = np.append(found, 0).astype(np.int64)  # code -1 (a missing cell) -> 0
        indices = lookup[codes]
        unseen_cells = (codes >= 0) & (indices == 0)
        if self.unseen_index:
            indices[unseen_cells] = self.unseen_index
        return indices, int(np.count_nonzero(unseen_cells))


#: 10, 100, ... 10**18: integers of at most 18 digits lie strictly between -10**18 and 10**18.
POWERS_OF_TEN = np.array([10**k for k in range(1, 19)], dtype=np.int64)
#: A vocabulary of integers is mapped through an array over its range when the range holds at
#: most this many values a token (or at most DENSE_MIN_SPAN values).
DENSE_SPAN_PER_TOKEN, DENSE_MIN_SPAN = 4, 1 << 16


def _plainly_written(strings):
    """Whether each string (an Arrow string array) is the integer Arrow's cast reads in it,
    written plainly: the cast also reads leading zeros (``007``, ``0x1f`` as hexadecimal) and
    ``-0``, and some versions ``+7``, which are other tokens than the number's plain form. Read
    from the array's bytes: its first two characters and its length (a missing cell: any).
    ``None`` when every string is (none starts with ``0``, ``+`` or ``-``: ids, mostly)."""
    wide = pa.types.is_large_string(strings.type) or pa.types.is_large_binary(strings.type)
    _, offsets, data = strings.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int64 if wide else np.int32)
    offsets = offsets[strings.offset : strings.offset + len(strings) + 1]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None and data.size else np.zeros(1, np.uint8)
    starts = offsets[:-1]
    first = data[np.minimum(starts, len(data) - 1)]
    if not ((first == ord("0")) | (first == ord("+")) | (first == ord("-"))).any():
        return None
    lengths = np.diff(offsets)
    second = data[np.minimum(starts + 1, len(data) - 1)]
    zero_led = (first == ord("0")) & (lengths > 1)
    signed = (lengths > 0) & (
        (first == ord("+")) | ((first == ord("-")) & (second == ord("0")) & (lengths > 1))
    )
    return ~(zero_led | signed)


def _dense_table(numbers):
    """``(below, table)`` for distinct int64 tokens ``numbers`` whose range is dense enough:
    ``table[n - below]`` is 1 + the index of token ``n`` (0: no token), for ``n`` clipped into
    ``[below, below + len(table) - 1]``, whose end rows (just outside the tokens' range) hold 0.
    ``None`` for a sparse range."""
    low, high = int(numbers.min()), int(numbers.max())
    if high - low + 1 > max(DENSE_SPAN_PER_TOKEN * len(numbers), DENSE_MIN_SPAN):
        return None
    below = low - 1
    table = np.zeros(high - low + 3, dtype=np.int64)
    table[numbers - below] = np.arange(1, len(numbers) + 1)
    return below, table


def _integer_index(tokens):
    """A pandas Index of ``tokens`` (Arrow strings) as int64 when every one is a plainly written
    integer of at most 18 digits, else None."""
    if len(tokens) == 0:
        return None
    try:
        numbers = pc.cast(tokens, pa.int64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # not integers, or beyond int64
        return None
    if tokens.null_count or ((numbers >= POWERS_OF_TEN[-1]) | (numbers <= -POWERS_OF_TEN[-1])).any():
        return None  # 19 digits and more: kept as strings (the digit count stays simple)
    plain = _plainly_written(tokens)
    if plain is not None and not plain.all():
        return None
    return pd.Index(numbers)


@dataclass
class PredictReport:
    """What :func:`predict_file` did."""

    rows: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # of the process, every thread
    unseen: dict = field(default_factory=dict)  # field -> rows whose token was not in training
    metrics: dict = field(default_factory=dict)
    labels: list = field(default_factory=list)
    output_columns: list = field(default_factory=list)
    unseen_scored_as: str = "as absent, index 0"

    def lines(self):
        """The report as printed lines."""
        rate = self.rows / self.seconds if self.seconds > 0 else float("nan")
        cpu_rate = self.rows / self.cpu_seconds if self.cpu_seconds > 0 else float("nan")
        lines = [
            f"scored {self.rows} rows in {self.seconds:.2f}s ({rate:,.0f} rows/s; CPU "
            f"{self.cpu_seconds:.2f}s, {cpu_rate:,.0f} rows a CPU second); columns {self.output_columns}"
        ]
        unseen = {name: count for name, count in self.unseen.items() if count}
        if unseen:
            parts = ", ".join(
                f"{name} {count} ({count / max(self.rows, 1):.2%})" for name, count in unseen.items()
            )
            lines.append(f"unseen tokens (scored {self.unseen_scored_as}): {parts}")
        else:
            lines.append("unseen tokens: none")
        if self.metrics:
            lines.append(
                "labels "
                + ", ".join(self.labels)
                + ": "
                + ", ".join(f"{k} {v:.4f}" for k, v in self.metrics.items())
            )
        else:
            lines.append("no label columns: scores only")
        return lines


def _file_format(path, kinds, role, compressed):
    """The kind of a file to read or write (:func:`recbole_cstwa.tables.table_format`, the one
    rule the importer follows too); one of ``kinds``, compressed only if ``compressed``."""
    table = table_format(path)
    if table.kind not in kinds or (table.compression and (not compressed or table.kind == "parquet")):
        allowed = ", ".join(extension for extension, kind in KINDS.items() if kind in kinds)
        written = (table.extension or "no extension") + (table.compression or "")
        packed = f", a text one also ending in {' / '.join(COMPRESSIONS)}" if compressed else ""
        raise PredictInputError(f"{role} file [{path}] ends in {written}: use one of {allowed}{packed}.")
    return table.kind


def _blocks(path, wanted, types, threads):
    """Record batches of the ``wanted`` columns (names without ``:type``), and the file's names."""
    try:
        names = column_names(path)
        present = [name for name in wanted if name in names]
        blocks = read_blocks(
            path,
            present,
            column_types={name: types[name] for name in present if name in types},
            use_threads=threads > 1,
        )
    except (OSError, pa.ArrowException) as error:
        raise PredictInputError(f"Cannot read [{path}] as {table_format(path).kind}: {error}.") from None
    return names, blocks


def _writer(path, kind, schema, scores=()):
    if kind == "parquet":  # probabilities are not dictionary-encoded: 7x the cost, a larger file
        return pq.ParquetWriter(path, schema, use_dictionary=[n for n in schema.names if n not in scores])
    return pa_csv.CSVWriter(path, schema)


def predict_file(trained, input_path, output_path, keys=(), batch_size=8192, threads=None, progress=None):
    """Scores every row of ``input_path`` into ``output_path`` (see the module doc).

    Args:
        trained: :func:`~recbole_cstwa.serving.trained.load_trained`'s model.
        keys (list): input columns copied to the output, first, as read.
        batch_size (int): rows a model call.
        threads (int, optional): threads for reading and torch (default: torch's setting).
        progress (bool, optional): a progress bar; default: when stderr is a terminal.

    Returns:
        PredictReport
    """
    input_path, output_path = str(input_path), str(output_path)
    _file_format(input_path, INPUT_KINDS, "Input", compressed=True)
    out_format = _file_format(output_path, OUTPUT_KINDS, "Output", compressed=False)
    if not os.path.isfile(input_path):
        raise PredictInputError(f"Input file [{input_path}] does not exist.")
    if threads:
        torch.set_num_threads(int(threads))
        pa.set_cpu_count(int(threads))
        pa.set_io_thread_count(int(threads))
    threads = torch.get_num_threads()
    config = trained.config
    serving = ServingModule(trained).eval()
    vocabularies = {
        name: FieldVocabulary(_vocabulary(trained.dataset, name), serving.unseen_index[name])
        for name in serving.token_fields
    }
    label_names = [config["CLICK_FIELD"], config["PURCHASE_FIELD"]]
    types = {name: pa.string() for name in serving.token_fields}
    types.update({name: pa.float64() for name in serving.float_fields + label_names})
    keys = list(dict.fromkeys(keys))
    wanted = list(dict.fromkeys(serving.token_fields + serving.float_fields + label_names + keys))
    names, blocks = _blocks(input_path, wanted, types, threads)
    missing = [name for name in serving.token_fields + serving.float_fields if name not in names]
    if missing:
        raise PredictInputError(
            f"[{input_path}] has no column {missing} (columns: {names}): {config['model']} reads "
            f"{serving.token_fields + serving.float_fields}. Fix: add the column (an empty cell "
            "is an absent field)."
        )
    missing_keys = [name for name in keys if name not in names]
    if missing_keys:
        raise PredictInputError(f"Key column(s) {missing_keys} are not in [{input_path}] (columns: {names}).")
    labels = [name for name in label_names if name in names]
    tasks = {task: label for task, label in config["eval_tasks"].items() if label in labels}
    evaluator = TaskEvaluator(config, tasks) if tasks else None
    needs_click = evaluator is not None and "cvr" in tasks and config["CLICK_FIELD"] not in labels
    if needs_click:  # cvr is scored on clicked rows: without the click column it cannot be
        del tasks["cvr"]
        evaluator = TaskEvaluator(config, tasks) if tasks else None

    report = PredictReport(unseen={name: 0 for name in serving.token_fields}, labels=labels)
    if any(serving.unseen_index.values()):
        report.unseen_scored_as = "with the field's out-of-vocabulary row"
    report.output_columns = keys + serving.output_names
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(desc="scoring", unit=" rows", disable=not show, file=sys.stderr)
    writer = None
    start, cpu_start = time.perf_counter(), time.process_time()
    partial_output = output_path + ".partial"
    try:
        for block in blocks:
            rows = block.num_rows
            if rows == 0:
                continue
            tokens = np.empty((rows, len(serving.token_fields)), dtype=np.int64)
            for position, name in enumerate(serving.token_fields):
                column = block.column(name)
                if not pa.types.is_string(column.type) and not pa.types.is_dictionary(column.type):
                    column = column.cast(pa.string())
                tokens[:, position], unseen = vocabularies[name].indices(column)
                report.unseen[name] += unseen
            floats = np.empty((rows, len(serving.float_fields)), dtype=np.float32)
            for position, name in enumerate(serving.float_fields):
                values = block.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False)
                floats[:, position] = np.nan_to_num(values, nan=0.0)
            probabilities = []
            token_tensor, float_tensor = torch.from_numpy(tokens), torch.from_numpy(floats)
            label_tensors = {name: _label_tensor(block, name, input_path) for name in labels}
            with torch.inference_mode():
                for low in range(0, rows, batch_size):
                    outputs = serving.task_outputs(
                        token_tensor[low : low + batch_size], float_tensor[low : low + batch_size]
                    )
                    if evaluator is not None:
                        batch_labels = {
                            name: value[low : low + batch_size] for name, value in label_tensors.items()
                        }
                        evaluator.collect(
                            batch_labels, {name: outputs[name] for name in serving.native_outputs}
                        )
                    if serving.multitask and "cvr" not in outputs:
                        outputs["cvr"] = division_cvr(outputs["purchase"], outputs["click"])
                    probabilities.append(
                        torch.stack([outputs[name].float() for name in serving.outputs], dim=1)
                    )
            scores = torch.cat(probabilities).numpy()
            columns = [block.column(name) for name in keys]
            columns += [pa.array(scores[:, i]) for i in range(scores.shape[1])]
            table = pa.Table.from_arrays(columns, names=report.output_columns)
            if writer is None:
                writer = _writer(partial_output, out_format, table.schema, serving.output_names)
            writer.write_table(table)
            report.rows += rows
            bar.update(rows)
        if writer is None:
            raise PredictInputError(f"[{input_path}] holds no rows to score.")
        writer.close()
        writer = None
        os.replace(partial_output, output_path)
    except pa.ArrowInvalid as error:
        raise PredictInputError(f"Cannot read [{input_path}]: {str(error).splitlines()[0]}.") from None
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        if os.path.exists(partial_output):
            os.remove(partial_output)
    report.seconds = time.perf_counter() - start
    report.cpu_seconds = time.process_time() - cpu_start
    if evaluator is not None:
        report.metrics = dict(evaluator.evaluate())
    return report


def _vocabulary(dataset, name):
    """A token field's vocabulary, as Arrow strings when the dataset stores them encoded."""
    if hasattr(dataset, "vocabulary_array"):
        return dataset.vocabulary_array(name)
    return dataset.vocabulary(name)


def _label_tensor(block, name, path):
    values = block.column(name).to_numpy(zero_copy_only=False).astype(np.float32)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        raise PredictInputError(
            f"[{path}] label column [{name}] holds {int(bad.sum())} values other than 0 / 1 "
            f"(first: {values[bad][0]}). Fix: give 0 / 1 labels, or drop the column to score "
            "without metrics."
        )
    return torch.from_numpy(values)
