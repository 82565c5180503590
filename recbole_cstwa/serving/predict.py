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
- A file, cell or setting that cannot be used is a one-line :class:`PredictInputError` naming it
  and the fix (a numerical cell by training's rule: a finite number or empty). The output is
  written whole or not at all (:func:`recbole_cstwa.file_writes.atomic_file`), never over the
  input.
"""

import contextlib
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

from recbole_cstwa.data.atomic_files import check_finite
from recbole_cstwa.errors import DataFormatError, DiskFullError, PredictInputError
from recbole_cstwa.evaluator import TaskEvaluator, division_cvr
from recbole_cstwa.file_writes import atomic_file, remove_stale_temporaries
from recbole_cstwa.serving.module import ServingModule
from recbole_cstwa.tables import COMPRESSIONS, KINDS, column_names, read_blocks, read_problem, table_format

#: The kinds of table (:data:`recbole_cstwa.tables.KINDS`) scored, and written.
INPUT_KINDS = ("csv", "tsv", "parquet", "inter")
OUTPUT_KINDS = ("csv", "parquet")
#: ``threads`` may be at most this many times the CPUs the process may run on: scoring is
#: CPU-bound, so more threads only take turns on the cores, and far more is a typo that would
#: start that many threads.
THREADS_PER_CPU = 4
#: Labelled rows a task needs for its metrics (RecBole's AUC fails on fewer).
METRIC_ROWS = 2


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
                return self._with_unseen(*self._integer_indices(column, values))
        return self._with_unseen(*self._string_indices(column))

    def _with_unseen(self, indices, unseen_cells):
        """``(int64 indices, unseen count)``: ``unseen_cells`` (tokens not in the vocabulary)
        given :attr:`unseen_index`."""
        unseen = int(np.count_nonzero(unseen_cells))
        if unseen and self.unseen_index:
            indices[unseen_cells] = self.unseen_index
        return indices.astype(np.int64, copy=False), unseen

    def _integer_indices(self, column, values):
        """``(indices, unseen cells)`` of a column read as integers."""
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
        return indices, unseen_cells

    def _string_indices(self, column):
        """``(indices, unseen cells)`` of a column by its distinct strings."""
        if self._strings is None:
            self._strings = pd.Index(self._tokens.to_numpy(zero_copy_only=False))
        encoded = column.dictionary_encode()
        dictionary = encoded.dictionary.to_numpy(zero_copy_only=False)
        found = self._strings.get_indexer(dictionary.astype(object, copy=False)) + 1  # 0: unseen
        codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        lookup = np.append(found, 0).astype(np.int64)  # code -1 (a missing cell) -> 0
        indices = lookup[codes]
        return indices, (codes >= 0) & (indices == 0)


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
    too_few: dict = field(default_factory=dict)  # task -> its labelled rows, too few for metrics
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
        elif not self.too_few:
            lines.append("no label columns: scores only")
        if self.too_few:
            counts = ", ".join(
                f"{task} ({rows} labelled row{'' if rows == 1 else 's'})"
                for task, rows in self.too_few.items()
            )
            lines.append(
                f"no metrics for {counts}: a task's metrics need {METRIC_ROWS} rows or more (cvr: clicked rows)"
            )
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


def checked_batch_and_threads(batch_size, threads):
    """``(batch_size, threads)`` when usable: a batch of 1 row or more; threads None (torch's
    setting) or 1 to :func:`max_threads`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise PredictInputError(
            f"--batch_size={batch_size}: the rows a model call must be 1 or more. Fix: --batch_size=8192."
        )
    if threads is not None:
        most = max_threads()
        if (
            isinstance(threads, bool)
            or not isinstance(threads, (int, np.integer))
            or not 1 <= threads <= most
        ):
            raise PredictInputError(
                f"--threads={threads}: give 1 to {most} ({THREADS_PER_CPU} times the {most // THREADS_PER_CPU} "
                "CPUs this process may use: more threads only take turns on the cores). Fix: leave "
                "--threads out for torch's setting."
            )
    return int(batch_size), threads


def max_threads():
    """The most threads scoring may use (:data:`THREADS_PER_CPU` times the usable CPUs)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this system
        cpus = os.cpu_count() or 1
    return THREADS_PER_CPU * cpus


def check_paths(input_path, output_path):
    """Refuses an input that is not a file, an output that would replace the input or cannot be
    written where it is named (a missing folder, a folder of the output's name)."""
    if not os.path.isfile(input_path):
        raise PredictInputError(f"Input file [{input_path}] does not exist.")
    folder = os.path.dirname(os.path.abspath(output_path))
    if not os.path.isdir(folder):
        raise PredictInputError(
            f"Output [{output_path}]: its folder [{folder}] does not exist. Fix: create it, or name "
            "another --output."
        )
    if os.path.isdir(output_path) and not os.path.islink(output_path):
        raise PredictInputError(
            f"Output [{output_path}] is a folder. Fix: name a file (.csv or .parquet) as --output."
        )
    same = os.path.realpath(input_path) == os.path.realpath(output_path)
    if same or (os.path.exists(output_path) and os.path.samefile(input_path, output_path)):
        raise PredictInputError(
            f"--output [{output_path}] is the input file [{input_path}]: its scores would replace "
            "the rows they score. Fix: name another --output."
        )


def _blocks(path, wanted, types, threads):
    """``(the file's column names, record batches of the wanted columns)``: ``wanted`` are names
    without ``:type``; a read error is a one-line :class:`PredictInputError`."""
    kind = table_format(path).kind
    try:
        names = column_names(path)
    except (OSError, UnicodeDecodeError, pa.ArrowException) as error:
        raise PredictInputError(f"Cannot read [{path}] as {kind}: {read_problem(path, error)}") from None
    if not names:
        raise PredictInputError(
            f"[{path}] holds no rows: the file is empty (or its first line, the header naming the "
            "columns, is). Fix: give the rows to score, after a header line."
        )
    repeated = [name for name in dict.fromkeys(names) if name in wanted and names.count(name) > 1]
    if repeated:
        raise PredictInputError(
            f"[{path}]: column [{repeated[0]}] appears {names.count(repeated[0])} times in the "
            "header: rename the copies (which one to read cannot be told)."
        )
    present = [name for name in wanted if name in names]
    if kind == "parquet":
        _check_parquet_types(path, present)
    blocks = read_blocks(
        path,
        present,
        column_types={name: types[name] for name in present if name in types},
        use_threads=threads > 1,
    )
    return names, _read_checked(path, names, blocks)


def _check_parquet_types(path, columns):
    """A parquet column read holds one value a row: no list, struct or map."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as error:
        raise PredictInputError(f"Cannot read [{path}] as parquet: {read_problem(path, error)}") from None
    for name in columns:
        column_type = schema.field(name).type
        if pa.types.is_nested(column_type):
            raise PredictInputError(
                f"[{path}] column [{name}] is {column_type}: a column read holds one value a row (a "
                "string or a number). Fix: write one value a cell, or leave the column out."
            )


def _read_checked(path, names, blocks):
    """Yields ``blocks``; a read error is a one-line :class:`PredictInputError` naming the line."""
    rows = 0
    iterator = iter(blocks)
    while True:
        try:
            block = next(iterator)
        except StopIteration:
            return
        except (OSError, UnicodeDecodeError, pa.ArrowException) as error:
            problem = read_problem(path, error, names, rows)
            raise PredictInputError(f"Cannot read [{path}] as {table_format(path).kind}: {problem}") from None
        rows += block.num_rows
        yield block


@contextlib.contextmanager
def _scores_file(path):
    """:func:`~recbole_cstwa.file_writes.atomic_file` for the scores (after removing what dead
    writers left in the folder); an error writing it is one line naming it."""
    remove_stale_temporaries(os.path.dirname(os.path.abspath(path)))
    try:
        with atomic_file(path, "wb") as sink:
            yield sink
    except DiskFullError:
        raise  # names the folder and the space needed
    except OSError as error:  # read errors are PredictInputErrors already
        raise PredictInputError(
            f"Cannot write [{path}]: {error.strerror or error}. Fix: name an --output in a folder "
            "you can write to."
        ) from None


def _writer(sink, kind, schema, scores=()):
    if kind == "parquet":  # probabilities are not dictionary-encoded: 7x the cost, a larger file
        return pq.ParquetWriter(sink, schema, use_dictionary=[n for n in schema.names if n not in scores])
    return pa_csv.CSVWriter(sink, schema)


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
    batch_size, threads = checked_batch_and_threads(batch_size, threads)
    check_paths(input_path, output_path)
    if threads:
        torch.set_num_threads(int(threads))
        pa.set_cpu_count(int(threads))
        pa.set_io_thread_count(int(threads))
    threads = torch.get_num_threads()
    config = trained.config
    # each user's and item's vectors in one row: 15-20% faster, more memory (JointLookup)
    serving = ServingModule(trained, entity_vectors=True).eval()
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
    text_input = table_format(input_path).kind != "parquet"  # a bad cell is named by its line
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
    # Entered here and left after the loop (the loop keeps its indentation): the new file under an
    # unpredictable name that becomes the output only when every row is written.
    output = contextlib.ExitStack()
    sink = output.enter_context(_scores_file(output_path))
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(desc="scoring", unit=" rows", disable=not show, file=sys.stderr)
    writer = None
    start, cpu_start = time.perf_counter(), time.process_time()
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
                values = _float_values(block, name, input_path, report.rows, text_input)
                floats[:, position] = np.nan_to_num(values, nan=0.0)
            probabilities = []
            token_tensor, float_tensor = torch.from_numpy(tokens), torch.from_numpy(floats)
            label_tensors = {
                name: _label_tensor(block, name, input_path, report.rows, text_input) for name in labels
            }
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
                writer = _writer(sink, out_format, table.schema, serving.output_names)
            writer.write_table(table)
            report.rows += rows
            bar.update(rows)
        if writer is None:
            raise PredictInputError(
                f"[{input_path}] holds no rows to score (a header line only). Fix: give the rows to score."
            )
        writer.close()
        writer = None
    except BaseException:
        if writer is not None:  # the new file is removed below anyway
            with contextlib.suppress(OSError, pa.ArrowException):
                writer.close()
        if not output.__exit__(*sys.exc_info()):  # removes the new file
            raise
    finally:
        bar.close()
    output.close()  # the new file becomes the output
    report.seconds = time.perf_counter() - start
    report.cpu_seconds = time.process_time() - cpu_start
    if evaluator is not None:
        rows = evaluator.collected_rows()
        report.too_few = {task: count for task, count in rows.items() if count < METRIC_ROWS}
        report.metrics = dict(evaluator.evaluate(tasks=[task for task in rows if task not in report.too_few]))
    return report


def _vocabulary(dataset, name):
    """A token field's vocabulary, as Arrow strings when the dataset stores them encoded."""
    if hasattr(dataset, "vocabulary_array"):
        return dataset.vocabulary_array(name)
    return dataset.vocabulary(name)


def _float_values(block, name, path, first_row, by_line):
    """A float column of a block as float64 numbers (NaN: an empty cell), finite as in training
    (:func:`~recbole_cstwa.data.atomic_files.check_finite`); a cell that is no number is a
    one-line error naming it (``first_row``: the data rows before the block; ``by_line``: a text
    file, whose cells are named by their line, else by their row)."""
    column = block.column(name)
    try:
        values = column.cast(pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # a parquet column of other values
        at, cell = next(
            ((at, cell) for at, cell in enumerate(column.to_pylist()) if not _is_number(cell)), (0, None)
        )
        where = f"line {first_row + at + 2}" if by_line else f"row {first_row + at + 1}"
        raise PredictInputError(
            f"[{path}] column [{name}] ({column.type}) holds {cell!r} at {where}, not a number. "
            "Fix: write a number there, or leave the cell empty."
        ) from None
    try:
        check_finite(path, name, values, first_row, by_line=by_line)
    except DataFormatError as error:  # training's rule and words, as this module's error
        raise PredictInputError(str(error)) from None
    return values.to_numpy(zero_copy_only=False)


def _is_number(cell):
    try:
        float(cell if cell is not None else 0.0)
    except (TypeError, ValueError):
        return False
    return True


def _label_tensor(block, name, path, first_row, by_line):
    values = _float_values(block, name, path, first_row, by_line).astype(np.float32)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        raise PredictInputError(
            f"[{path}] label column [{name}] holds {int(bad.sum())} values other than 0 / 1 "
            f"(first: {values[bad][0]}). Fix: give 0 / 1 labels, or drop the column to score "
            "without metrics."
        )
    return torch.from_numpy(values)
