"""The generator's true probabilities, read beside the interaction files they belong to.

The generator (:mod:`recbole_cstwa.tools.generator`) writes beside each split's atomic file
``<name>.<split>.inter`` a truth file ``<name>.<split>.truth.gz`` (gzip TSV, header
``p_click<TAB>p_purchase``, one row a line of the ``.inter`` file, in its order), and
``<name>.meta.json`` holds, under ``truth.digests.<split>``, the BLAKE2b digests (16 bytes, hex)
of both files. The dataset (:class:`recbole_cstwa.data.dataset.MultiTaskDataset`) adds a truth
file's two columns to its rows as :data:`recbole_cstwa.tasks.TRUTH_FIELDS` when
``truth_metrics`` is on; the evaluator scores each task against them.

A truth file is used only when meta.json vouches for it and for the ``.inter`` file beside it
(both digests), and when it holds as many rows as that file: a shuffled, truncated or foreign
copy stops the run, since misaligned truth would give silently wrong numbers. A pre-split
dataset's first (training) file gets no truth: training never reads it.
"""

import hashlib
import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from recbole_cstwa.digest import file_digest
from recbole_cstwa.errors import DataFormatError

#: The columns of a truth file, in order: P(click | impression), P(click and purchase | impression).
TRUTH_COLUMNS = ("p_click", "p_purchase")
#: Text a truth file's parser takes a block.
BLOCK_BYTES = 4 << 20


def truth_files(config):
    """``{interaction file: its truth file}`` for the files whose rows get true probabilities:
    with ``benchmark_filename``, every split file but the first (the training one); else the
    single ``<dataset>.inter`` (``<dataset>.truth.gz``). Only truth files that exist are listed;
    none when ``truth_metrics`` is off."""
    if not config["truth_metrics"]:
        return {}
    folder, token = config["data_path"], config["dataset"]
    names = config["benchmark_filename"]
    stems = [f"{token}.{name}" for name in list(names)[1:]] if names else [token]
    pairs = {
        os.path.join(folder, f"{stem}.inter"): os.path.join(folder, f"{stem}.truth.gz") for stem in stems
    }
    return {inter: truth for inter, truth in pairs.items() if os.path.isfile(truth)}


def meta_file(config):
    """The dataset's ``<dataset>.meta.json``, which vouches for its truth files."""
    return os.path.join(config["data_path"], f"{config['dataset']}.meta.json")


class _HashingReader(io.RawIOBase):
    """A binary file read through, every byte read also hashed (BLAKE2b, 16 bytes)."""

    def __init__(self, file):
        self.file = file
        self.digest = hashlib.blake2b(digest_size=16)

    def readable(self):
        return True

    def readinto(self, buffer):
        count = self.file.readinto(buffer)
        if count:
            self.digest.update(memoryview(buffer)[:count])
        return count

    def hexdigest(self):
        """The digest of the whole file: what is left is read (and hashed) first."""
        while block := self.file.read(1 << 20):
            self.digest.update(block)
        return self.digest.hexdigest()


def _fail(truth_path, problem, meta):
    regenerate = meta.get("regenerate") if isinstance(meta, dict) else None
    again = (
        f"regenerate the dataset ({regenerate})" if isinstance(regenerate, str) else "regenerate the dataset"
    )
    raise DataFormatError(
        f"Truth file [{truth_path}] {problem}: its rows cannot be trusted to be the true probabilities "
        f"of their impressions. Fix: --truth_metrics=False to evaluate without truth, or {again}."
    )


def _meta_entry(truth_path, inter_path, meta_path, inter_digest):
    """meta.json and its digests entry for ``inter_path``: ``truth.digests.<split>`` for a split
    file ``<name>.<split>.inter``; for a single ``<name>.inter``, the entry whose ``inter``
    digest is that file's."""
    try:
        with open(meta_path, encoding="utf-8") as file:
            meta = json.load(file)
    except FileNotFoundError:
        _fail(truth_path, f"has no {os.path.basename(meta_path)} beside it to vouch for it", None)
    except (OSError, ValueError, RecursionError) as error:
        _fail(truth_path, f"is vouched for by an unreadable [{meta_path}] ({type(error).__name__})", None)
    digests = meta.get("truth", {}).get("digests") if isinstance(meta, dict) else None
    digests = digests if isinstance(digests, dict) else {}
    token = os.path.basename(meta_path)[: -len(".meta.json")]
    name = os.path.basename(inter_path)[: -len(".inter")]
    split = name[len(token) + 1 :] if name.startswith(token + ".") else None
    if split is not None:
        entry = digests.get(split)
    else:
        entry = next(
            (e for e in digests.values() if isinstance(e, dict) and e.get("inter") == inter_digest()), None
        )
    if not isinstance(entry, dict) or not {"inter", "truth"} <= set(entry):
        where = (
            f"truth.digests.{split}" if split is not None else f"an entry of truth.digests for {name}.inter"
        )
        _fail(truth_path, f"has no {where} in [{meta_path}]", meta)
    return meta, entry


def read_truth(truth_path, inter_path, meta_path, rows, inter_digest=None):
    """The truth file's ``(p_click, p_purchase)``, float32 arrays of ``rows`` values, after the
    checks of the module docstring.

    Args:
        rows: the number of rows read from ``inter_path``.
        inter_digest: ``inter_path``'s BLAKE2b digest when already known (the dataset cache's
            key hashes every data file); else it is computed here.
    """
    known = {}

    def digest_of_inter():
        if "inter" not in known:
            known["inter"] = inter_digest or file_digest(inter_path)
        return known["inter"]

    meta, entry = _meta_entry(truth_path, inter_path, meta_path, digest_of_inter)
    if digest_of_inter() != entry["inter"]:
        _fail(
            truth_path,
            f"is vouched for with another [{os.path.basename(inter_path)}]: that file's digest is not "
            f"the one in [{meta_path}]",
            meta,
        )
    columns = [np.empty(rows, dtype=np.float32) for _ in TRUTH_COLUMNS]
    read, problem = 0, None
    with open(truth_path, "rb") as raw:
        hashing = _HashingReader(raw)
        stream = reader = None
        try:
            stream = pa.CompressedInputStream(pa.PythonFile(hashing, mode="r"), "gzip")
            reader = pa_csv.open_csv(
                stream,
                read_options=pa_csv.ReadOptions(block_size=BLOCK_BYTES, use_threads=False),
                parse_options=pa_csv.ParseOptions(delimiter="\t"),
                convert_options=pa_csv.ConvertOptions(
                    column_types=dict.fromkeys(TRUTH_COLUMNS, pa.float64())
                ),
            )
            if tuple(reader.schema.names) != TRUTH_COLUMNS:
                problem = f"has the columns {reader.schema.names}, not {list(TRUTH_COLUMNS)}"
            else:
                for batch in reader:
                    size = batch.num_rows
                    if read + size <= rows:
                        for column, values in zip(columns, batch.columns):
                            column[read : read + size] = values.to_numpy(zero_copy_only=False)
                    read += size
        except (pa.ArrowException, OSError, ValueError) as error:
            problem = f"cannot be read ({str(error).splitlines()[0][:200]})"
        finally:
            # Arrow's objects over the Python file go first, while the file is open.
            for closable in (reader, stream):
                if closable is not None:
                    closable.close()
            del reader, stream
        digest = hashing.hexdigest()
    if digest != entry["truth"]:
        _fail(
            truth_path,
            f"is not the file [{meta_path}] vouches for (another digest: changed, shuffled or copied from elsewhere)",
            meta,
        )
    if problem is not None:
        _fail(truth_path, problem, meta)
    if read != rows:
        _fail(truth_path, f"holds {read} rows, [{inter_path}] {rows}", meta)
    p_click, p_purchase = columns
    valid = (p_click > 0) & (p_click <= 1) & (p_purchase >= 0) & (p_purchase <= p_click)
    if not valid.all():
        line = int(np.flatnonzero(~valid)[0]) + 2
        _fail(
            truth_path,
            f"holds no probabilities 0 <= p_purchase <= p_click <= 1, p_click > 0 at line {line}",
            meta,
        )
    return p_click, p_purchase
