"""``fj.map(..., report=path)`` and ``pool.report(path)``: any real run can explain its time."""

from __future__ import annotations

import json

import _tasks
import pytest

import forkjoin as fj


def test_map_report_covers_exactly_that_call(tmp_path):
    fj.map(_tasks.square, range(50), workers=2, chunksize=5)  # an earlier call on the same pool
    path = tmp_path / "run.json"
    out = fj.map(_tasks.square, range(300), workers=2, chunksize=10, report=str(path))
    assert out == [x * x for x in range(300)]
    data = json.loads(path.read_text())
    assert data["items"] == 300 and data["tasks"] == 30  # not the earlier call's 50 items
    assert data["wall_seconds"] > 0 and data["advice"]


def test_a_failed_call_still_writes_its_report(tmp_path):
    path = tmp_path / "failed.json"
    with pytest.raises(fj.TaskError):
        fj.map(_tasks.fail_on_three, range(10), workers=2, chunksize=1, report=str(path))
    assert json.loads(path.read_text())["tasks"] >= 1  # written, for the tasks that ran


def test_pool_report_is_a_self_contained_html_page(tmp_path):
    with fj.Pool(2) as pool:
        pool.map_list(_tasks.sleep_for, [0.02] * 20, chunksize=2)
        path = pool.report(str(tmp_path / "pool.html"))
    html = path.read_text()
    assert html.startswith("<!DOCTYPE html>") or "<html" in html[:200]
    assert "data:image/png;base64," in html  # the timeline is embedded, not linked
