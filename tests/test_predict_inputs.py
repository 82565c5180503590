"""Every way a user meets ``run_predict.py`` scoring and ``--export`` ends in a whole output or one
``error:`` line (exit status 2): bad cells, headers, encodings and parquet columns, bad settings,
outputs that cannot be written or would replace the input, links planted where the output is
written, two writers, a kill, a full disk."""

import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPOSITORY, TINY, run_command_in_process, tiny_config

from recbole_cstwa import file_writes
from recbole_cstwa.errors import PredictInputError

VICTIM_TEXT = "the victim's own bytes\n"


@pytest.fixture(scope="module")
def priced(tiny_data_path, tmp_path_factory):
    """``(model file, test rows)``: MLP trained one epoch on the tiny dataset with a numerical
    ``price`` column, and the test split's rows as strings (with ``price``)."""
    from recbole_cstwa.quick_start import run_recbole_cstwa

    root = tmp_path_factory.mktemp("priced")
    folder = root / "data" / TINY
    shutil.copytree(os.path.join(tiny_data_path, TINY), folder)
    for split in ("train", "valid", "test"):
        (folder / f"{TINY}.{split}.truth.gz").unlink()  # they belong to the unedited files
        path = folder / f"{TINY}.{split}.inter"
        lines = path.read_text(encoding="utf-8").splitlines()
        header = lines[0].split("\t")
        rows = [line.split("\t") for line in lines[1:]]
        header = header[:-2] + ["price:float"] + header[-2:]
        rows = [row[:-2] + [str(0.5 + index % 3)] + row[-2:] for index, row in enumerate(rows)]
        path.write_text("\n".join("\t".join(cells) for cells in [header, *rows]) + "\n", encoding="utf-8")
    previous = os.getcwd()
    os.chdir(root)  # RecBole writes log/ into the working directory
    try:
        config = tiny_config(str(root / "data"), root, numerical_features=["price"])
        result = run_recbole_cstwa(model="MLP", config_dict=config)
    finally:
        os.chdir(previous)
    frame = pd.read_csv(folder / f"{TINY}.test.inter", sep="\t", dtype=str, keep_default_na=False)
    frame.columns = [name.split(":")[0] for name in frame.columns]
    assert (frame["click"] == "1").sum() >= 2  # the cvr metrics have rows
    return result["model_file"], frame


def write_csv(frame, path):
    frame.to_csv(path, index=False)
    return str(path)


def predict(monkeypatch, capsys, model_file, *arguments):
    """``run_predict.py``'s main in this process: ``(exit status, stderr)``."""
    return run_command_in_process(
        monkeypatch, capsys, "run_predict", [f"--model_file={model_file}", *arguments]
    )


def assert_one_error_line(status, err, pattern):
    assert status == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(pattern, err), err


def no_temporaries(folder):
    return [name for name in os.listdir(folder) if name.endswith(file_writes.TMP_SUFFIX)] == []


# ----- Cells, headers and columns: one line, no output -----------------------------------------
def _with_cell(frame, column, value, row=1):
    frame = frame.copy()
    frame.loc[row, column] = value
    return frame


def _text(frame):
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue()


def _latin1_header(frame):
    return _text(frame.assign(**{"caf\xe9": "x"})).encode("latin-1")  # an extra column, named in Latin-1


def _latin1_cell(frame):
    lines = _text(frame).split("\n")
    return (lines[0] + "\n" + "\xe9" + "\n".join(lines[1:])).encode("latin-1")


def _unbalanced_quote(frame):
    lines = _text(frame).split("\n")
    lines[2] = '"' + lines[2]
    return "\n".join(lines).encode()


def _long_cell(frame):
    frame = frame.assign(note="n")
    frame.loc[3, "note"] = "y" * (9 << 20)  # over two of the reader's 4 MiB blocks
    return _text(frame).encode()


def _long_header(frame):
    frame = frame.assign(**{"x" * (5 << 20): "1"})
    return _text(frame).encode()


TEXT_CASES = {
    # the input file's bytes (from the test rows) -> what the one line says
    "inf": (
        lambda f: _text(_with_cell(f, "price", "inf")).encode(),
        r"float column \[price\] holds inf at line 3",
    ),
    "1e999": (
        lambda f: _text(_with_cell(f, "price", "1e999", row=4)).encode(),
        r"float column \[price\] holds inf at line 6: a float column holds finite numbers",
    ),
    "nan written": (
        lambda f: _text(_with_cell(f, "price", "nan")).encode(),
        r"float column \[price\] holds nan",
    ),
    "NA in a float column": (
        lambda f: _text(_with_cell(f, "price", "NA")).encode(),
        r"line 3, column \[price\] holds 'NA', not a number",
    ),
    "two user_id columns": (
        lambda f: _text(f.assign(other=f["item_id"]).rename(columns={"other": "user_id"})).encode(),
        r"column \[user_id\] appears 2 times in the header: rename the copies",
    ),
    "unbalanced quote": (
        _unbalanced_quote,
        r"line 3 has 1 cells where the header has \d+ \(an unbalanced quote",
    ),
    "yes in a label": (
        lambda f: _text(_with_cell(f, "click", "yes")).encode(),
        r"line 3, column \[click\] holds 'yes', not a number",
    ),
    "2 as a label": (
        lambda f: _text(_with_cell(f, "purchase", "2")).encode(),
        r"label column \[purchase\] holds 1 values other than 0 / 1",
    ),
    "non-UTF-8 header": (_latin1_header, r"its header line is not UTF-8 text \(byte 0xe9 at byte \d+\)"),
    "non-UTF-8 cell": (
        _latin1_cell,
        r"line 2, column \[user_id\] is not UTF-8 text. Fix: save the file as UTF-8",
    ),
    "empty file": (lambda f: b"", r"holds no rows: the file is empty"),
    "header only": (lambda f: _text(f.head(0)).encode(), r"holds no rows to score \(a header line only\)"),
    "header without a line end": (
        lambda f: _text(f.head(0)).rstrip("\n").encode(),
        r"holds no rows to score \(a header line only\)",
    ),
    "a cell over the block": (
        _long_cell,
        r"a line after line \d+ is too long: the reader parses 4 MiB blocks, and a line may span two",
    ),
    "a header over the block": (_long_header, r"the header line is longer than 4 MiB"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_a_bad_text_input_is_one_line_and_writes_nothing(priced, case, tmp_path, monkeypatch, capsys):
    """Before: inf / 1e999 scored nan,nan,nan (exit 0), a second user_id column was silently
    ignored, nan and NA were the missing value, a non-UTF-8 header, a header over the block and a
    long header cell were tracebacks."""
    model_file, frame = priced
    content, pattern = TEXT_CASES[case]
    source = tmp_path / "rows.csv"
    source.write_bytes(content(frame))
    output = tmp_path / "out" / "scores.csv"
    output.parent.mkdir()
    status, err = predict(monkeypatch, capsys, model_file, f"--input={source}", f"--output={output}")
    assert_one_error_line(status, err, pattern)
    assert str(source) in err
    assert os.listdir(output.parent) == []  # no output, no temporary


def _parquet_case(frame, path, case):
    table = pa.Table.from_pandas(frame, preserve_index=False)
    position = table.schema.get_field_index("user_id")
    if case == "list column":
        table = table.set_column(position, "user_id", pa.array([[1, 2]] * len(frame)))
    elif case == "struct column":
        table = table.set_column(position, "user_id", pa.array([{"a": 1}] * len(frame)))
    elif case == "two user_id columns":
        table = pa.Table.from_arrays(
            [*table.columns, table.column("item_id")], names=[*table.column_names, "user_id"]
        )
    elif case == "a word in a float column":
        table = table.set_column(
            table.schema.get_field_index("price"),
            "price",
            pa.array(["1.5", "2.5", "cheap"] + ["1"] * (len(frame) - 3)),
        )
    pq.write_table(table, path, compression="snappy")
    if case == "corrupt page":
        data = bytearray(path.read_bytes())
        for at in range(4, 200):  # the first page, after the magic bytes; the footer stays
            data[at] ^= 0x5A
        path.write_bytes(bytes(data))


PARQUET_CASES = {
    "list column": r"column \[user_id\] is list<.*>: a column read holds one value a row",
    "struct column": r"column \[user_id\] is struct<a: int64>",
    "two user_id columns": r"column \[user_id\] appears 2 times",
    "corrupt page": r"Cannot read \[.*rows.parquet\] as parquet: it is not a readable parquet file \(.*\). Fix: write the file again",
    "a word in a float column": r"column \[price\] \(string\) holds 'cheap' at row 3, not a number",
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(PARQUET_CASES))
def test_a_bad_parquet_input_is_one_line(priced, case, tmp_path, monkeypatch, capsys):
    """Before: list / struct columns and duplicate names were tracebacks."""
    model_file, frame = priced
    source = tmp_path / "rows.parquet"
    _parquet_case(frame, source, case)
    status, err = predict(
        monkeypatch, capsys, model_file, f"--input={source}", f"--output={tmp_path / 's.csv'}"
    )
    assert_one_error_line(status, err, PARQUET_CASES[case])
    assert not (tmp_path / "s.csv").exists() and no_temporaries(tmp_path)


@pytest.mark.slow
def test_a_parquet_input_of_strings_scores_as_the_csv(priced, tmp_path, monkeypatch, capsys):
    model_file, frame = priced
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "rows.parquet")
    csv = write_csv(frame, tmp_path / "rows.csv")
    for source, target in ((tmp_path / "rows.parquet", "a.csv"), (csv, "b.csv")):
        status, err = predict(
            monkeypatch, capsys, model_file, f"--input={source}", f"--output={tmp_path / target}"
        )
        assert status == 0, err
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


# ----- Settings and output paths ---------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "arguments, pattern",
    [
        (["--batch_size=0"], r"--batch_size=0: the rows a model call must be 1 or more"),
        (["--batch_size=-5"], r"--batch_size=-5: the rows a model call must be 1 or more"),
        (["--threads=-1"], r"--threads=-1: give 1 to \d+ \(4 times the \d+ CPUs this process may use"),
        (["--threads=0"], r"--threads=0: give 1 to"),
        (["--threads=100000"], r"--threads=100000: give 1 to"),
        (
            ["--output={folder}/missing/s.csv"],
            r"Output \[.*missing/s.csv\]: its folder \[.*missing\] does not exist",
        ),
        (["--output={folder}/taken.csv"], r"Output \[.*taken.csv\] is a folder. Fix: name a file"),
        (["--output={folder}/rows.csv"], r"--output \[.*rows.csv\] is the input file"),
        (
            ["--output={folder}/./sub/../rows.csv"],
            r"is the input file \[.*rows.csv\]: its scores would replace",
        ),
        (["--output={folder}/link.csv"], r"is the input file"),
        (["--output={folder}/hard.csv"], r"is the input file"),
    ],
    ids=[
        "batch 0",
        "batch -5",
        "threads -1",
        "threads 0",
        "threads 100000",
        "no folder",
        "a folder",
        "the input",
        "the input spelt otherwise",
        "a link to the input",
        "a hard link to the input",
    ],
)
def test_bad_settings_and_outputs_are_one_line(priced, arguments, pattern, tmp_path, monkeypatch, capsys):
    """Before: tracebacks (range() arg 3 must not be zero, set_num_threads, a missing folder, an
    output folder), and an output naming the input replaced it with its scores."""
    model_file, frame = priced
    source = write_csv(frame, tmp_path / "rows.csv")
    original = (tmp_path / "rows.csv").read_bytes()
    (tmp_path / "taken.csv").mkdir()
    (tmp_path / "sub").mkdir()
    os.symlink(source, tmp_path / "link.csv")
    os.link(source, tmp_path / "hard.csv")
    arguments = [argument.format(folder=tmp_path) for argument in arguments]
    if not any(argument.startswith("--output") for argument in arguments):
        arguments.append(f"--output={tmp_path / 'scores.csv'}")
    status, err = predict(monkeypatch, capsys, model_file, f"--input={source}", *arguments)
    assert_one_error_line(status, err, pattern)
    assert (tmp_path / "rows.csv").read_bytes() == original and os.path.islink(tmp_path / "link.csv")
    assert not (tmp_path / "scores.csv").exists() and no_temporaries(tmp_path)


def test_thread_and_batch_settings_are_checked_before_any_work():
    from recbole_cstwa.serving.predict import checked_batch_and_threads, max_threads

    assert checked_batch_and_threads(1, None) == (1, None)
    assert checked_batch_and_threads(8192, max_threads()) == (8192, max_threads())
    for batch_size, threads in (
        (0, None),
        (-5, None),
        (2.5, None),
        (True, None),
        (1, 0),
        (1, max_threads() + 1),
    ):
        with pytest.raises(PredictInputError, match=r"^--(batch_size|threads)="):
            checked_batch_and_threads(batch_size, threads)


@pytest.mark.slow
def test_command_line_errors_kept(priced, tmp_path, monkeypatch, capsys):
    """No --input when scoring and an unknown extension were one line already: kept."""
    model_file, _ = priced
    status, err = predict(monkeypatch, capsys, model_file, f"--output={tmp_path / 's.csv'}")
    assert status == 2 and err.strip().endswith("error: --input is needed to score (or --export to export)")
    status, err = predict(
        monkeypatch, capsys, model_file, "--input=rows.txt", f"--output={tmp_path / 's.csv'}"
    )
    assert_one_error_line(status, err, r"Input file \[rows.txt\] ends in .txt: use one of")


@pytest.mark.slow
@pytest.mark.parametrize("clicked", [0, 1])
def test_too_few_labelled_rows_for_a_task_score_without_its_metrics(
    priced, clicked, tmp_path, monkeypatch, capsys
):
    """Before: a traceback from RecBole's AUC (IndexError) after the scores were written."""
    model_file, frame = priced
    rows = pd.concat([frame[frame["click"] == "1"].head(clicked), frame[frame["click"] == "0"]])
    source = write_csv(rows, tmp_path / "rows.csv")
    status, err = predict(
        monkeypatch, capsys, model_file, f"--input={source}", f"--output={tmp_path / 's.csv'}"
    )
    assert status == 0, err
    assert len(pd.read_csv(tmp_path / "s.csv")) == len(rows)


@pytest.mark.slow
def test_too_few_labelled_rows_are_reported(priced, tmp_path):
    from recbole_cstwa.serving.predict import predict_file
    from recbole_cstwa.serving.trained import load_trained

    model_file, frame = priced
    rows = pd.concat([frame[frame["click"] == "1"].head(1), frame[frame["click"] == "0"]])
    report = predict_file(
        load_trained(model_file), write_csv(rows, tmp_path / "rows.csv"), tmp_path / "s.csv"
    )
    assert report.too_few == {"cvr": 1}
    assert "click_auc" in report.metrics and "cvr_all_auc" in report.metrics  # every impression
    assert not any(name.startswith("cvr_") and not name.startswith("cvr_all_") for name in report.metrics)
    assert "no metrics for cvr (1 labelled row): a task's metrics need 2 rows or more" in "\n".join(
        report.lines()
    )


# ----- Writing: links, two writers, a kill, a full disk -----------------------------------------
@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "outside" / "victim.txt"
    path.parent.mkdir()
    path.write_text(VICTIM_TEXT)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_links_planted_at_the_output_are_replaced_not_followed(
    priced, kind, victim, tmp_path, monkeypatch, capsys
):
    """Before: a link at ``<output>.partial`` made the scores overwrite its target, and left the
    output a link to it."""
    model_file, frame = priced
    source = write_csv(frame, tmp_path / "rows.csv")
    folder = tmp_path / "scores"
    folder.mkdir()
    output = folder / f"s.{kind}"
    os.symlink(victim, f"{output}.partial")  # the fixed name of earlier versions
    os.symlink(victim, output)
    status, err = predict(monkeypatch, capsys, model_file, f"--input={source}", f"--output={output}")
    assert status == 0, err
    assert victim.read_text() == VICTIM_TEXT
    assert not output.is_symlink()
    read = pd.read_csv if kind == "csv" else pd.read_parquet
    assert len(read(output)) == len(frame)
    assert sorted(os.listdir(folder)) == [f"s.{kind}", f"s.{kind}.partial"]  # no temporary left


def _slow_predict_script(model_file, source, output, ready_folder, wait_for):
    """A run_predict.py process that reads its input in 4 KiB blocks and, before writing its first
    block, marks itself ready and waits until ``wait_for`` processes are (then writes slowly)."""
    return f"""
import functools, os, sys, time
sys.path.insert(0, {REPOSITORY!r})
import recbole_cstwa.serving.predict as predict

predict.read_blocks = functools.partial(predict.read_blocks, block_bytes=1 << 12)
real_writer = predict._writer


class Slow:
    def __init__(self, writer):
        self.writer, self.first = writer, True

    def write_table(self, table):
        if self.first:
            open(os.path.join({str(ready_folder)!r}, str(os.getpid())), "w").close()
            deadline = time.time() + 120
            while len(os.listdir({str(ready_folder)!r})) < {wait_for} and time.time() < deadline:
                time.sleep(0.05)
            self.first = False
        self.writer.write_table(table)
        time.sleep(0.05)

    def close(self):
        self.writer.close()


predict._writer = lambda *arguments: Slow(real_writer(*arguments))
from recbole_cstwa.commands.predict import main

main(["--model_file={model_file}", "--input={source}", "--output={output}", "--keys", "user_id", "item_id"])
"""


def _spawn(script, cwd):
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPOSITORY)
    return subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_writers_into_one_output_both_finish_with_one_whole_file(priced, tmp_path):
    """Before: both wrote one ``.partial`` file; one said wrote, the other died with a traceback,
    and the output was half one run, half the other."""
    model_file, frame = priced
    source = write_csv(frame, tmp_path / "rows.csv")
    folder, ready = tmp_path / "scores", tmp_path / "ready"
    folder.mkdir()
    ready.mkdir()
    output = folder / "s.csv"
    script = _slow_predict_script(model_file, source, output, ready, wait_for=2)
    writers = [_spawn(script, tmp_path) for _ in range(2)]
    results = [writer.communicate(timeout=300) for writer in writers]
    for writer, (out, err) in zip(writers, results):
        assert writer.returncode == 0, err
        assert f"wrote {output}" in out
    assert len(os.listdir(ready)) == 2  # both were writing at once
    scores = pd.read_csv(output, dtype={"user_id": str, "item_id": str})  # one whole file
    assert scores[["user_id", "item_id"]].values.tolist() == frame[["user_id", "item_id"]].values.tolist()
    assert list(scores.columns) == ["user_id", "item_id", "p_click", "p_purchase", "p_cvr"]
    assert scores.notna().all().all()
    assert os.listdir(folder) == ["s.csv"]


@pytest.mark.slow
def test_a_killed_writer_leaves_the_old_output_and_its_temporary_is_removed_later(priced, tmp_path):
    """Before: a kill left a ``.partial`` file of megabytes for good."""
    from recbole_cstwa.serving.predict import predict_file
    from recbole_cstwa.serving.trained import load_trained

    model_file, frame = priced
    source = write_csv(frame, tmp_path / "rows.csv")
    folder, ready = tmp_path / "scores", tmp_path / "ready"
    folder.mkdir()
    ready.mkdir()
    output = folder / "s.csv"
    output.write_text("the old scores\n")
    writer = _spawn(_slow_predict_script(model_file, source, output, ready, wait_for=1), tmp_path)
    deadline = time.time() + 120
    while not os.listdir(ready) and time.time() < deadline and writer.poll() is None:
        time.sleep(0.05)
    assert os.listdir(ready), writer.communicate()[1]
    writer.send_signal(signal.SIGKILL)
    writer.communicate()
    assert output.read_text() == "the old scores\n"
    (temporary,) = [name for name in os.listdir(folder) if name != "s.csv"]
    assert temporary.startswith(".s.csv.") and temporary.endswith(file_writes.TMP_SUFFIX)  # hidden
    # The next writer into the folder removes it once its writer is dead and it is old enough.
    hours_ago = time.time() - 7 * 3600
    os.utime(folder / temporary, (hours_ago, hours_ago))
    predict_file(load_trained(model_file), source, output)
    assert os.listdir(folder) == ["s.csv"] and len(pd.read_csv(output)) == len(frame)


def _disk_full_after(limit):
    """An ``os.fdopen`` whose files raise ENOSPC once ``limit`` bytes are written (as the device's
    ``write`` does)."""
    real = os.fdopen

    class Full(io.RawIOBase):
        def __init__(self, file):
            self.file, self.written = file, 0

        def writable(self):
            return True

        def write(self, data):
            if self.written + len(data) > limit:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.file.write(data)

        def fileno(self):
            return self.file.fileno()

        def close(self):
            self.file.close()
            super().close()

    def fdopen(fd, mode="r", *arguments, **options):
        file = real(fd, "wb", buffering=0)
        raw = io.BufferedWriter(Full(file), 1 << 12)
        return (
            raw
            if "b" in mode
            else io.TextIOWrapper(raw, encoding=options.get("encoding"), newline=options.get("newline"))
        )

    return fdopen


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_full_disk_is_one_line_naming_the_folder_and_keeps_the_old_output(
    priced, kind, tmp_path, monkeypatch, capsys
):
    model_file, frame = priced
    source = write_csv(frame, tmp_path / "rows.csv")
    folder = tmp_path / "scores"
    folder.mkdir()
    output = folder / f"s.{kind}"
    output.write_text("the old scores\n")
    monkeypatch.setattr(file_writes.os, "fdopen", _disk_full_after(2000))
    status, err = predict(
        monkeypatch, capsys, model_file, f"--input={source}", f"--output={output}", "--keys", "user_id"
    )
    assert_one_error_line(status, err, rf"no space left on the device of \[{folder}\]: .* MiB are free")
    assert output.read_text() == "the old scores\n" and os.listdir(folder) == [f"s.{kind}"]


@pytest.fixture
def small_device(tmp_path):
    """A 32 KiB tmpfs mounted in ``tmp_path`` (skips where mounting is not allowed)."""
    folder = tmp_path / "small"
    folder.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=True)  # a file still open: detach it


@pytest.mark.slow
def test_a_really_full_device_is_one_line(priced, small_device, tmp_path, monkeypatch, capsys):
    model_file, _ = priced
    source = os.path.join(os.path.dirname(os.path.dirname(model_file)), "data", TINY, f"{TINY}.train.inter")
    output = small_device / "s.csv"
    output.write_text("the old scores\n")
    status, err = predict(
        monkeypatch,
        capsys,
        model_file,
        f"--input={source}",
        f"--output={output}",
        "--keys",
        "user_id",
        "item_id",
    )
    assert_one_error_line(status, err, rf"no space left on the device of \[{small_device}\]")
    assert output.read_text() == "the old scores\n" and os.listdir(small_device) == ["s.csv"]


# ----- The reader: only an empty cell is missing ------------------------------------------------
def test_the_reader_keeps_na_tokens_and_reads_nan_as_written(tmp_path):
    """As the dataset reader (training): NA, null are tokens; nan / inf stay numbers for the
    check that refuses them; only an empty cell is missing."""
    from recbole_cstwa.tables import read_blocks

    (tmp_path / "a.csv").write_text("token,value\nNA,nan\nnull,inf\n,\n")
    types = {"token": pa.string(), "value": pa.float64()}
    table = pa.Table.from_batches(
        list(read_blocks(tmp_path / "a.csv", ["token", "value"], column_types=types))
    )
    assert table.column("token").to_pylist() == ["NA", "null", None]
    values = table.column("value").to_pylist()
    assert str(values[0]) == "nan" and values[1] == float("inf") and values[2] is None


def test_a_threaded_read_names_the_line_of_a_bad_cell(tmp_path):
    """pyarrow names the row only when it reads in one thread: the error is located again."""
    from recbole_cstwa.tables import read_blocks, read_problem

    path = tmp_path / "a.csv"
    path.write_text("a,b\n" + "q,1\n" * 50_000 + "q,yes\n" + "q,2\n" * 10)
    for threads in (False, True):
        with pytest.raises(pa.ArrowInvalid) as raised:
            for _ in read_blocks(
                path, ["a", "b"], column_types={"b": pa.float64()}, block_bytes=1 << 16, use_threads=threads
            ):
                pass
        assert read_problem(path, raised.value, ["a", "b"]).startswith(
            "line 50002, column [b] holds 'yes', not a number"
        )


# ----- --export ---------------------------------------------------------------------------------
def _export(monkeypatch, capsys, model_file, folder, export_format="torchscript"):
    return predict(monkeypatch, capsys, model_file, f"--export={export_format}", f"--output={folder}")


def _snapshot(folder):
    return {
        os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
        for root, _, names in os.walk(folder)
        for name in names
    }


@pytest.mark.slow
def test_an_export_is_written_as_one_folder(priced, victim, tmp_path, monkeypatch, capsys):
    """Before: a planted ``vocab`` link made the vocabularies go outside the folder, and the files
    of an earlier export (another format) stayed beside the new one."""
    model_file, _ = priced
    served = tmp_path / "served"
    status, err = _export(monkeypatch, capsys, model_file, served)
    assert status == 0, err
    schema = json.loads((served / "schema.json").read_text())
    shutil.rmtree(served / "vocab")
    os.symlink(victim.parent, served / "vocab")
    (served / "model.onnx").write_bytes(b"an earlier export's model")
    status, err = _export(monkeypatch, capsys, model_file, served)
    assert status == 0, err
    assert sorted(os.listdir(victim.parent)) == ["victim.txt"] and victim.read_text() == VICTIM_TEXT
    assert sorted(os.listdir(served)) == ["model.pt", "schema.json", "vocab"]
    assert not (served / "vocab").is_symlink()
    assert sorted(os.listdir(served / "vocab")) == sorted(
        os.path.basename(p) for p in schema["vocabularies"].values()
    )
    assert sorted(os.listdir(tmp_path)) == ["outside", "served"]  # no new folder left beside


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["interrupted between files", "full disk"])
def test_a_failed_export_leaves_the_earlier_one_whole(priced, failure, tmp_path, monkeypatch, capsys):
    """Before: a kill between the files left a new model with the old vocabularies (a kill now
    leaves the new folder beside the old export, removed by a later writer: the test below)."""
    model_file, _ = priced
    served = tmp_path / "served"
    status, err = _export(monkeypatch, capsys, model_file, served)
    assert status == 0, err
    (served / "vocab" / "user_id.txt").write_text("[PAD]\nthe earlier export's vocabulary\n")
    before = _snapshot(served)
    real = file_writes.write_bytes
    written = []

    def fail_on_the_second(path, data):
        written.append(path)
        if len(written) == 2:
            if failure == "full disk":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise KeyboardInterrupt  # stopped between two files
        real(path, data)

    monkeypatch.setattr(file_writes, "write_bytes", fail_on_the_second)
    if failure == "full disk":
        status, err = _export(monkeypatch, capsys, model_file, served)
        assert_one_error_line(
            status, err, rf"no space left on the device of \[{tmp_path}\]: about .* MiB were needed"
        )
    else:
        with pytest.raises(KeyboardInterrupt):
            _export(monkeypatch, capsys, model_file, served)
    assert _snapshot(served) == before
    assert sorted(os.listdir(tmp_path)) == ["served"]


@pytest.mark.slow
def test_a_dead_exporters_folder_is_removed_by_the_next_export(priced, tmp_path, monkeypatch, capsys):
    model_file, _ = priced
    left = tmp_path / f".served.999999999-{'0' * 16}{file_writes.TMP_SUFFIX}"  # no such process
    (left / "vocab").mkdir(parents=True)
    (left / "model.pt").write_bytes(b"half an export")
    hours_ago = time.time() - 7 * 3600
    os.utime(left, (hours_ago, hours_ago))
    status, err = _export(monkeypatch, capsys, model_file, tmp_path / "served")
    assert status == 0, err
    assert sorted(os.listdir(tmp_path)) == ["served"]


@pytest.mark.slow
def test_an_export_refuses_a_file_and_a_folder_of_other_files(priced, tmp_path, monkeypatch, capsys):
    model_file, _ = priced
    (tmp_path / "a-file").write_text("mine\n")
    status, err = _export(monkeypatch, capsys, model_file, tmp_path / "a-file")
    assert_one_error_line(status, err, r"--output \[.*a-file\] is a file: an export is a folder")
    assert (tmp_path / "a-file").read_text() == "mine\n"
    own = tmp_path / "own"
    own.mkdir()
    (own / "serve.py").write_text("mine\n")
    (own / "schema.json").write_text("{}\n")
    status, err = _export(monkeypatch, capsys, model_file, own)
    assert_one_error_line(status, err, r"--output \[.*own\] holds \['serve.py'\], which no export writes")
    assert sorted(os.listdir(own)) == ["schema.json", "serve.py"]


def test_write_directory_takes_plain_relative_paths_only(tmp_path):
    for relative in ("../x.txt", "/x.txt", "a//b.txt", "./x.txt"):
        with pytest.raises(ValueError, match="is not a plain path inside the folder"):
            file_writes.write_directory(tmp_path / "out", {relative: b"x"})
    assert os.listdir(tmp_path) == []
    file_writes.write_directory(tmp_path / "out", {"a.txt": b"a", "sub/b.txt": b"b"})
    assert _snapshot(tmp_path / "out") == {"a.txt": b"a", os.path.join("sub", "b.txt"): b"b"}


def test_onnxruntime_runs_no_python_from_a_model_file(tmp_path):
    """A node of a Python operator (onnxruntime-extensions' PyOp) is refused when the session is
    made: what an ONNX file holds runs only as onnxruntime's own kernels."""
    onnx = pytest.importorskip("onnx", reason='the onnx extra: pip install -e ".[test,onnx]"')
    onnxruntime = pytest.importorskip("onnxruntime", reason='the onnx extra: pip install -e ".[test,onnx]"')
    from onnx import TensorProto, helper

    marker = tmp_path / "ran"
    node = helper.make_node(
        "PyOp", ["x"], ["y"], domain="ai.onnx.contrib", code=f"open({str(marker)!r}, 'w').close()"
    )
    graph = helper.make_graph(
        [node],
        "planted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.contrib", 1)]
    )
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    with pytest.raises(Exception, match="PyOp"):
        onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert not marker.exists()
