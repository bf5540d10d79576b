"""One command that checks forkjoin's GPU paths on a GPU machine and prints one table.

    python benchmarks/gpu_check.py            # on one H100/H200: GPT-2 small, < 8 minutes
    python benchmarks/gpu_check.py --tiny     # tiny sizes on CPU (the test suite runs this)

Rows:
    hand-written step      GPT-2 small (124M) bf16 training step, AdamW, eager and torch.compile
    fj.train step          the same model through fj.train.launch + prepare on 1 rank
                           (tokens/s and MFU; goal: >= 0.98x the hand-written step, eager)
    gang of 1              an all_reduce on a gang of one rank (nccl on CUDA, gloo on CPU)
    inference stage        all-MiniLM-L6-v2 embedding as a forkjoin stage with
                           resources={"gpu": 1} (cuda:0) vs a plain loop on the same device
    run_on_devices         a linear model over an array on every GPU vs a plain loop

MFU = model FLOPs per token (PaLM appendix B: 6N + 12 L H Q T) x tokens/s / the device's bf16
peak (forkjoin.train.metrics.KNOWN_PEAK_FLOPS, or FORKJOIN_PEAK_FLOPS).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

DEFAULT_JSON = HERE / "results" / "gpu_check.json"
TRAIN_GOAL = 0.98


def _rank_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(HERE), path) if p)}


def train_rows(cfg: dict[str, int], size: int, device: str, warmup: int, steps: int,
               compile_too: bool) -> list[dict[str, Any]]:  # fmt: skip
    import _gpu_parts as parts

    import forkjoin.train as fjt

    peak = parts.device_peak() if device == "cuda" else None
    rows = []
    modes = [False, True] if compile_too else [False]
    for compiled in modes:
        label = "torch.compile" if compiled else "eager"
        hand = parts.hand_written(cfg, size, "cuda:0" if device == "cuda" else "cpu", compiled,
                                  warmup, steps)  # fmt: skip
        ours = fjt.launch(parts.through_forkjoin, workers=1, device=device,
                          args=(cfg, size, compiled, warmup, steps), env=_rank_env())  # fmt: skip
        for name, result in ((f"hand-written step ({label})", hand),
                             (f"fj.train step ({label})", ours)):  # fmt: skip
            rows.append({"row": name, "value": parts.tokens_per_second(result),
                         "unit": "tokens/s", "mfu": parts.mfu(result, peak)})  # fmt: skip
        rows[-1]["vs_hand"] = rows[-1]["value"] / rows[-2]["value"]
        gang = ours["gang"]
    rows.append(gang_row(gang))
    return rows


def gang_row(result: dict[str, Any]) -> dict[str, Any]:
    """The collective the fj.train rank ran after its steps (a gang of one)."""
    ok = result["value"] == 1.0 and result["world"] == 1
    return {"row": f"gang of 1 ({result['backend']} all_reduce, 4 MiB)",
            "value": result["seconds"] * 1e3, "unit": "ms", "ok": ok}  # fmt: skip


class StageEmbedder:
    """The inference stage: all-MiniLM-L6-v2 on this worker's device (cuda:0 when pinned)."""

    def __init__(self) -> None:
        from _inference_contenders import load_model

        import forkjoin as fj

        self.device = fj.worker_context().device
        self.model = load_model().to(self.device)

    def __call__(self, batch: Any) -> dict[str, Any]:
        import pyarrow as pa
        from _inference_contenders import DIM, tokenize

        tokens = tokenize(batch.column("text").to_pylist())
        vectors = embed_on(self.model, tokens, self.device)
        flat = pa.array(vectors.reshape(-1))
        return {"id": batch.column("id"), "embedding": pa.FixedSizeListArray.from_arrays(flat, DIM)}


def embed_on(model: Any, tokens: dict[str, Any], device: str) -> Any:
    import torch
    from _inference_contenders import pad

    ids, mask = pad(tokens["input_ids"], tokens["attention_mask"])
    with torch.inference_mode():
        out = model({"input_ids": ids.to(device), "attention_mask": mask.to(device)})
    return out["sentence_embedding"].float().cpu().numpy()


def inference_row(device: str, texts: int, batch: int, scratch: str) -> list[dict[str, Any]]:
    import numpy as np
    from _inference_contenders import load_model, tokenize
    from _inference_corpus import corpus

    import forkjoin as fj

    path = os.path.join(scratch, f"fj-bench-corpus-{texts}.parquet")
    corpus(path, texts)
    where = "cuda:0" if device == "cuda" else "cpu"
    model = load_model().to(where)
    import pyarrow.parquet as pq

    all_texts = pq.read_table(path).column("text").to_pylist()
    start = time.perf_counter()
    plain = np.concatenate([embed_on(model, tokenize(all_texts[i : i + batch]), where)
                            for i in range(0, len(all_texts), batch)])  # fmt: skip
    plain_rate = len(all_texts) / (time.perf_counter() - start)
    del model
    resources = {"gpu": 1} if device == "cuda" else {"cpu": 1}
    start = time.perf_counter()
    table = (
        fj.data.read_parquet(path)
        .map_batches(StageEmbedder, batch_size=batch, workers=1, resources=resources)
        .to_arrow(workers=1)
    )
    stage_rate = table.num_rows / (time.perf_counter() - start)
    vectors = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, 384)
    diff = float(np.abs(vectors - plain).max())
    return [
        {"row": f"plain embedding loop ({where})", "value": plain_rate, "unit": "texts/s"},
        {"row": f"inference stage, resources={resources} ({where})", "value": stage_rate,
         "unit": "texts/s", "max_abs_diff": diff, "ok": diff < 1e-2,
         "vs_plain": stage_rate / plain_rate},
    ]  # fmt: skip


def linear_predict(model: Any, batch: Any) -> Any:
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        return model(torch.from_numpy(batch).to(device)).float().cpu().numpy()


def linear_model(device: str) -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(),
                               torch.nn.Linear(1024, 16)).to(device).eval()  # fmt: skip


def devices_row(device: str, rows: int) -> list[dict[str, Any]]:
    import numpy as np

    import forkjoin as fj

    data = np.random.default_rng(0).standard_normal((rows, 256), dtype=np.float32)
    where = "cuda:0" if device == "cuda" else "cpu"
    model = linear_model(where)
    start = time.perf_counter()
    plain = np.concatenate([linear_predict(model, data[i : i + 4096])
                            for i in range(0, rows, 4096)])  # fmt: skip
    plain_rate = rows / (time.perf_counter() - start)
    start = time.perf_counter()
    out = fj.run_on_devices(linear_predict, data, batch_size=4096, setup=linear_model,
                            devices="auto" if device == "cuda" else "cpu",
                            **({} if device == "cuda" else {"workers": 1}))  # fmt: skip
    rate = rows / (time.perf_counter() - start)
    diff = float(np.abs(out - plain).max())
    return [
        {"row": f"plain linear loop ({where})", "value": plain_rate, "unit": "rows/s"},
        {"row": f"run_on_devices ({device})", "value": rate, "unit": "rows/s",
         "max_abs_diff": diff, "ok": diff < 1e-3},
    ]  # fmt: skip


def render(rows: list[dict[str, Any]], console: Any) -> None:
    headers = ["check", "value", "unit", "MFU", "ratio", "ok"]
    table = []
    for row in rows:
        ratio = row.get("vs_hand", row.get("vs_plain"))
        mfu = row.get("mfu")
        table.append([row["row"], f"{row['value']:,.1f}", row["unit"],
                      "-" if mfu is None else f"{mfu:.1%}",
                      "-" if ratio is None else f"{ratio:.3f}x",
                      {True: "yes", False: "NO", None: "-"}[row.get("ok")]])  # fmt: skip
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
    console.write("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + "\n")
    console.write("  ".join("-" * w for w in widths) + "\n")
    for r in table:
        console.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + "\n")


def main(argv: Sequence[str] | None = None, console: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on CPU (for tests)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--check", action="store_true", help="exit 1 if a check fails")
    parser.add_argument("--scratch", default=None, help="where the text corpus is kept")
    args = parser.parse_args(argv)
    console = console or sys.stdout
    import torch

    device = args.device
    if device == "auto":
        device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    if args.tiny:
        import _gpu_parts as parts

        cfg, size, warmup, steps, texts, linear = parts.config_dict(parts.TINY), 4, 1, 3, 48, 8192
    else:
        import _gpu_parts as parts

        cfg, size, warmup, steps = parts.config_dict(parts.GPTConfig()), 16, 5, 20
        texts, linear = 20_000, 2_000_000
    rows = train_rows(cfg, size, device, warmup, steps, compile_too=device == "cuda")
    import tempfile

    rows += inference_row(device, texts, 64 if args.tiny else 256,
                          args.scratch or tempfile.gettempdir())  # fmt: skip
    rows += devices_row(device, linear)
    eager = next(r for r in rows if r["row"] == "fj.train step (eager)")
    goal_met = eager["vs_hand"] >= TRAIN_GOAL
    rows.append({"row": f"goal: fj.train eager >= {TRAIN_GOAL}x hand-written",
                 "value": eager["vs_hand"], "unit": "x", "ok": goal_met})  # fmt: skip
    render(rows, console)
    meta = {"device": device, "tiny": args.tiny, "seconds": time.perf_counter() - started,
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None}  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    console.write(f"{meta['seconds']:.0f} s on {meta['gpu'] or device}; results in {args.json}\n")
    failed = [r["row"] for r in rows if r.get("ok") is False]
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
