"""Converts Ali-CCP into RecBole atomic files for the click -> purchase multi-task models.

Ali-CCP (Alibaba Click and Conversion Prediction, Tianchi dataset 408) is not redistributable,
so users download it and run this converter once. It reads either form the literature uses:

``raw``
    The official files ``sample_skeleton_{train,test}.csv`` and ``common_features_{train,test}
    .csv``. The default preprocessing reproduces AITM's official script
    (xidongbo/AITM ``process_public_dataset.py``), which the CSTWA paper follows:

    * 18 single-valued fields 101, 121, 122, 124-129, 205, 206, 207, 216, 508, 509, 702, 853,
      301 (``--keep-210`` adds the item intention node 210). A feature keeps its id and drops
      its value. An impression's features are its own ``feature_list`` updated with the common
      block it names, so the common block wins a conflict; a field repeated in a list keeps
      its last id (AITM parses through a dict). A field an impression lacks is written as an
      empty cell: RecBole's padding id 0, so it is not one of the fields "present in the
      sample" whose mean the paper's Eq. 7 takes.
    * Impressions with ``click=0`` and ``conversion=1`` are dropped (train and test), counted.
    * Frequency filter counted on the whole official train file (after the drop, before the
      train/valid split, as AITM does): an id seen at least ``min_count`` times is kept, any
      other id (and any id unseen in train) becomes the field's out-of-vocabulary token ``0``.
      AITM's counter starts at 0 on first sight and keeps ``counter > 10``, i.e. **12**
      occurrences, although the paper says "10": ``AITM_MIN_COUNT = 12`` is the default.
    * Kept ids are re-encoded per field as ``1..n`` in order of first appearance in the train
      file (AITM also maps kept ids to ``1..n``, in an unspecified set order); ``0`` = OOV, which
      RecBole maps to a real id: one learned out-of-vocabulary vector per field, as in AITM.
    * Train/valid: one ``random.Random(seed).random()`` draw per kept train impression in file
      order, valid when ``draw >= 1 - valid_ratio``; with the defaults (0.1, 2020) this is
      AITM's ``random.seed(2020)`` / ``random.random() >= 0.9`` rule. The official test file is
      the test split.

``csv``
    The preprocessed three-file table public repositories ship (torch-rechub style: header
    ``click,purchase,101,121,...,301,109_14,...,D853``). Its ids are already encoded and are
    written as they are; the splits are the files. The multi-valued ``*_14`` columns, ``210``
    and the dense ``D*`` columns are ignored unless ``--keep-210`` / ``--keep-dense``.

Output, in ``<output>/<name>/`` (tab separated, RecBole ``name:type`` headers), written by the
shared writer of :mod:`recbole_cstwa.tools.writer` (all files or none: a failed conversion removes
what it wrote, and the folder when it created it):

* ``<name>.{train,valid,test}.inter``: ``user_id item_id f301 f508 f509 f702 f853`` tokens and
  ``click purchase`` floats written ``0``/``1`` (dense ``D*`` floats after them in csv mode).
* ``<name>.user``: ``user_id`` (field 101) + ``f121 f122 f124 ... f129``, one row per user.
* ``<name>.item``: ``item_id`` (field 205) + ``f206 f207 f216`` (+ ``f210``), one row per item.
* ``<name>.yaml``: RecBole dataset settings (``benchmark_filename``, ``load_col``, fields).
* ``<name>.meta.json``: source, options and counts (the dict the convert functions return).

The ``.user``/``.item`` layout stores one profile per id: the one seen first (train file first);
impressions whose profile differs from it are counted (``profile_conflicts``). In raw mode every
rare user or item shares the OOV id ``0``, whose profile row is all ``0``: those impressions lose
their profile/attribute ids that AITM, which feeds all 18 fields per impression, would keep.

Memory: the train skeleton (tens of GB) is streamed twice: pass 1 parses it, counts ids and
writes the joined raw ids to a temporary file (about 100 bytes an impression, in the output
folder unless ``tmp_dir``); pass 2 reads that file, re-encodes and splits it. Only the id
counters, the id maps, the user/item tables (bounded by the vocabularies) and the common-block
table (bounded by the number of blocks, 18 fields each) grow; rows are never held.

Malformed lines (wrong column count, ``feature_num`` mismatch, unparsable feature, unknown
common block, label other than 0/1, bad token or dense value, bytes that are not UTF-8) raise :class:`MalformedLineError`
(an :class:`~recbole_cstwa.errors.InputError`) naming the file and the 1-based line number, or with ``skip_malformed`` are
skipped and counted per file and reason.
"""

import itertools
import logging
import math
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from operator import itemgetter

from tqdm import tqdm

from recbole_cstwa.errors import MalformedLineError
from recbole_cstwa.tools.writer import CHUNK_ROWS, AtomicDatasetWriter, TableWriter, is_purchase_without_click

logger = logging.getLogger(__name__)

#: Ali-CCP field codes (see the module docstring for their meaning).
USER_ID_CODE = "101"
ITEM_ID_CODE = "205"
USER_PROFILE_CODES = ("121", "122", "124", "125", "126", "127", "128", "129")
ITEM_ATTRIBUTE_CODES = ("206", "207", "216")
ITEM_INTENTION_CODE = "210"
CONTEXT_CODES = ("301", "508", "509", "702", "853")
#: AITM's 18 single-valued fields, in its order.
AITM_FIELD_CODES = (
    ("101",) + USER_PROFILE_CODES + ("205",) + ITEM_ATTRIBUTE_CODES + ("508", "509", "702", "853", "301")
)
#: AITM keeps an id whose counter (0 on first sight) exceeds 10: 12 occurrences.
AITM_MIN_COUNT = 12
#: A rare id (seen fewer than ``min_count`` times) or an id unseen in train: one out-of-vocabulary
#: token per field, which RecBole maps to a real id with its own learned vector (AITM's OOV).
OOV_TOKEN = "0"
#: A field the impression lacks: an empty cell, which RecBole reads as its padding id 0, so the
#: field is not "present" (the paper's Eq. 7 averages the context fields present in a sample).
ABSENT_TOKEN = ""
SPLITS = ("train", "valid", "test")
CLICK_COLUMN = "click"
PURCHASE_COLUMN = "purchase"
#: Accepted label spellings, normalised to the written ``0``/``1``.
LABEL_TOKENS = {"0": "0", "1": "1", "0.0": "0", "1.0": "1"}

# Reasons a line is rejected (keys of the skipped counts).
WRONG_COLUMN_COUNT = "wrong column count"
FEATURE_NUM_MISMATCH = "feature_num mismatch"
UNPARSABLE_FEATURE = "unparsable feature"
UNKNOWN_COMMON_INDEX = "unknown common_feature_index"
BAD_LABEL = "label not 0/1"
BAD_TOKEN = "empty or tab-containing token"
BAD_DENSE_VALUE = "dense value not a finite number"
NOT_UTF8 = "not UTF-8 text"

# One feature ``field\x02id\x03value`` and its ``\x01`` separator. Tabs are refused in ids
# because the output is tab separated.
_FEATURE_PATTERN = re.compile(r"([^\x01\x02\x03\t]+)\x02([^\x01\x02\x03\t]+)\x03[^\x01\x02\x03]*(?:\x01|\Z)")
_ONE_FEATURE = re.compile(r"[^\x01\x02\x03\t]+\x02[^\x01\x02\x03\t]+\x03[^\x01\x02\x03\t]*")
_ABSENT = itertools.repeat(ABSENT_TOKEN)  # the raw id of a field an impression lacks
_OOV = itertools.repeat(OOV_TOKEN)  # the written id of an id outside the vocabulary
_CHUNK_ROWS = CHUNK_ROWS  # rows buffered between counter updates


def _tuple_getter(positions):
    """``itemgetter`` that returns a tuple even for zero or one position."""
    if not positions:
        return lambda row: ()
    if len(positions) == 1:
        only = positions[0]
        return lambda row: (row[only],)
    return itemgetter(*positions)


def column_name(code):
    """RecBole field name of an Ali-CCP field code: ``user_id``, ``item_id`` or ``f<code>``."""
    if code == USER_ID_CODE:
        return "user_id"
    if code == ITEM_ID_CODE:
        return "item_id"
    return f"f{code}"


class _LineProblem(Exception):
    """Raised by the line parsers; the caller adds file and line number or counts it."""

    def __init__(self, reason, detail):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


class _MalformedTally:
    """Raises on the first malformed line, or counts skipped lines per file and reason."""

    def __init__(self, skip):
        self.skip = skip
        self.by_file = {}

    def handle(self, path, line_number, problem):
        if not self.skip:
            raise MalformedLineError(path, line_number, problem.reason, problem.detail) from None
        reasons = self.by_file.setdefault(str(path), {})
        entry = reasons.setdefault(problem.reason, {"count": 0, "first_line": line_number})
        entry["count"] += 1

    def log(self):
        for path, reasons in self.by_file.items():
            for reason, entry in reasons.items():
                logger.warning(
                    "skipped %d malformed lines in %s (%s; first at line %d)",
                    entry["count"],
                    path,
                    reason,
                    entry["first_line"],
                )


class _Layout:
    """Which Ali-CCP fields go to which output file, and the output headers."""

    def __init__(self, keep_210, dense_columns=()):
        item_codes = (ITEM_ID_CODE,) + ITEM_ATTRIBUTE_CODES
        if keep_210:
            item_codes += (ITEM_INTENTION_CODE,)
        self.user_codes = (USER_ID_CODE,) + USER_PROFILE_CODES
        self.item_codes = item_codes
        self.inter_codes = (USER_ID_CODE, ITEM_ID_CODE) + CONTEXT_CODES
        # Parse order: AITM's, plus 210 at the end when kept.
        self.codes = AITM_FIELD_CODES + ((ITEM_INTENTION_CODE,) if keep_210 else ())
        self.dense_columns = tuple(dense_columns)

    def getter(self, codes):
        """Picks ``codes`` (as a tuple) out of a row holding the fields in ``self.codes`` order."""
        return _tuple_getter([self.codes.index(code) for code in codes])

    def inter_fields(self):
        tokens = [(column_name(code), "token") for code in self.inter_codes]
        floats = [(name, "float") for name in (CLICK_COLUMN, PURCHASE_COLUMN) + self.dense_columns]
        return tokens + floats

    def table_fields(self, codes):
        return [(column_name(code), "token") for code in codes]


class _ProfileTable:
    """First-seen attributes per user (or item) id, counting impressions that disagree."""

    def __init__(self):
        self.rows = {}
        self.conflicts = 0

    def add(self, key, attributes):
        if self.rows.setdefault(key, attributes) != attributes:
            self.conflicts += 1


def _check_inputs(named_paths):
    for option, path in named_paths.items():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Ali-CCP input file not found: {option} {path}")


def _progress(lines, description, enabled, total=None):
    """tqdm over input lines on stderr (count and rows/s), or the lines unchanged."""
    if not enabled:
        return lines
    return tqdm(
        lines,
        desc=description,
        total=total,
        unit=" rows",
        unit_scale=True,
        mininterval=2.0,
        file=sys.stderr,
    )


def _numbered_lines(path, tally, description, show_progress, skip_header=False):
    """``(1-based line number, text without the line end)`` of a UTF-8 file.

    Lines are decoded one at a time, so a byte sequence that is not UTF-8 is reported with its
    file and line (or skipped and counted under ``skip_malformed``) instead of failing the
    whole read with a bare ``UnicodeDecodeError``.
    """
    with open(path, "rb") as lines:
        first = 1
        if skip_header:
            next(lines, None)
            first = 2
        for line_number, raw in enumerate(_progress(lines, description, show_progress), first):
            try:
                yield line_number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                tally.handle(
                    path,
                    line_number,
                    _LineProblem(
                        NOT_UTF8, f"byte {raw[error.start : error.start + 1]!r} at column {error.start + 1}"
                    ),
                )


def _kept_rows(rows, counts):
    """Drops (and counts) the ``click=0, purchase=1`` rows of ``(click, purchase, ...)`` tuples."""
    for row in rows:
        if is_purchase_without_click(row[0], row[1]):
            counts["dropped"] += 1
            continue
        counts["rows"] += 1
        yield row


def _log_rate(what, rows, started):
    seconds = time.perf_counter() - started
    logger.info(
        "%s: %d rows in %.1f s (%.0f rows/s)",
        what,
        rows,
        seconds,
        rows / max(seconds, 1e-9),
    )


# --------------------------------------------------------------------------------------------
# Raw format parsing


def _parse_feature_list(feature_list, feature_num):
    """``[(field, id), ...]`` of a ``feature_list``, checked against its ``feature_num``."""
    try:
        declared = int(feature_num)
    except ValueError:
        raise _LineProblem(FEATURE_NUM_MISMATCH, f"feature_num {feature_num!r} is not an integer") from None
    pairs = _FEATURE_PATTERN.findall(feature_list)
    chunks = feature_list.count("\x01") + 1 if feature_list else 0
    # A match ends at a chunk's end, so equal counts mean one match per chunk; and as each
    # match holds one \x02 and one \x03, equal separator counts (and no tab) leave no stray
    # text before a match: every chunk is exactly one feature. Checked in C, not per feature.
    if (
        len(pairs) != chunks
        or feature_list.count("\x02") != chunks
        or feature_list.count("\x03") != chunks
        or "\t" in feature_list
    ):
        position, chunk = next(
            (position, chunk)
            for position, chunk in enumerate(feature_list.split("\x01"), 1)
            if not _ONE_FEATURE.fullmatch(chunk)
        )
        raise _LineProblem(UNPARSABLE_FEATURE, f"feature {position} {chunk!r} is not field\\x02id\\x03value")
    if chunks != declared:
        raise _LineProblem(
            FEATURE_NUM_MISMATCH,
            f"feature_num is {declared} but feature_list holds {chunks} features",
        )
    return pairs


def _load_common_blocks(path, codes, tally, show_progress):
    """``{common_feature_index: ((field, id), ...)}`` keeping only the fields in ``codes``.

    Only the needed fields are stored (the multi-valued ``*_14`` lists, most of a block, are
    dropped), and identical projections and pairs are shared: a user's blocks repeat the same
    profile, so the table costs a pointer tuple per block rather than a dict.
    """
    started = time.perf_counter()
    wanted = set(codes)
    blocks, shared_projections, shared_pairs = {}, {}, {}
    for line_number, line in _numbered_lines(path, tally, f"common {os.path.basename(path)}", show_progress):
        columns = line.split(",")
        try:
            if len(columns) != 3:
                raise _LineProblem(
                    WRONG_COLUMN_COUNT,
                    "expected 3 comma-separated columns (common_feature_index, feature_num, "
                    f"feature_list), got {len(columns)}",
                )
            pairs = _parse_feature_list(columns[2], columns[1])
        except _LineProblem as problem:
            tally.handle(path, line_number, problem)
            continue
        projection = tuple(item for item in dict(pairs).items() if item[0] in wanted)
        shared = shared_projections.get(projection)
        if shared is None:
            shared = tuple(shared_pairs.setdefault(item, item) for item in projection)
            shared_projections[shared] = shared
        blocks[columns[0]] = shared
    _log_rate(f"read common blocks {path}", len(blocks), started)
    return blocks


def _parse_skeleton_line(line, common_blocks, codes):
    """``(click, purchase, raw ids in codes order)`` of one skeleton line; '' = field absent."""
    columns = line.split(",")
    if len(columns) != 6:
        raise _LineProblem(
            WRONG_COLUMN_COUNT,
            "expected 6 comma-separated columns (sample_id, click, conversion, "
            f"common_feature_index, feature_num, feature_list), got {len(columns)}",
        )
    click = LABEL_TOKENS.get(columns[1])
    purchase = LABEL_TOKENS.get(columns[2])
    if click is None or purchase is None:
        raise _LineProblem(BAD_LABEL, f"click={columns[1]!r}, conversion={columns[2]!r}")
    features = dict(_parse_feature_list(columns[5], columns[4]))
    common = common_blocks.get(columns[3])
    if common is None:
        raise _LineProblem(
            UNKNOWN_COMMON_INDEX,
            f"no common block {columns[3]!r} in the common features file",
        )
    features.update(common)  # the common block wins, as in AITM
    return click, purchase, list(map(features.get, codes, _ABSENT))


def _iter_skeleton(path, common_blocks, codes, tally, show_progress, counts):
    """Yields the parsed kept impressions of a skeleton file; counts rows and drops in ``counts``."""

    def parsed():
        for line_number, line in _numbered_lines(path, tally, os.path.basename(path), show_progress):
            try:
                yield _parse_skeleton_line(line, common_blocks, codes)
            except _LineProblem as problem:
                tally.handle(path, line_number, problem)

    return _kept_rows(parsed(), counts)


def _count_and_join_train(path, common_blocks, codes, joined_file, tally, show_progress):
    """Pass 1: parses the train skeleton, writes ``click purchase ids...`` lines to
    ``joined_file`` and returns per-field id counters (insertion order = first appearance)."""
    started = time.perf_counter()
    counters = [Counter() for _ in codes]
    counts = {"rows": 0, "dropped": 0}
    joined = TableWriter(joined_file, fields=None)
    chunk = []

    def count_chunk():
        # Counting column by column runs in C (Counter.update on an iterable).
        for counter, column in zip(counters, zip(*chunk)):
            counter.update(column)
        chunk.clear()

    for click, purchase, raw_ids in _iter_skeleton(path, common_blocks, codes, tally, show_progress, counts):
        joined.add(f"{click}\t{purchase}\t" + "\t".join(raw_ids) + "\n")
        chunk.append(raw_ids)
        if len(chunk) >= _CHUNK_ROWS:
            count_chunk()
    count_chunk()
    joined.flush()
    for counter in counters:
        counter.pop(ABSENT_TOKEN, None)  # an absent field stays absent, it is not an id
    _log_rate(f"pass 1 (parse, count) {path}", counts["rows"], started)
    return counters, counts


def _build_id_maps(counters, min_count):
    """Per field ``{raw id: written id}``: kept ids -> '1'..'n' by first appearance; an absent
    field ('') stays empty, RecBole's padding id."""
    id_maps = []
    for counter in counters:
        kept = [raw for raw, count in counter.items() if count >= min_count]
        id_map = dict(zip(kept, map(str, range(1, len(kept) + 1))))
        id_map[ABSENT_TOKEN] = ABSENT_TOKEN
        id_maps.append(id_map)
    return id_maps


class _Encoder:
    """Maps raw ids to written ids and fills the user/item tables and the inter lines."""

    def __init__(self, layout, id_maps):
        self.id_maps = id_maps
        self.inter_of = layout.getter(layout.inter_codes)
        self.user_of = layout.getter(layout.user_codes)
        self.item_of = layout.getter(layout.item_codes)
        self.users = _ProfileTable()
        self.items = _ProfileTable()
        self.oov_users = 0
        self.oov_items = 0

    def encode(self, click, purchase, raw_ids):
        ids = list(map(dict.get, self.id_maps, raw_ids, _OOV))
        user = self.user_of(ids)
        if user[0] == OOV_TOKEN:
            self.oov_users += 1
        elif user[0] != ABSENT_TOKEN:
            self.users.add(user[0], user[1:])
        item = self.item_of(ids)
        if item[0] == OOV_TOKEN:
            self.oov_items += 1
        elif item[0] != ABSENT_TOKEN:
            self.items.add(item[0], item[1:])
        return "\t".join(self.inter_of(ids)) + f"\t{click}\t{purchase}\n"


def _write_split_train(joined_path, rows, encoder, valid_ratio, seed, outputs, fields, show_progress):
    """Pass 2: re-encodes the joined train rows and splits them train/valid (AITM's rule)."""
    started = time.perf_counter()
    draw = random.Random(seed).random
    valid_from = 1.0 - valid_ratio
    tables = {split: outputs.table(f"{split}.inter", fields) for split in ("train", "valid")}
    with open(joined_path, encoding="utf-8") as lines:
        for line in _progress(lines, "encode + split train", show_progress, total=rows):
            click, purchase, *raw_ids = line[:-1].split("\t")
            split = "valid" if draw() >= valid_from else "train"
            tables[split].add(encoder.encode(click, purchase, raw_ids))
    for table in tables.values():
        table.flush()
    _log_rate("pass 2 (encode, split)", rows, started)
    return {split: table.rows for split, table in tables.items()}


def _write_test(path, common_blocks, codes, encoder, outputs, fields, tally, show_progress):
    """Parses and encodes the official test file in one pass (the id maps are known by then)."""
    started = time.perf_counter()
    counts = {"rows": 0, "dropped": 0}
    table = outputs.table("test.inter", fields)
    for click, purchase, raw_ids in _iter_skeleton(path, common_blocks, codes, tally, show_progress, counts):
        table.add(encoder.encode(click, purchase, raw_ids))
    table.flush()
    _log_rate(f"test {path}", counts["rows"], started)
    return counts


def _write_profiles(outputs, layout, users, items, oov_row):
    """Writes ``.user`` and ``.item``: an optional OOV row, then ids in first-seen order."""
    for suffix, codes, profiles in (
        ("user", layout.user_codes, users),
        ("item", layout.item_codes, items),
    ):
        table = outputs.table(suffix, layout.table_fields(codes))
        if oov_row:
            table.add("\t".join([OOV_TOKEN] * len(codes)) + "\n")
        for key, values in profiles.rows.items():
            table.add(key + "\t" + "\t".join(values) + "\n")
        table.flush()


def _write_dataset_config(outputs, layout, mode):
    """Writes ``<name>.yaml``: the RecBole dataset settings these files need."""
    settings = {
        "field_separator": "\t",
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "CLICK_FIELD": CLICK_COLUMN,
        "PURCHASE_FIELD": PURCHASE_COLUMN,
        "benchmark_filename": list(SPLITS),
        "load_col": {
            "inter": [name for name, _ in layout.inter_fields()],
            "user": [column_name(c) for c in layout.user_codes],
            "item": [column_name(c) for c in layout.item_codes],
        },
    }
    if layout.dense_columns:
        # RecBole's context-aware models embed a float field only when it is listed here.
        settings["numerical_features"] = list(layout.dense_columns)
    outputs.write_yaml(
        settings,
        comments=(
            f"RecBole dataset settings for {outputs.name}, written by recbole_cstwa.tools.ali_ccp ({mode} mode).",
            f"Loaded by convention from <data_path>/{outputs.name}/{outputs.name}.yaml when a run names "
            f"dataset {outputs.name}.",
        ),
    )


def _input_description(named_paths):
    return {
        option: {"path": os.path.abspath(path), "bytes": os.path.getsize(path)}
        for option, path in named_paths.items()
    }


def convert_raw(
    train_skeleton,
    train_common,
    test_skeleton,
    test_common,
    output="dataset",
    name="ali-ccp",
    min_count=AITM_MIN_COUNT,
    valid_ratio=0.1,
    seed=2020,
    keep_210=False,
    skip_malformed=False,
    show_progress=True,
    tmp_dir=None,
):
    """Converts the official Ali-CCP files with AITM's preprocessing (see the module docstring).

    Returns the summary also written to ``<name>.meta.json``: rows per split, dropped
    ``click=0, purchase=1`` impressions per input file, skipped malformed lines per file and
    reason, vocabulary sizes (written ids including OOV) and raw distinct ids per field, user
    and item counts, profile conflicts and elapsed seconds.
    """
    started = time.perf_counter()
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    if not 0.0 <= valid_ratio < 1.0:
        raise ValueError(f"valid_ratio must be in [0, 1), got {valid_ratio}")
    inputs = {
        "--train-skeleton": train_skeleton,
        "--train-common": train_common,
        "--test-skeleton": test_skeleton,
        "--test-common": test_common,
    }
    _check_inputs(inputs)
    layout = _Layout(keep_210)
    tally = _MalformedTally(skip_malformed)
    joined_path = None
    with AtomicDatasetWriter(output, name) as outputs:
        joined_fd, joined_path = tempfile.mkstemp(
            prefix=f".{name}.train-joined.", suffix=".tmp", dir=tmp_dir or outputs.tmp_dir()
        )
        try:
            common_blocks = _load_common_blocks(train_common, layout.codes, tally, show_progress)
            with open(joined_fd, "w", encoding="utf-8", newline="\n") as joined_file:
                counters, train_counts = _count_and_join_train(
                    train_skeleton, common_blocks, layout.codes, joined_file, tally, show_progress
                )
            del common_blocks
            raw_vocab_sizes = {column_name(c): len(counter) for c, counter in zip(layout.codes, counters)}
            id_maps = _build_id_maps(counters, min_count)
            del counters
            encoder = _Encoder(layout, id_maps)
            fields = layout.inter_fields()
            rows = _write_split_train(
                joined_path, train_counts["rows"], encoder, valid_ratio, seed, outputs, fields, show_progress
            )
        finally:
            if os.path.exists(joined_path):
                os.remove(joined_path)

        common_blocks = _load_common_blocks(test_common, layout.codes, tally, show_progress)
        test_counts = _write_test(
            test_skeleton, common_blocks, layout.codes, encoder, outputs, fields, tally, show_progress
        )
        del common_blocks
        rows["test"] = test_counts["rows"]

        _write_profiles(outputs, layout, encoder.users, encoder.items, oov_row=True)
        _write_dataset_config(outputs, layout, "raw")
        summary = {
            "dataset": "Ali-CCP (Alibaba Click and Conversion Prediction, Tianchi dataset 408)",
            "mode": "raw",
            "output_dir": os.path.abspath(outputs.directory),
            "inputs": _input_description(inputs),
            "preprocessing": {
                "reference": "AITM official (xidongbo/AITM process_public_dataset.py)",
                "fields": list(layout.codes),
                "min_count": min_count,
                "min_count_note": "an id is kept when seen >= min_count times in the official train "
                "file after the click=0/purchase=1 drop; AITM's 'counter > 10' from 0 is 12",
                "id_encoding": "kept ids -> 1..n per field by first appearance in train; 0 = the "
                "field's out-of-vocabulary token (rare or unseen id, a learned vector); an absent "
                "field is an empty cell (RecBole's padding id, not present)",
                "valid_ratio": valid_ratio,
                "seed": seed,
                "split_rule": "valid when random.Random(seed).random() >= 1 - valid_ratio, one draw "
                "per kept train impression in file order",
                "keep_210": keep_210,
                "skip_malformed": skip_malformed,
            },
            "rows": rows,
            "dropped_click0_purchase1": {
                "train_file": train_counts["dropped"],
                "test_file": test_counts["dropped"],
            },
            "skipped_malformed": tally.by_file,
            # kept ids + the OOV token (the map's entry for an absent field is no id)
            "vocab_sizes": {column_name(c): len(m) - 1 + 1 for c, m in zip(layout.codes, id_maps)},
            "raw_vocab_sizes": raw_vocab_sizes,
            "users": len(encoder.users.rows) + 1,
            "items": len(encoder.items.rows) + 1,
            "oov_user_impressions": encoder.oov_users,
            "oov_item_impressions": encoder.oov_items,
            "profile_conflicts": {
                "user": encoder.users.conflicts,
                "item": encoder.items.conflicts,
            },
        }
        summary["elapsed_seconds"] = round(time.perf_counter() - started, 3)
        outputs.write_meta(summary)
    tally.log()
    logger.info("wrote %s in %.1f s", outputs.directory, summary["elapsed_seconds"])
    return summary


# --------------------------------------------------------------------------------------------
# Preprocessed CSV format


def _read_csv_header(path, layout_codes, keep_dense):
    """Column positions of the labels, the needed fields and (optionally) the dense columns."""
    with open(path, "rb") as file:
        first_line = file.readline()
    try:
        header = first_line.decode("utf-8").rstrip("\r\n").split(",")
    except UnicodeDecodeError:
        raise MalformedLineError(path, 1, NOT_UTF8, "the header is not UTF-8 text") from None
    needed = [CLICK_COLUMN, PURCHASE_COLUMN] + list(layout_codes)
    missing = [column for column in needed if column not in header]
    if missing:
        raise ValueError(
            f"{path}, line 1: the header lacks the columns {missing} (expected a torch-rechub style "
            "header such as click,purchase,101,121,...,301,...)."
        )
    dense = [column for column in header if column.startswith("D")] if keep_dense else []
    return header, dense


def _parse_csv_line(line, width, click_at, purchase_at, tokens_of, dense_of, dense_columns):
    """``(click, purchase, token ids in layout.codes order, dense texts)`` of one csv line."""
    columns = line.split(",")
    if len(columns) != width:
        raise _LineProblem(
            WRONG_COLUMN_COUNT, f"expected {width} columns as in the header, got {len(columns)}"
        )
    click = LABEL_TOKENS.get(columns[click_at])
    purchase = LABEL_TOKENS.get(columns[purchase_at])
    if click is None or purchase is None:
        raise _LineProblem(BAD_LABEL, f"click={columns[click_at]!r}, purchase={columns[purchase_at]!r}")
    tokens = tokens_of(columns)
    if "" in tokens or "\t" in line:
        raise _LineProblem(BAD_TOKEN, "an id column is empty or the line holds a tab")
    dense = dense_of(columns)
    for column, text in zip(dense_columns, dense):
        try:
            finite = math.isfinite(float(text))
        except ValueError:
            finite = False
        if not finite:
            raise _LineProblem(BAD_DENSE_VALUE, f"{column}={text!r}")
    return click, purchase, tokens, dense


def _iter_csv_rows(path, header, layout, dense_columns, tally, show_progress, counts):
    """Yields ``(click, purchase, token ids in layout.codes order, dense texts)`` per kept row."""
    positions = (
        len(header),
        header.index(CLICK_COLUMN),
        header.index(PURCHASE_COLUMN),
        _tuple_getter([header.index(code) for code in layout.codes]),
        _tuple_getter([header.index(column) for column in dense_columns]),
        dense_columns,
    )

    def parsed():
        lines = _numbered_lines(path, tally, os.path.basename(path), show_progress, skip_header=True)
        for line_number, line in lines:
            try:
                yield _parse_csv_line(line, *positions)
            except _LineProblem as problem:
                tally.handle(path, line_number, problem)

    return _kept_rows(parsed(), counts)


def convert_csv(
    train,
    valid,
    test,
    output="dataset",
    name="ali-ccp",
    keep_dense=False,
    keep_210=False,
    skip_malformed=False,
    show_progress=True,
):
    """Converts a preprocessed three-file Ali-CCP table (torch-rechub style) to atomic files.

    Ids are written as they are (already encoded upstream); ``click=0, purchase=1`` rows are
    dropped and counted as in raw mode. Returns the summary also written to
    ``<name>.meta.json`` (rows per split, drops, skipped lines, distinct ids per field, users,
    items, profile conflicts, elapsed seconds).
    """
    started = time.perf_counter()
    inputs = {"--train": train, "--valid": valid, "--test": test}
    _check_inputs(inputs)
    layout = _Layout(keep_210)
    headers = {}
    for split, path in zip(SPLITS, (train, valid, test)):
        headers[split] = _read_csv_header(path, layout.codes, keep_dense)
    dense_columns = headers["train"][1]
    for split in ("valid", "test"):
        absent = [column for column in dense_columns if column not in headers[split][0]]
        if absent:
            raise ValueError(
                f"{inputs['--' + split]}, line 1: the header lacks the dense columns {absent} the train file has."
            )
    layout = _Layout(keep_210, dense_columns)
    tally = _MalformedTally(skip_malformed)
    inter_of = layout.getter(layout.inter_codes)
    user_of = layout.getter(layout.user_codes)
    item_of = layout.getter(layout.item_codes)
    users, items = _ProfileTable(), _ProfileTable()
    distinct = [set() for _ in layout.codes]
    rows, dropped = {}, {}
    with AtomicDatasetWriter(output, name) as outputs:
        for split, path in zip(SPLITS, (train, valid, test)):
            split_started = time.perf_counter()
            counts = {"rows": 0, "dropped": 0}
            table = outputs.table(f"{split}.inter", layout.inter_fields())
            chunk = []
            for click, purchase, tokens, dense in _iter_csv_rows(
                path, headers[split][0], layout, dense_columns, tally, show_progress, counts
            ):
                user, item = user_of(tokens), item_of(tokens)
                users.add(user[0], user[1:])
                items.add(item[0], item[1:])
                table.add("\t".join(inter_of(tokens) + (click, purchase) + dense) + "\n")
                chunk.append(tokens)
                if len(chunk) >= _CHUNK_ROWS:
                    for seen, column in zip(distinct, zip(*chunk)):
                        seen.update(column)
                    chunk.clear()
            for seen, column in zip(distinct, zip(*chunk)):
                seen.update(column)
            table.flush()
            rows[split], dropped[split] = counts["rows"], counts["dropped"]
            _log_rate(f"{split} {path}", counts["rows"], split_started)

        _write_profiles(outputs, layout, users, items, oov_row=False)
        _write_dataset_config(outputs, layout, "csv")
        summary = {
            "dataset": "Ali-CCP (Alibaba Click and Conversion Prediction, Tianchi dataset 408), "
            "preprocessed table",
            "mode": "csv",
            "output_dir": os.path.abspath(outputs.directory),
            "inputs": _input_description(inputs),
            "preprocessing": {
                "fields": list(layout.codes),
                "id_encoding": "ids written as found in the input (already encoded upstream)",
                "dense_columns": list(dense_columns),
                "keep_dense": keep_dense,
                "keep_210": keep_210,
                "skip_malformed": skip_malformed,
            },
            "rows": rows,
            "dropped_click0_purchase1": dropped,
            "skipped_malformed": tally.by_file,
            "vocab_sizes": {column_name(c): len(seen) for c, seen in zip(layout.codes, distinct)},
            "users": len(users.rows),
            "items": len(items.rows),
            "profile_conflicts": {"user": users.conflicts, "item": items.conflicts},
        }
        summary["elapsed_seconds"] = round(time.perf_counter() - started, 3)
        outputs.write_meta(summary)
    tally.log()
    logger.info("wrote %s in %.1f s", outputs.directory, summary["elapsed_seconds"])
    return summary
