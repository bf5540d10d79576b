"""``backend="dask"`` from a plain script: no ``if __name__ == "__main__":`` guard needed, the
script's own modules importable on the workers, and no worker outliving the script, even when
the script is SIGKILLed."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import psutil
import pytest
from helpers import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(150)]

SCRIPT = textwrap.dedent(
    """
    import os
    import sys

    import forkjoin as fj
    import script_helper  # next to the script: workers must find it too (by reference)

    def square(x):  # defined in __main__: travels by value
        return x * x

    print(fj.map(square, range(10), backend="dask", workers=2))
    print(fj.map(script_helper.worker_pid, range(8), backend="dask", workers=2, chunksize=1))
    sys.stdout.flush()
    if os.environ.get("HANG_AFTER"):
        import time

        time.sleep(600)
    """
)


def _start(tmp_path, marker: str, hang: bool = False) -> subprocess.Popen[str]:
    (tmp_path / "script.py").write_text(SCRIPT)
    (tmp_path / "script_helper.py").write_text(
        "import os\n\ndef worker_pid(_):\n    return os.getpid()\n"
    )
    env = {**os.environ, "FJ_TEST_MARKER": marker, "PYTHONPATH": os.pathsep.join(sys.path)}
    if hang:
        env["HANG_AFTER"] = "1"
    return subprocess.Popen(
        [sys.executable, str(tmp_path / "script.py")],
        cwd=tmp_path / "..",  # not the script's directory: its path must come from sys.path
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _marked(marker: str) -> list[psutil.Process]:
    """Every process that inherited the marker: the script and all it started."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("FJ_TEST_MARKER") == marker:
                found.append(process)
        except psutil.Error:
            continue
    return found


def test_a_script_without_a_main_guard_runs_on_dask(tmp_path):
    marker = uuid.uuid4().hex
    script = _start(tmp_path, marker)
    try:
        out, err = script.communicate(timeout=120)
    finally:
        script.kill()
    assert script.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == str([x * x for x in range(10)])
    assert "Traceback" not in err and "Nanny failed" not in err, err
    pids = set(ast.literal_eval(lines[1]))
    assert script.pid not in pids and 1 <= len(pids) <= 2  # ran in worker processes
    assert wait_until(lambda: not _marked(marker), 10), "processes outlived the script"


def test_dask_workers_do_not_outlive_a_sigkilled_script(tmp_path):
    marker = uuid.uuid4().hex
    script = _start(tmp_path, marker, hang=True)
    try:
        assert script.stdout is not None
        first = script.stdout.readline()  # the cluster is up and has run tasks
        assert first.startswith("[0, 1, 4"), script.stderr.read() if script.stderr else first
        assert script.stdout.readline().startswith("[")
        workers = [p for p in _marked(marker) if p.pid != script.pid]
        assert len(workers) >= 3  # the dask worker process and its two workers
        script.send_signal(signal.SIGKILL)
        script.wait(timeout=10)
    finally:
        script.kill()
        script.communicate(timeout=30)
    assert wait_until(lambda: not _marked(marker), 10), [p.cmdline() for p in _marked(marker)]
