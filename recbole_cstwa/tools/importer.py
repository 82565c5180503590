"""Imports a CSV / TSV / parquet table of impressions as a RecBole atomic dataset for this plugin.

    recbole-cstwa-import --input impressions.csv --name my-data \\
        --click click --purchase conversion --context-fields 'categorical_*' 'numerical_*' \\
        --numerical 'numerical_*'

The user names the click and purchase label columns, optionally the user id and item id columns,
and which columns are user fields, item fields and context fields, and which of them are
numerical (shell-style globs: ``numerical_*``). Columns named nowhere are ignored (listed in the
summary). The command writes ``<output>/<name>/``:

* ``<name>.{train,valid,test}.inter`` (or ``<name>.inter`` with ``--no-split``): the user id, the
  item id, the context fields (``token``, or ``float`` when numerical) and the two labels
  (``float``, written ``0``/``1``), tab separated. Token values are written as found: RecBole
  remaps them; an empty cell is RecBole's padding id (the field is absent from that row).
* ``<name>.user`` / ``<name>.item`` when a user / item id column is given: the id and its user
  (item) fields, one row per id, the first profile seen (ids whose later rows differ are
  counted as ``profile_conflicts``). User and item fields need their id column.
* ``<name>.yaml``: every setting the run needs (field separator, id fields or ``~`` when there
  is none, ``CLICK_FIELD`` / ``PURCHASE_FIELD``, ``benchmark_filename``, ``load_col``,
  ``numerical_features``). A run naming the dataset loads it by convention.
* ``<name>.meta.json``: inputs, options and counts (also printed).

Inputs: one file (``--input``) split train/valid/test by ``--split-ratios``; a train and a test
file (valid drawn from train by ``--valid-ratio``); or train, valid and test files (no split).

Rows with a purchase and no click break the click -> purchase funnel: they are dropped and
counted (the plugin's dataset would drop them too).

The split is seeded and stratified on the labels, so that valid and test hold clicks and
purchases in the proportions of the input. Rule: rows fall into three strata, (click, purchase)
= (0, 0), (1, 0) and (1, 1). Within a stratum, its rows in file order are cut into blocks of
``B`` rows, ``B`` the smallest whole number for which every ratio times ``B`` is whole (10 for
0.8/0.1/0.1); each block holds exactly ``ratio * B`` slots of each split, in an order drawn
from ``numpy.random.default_rng([seed, stratum])`` (one random key a slot, the keys' argsort
being the block's order), and the ``k``-th row of the stratum takes slot ``k mod B`` of block
``k // B``. Each split thus gets its exact share of every full block of purchases: valid and test
hold purchases once the input has ``B`` of them; with fewer the command stops and says so. The
draws depend only on the seed and the rows' order, not on the batch size.

Memory stays bounded: files are read in batches (pyarrow's streaming CSV reader, parquet row
groups), rows are written as they are read; only the user / item profile tables (one entry an
id) grow.
"""

import fnmatch
import math
import os
import time
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recbole_cstwa.errors import InputFileError
from recbole_cstwa.tables import BLOCK_BYTES, PARQUET_BATCH_ROWS, column_names, read_blocks, table_format
from recbole_cstwa.tools.writer import AtomicDatasetWriter, check_dataset_name

SPLITS = ("train", "valid", "test")
#: Label spellings accepted in a label column (parquet booleans read as "true"/"false").
LABEL_TEXTS = ("0", "1", "0.0", "1.0", "false", "true")
POSITIVE_TEXTS = ("1", "1.0", "true")
#: The most rows a stratification block may hold (ratios are rounded to 1/1000).
MAX_BLOCK = 1000


# --------------------------------------------------------------------------------------------
# Reading


def _first_line_of(error):
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def read_columns(path, separator=None):
    """The column names of a CSV / TSV / parquet file (:func:`recbole_cstwa.tables.column_names`:
    the format told by the name, a file of another extension read as CSV)."""
    if not os.path.isfile(path):
        raise InputFileError(f"{path}: input file not found.")
    try:
        names = column_names(path, separator)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as error:
        raise InputFileError(f"{path}: cannot read the header: {_first_line_of(error)}") from None
    if not names:
        raise InputFileError(f"{path}: cannot read the header: the file is empty.")
    repeated = [name for name in dict.fromkeys(names) if names.count(name) > 1]
    if repeated:
        raise InputFileError(
            f"{path}: column [{repeated[0]}] appears {names.count(repeated[0])} times in the header: "
            "rename the copies (which one to read cannot be told)."
        )
    return names


def _as_text(array):
    """A string array (nulls -> empty cells) of any column type."""
    if not pa.types.is_string(array.type):
        array = pc.cast(array, pa.string())
    return pc.fill_null(array, "") if array.null_count else array


def iter_batches(path, columns, separator=None, batch_rows=None):
    """Yields ``(first row's position, {column: string array})``: positions count data rows from 0."""
    position = 0
    try:
        block = BLOCK_BYTES if batch_rows is None else max(1 << 12, batch_rows * 16)
        source = read_blocks(
            path,
            columns,
            separator,
            column_types={column: pa.string() for column in columns},
            block_bytes=block,
            batch_rows=batch_rows or PARQUET_BATCH_ROWS,
            # CSV in one thread: with its read-ahead, the block bounds the memory held
            use_threads=table_format(path).kind == "parquet",
            strings_can_be_null=False,
        )
        for batch in source:
            if batch.num_rows == 0:
                continue
            yield position, {name: _as_text(batch.column(name)) for name in columns}
            position += batch.num_rows
    except pa.ArrowException as error:
        raise InputFileError(
            f"{path}: cannot read rows after data row {position}: {_first_line_of(error)}"
        ) from None


def _where(path, position):
    """``line N`` in a CSV (header = line 1) or ``row N`` in a parquet file."""
    if table_format(path).kind == "parquet":
        return f"row {position + 1}"
    return f"line {position + 2}"


# --------------------------------------------------------------------------------------------
# Schema


class Schema:
    """Which input column plays which part, resolved against a file's header."""

    def __init__(
        self,
        path,
        names,
        click,
        purchase,
        user_id,
        item_id,
        user_fields,
        item_fields,
        context_fields,
        numerical,
    ):
        self.path = path
        self.click, self.purchase = click, purchase
        self.user_id, self.item_id = user_id, item_id
        for role, column in (
            ("--click", click),
            ("--purchase", purchase),
            ("--user-id", user_id),
            ("--item-id", item_id),
        ):
            if column is not None and column not in names:
                raise InputFileError(
                    f"{path}: column [{column}] ({role}) is not in the file; its columns are {_preview(names)}."
                )
        if click == purchase:
            raise InputFileError(f"{path}: --click and --purchase both name [{click}]: name two columns.")
        reserved = {
            c: role
            for c, role in (
                (click, "--click"),
                (purchase, "--purchase"),
                (user_id, "--user-id"),
                (item_id, "--item-id"),
            )
            if c is not None
        }
        groups = {}
        owner = {}
        for group, patterns in (("user", user_fields), ("item", item_fields), ("context", context_fields)):
            columns = []
            for pattern in patterns:
                matched = _match(pattern, names)
                if not matched:
                    raise InputFileError(
                        f"{path}: --{group}-fields names [{pattern}], which matches no column of the file "
                        f"(columns: {_preview(names)})."
                    )
                for column in matched:
                    if column in reserved:
                        if _is_glob(pattern):
                            continue  # a glob skips the labels and ids
                        raise InputFileError(
                            f"{path}: column [{column}] is both {reserved[column]} and a {group} field: "
                            f"remove it from --{group}-fields."
                        )
                    if column in owner and owner[column] != group:
                        raise InputFileError(
                            f"{path}: column [{column}] is in two groups (--{owner[column]}-fields and "
                            f"--{group}-fields): name it in one."
                        )
                    if column not in owner:
                        owner[column] = group
                        columns.append(column)
            groups[group] = columns
        for group, id_column in (("user", user_id), ("item", item_id)):
            if groups[group] and id_column is None:
                raise InputFileError(
                    f"{path}: {group} fields {groups[group][:5]} need --{group}-id (a {group} profile is "
                    f"stored per {group} id); without an id column, pass them as --context-fields."
                )
        self.user_fields, self.item_fields, self.context_fields = (
            groups["user"],
            groups["item"],
            groups["context"],
        )
        numeric = []
        for pattern in numerical:
            matched = [c for c in _match(pattern, names) if c not in reserved]
            if not matched:
                raise InputFileError(
                    f"{path}: --numerical names [{pattern}], which matches no feature column."
                )
            for column in matched:
                if column not in owner:
                    raise InputFileError(
                        f"{path}: numerical column [{column}] is in no group: add it to --user-fields, "
                        "--item-fields or --context-fields."
                    )
                if column not in numeric:
                    numeric.append(column)
        self.numerical = numeric
        used = set(reserved) | set(owner)
        self.ignored = [name for name in names if name not in used]
        for column in used:
            if ":" in column or "\t" in column or not column:
                raise InputFileError(
                    f"{path}: column name [{column}] holds ':' or a tab (RecBole's header separators): rename it."
                )

    def kind(self, column):
        return "float" if column in self.numerical else "token"

    @property
    def inter_columns(self):
        ids = [c for c in (self.user_id, self.item_id) if c is not None]
        return ids + self.context_fields

    @property
    def read_columns(self):
        return self.inter_columns + self.user_fields + self.item_fields + [self.click, self.purchase]

    def check_file(self, path, names):
        missing = [c for c in self.read_columns if c not in names]
        if missing:
            raise InputFileError(
                f"{path}: column [{missing[0]}] is missing (the first input file has it); every input file needs "
                f"the same columns ({len(missing)} missing: {_preview(missing)})."
            )


def _is_glob(pattern):
    return any(ch in pattern for ch in "*?[")


def _match(pattern, names):
    if _is_glob(pattern):
        return [name for name in names if fnmatch.fnmatchcase(name, pattern)]
    return [pattern] if pattern in names else []


def _preview(names, limit=8):
    names = list(names)
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"


def _split_patterns(values):
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (patterns may be given comma or space separated)."""
    return [part.strip() for value in values or () for part in value.split(",") if part.strip()]


# --------------------------------------------------------------------------------------------
# Checking and shaping one batch


def _first_bad(mask):
    return int(np.flatnonzero(mask)[0])


def _labels(path, column, array, position):
    """The 0/1 values of a label column as a bool numpy array; a non-binary value is an error."""
    valid = pc.is_in(pc.utf8_lower(array), value_set=pa.array(LABEL_TEXTS)).to_numpy(zero_copy_only=False)
    if not valid.all():
        at = _first_bad(~valid)
        raise InputFileError(
            f"{path}, {_where(path, position + at)}: label column [{column}] holds {array[at].as_py()!r}; a label "
            "must be 0 or 1 (rows without a value need one)."
        )
    return pc.is_in(pc.utf8_lower(array), value_set=pa.array(POSITIVE_TEXTS)).to_numpy(zero_copy_only=False)


def _check_numerical(path, column, array, position):
    """Numbers or empty cells (missing); any other text, ``NA``, ``nan`` and ``inf`` included, is
    an error: the run's reader accepts the same and nothing else."""
    values = pc.if_else(pc.equal(array, ""), pa.scalar(None, pa.string()), array)
    try:
        numbers = pc.cast(values, pa.float64())
        bad = pc.fill_null(pc.invert(pc.is_finite(numbers)), False).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:  # error path: which cell is no number (Arrow's message has no row)
        bad = np.array([not _is_number_text(text) for text in values.to_pylist()])
    if bad.any():
        at = _first_bad(bad)
        raise InputFileError(
            f"{path}, {_where(path, position + at)}: numerical column [{column}] holds {values[at].as_py()!r}, "
            "not a finite number: fix the value (an empty cell is a missing value), or drop the column "
            "from --numerical to read it as a token."
        )


def _is_number_text(text):
    if text is None:
        return True
    try:
        number = pc.cast(pa.array([text]), pa.float64())[0].as_py()
    except pa.ArrowInvalid:
        return False
    return math.isfinite(number)


def _check_tokens(path, columns, names, lines, position, origin):
    """Each joined line holds exactly one tab between fields and one line end: else a value
    holds a tab or a line break, which tab-separated atomic files cannot hold."""
    tabs = pc.count_substring(lines, "\t").to_numpy(zero_copy_only=False)
    ends = pc.count_substring_regex(lines, "[\r\n]").to_numpy(zero_copy_only=False)
    bad = (tabs != len(names) + 1) | (ends != 1)
    if bad.any():
        at = _first_bad(bad)
        column = next(name for name in names if any(ch in columns[name][at].as_py() for ch in "\t\r\n"))
        raise InputFileError(
            f"{path}, {_where(path, position + int(origin[at]))}: column [{column}] holds a tab or line break, which the "
            "tab-separated atomic files cannot hold: clean the value."
        )


def _text_bytes(lines):
    """The UTF-8 bytes of a string array's values, concatenated (no copy through Python strings)."""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset : lines.offset + len(lines) + 1]
    return memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]]


class _Profiles:
    """First-seen profile (the user or item fields, as one text) per id, with conflicts counted."""

    def __init__(self):
        self.rows = {}
        self.conflicts = 0

    def update(self, ids, profiles):
        table = pa.table({"id": ids, "profile": profiles})
        unique = table.group_by(["id", "profile"], use_threads=False).aggregate([])
        for key, profile in zip(unique.column("id").to_pylist(), unique.column("profile").to_pylist()):
            if key == "":
                continue  # an absent id has no profile
            if self.rows.setdefault(key, profile) != profile:
                self.conflicts += 1


class StratifiedSplitter:
    """Seeded split stratified on (click, purchase), block by block (see the module docstring)."""

    def __init__(self, ratios, seed):
        fractions = [Fraction(ratio).limit_denominator(MAX_BLOCK) for ratio in ratios]
        if any(f < 0 for f in fractions) or sum(fractions) != 1:
            raise InputFileError(f"split ratios {list(ratios)} must be non-negative and sum to 1.")
        block = 1
        for fraction in fractions:
            block = block * fraction.denominator // np.gcd(block, fraction.denominator)
        if block > MAX_BLOCK:
            raise InputFileError(
                f"split ratios {list(ratios)} need blocks of {block} rows: use simpler ratios."
            )
        self.block = int(block)
        self.template = np.repeat(
            np.arange(len(fractions), dtype=np.int8), [int(f * block) for f in fractions]
        )
        self.seed = seed
        self.state = {}

    def assign(self, strata):
        """The split index of each row, given its stratum (0, 1 or 2)."""
        splits = np.empty(len(strata), dtype=np.int8)
        for stratum in np.unique(strata):
            rows = np.flatnonzero(strata == stratum)
            rng, seen, orders = self.state.get(int(stratum)) or (
                np.random.default_rng([self.seed, int(stratum)]),
                0,
                np.empty((0, self.block), dtype=np.int64),
            )
            first_block = seen // self.block
            positions = seen + np.arange(len(rows))
            last_block = (positions[-1]) // self.block
            have = len(orders)  # orders cached from first_block on
            need = last_block - first_block + 1
            if need > have:
                new = np.argsort(rng.random((need - have, self.block)), axis=1)
                orders = np.concatenate([orders, new]) if have else new
            block_of = positions // self.block - first_block
            splits[rows] = self.template[orders[block_of, positions % self.block]]
            seen += len(rows)
            # Keep only the order of the block still being filled.
            keep_from = seen // self.block - first_block
            self.state[int(stratum)] = (rng, seen, orders[keep_from:])
        return splits


# --------------------------------------------------------------------------------------------
# Import


def _yaml_settings(schema, split_files):
    load_col = {"inter": schema.inter_columns + [schema.click, schema.purchase]}
    if schema.user_id is not None:
        load_col["user"] = [schema.user_id] + schema.user_fields
    if schema.item_id is not None:
        load_col["item"] = [schema.item_id] + schema.item_fields
    settings = {
        "field_separator": "\t",
        "USER_ID_FIELD": schema.user_id,
        "ITEM_ID_FIELD": schema.item_id,
        "CLICK_FIELD": schema.click,
        "PURCHASE_FIELD": schema.purchase,
        "benchmark_filename": list(split_files) if split_files else None,
        "load_col": load_col,
        "numerical_features": list(schema.numerical),
    }
    return settings


def import_dataset(
    output,
    name,
    click,
    purchase,
    input=None,
    train=None,
    valid=None,
    test=None,
    user_id=None,
    item_id=None,
    user_fields=(),
    item_fields=(),
    context_fields=(),
    numerical=(),
    split_ratios=(0.8, 0.1, 0.1),
    valid_ratio=0.1,
    seed=2020,
    split=True,
    separator=None,
    batch_rows=None,
):
    """Writes the dataset folder ``<output>/<name>/`` (see the module docstring); returns the summary."""
    started = time.perf_counter()
    check_dataset_name(name)
    if input is not None:
        if train or valid or test:
            raise InputFileError(
                "give either --input (one file to split) or --train/--valid/--test, not both."
            )
        sources = [("all", input)]
        plan = dict(zip(SPLITS, split_ratios)) if split else None
    elif train and test:
        sources = [("train", train)] + ([("valid", valid)] if valid else []) + [("test", test)]
        plan = None if valid else {"train": 1 - valid_ratio, "valid": valid_ratio}
    else:
        raise InputFileError("give --input FILE, or --train FILE --test FILE (and optionally --valid FILE).")
    first_path = sources[0][1]
    names = read_columns(first_path, separator)
    schema = Schema(
        first_path,
        names,
        click,
        purchase,
        user_id,
        item_id,
        _split_patterns(user_fields),
        _split_patterns(item_fields),
        _split_patterns(context_fields),
        _split_patterns(numerical),
    )
    for _, path in sources[1:]:
        schema.check_file(path, read_columns(path, separator))
    if plan is not None:
        splitter = StratifiedSplitter(list(plan.values()), seed)
        plan_names = list(plan)
    out_splits = list(SPLITS) if (plan is not None or input is None) else []

    inter_fields = [(c, schema.kind(c)) for c in schema.inter_columns] + [
        (schema.click, "float"),
        (schema.purchase, "float"),
    ]
    counts = {split: {"rows": 0, "clicks": 0, "purchases": 0} for split in (out_splits or ["all"])}
    dropped = {}
    users, items = _Profiles(), _Profiles()
    with AtomicDatasetWriter(output, name) as writer:
        tables = {split: writer.table(f"{split}.inter", inter_fields) for split in out_splits}
        if not out_splits:
            tables = {"all": writer.table("inter", inter_fields)}
        for source, path in sources:
            dropped[source] = 0
            for position, columns in iter_batches(path, schema.read_columns, separator, batch_rows):
                clicks = _labels(path, schema.click, columns[schema.click], position)
                purchases = _labels(path, schema.purchase, columns[schema.purchase], position)
                for column in schema.inter_columns + schema.user_fields + schema.item_fields:
                    if schema.kind(column) == "float":
                        _check_numerical(path, column, columns[column], position)
                keep = ~(purchases & ~clicks)  # a purchase needs a click
                dropped[source] += int((~keep).sum())
                origin = np.arange(len(keep))  # rows' places in the batch, for error messages
                if not keep.all():
                    origin = origin[keep]
                    mask = pa.array(keep)
                    columns = {key: value.filter(mask) for key, value in columns.items()}
                    clicks, purchases = clicks[keep], purchases[keep]
                if len(clicks) == 0:
                    continue
                for id_column, fields, profiles in (
                    (schema.user_id, schema.user_fields, users),
                    (schema.item_id, schema.item_fields, items),
                ):
                    if id_column is not None:
                        profile = (
                            pc.binary_join_element_wise(*[columns[f] for f in fields], "\t")
                            if fields
                            else pa.array([""] * len(clicks))
                        )
                        profiles.update(columns[id_column], profile)
                # The last value carries the line end, so the joined values are the file's text.
                labels = [pa.array(np.where(clicks, "1", "0")), pa.array(np.where(purchases, "1\n", "0\n"))]
                lines = pc.binary_join_element_wise(
                    *[columns[c] for c in schema.inter_columns], *labels, "\t"
                )
                _check_tokens(path, columns, schema.inter_columns, lines, position, origin)
                if schema.user_fields or schema.item_fields:
                    profile_columns = schema.user_fields + schema.item_fields
                    profile_lines = pc.binary_join_element_wise(
                        *[columns[c] for c in profile_columns], *labels, "\t"
                    )
                    _check_tokens(path, columns, profile_columns, profile_lines, position, origin)
                if plan is not None and source in ("all", "train"):
                    assigned = splitter.assign(clicks.astype(np.int8) + purchases.astype(np.int8))
                    targets = [(plan_names[index], assigned == index) for index in range(len(plan_names))]
                else:
                    targets = [(source, np.ones(len(clicks), dtype=bool))]
                for split, rows in targets:
                    if not rows.any():
                        continue
                    chosen = lines.filter(pa.array(rows)) if not rows.all() else lines
                    tables[split].add_bytes(_text_bytes(chosen), len(chosen))
                    counts[split]["rows"] += len(chosen)
                    counts[split]["clicks"] += int(clicks[rows].sum())
                    counts[split]["purchases"] += int(purchases[rows].sum())

        drawn = set(plan or ()) - {"train"}  # the splits this command drew
        problems = [
            f"{split} holds {c['rows']} rows, {c['clicks']} clicks and {c['purchases']} purchases"
            for split, c in counts.items()
            if split in ("valid", "test") and (c["purchases"] == 0 or c["clicks"] == 0)
        ]
        if any(problem.split(" ", 1)[0] in drawn for problem in problems):
            raise InputFileError(
                f"{first_path}: {'; '.join(problems)}: the purchase AUC is undefined on a split without "
                f"purchases. The stratified split gives each split purchases once the input has "
                f"{splitter.block} of them: use more data or a larger valid/test ratio."
            )
        for id_column, fields, profiles, suffix in (
            (schema.user_id, schema.user_fields, users, "user"),
            (schema.item_id, schema.item_fields, items, "item"),
        ):
            if id_column is None:
                continue
            table = writer.table(suffix, [(id_column, "token")] + [(f, schema.kind(f)) for f in fields])
            for key, profile in profiles.rows.items():
                table.add(f"{key}\t{profile}\n" if fields else f"{key}\n")
        writer.write_yaml(
            _yaml_settings(schema, out_splits),
            comments=(
                f"RecBole dataset settings for {name}, written by recbole_cstwa.tools.importer.",
                f"Loaded by convention from <data_path>/{name}/{name}.yaml when a run names dataset {name}.",
            ),
        )
        summary = {
            "output_dir": os.path.abspath(writer.directory),
            "inputs": {source: os.path.abspath(path) for source, path in sources},
            "columns": {
                "click": schema.click,
                "purchase": schema.purchase,
                "user_id": schema.user_id,
                "item_id": schema.item_id,
                "user_fields": schema.user_fields,
                "item_fields": schema.item_fields,
                "context_fields": schema.context_fields,
                "numerical": schema.numerical,
                "ignored": schema.ignored,
            },
            "split": (
                {
                    "rule": "stratified on (click, purchase), seeded blocks",
                    "ratios": plan,
                    "seed": seed,
                    "block_rows": splitter.block,
                }
                if plan is not None
                else ("files" if input is None else "none (eval_args splits at run time)")
            ),
            "counts": counts,
            "dropped_purchase_without_click": dropped,
            "users": len(users.rows) if schema.user_id else None,
            "items": len(items.rows) if schema.item_id else None,
            "profile_conflicts": {"user": users.conflicts, "item": items.conflicts},
        }
        summary["elapsed_seconds"] = round(time.perf_counter() - started, 3)
        writer.write_meta(summary)
    summary["kept"] = writer.carried_over  # the folder's other entries (a user's own), kept as they were
    if problems:
        summary["warnings"] = [
            f"{p}: its AUC is undefined (the run will refuse it as valid)" for p in problems
        ]
    return summary


def format_summary(summary):
    """The counts as an aligned table, plus drops, ignored columns and the output folder."""
    lines = [f"{'split':<8}{'rows':>12}{'clicks':>12}{'purchases':>12}"]
    for split, c in summary["counts"].items():
        lines.append(f"{split:<8}{c['rows']:>12,}{c['clicks']:>12,}{c['purchases']:>12,}")
    dropped = sum(summary["dropped_purchase_without_click"].values())
    lines.append(f"dropped (purchase without click): {dropped:,}")
    columns = summary["columns"]
    lines.append(
        f"fields: user {len(columns['user_fields'])}, item {len(columns['item_fields'])}, context "
        f"{len(columns['context_fields'])} ({len(columns['numerical'])} numerical); ids: user "
        f"{columns['user_id'] or '-'}, item {columns['item_id'] or '-'}"
    )
    if columns["ignored"]:
        lines.append(f"ignored columns: {_preview(columns['ignored'])}")
    for warning in summary.get("warnings", []):
        lines.append(f"warning: {warning}")
    if summary.get("kept"):
        lines.append(f"kept in the folder, as they were (not the importer's): {', '.join(summary['kept'])}")
    lines.append(f"wrote {summary['output_dir']} in {summary['elapsed_seconds']:.1f} s")
    return "\n".join(lines)
