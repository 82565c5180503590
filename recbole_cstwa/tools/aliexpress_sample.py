"""Writes a small seeded CSV shaped like AliExpress (Tianchi dataset 74690), for trying the importer.

    recbole-cstwa-aliexpress-sample --output raw/aliexpress --rows 200000

AliExpress' public files (one folder a country, ``train.csv`` and ``test.csv``, as the
Multi-Task Recommendation Library and PaddleRec read them) hold, per impression, ``search_id``,
16 categorical fields ``categorical_1..16``, 63 numerical fields ``numerical_1..63`` and the
labels ``click`` and ``conversion``; they have no user or item id column. This writes
``train.csv`` and ``test.csv`` (half as many rows) with that header. The values are synthetic:
categorical ids from fixed pools with a skew, numerical values in [0, 1), and labels drawn from a
logistic model of a few fields, so that models learn something from a small sample (the rates,
about 9 % clicks and 24 % of clicks converted, are far above AliExpress' for that reason). Put AliExpress' real files in their place to work on the real data.
"""

import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from recbole_cstwa.file_writes import atomic_file

CATEGORICAL = [f"categorical_{i}" for i in range(1, 17)]
NUMERICAL = [f"numerical_{i}" for i in range(1, 64)]
HEADER = ["search_id"] + CATEGORICAL + NUMERICAL + ["click", "conversion"]
#: Pool size of each categorical field (AliExpress' fields range from a few values to ~100k).
POOLS = [3, 5, 8, 12, 20, 40, 80, 150, 300, 600, 1200, 2500, 5000, 10000, 20000, 40000]


def make_frame(rows, seed, first_search_id=0):
    """One seeded table of ``rows`` impressions with AliExpress' columns, as a pyarrow Table."""
    rng = np.random.default_rng(seed)
    columns = {"search_id": np.arange(first_search_id, first_search_id + rows) // 8}
    effects = np.random.default_rng(1234).normal(0.0, 0.8, size=(len(POOLS), max(POOLS)))
    click_logit = np.full(rows, -2.8)
    conversion_logit = np.full(rows, -1.8)
    for index, (name, pool) in enumerate(zip(CATEGORICAL, POOLS)):
        values = (pool * rng.random(rows) ** 2).astype(np.int64)  # small ids more frequent
        columns[name] = values
        if index < 6:
            click_logit += effects[index, values]
        elif index < 10:
            conversion_logit += effects[index, values]
    numbers = rng.random((rows, len(NUMERICAL))).round(6)
    for index, name in enumerate(NUMERICAL):
        columns[name] = numbers[:, index]
    click_logit += 1.5 * (numbers[:, 0] - 0.5)
    conversion_logit += 1.5 * (numbers[:, 1] - 0.5)
    click = rng.random(rows) < 1 / (1 + np.exp(-click_logit))
    conversion = click & (rng.random(rows) < 1 / (1 + np.exp(-conversion_logit)))
    columns["click"] = click.astype(np.int8)
    columns["conversion"] = conversion.astype(np.int8)
    return pa.table({name: columns[name] for name in HEADER})


def write_sample(output, rows, seed=2020, chunk_rows=100_000):
    """Writes ``<output>/train.csv`` (``rows``) and ``<output>/test.csv`` (``rows // 2``), in
    chunks of ``chunk_rows`` (each drawn with its own seed), so memory does not grow with ``rows``."""
    os.makedirs(output, exist_ok=True)
    paths = {}
    for offset, (split, count) in enumerate((("train", rows), ("test", rows // 2))):
        path = os.path.join(output, f"{split}.csv")
        with atomic_file(path, "wb") as file:
            file.write((",".join(HEADER) + "\n").encode())  # a plain header, as AliExpress' files
            for chunk, start in enumerate(range(0, count, chunk_rows)):
                table = make_frame(
                    min(chunk_rows, count - start),
                    [seed, offset, chunk],
                    first_search_id=offset * rows + start,
                )
                pa_csv.write_csv(table, file, pa_csv.WriteOptions(include_header=False, quoting_style="none"))
        paths[split] = path
    return paths
