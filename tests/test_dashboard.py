"""The live dashboard: a real headless Chromium reads the page while a map runs (and after a
task failed), the screenshot is not blank, and the server is loopback-only, token-guarded,
read-only and gone once closed."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp  # noqa: E402,F401  (the dashboard extra: in the test extra)
import psutil
import pytest
from _profile_tasks import hot_task

import forkjoin as fj


def _chromium() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but chromium is not installed: .ci/run must install it")
        pytest.skip("chromium not installed (apt-get install chromium); CI installs it")
    return browser


def _browser(browser: str, profile: Path, *args: str, height: int = 1300) -> str:
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={profile}", f"--window-size=1200,{height}", *args],
        check=True, timeout=90, capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout


def _status(url: str, method: str = "GET", host: str | None = None) -> int:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, headers={"Host": host} if host else {})
        return conn.getresponse().status
    finally:
        conn.close()


def _sleepy(x: int) -> int:
    time.sleep(0.02)
    return x


def _fails_on_seven(x: int) -> int:
    if x == 7:
        raise ValueError("item seven is bad")
    return x


def _items_until(stop: threading.Event) -> Iterator[int]:
    n = 0
    while not stop.is_set():
        yield n
        n += 1


def _state(url: str) -> dict:
    import json

    with urllib.request.urlopen(url.replace("/?token=", "/api/state?token=")) as reply:
        return json.loads(reply.read())


def _section(dom: str, label: str) -> str:
    """The page's section that ``label`` starts or is in, up to the next section."""
    start = dom.index(label)
    end = dom.find('<section class="pool', start + 1)
    return dom[start : end if end > 0 else len(dom)]


def _value(section: str, key: str) -> str:
    match = re.search(rf'<div class="value" data-key="{key}">([^<]*)</div>', section)
    assert match, f"{key} not rendered"
    return match.group(1)


GREEN = (0x3F, 0xA4, 0x5B)  # a finished task on the timeline
BLUE = (0x4C, 0x8B, 0xD6)  # the throughput line
RUNNING_POOL = "fj.map / fj.imap (process backend)"


def _colours(shot: Path) -> dict[tuple[int, int, int], int]:
    from PIL import Image

    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    return {rgb: count for count, rgb in colours}


def _near(colours: dict[tuple[int, int, int], int], target: tuple[int, int, int]) -> int:
    return sum(
        count for rgb, count in colours.items()
        if all(abs(a - b) <= 10 for a, b in zip(rgb, target, strict=True))
    )  # fmt: skip


def test_page_in_headless_chromium_during_a_running_map(tmp_path: Path) -> None:
    """The page as a browser renders it while a map runs, after a task failed. Other pools of
    this process (earlier tests') may be on the page too: the running one must come first."""
    browser = _chromium()
    board = fj.dashboard(quiet=True)
    try:
        assert fj.dashboard() is board  # one per process
        failed = fj.map(_fails_on_seven, range(10), workers=2, on_error="collect")
        assert isinstance(failed[7], fj.TaskError)
        stop = threading.Event()
        results: list[int] = []
        runner = threading.Thread(
            target=lambda: results.extend(fj.imap(_sleepy, _items_until(stop), workers=2))
        )
        runner.start()
        try:
            # until the page has what it draws: throughput points for the chart, tasks done
            deadline = time.monotonic() + 60
            while True:
                pools = _state(board.url)["pools"]
                top = pools[0] if pools else {}
                if (
                    top.get("label") == RUNNING_POOL
                    and top["stats"]["tasks_done"] >= 10 + 5
                    and len(top["throughput"]["t"]) >= 2
                ):
                    break
                assert time.monotonic() < deadline, [p["label"] for p in pools]
                time.sleep(0.2)
            dom = _browser(browser, tmp_path / "p1", "--dump-dom", board.url)
            shot = tmp_path / "dashboard.png"
            _browser(
                browser, tmp_path / "p2", "--virtual-time-budget=3000", f"--screenshot={shot}",
                board.url,
            )  # fmt: skip
        finally:
            stop.set()
            runner.join(30)
        assert not runner.is_alive() and results == list(range(len(results)))

        first = _section(dom, '<section class="pool" data-pool="0">')
        assert f"<h2>{RUNNING_POOL}</h2>" in first, "the running pool is not first on the page"
        assert _value(first, "workers") == "2"
        done = int(_value(first, "tasks_done"))
        assert done >= 10 + 5  # the failing map's tasks and some of the running one's
        assert int(_value(first, "tasks_failed")) == 1
        assert 'class="what">item 7 (7)</b>' in first
        assert "ValueError: item seven is bad" in first  # the worker's traceback
        assert first.count('<tr data-worker="') == 2
        # what each worker runs now: the running map's items (a chunk names its first)
        current = re.findall(r'data-key="current">([^<]*)</td>', first)
        assert len(current) == 2 and any(re.match(r"item \d+ \(\d+\)", c) for c in current)

        colours = _colours(shot)
        assert len(colours) > 50, "screenshot is blank"
        assert _near(colours, GREEN) > 100, "task timeline not drawn"
        assert _near(colours, BLUE) > 50, "throughput chart not drawn"
    finally:
        board.close()


def test_token_loopback_and_read_only() -> None:
    with fj.Pool(workers=2, dashboard=True) as pool:
        url = pool.dashboard_url
        assert url is not None and url.startswith("http://127.0.0.1:")
        assert pool.map_list(_sleepy, range(4)) == list(range(4))
        port = urlsplit(url).port
        listening = [
            c for c in psutil.Process().net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        ]  # fmt: skip
        assert [c.laddr.ip for c in listening] == ["127.0.0.1"]

        base, token = url.split("?token=")
        assert _status(url) == 200
        assert _status(base.rstrip("/") + "/api/state?token=" + token) == 200
        assert _status(base) == 403  # no token
        assert _status(base + "?token=" + token[:-1] + "x") == 403  # wrong token
        assert _status(base.rstrip("/") + "/api/state") == 403
        assert _status(base.rstrip("/") + "/static/dashboard.js") == 403
        assert _status(url, host="evil.example:80") == 403  # DNS rebinding
        for method in ("POST", "PUT", "DELETE"):
            assert _status(url, method) == 405  # read-only
        with urllib.request.urlopen(base.rstrip("/") + "/api/state?token=" + token) as reply:
            assert b'"tasks_done": 4' in reply.read()
    with pytest.raises(OSError):  # closed with the pool
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not [t for t in threading.enumerate() if t.name == "fj-dashboard"]


def test_current_item_per_worker_and_pools_in_order_of_activity() -> None:
    """Each worker's row names the task it runs now (the event log hears of a task only when
    it ends); the pool that is working comes first, and a shut-down pool shrinks to one line."""
    board = fj.dashboard(quiet=True)
    try:
        with fj.Pool(workers=2) as earlier:
            earlier.map_list(_sleepy, range(4))
        with fj.Pool(workers=2) as pool:
            futures = [pool.submit(time.sleep, 2.0 + i / 10) for i in range(2)]
            deadline = time.monotonic() + 30
            while True:
                mine = _state(board.url)["pools"][0]
                current = sorted(w["current"] or "" for w in mine["workers"])
                if current == ["call 0: sleep(2.0)", "call 1: sleep(2.1)"]:
                    break
                assert time.monotonic() < deadline, mine["workers"]
                time.sleep(0.2)
            assert mine["current_known"] and mine["label"].startswith("Pool #")
            assert all(0 <= w["running_for"] < 2.5 for w in mine["workers"])
            assert sorted(row[0] for row in mine["timeline"] if row[3] == "running") == [0, 1]
            for future in futures:
                future.result()
            mine = _state(board.url)["pools"][0]
            assert [w["current"] for w in mine["workers"]] == [None, None]
            assert not [row for row in mine["timeline"] if row[3] == "running"]
        deadline = time.monotonic() + 30
        while True:  # shut down: off the list of pools, one line among the ended, first
            state = _state(board.url)
            if state["ended"] and state["ended"][0]["label"] == mine["label"]:
                break
            assert time.monotonic() < deadline, state["ended"]
            time.sleep(0.5)
        assert state["ended"][0]["tasks_done"] == 2
        assert mine["label"] not in [p["label"] for p in state["pools"]]
    finally:
        board.close()


def test_off_by_default_nothing_listens() -> None:
    before = {c.laddr.port for c in psutil.Process().net_connections("inet")
              if c.status == psutil.CONN_LISTEN}  # fmt: skip
    with fj.Pool(workers=2) as pool:
        assert pool.dashboard_url is None and pool.profile() is None
        pool.map_list(_sleepy, range(4))
        after = {c.laddr.port for c in psutil.Process().net_connections("inet")
                 if c.status == psutil.CONN_LISTEN}  # fmt: skip
    assert after == before
    assert not [t for t in threading.enumerate() if t.name.startswith("fj-")]


def test_cli_runs_a_command_with_the_dashboard_up(tmp_path: Path) -> None:
    import io
    import json

    from forkjoin.cli import main

    source = tmp_path / "in.jsonl"
    source.write_text("".join(f"{i}\n" for i in range(20)))
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["dashboard", "--", "map", "_profile_tasks:hot_task", str(source), "-o",
         str(tmp_path / "out.jsonl"), "--workers", "2"],
        stdout=out, stderr=err,
    )  # fmt: skip
    assert code == 0, err.getvalue()
    assert re.search(r"forkjoin dashboard: http://127\.0\.0\.1:\d+/\?token=\S{20,}", err.getvalue())
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [2 * i for i in range(20)]
    assert not [t for t in threading.enumerate() if t.name == "fj-dashboard"]
    assert main(["dashboard"], stdout=out, stderr=err) == 2  # nothing to run: usage error


def _train_and_log(steps: int) -> int:
    import forkjoin.train as fjt

    for step in range(steps):
        for _ in range(6):  # ~2x the samples of 3: a CI run missed the ±0.10 bound by 0.017
            hot_task(step)  # 70% of it in slow_part: the profiler's known shape
        fjt.log(step=step, loss=10.0 / (step + 1), tokens=512, echo=False)
    return steps


@pytest.mark.train
@pytest.mark.slow
def test_training_gang_live_and_profiled(tmp_path: Path) -> None:
    """One gang (rank start-up is the expensive part): its metrics on the live page, and
    every rank's stacks in the profile."""
    import json

    import forkjoin.train as fjt
    from forkjoin.observe.runs import last_profile

    browser = _chromium()
    board = fj.dashboard(quiet=True)
    target = tmp_path / "train.speedscope.json"
    try:
        assert (
            fjt.launch(_train_and_log, args=(40,), workers=2, device="cpu", profile=str(target))
            == 40
        )
        profile = last_profile()
        assert len(profile.workers) == 2 and profile.calls == 2  # both ranks, each complete
        in_task = profile.share("hot_task")
        assert in_task > 0.3, profile.render_text()
        assert abs(profile.share("slow_part") / in_task - 0.70) <= 0.10
        assert len(json.loads(target.read_text())["profiles"]) == 2
        board.view.tick()
        url = board.url.replace("/?token=", "/api/state?token=")
        with urllib.request.urlopen(url) as reply:
            state = json.loads(reply.read())
        run = state["training"][-1]
        assert run["ranks"] == 2 and not run["running"]
        assert [r["step"] for r in run["records"]] == list(range(40))
        assert run["latest"]["loss"] == pytest.approx(10.0 / 40)
        assert run["latest"]["tokens_per_s"] > 0  # 2 ranks x 512 tokens per step
        dom = _browser(browser, tmp_path / "p", "--dump-dom", board.url)
        section = dom[dom.index('data-training="0"') :]
        assert _value(section, "ranks") == "2" and _value(section, "step") == "39"
        assert _value(section, "metric-loss") == "0.2500"
    finally:
        board.close()
    assert not [n for n in os.listdir(tempfile_dir()) if n.startswith("forkjoin-trainlog-")]


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()


def test_data_stages_on_the_page(tmp_path: Path) -> None:
    import json

    import forkjoin.data as data

    board = fj.dashboard(quiet=True)
    try:
        ds = data.from_items([{"k": i % 3, "x": i} for i in range(600)]).repartition(6)
        out = ds.map_batches(_double_x).groupby("k").agg({"x": "sum"}).to_pandas(workers=2)
        assert sorted(out["x"]) == sorted(2 * sum(range(k, 600, 3)) for k in range(3))
        url = board.url.replace("/?token=", "/api/state?token=")
        with urllib.request.urlopen(url) as reply:
            stages = json.loads(reply.read())["data"]
    finally:
        board.close()
    first = next(s for s in stages if "map_batches(_double_x)" in s["label"])
    assert first["label"].endswith("partial") and not first["running"]
    assert first["done"] == first["partitions"] == 6 and first["rows_in"] == 600
    assert first["in_flight"] == 0 and first["rows_per_s"] > 0


def _double_x(table):
    import pyarrow.compute as pc

    return table.set_column(table.schema.get_field_index("x"), "x", pc.multiply(table["x"], 2))


def test_without_aiohttp_the_error_names_the_extra() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['aiohttp'] = None\n"  # as if not installed
        "import forkjoin as fj\n"
        "for start in (fj.dashboard, lambda: fj.Pool(workers=2, dashboard=True)):\n"
        "    try:\n"
        "        start()\n"
        "    except fj.BackendUnavailableError as exc:\n"
        "        print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.stdout.count('pip install "forkjoin[dashboard]"') == 2, done.stderr
