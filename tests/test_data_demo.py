"""The data-processing demo section and examples/data_pipeline.py run and verify themselves."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from forkjoin.demo import run_demo
from forkjoin.demo.data_processing import DataProcessing

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


def _demo_dirs() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("fj-demo-data-")}


def test_demo_section_quick_verifies_and_reports():
    before = _demo_dirs()
    out = io.StringIO()
    reports = run_demo(sections=[DataProcessing()], quick=True, items=8_000, workers=2, out=out)
    text = out.getvalue()
    assert reports[0].verified, text
    assert [step.items for step in reports[0].steps] == [8_000, 8_000]
    assert "rows/s serial ->" in text and "check     OK   write_parquet output" in text
    assert _demo_dirs() <= before  # its generated data is removed


def test_example_data_pipeline_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "data_pipeline.py"), "--rows", "5000",
         "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=100, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "resumed: 0 partitions rewritten" in result.stdout
    assert (tmp_path / "features" / "_manifest.json").exists()
