"""A data pipeline with forkjoin.data: JSON Lines in, a Python function per batch, Parquet out.

    python examples/data_pipeline.py [--rows N] [--dir DIR]

1. writes a JSON Lines dataset of reviews (text + rating) to DIR/reviews/
2. read_json -> filter -> map_batches(features) -> write_parquet(DIR/features/): each partition
   is processed and committed by a worker; _manifest.json is written last
3. runs the same plan again: every partition is already committed, nothing is recomputed
4. groupby(rating).agg(...) over the output, computed as partial aggregates per partition
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import tempfile

import pandas as pd

import forkjoin.data as fd

WORD = re.compile(r"[a-z']+")
POSITIVE = {"great", "good", "love", "excellent", "fine"}
NEGATIVE = {"bad", "awful", "broken", "poor", "hate"}


def features(batch: pd.DataFrame) -> pd.DataFrame:
    """A plain Python function over a pandas batch: tokens, and a naive sentiment score."""
    words = [WORD.findall(text.lower()) for text in batch["text"]]
    return pd.DataFrame(
        {
            "id": batch["id"],
            "rating": batch["rating"],
            "tokens": [len(w) for w in words],
            "sentiment": [sum(t in POSITIVE for t in w) - sum(t in NEGATIVE for t in w)
                          for w in words],  # fmt: skip
        }
    )


def write_reviews(directory: str, rows: int) -> None:
    rng = random.Random(0)
    vocabulary = sorted(POSITIVE | NEGATIVE) + ["the", "product", "it", "was", "very", "and"] * 4
    os.makedirs(directory, exist_ok=True)
    per_file = max(1, rows // 4)
    for number, start in enumerate(range(0, rows, per_file)):
        with open(os.path.join(directory, f"reviews-{number}.jsonl"), "w") as handle:
            for i in range(start, min(rows, start + per_file)):
                text = " ".join(rng.choices(vocabulary, k=rng.randint(5, 30)))
                handle.write(json.dumps({"id": i, "rating": rng.randint(1, 5), "text": text}))
                handle.write("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dir", default=None, help="working directory (default: a temporary one)")
    args = parser.parse_args()
    if args.dir is not None:
        run(args.dir, args.rows)
        return
    with tempfile.TemporaryDirectory(prefix="fj-example-") as root:
        run(root, args.rows)


def run(root: str, rows: int) -> None:
    reviews, out = os.path.join(root, "reviews"), os.path.join(root, "features")
    write_reviews(reviews, rows)

    pipeline = (
        fd.read_json(reviews)
        .filter(lambda row: len(row["text"]) > 20)
        .map_batches(features, batch_format="pandas", batch_size=2048)
    )
    stats = pipeline.write_parquet(out, mode="overwrite", workers=2)
    print(f"wrote {out}: {stats}")
    again = pipeline.write_parquet(out, workers=2)  # same plan: resumes, nothing to redo
    print(f"resumed: {again.files_written} partitions rewritten, "
          f"{again.partitions_resumed} already committed")  # fmt: skip

    summary = (
        fd.read_parquet(out)
        .groupby("rating")
        .agg(reviews=("id", "count"), tokens=("tokens", "mean"), sentiment=("sentiment", "mean"))
        .to_pandas(workers=2)
    )
    print(summary.to_string(index=False))
    # The example checks itself: nothing recomputed on the rerun, every kept row counted once.
    assert again.files_written == 0 and again.partitions_resumed == stats.files_written
    assert int(summary["reviews"].sum()) == stats.rows_out


if __name__ == "__main__":
    main()
