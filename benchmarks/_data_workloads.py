"""bench_data's generated dataset and the two user functions every contender runs.

The dataset: Parquet files of rows (id, category, value, x, y, text); text is 20-40 words from a
fixed vocabulary (~200 characters), so the text UDF is real pure-Python work per row.

    text UDF     normalise (lower-case), split into tokens (regex), count tokens and distinct
                 tokens: a Python loop per row, the kind of function that does not vectorise
    numeric UDF  numpy over columns (sqrt, log1p): vectorised, so mostly I/O and decoding
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

TEXT_COLUMNS = ["id", "text"]
NUMERIC_COLUMNS = ["id", "value", "x", "y"]
ROWS_PER_FILE = 250_000
ROW_GROUP_ROWS = 50_000

_TOKEN = re.compile(r"[a-z0-9]+")


def text_features(texts: list[str]) -> tuple[list[int], list[int]]:
    """Tokens and distinct tokens per text: the per-row Python work of the text workload."""
    counts, distinct = [], []
    for text in texts:
        tokens = _TOKEN.findall(text.lower())
        counts.append(len(tokens))
        distinct.append(len(set(tokens)))
    return counts, distinct


def numeric_features(value: Any, x: Any, y: Any) -> tuple[Any, Any]:
    return np.sqrt(x * x + y * y), np.log1p(np.abs(value)) * x


# -- the same functions in each contender's batch format -----------------------------------------


def text_arrow(batch: Any) -> Any:
    import pyarrow as pa

    counts, distinct = text_features(batch.column("text").to_pylist())
    return pa.table({"id": batch.column("id"), "tokens": counts, "distinct": distinct})


def text_pandas(df: Any) -> Any:
    import pandas as pd

    counts, distinct = text_features(df["text"].tolist())
    return pd.DataFrame({"id": df["id"].to_numpy(), "tokens": counts, "distinct": distinct})


def text_dict(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    counts, distinct = text_features(batch["text"])
    return {"id": batch["id"], "tokens": counts, "distinct": distinct}


def numeric_arrow(batch: Any) -> Any:
    import pyarrow as pa

    z, w = numeric_features(*(batch.column(c).to_numpy() for c in ("value", "x", "y")))
    return pa.table({"id": batch.column("id"), "z": z, "w": w})


def numeric_pandas(df: Any) -> Any:
    import pandas as pd

    z, w = numeric_features(df["value"].to_numpy(), df["x"].to_numpy(), df["y"].to_numpy())
    return pd.DataFrame({"id": df["id"].to_numpy(), "z": z, "w": w})


def numeric_dict(batch: dict[str, Any]) -> dict[str, Any]:
    z, w = numeric_features(*(np.asarray(batch[c]) for c in ("value", "x", "y")))
    return {"id": batch["id"], "z": z, "w": w}


# -- the dataset ---------------------------------------------------------------------------------


def make_vocabulary(rng: np.random.Generator, size: int = 5000) -> np.ndarray:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(size)]
    # Some capitals and punctuation, so normalising has something to do.
    return np.array([w.capitalize() if i % 7 == 0 else w + "," if i % 11 == 0 else w
                     for i, w in enumerate(words)])  # fmt: skip


def generate(directory: str, rows: int, seed: int = 0) -> dict[str, Any]:
    """Write ``rows`` rows as Parquet files of ROWS_PER_FILE rows; returns what was written.
    Reuses an existing dataset with the same rows and seed."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    marker = os.path.join(directory, "_dataset.json")
    if os.path.exists(marker):
        with open(marker) as handle:
            info: dict[str, Any] = json.load(handle)
        if info.get("rows") == rows and info.get("seed") == seed:
            return info
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    import random

    rng = np.random.default_rng(seed)
    vocabulary = make_vocabulary(rng).tolist()
    choose = random.Random(seed).choices
    written = 0
    files = 0
    arrow_bytes = 0
    while written < rows:
        n = min(ROWS_PER_FILE, rows - written)
        lengths = rng.integers(20, 41, n).tolist()
        texts = [" ".join(choose(vocabulary, k=k)) for k in lengths]
        table = pa.table(
            {
                "id": np.arange(written, written + n, dtype=np.int64),
                "category": rng.integers(0, 100, n),
                "value": rng.normal(100, 30, n),
                "x": rng.normal(size=n),
                "y": rng.normal(size=n),
                "text": texts,
            }
        )
        arrow_bytes += table.nbytes
        pq.write_table(table, os.path.join(directory, f"data-{files:04d}.parquet"),
                       row_group_size=ROW_GROUP_ROWS)  # fmt: skip
        written += n
        files += 1
    disk = sum(
        os.path.getsize(os.path.join(directory, f))
        for f in os.listdir(directory)
        if f.endswith(".parquet")
    )
    info = {"rows": rows, "seed": seed, "files": files, "arrow_bytes": arrow_bytes,
            "disk_bytes": disk}  # fmt: skip
    with open(marker, "w") as handle:
        json.dump(info, handle)
    return info
