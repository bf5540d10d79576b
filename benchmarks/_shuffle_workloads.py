"""The data of bench_shuffle.py (shaped like TPC-H's lineitem and orders) and the one function
every contender's group-apply runs.

lineitem: l_orderkey (an order's key: ~4 lines per order), l_suppkey (1..1000: the 1,000
groups of the group-apply), l_quantity, l_extendedprice, l_discount, l_shipdate, l_returnflag,
l_comment (10-40 characters). orders: o_orderkey (1..rows/4, shuffled), o_custkey,
o_totalprice, o_orderdate, o_orderpriority (5 values). orders_small: 10,000 orders.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

LINEITEM_FILES = 8
ORDERS_FILES = 2
SMALL_ORDERS = 10_000
GROUPS = 1000
PRIORITIES = ["1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW"]
_WORDS = np.array(
    [
        "quickly",
        "final",
        "deposits",
        "regular",
        "packages",
        "sleep",
        "ideas",
        "furiously",
        "express",
        "accounts",
        "blithely",
        "ironic",
        "pending",
    ]
)


def _comments(rng: Any, n: int) -> Any:
    import pyarrow as pa

    words = _WORDS[rng.integers(0, len(_WORDS), size=(n, 3))]
    return pa.array([" ".join(row) for row in words.tolist()], pa.string())


def generate(directory: str, rows: int) -> dict[str, Any]:
    """Write the tables as Parquet under ``directory`` (reused when already there)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    info_path = os.path.join(directory, "info.json")
    if os.path.exists(info_path):
        with open(info_path) as handle:
            info: dict[str, Any] = json.load(handle)
        if info.get("rows") == rows:
            return info
    rng = np.random.default_rng(42)
    orders = max(SMALL_ORDERS, rows // 4)
    arrow_bytes = {}
    for name in ("lineitem", "orders", "orders_small"):
        os.makedirs(os.path.join(directory, name), exist_ok=True)
    per = -(-rows // LINEITEM_FILES)
    total = 0
    for i in range(LINEITEM_FILES):
        n = min(per, rows - i * per)
        quantity = rng.integers(1, 51, n).astype(np.float64)
        table = pa.table(
            {
                "l_orderkey": rng.integers(1, orders + 1, n),
                "l_suppkey": rng.integers(1, GROUPS + 1, n),
                "l_quantity": quantity,
                "l_extendedprice": np.round(quantity * rng.uniform(900, 2000, n), 2),
                "l_discount": np.round(rng.uniform(0, 0.1, n), 2),
                "l_shipdate": pa.array(rng.integers(8000, 10500, n).astype(np.int32), pa.date32()),
                "l_returnflag": pa.array(np.array(["A", "N", "R"])[rng.integers(0, 3, n)]),
                "l_comment": _comments(rng, n),
            }
        )
        total += table.nbytes
        pq.write_table(
            table,
            os.path.join(directory, "lineitem", f"part-{i:02d}.parquet"),
            row_group_size=250_000,
        )
    arrow_bytes["lineitem"] = total
    keys = rng.permutation(np.arange(1, orders + 1))
    order_table = pa.table(
        {
            "o_orderkey": keys,
            "o_custkey": rng.integers(1, orders // 10 + 2, orders),
            "o_totalprice": np.round(rng.uniform(1000, 400000, orders), 2),
            "o_orderdate": pa.array(
                rng.integers(8000, 10500, orders).astype(np.int32), pa.date32()
            ),
            "o_orderpriority": pa.array(np.array(PRIORITIES)[rng.integers(0, 5, orders)]),
        }
    )
    arrow_bytes["orders"] = order_table.nbytes
    per = -(-orders // ORDERS_FILES)
    for i in range(ORDERS_FILES):
        pq.write_table(
            order_table.slice(i * per, per),
            os.path.join(directory, "orders", f"part-{i:02d}.parquet"),
            row_group_size=250_000,
        )
    small = order_table.slice(0, SMALL_ORDERS)
    pq.write_table(small, os.path.join(directory, "orders_small", "part-00.parquet"))
    info = {
        "rows": rows,
        "orders": orders,
        "small_orders": SMALL_ORDERS,
        "groups": GROUPS,
        "arrow_bytes": arrow_bytes,
    }
    with open(info_path, "w") as handle:
        json.dump(info, handle)
    return info


def fit_line(x: Any, y: Any) -> tuple[float, float]:
    """Least squares y = a * x + b (numpy's lstsq): the per-group model of the group-apply."""
    design = np.column_stack([np.asarray(x, dtype=np.float64), np.ones(len(x))])
    (a, b), *_ = np.linalg.lstsq(design, np.asarray(y, dtype=np.float64), rcond=None)
    return float(a), float(b)
