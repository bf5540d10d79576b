"""The data-processing demo section runs, verifies itself and cleans up (examples/data_pipeline.py
checks itself and runs in test_examples.py)."""

from __future__ import annotations

import io
import os
import tempfile

import pytest

from forkjoin.demo import run_demo
from forkjoin.demo.data_processing import DataProcessing

pytestmark = pytest.mark.timeout(120)


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
