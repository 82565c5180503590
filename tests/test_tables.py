"""Tables read by name: one rule from a file's name to its format, the column names and the
streamed blocks of CSV, TSV, ``.inter`` (compressed too) and parquet files."""

import gzip

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recbole_cstwa.tables import column_names, read_blocks, table_format


@pytest.mark.parametrize(
    ("name", "kind", "separator", "compression"),
    [
        ("a.csv", "csv", ",", None),
        ("A.TSV", "tsv", "\t", None),
        ("a.tab.gz", "tsv", "\t", ".gz"),
        ("a.b.inter.zst", "inter", "\t", ".zst"),
        ("a.parquet", "parquet", None, None),
        ("a.pq", "parquet", None, None),
        ("a.txt.bz2", None, None, ".bz2"),
        ("csv", None, None, None),
    ],
)
def test_one_rule_from_the_name_to_the_format(name, kind, separator, compression):
    table = table_format(f"folder.parquet/{name}")  # the file's name alone decides
    assert (table.kind, table.separator, table.compression) == (kind, separator, compression)


def _rows(path, columns, **options):
    return pa.Table.from_batches(list(read_blocks(path, columns, **options))).to_pydict()


def test_text_tables_compressed_or_not(tmp_path):
    (tmp_path / "a.csv").write_text('\ufeffid,"x,y",z\n1,2,3\n4,,6\n', encoding="utf-8")
    assert column_names(tmp_path / "a.csv") == ["id", "x,y", "z"]  # a BOM dropped, quotes read
    types = {"id": pa.string(), "z": pa.string()}
    assert _rows(tmp_path / "a.csv", ["z", "id"], column_types=types) == {"z": ["3", "6"], "id": ["1", "4"]}
    assert _rows(tmp_path / "a.csv", ["x,y"], column_types={"x,y": pa.string()}) == {"x,y": ["2", None]}
    assert _rows(
        tmp_path / "a.csv", ["x,y"], column_types={"x,y": pa.string()}, strings_can_be_null=False
    ) == {"x,y": ["2", ""]}
    (tmp_path / "b.inter.gz").write_bytes(gzip.compress(b"id:token\tscore:float\nu1\t0.5\n"))
    assert column_names(tmp_path / "b.inter.gz") == ["id", "score"]
    assert _rows(tmp_path / "b.inter.gz", ["id", "score"]) == {"id": ["u1"], "score": [0.5]}
    (tmp_path / "c.txt").write_text("id;v\n1;2\n")
    assert column_names(tmp_path / "c.txt", separator=";") == ["id", "v"]
    assert column_names(tmp_path / "c.txt") == ["id;v"]  # no known kind: read as CSV
    (tmp_path / "empty.csv").write_text("")
    assert column_names(tmp_path / "empty.csv") == []


def test_parquet_tables(tmp_path):
    path = tmp_path / "a.pq"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "v": [1.0, 2.0, 3.0]}), path)
    assert column_names(path) == ["id", "v"]
    batches = list(read_blocks(path, ["v"], batch_rows=2))
    assert [batch.num_rows for batch in batches] == [2, 1]
    assert pa.Table.from_batches(batches).to_pydict() == {"v": [1.0, 2.0, 3.0]}
