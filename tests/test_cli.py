"""The command line: ``forkjoin info | map | demo``, ``--version`` and ``python -m forkjoin``.

Two kinds of test: in-process calls of ``main(argv, stdout=..., stderr=...)`` with StringIO
streams (parsing, messages, exit codes; one worker, so nothing is spawned), and real subprocess
runs of ``python -m forkjoin`` where it matters: worker processes, atomic output, crashes,
timeouts, the demo end to end.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

import forkjoin as fj
from forkjoin import demo as demo_package
from forkjoin.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main
from forkjoin.demo import DemoContext, SectionReport, Step, run_demo
from forkjoin.demo.minhash import (
    EMPTY_SKETCH,
    estimate_distinct,
    make_corpus,
    merge_sketches,
    minhash_signature,
    near_duplicates,
    shingle_hashes,
    shingle_sketch,
)
from forkjoin.mapfile import atomic_output

pytestmark = pytest.mark.timeout(120)

# Task functions for `forkjoin map`, written into a temporary directory as a module, so that
# MODULE:FN is found the way a user's would be: through the current directory.
JOBS = textwrap.dedent(
    """
    import os
    import time

    def square(x):
        time.sleep((x * 7919 % 13) / 4000)  # uneven durations: tasks finish out of order
        return x * x

    def fail_on_3_and_150(x):
        if x in (3, 150):
            raise ValueError(f"bad value {x}")
        return x + 1

    def crash_on_2(x):
        if x == 2:
            os._exit(7)
        return x

    def hang_on_1(x):
        if x == 1:
            time.sleep(60)
        return x

    def not_json(x):
        return {x}

    def nan(x):
        return float("nan")

    def shout(text):
        return text.upper() + "!"

    NOT_CALLABLE = 42
    """
)


def write_lines(path: Path, values: list[Any]) -> Path:
    path.write_text("".join(json.dumps(v) + "\n" for v in values), encoding="utf-8")
    return path


def read_lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run_cli(*args: str, cwd: Path, stdin: str | None = None, timeout: float = 90):
    """``python -m forkjoin ARGS`` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "forkjoin", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def call(*args: str, stdin: str = "") -> tuple[int, str, str]:
    """``main(ARGS)`` in this process with captured streams."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err, stdin=io.StringIO(stdin))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    (tmp_path / "jobs.py").write_text(JOBS, encoding="utf-8")
    return tmp_path


@pytest.fixture
def jobs_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The jobs module under a unique name in the current directory, for in-process runs; the
    import and its sys.path entry are undone afterwards."""
    name = f"jobs_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(JOBS, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name
    sys.modules.pop(name, None)


def files_in(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.name != "__pycache__"}


# -- version and help ----------------------------------------------------------------------------


def test_version_in_process() -> None:
    code, out, _ = call("--version")
    assert code == EXIT_OK
    assert out.strip() == f"forkjoin {fj.__version__}"


def test_python_m_forkjoin_version(tmp_path: Path) -> None:
    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"forkjoin {fj.__version__}"


def test_console_script_version(tmp_path: Path) -> None:
    script = shutil.which("forkjoin") or str(Path(sys.executable).with_name("forkjoin"))
    assert os.path.exists(script), "no forkjoin console script: pip install -e . installs it"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert fj.__version__ in result.stdout


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["info", "map", "demo"]),
        (["info"], ["--json"]),
        (["map"], ["MODULE:FN", "--output", "--workers", "--timeout", "--on-error", "atomic"]),
        (["demo"], ["--items", "--workers", "--quick", "speedup"]),
    ],
)
def test_help(argv: list[str], expected: list[str]) -> None:
    code, out, _ = call(*argv, "--help")
    assert code == EXIT_OK
    for text in expected:
        assert text in out


def test_no_command_is_a_usage_error() -> None:
    code, out, err = call()
    assert code == EXIT_USAGE
    assert "usage: forkjoin" in err
    assert out == ""


def test_bad_option_value_is_a_usage_error() -> None:
    code, _, err = call("demo", "--workers", "0")
    assert code == EXIT_USAGE
    assert "positive integer" in err


# -- info ----------------------------------------------------------------------------------------


def test_info_text() -> None:
    code, out, _ = call("info")
    assert code == EXIT_OK
    machine = fj.devices()
    assert f"{machine.cpus} usable of {machine.cpus_total}" in out
    for name in ("inline", "threads", "process", "ray", "dask", "numpy", "cloudpickle"):
        assert name in out
    assert fj.__version__ in out
    assert "GiB" in out


def test_info_says_whether_a_configured_cluster_answers(monkeypatch) -> None:
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", f"tcp://127.0.0.1:{port}")
        code, out, _ = call("info", "--json")
        assert code == EXIT_OK
        dask = json.loads(out)["backends"]["dask"]
        assert dask["cluster"] == f"tcp://127.0.0.1:{port}" and dask["reachable"] is True
    code, out, _ = call("info")  # the port is closed now
    assert f"cluster tcp://127.0.0.1:{port} NOT reachable" in out
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    code, out, _ = call("info", "--json")
    assert json.loads(out)["backends"]["dask"]["cluster"] is None


def test_info_json() -> None:
    code, out, _ = call("info", "--json")
    assert code == EXIT_OK
    info = json.loads(out)
    machine = fj.devices()
    assert info["forkjoin"] == fj.__version__
    assert info["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert info["cpus"] == {"usable": machine.cpus, "total": machine.cpus_total}
    assert info["memory"]["total"] == machine.memory_total
    assert 0 < info["memory"]["available"] <= info["memory"]["total"]
    assert info["gpus"] == [
        {"index": g.index, "name": g.name, "memory_total": g.memory_total} for g in machine.gpus
    ]
    for name in ("inline", "threads", "process"):
        assert info["backends"][name]["available"] is True
    for name in ("ray", "dask"):
        entry = info["backends"][name]
        assert isinstance(entry["available"], bool)
        if not entry["available"]:
            assert f'pip install "forkjoin[{name}]"' == entry["install"]
    assert info["packages"]["numpy"] == importlib.metadata.version("numpy")
    assert set(info["packages"]) >= {"numpy", "cloudpickle", "pyarrow", "torch", "ray", "dask"}


def test_info_text_lists_gpus() -> None:
    from forkjoin.sysinfo import collect_info, format_info

    info = collect_info()
    info["gpus"] = [{"index": 0, "name": "NVIDIA H200", "memory_total": 150 * 2**30}]
    assert "gpus       0: NVIDIA H200, 150.0 GiB" in format_info(info).splitlines()


def test_info_never_imports_optional_engines(tmp_path: Path) -> None:
    code = (
        "import io, sys; from forkjoin.cli import main; main(['info'], stdout=io.StringIO()); "
        "print(sorted(m for m in ('ray', 'dask', 'distributed', 'torch', 'pyarrow') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- map: real runs on worker processes ----------------------------------------------------------


def test_map_writes_results_in_input_order(jobs_dir: Path) -> None:
    values = list(range(400))
    write_lines(jobs_dir / "in.jsonl", values)
    result = run_cli(
        "map", "jobs:square", "in.jsonl", "-o", "out.jsonl", "--workers", "2", cwd=jobs_dir
    )
    assert result.returncode == 0, result.stderr
    assert read_lines(jobs_dir / "out.jsonl") == [v * v for v in values]
    assert files_in(jobs_dir) == {"jobs.py", "in.jsonl", "out.jsonl"}  # no temporary file left


def test_map_failure_leaves_no_partial_output(jobs_dir: Path) -> None:
    # item 150 fails after ~150 results were already written to the temporary file
    write_lines(jobs_dir / "in.jsonl", [v for v in range(200) if v != 3])
    before = files_in(jobs_dir)
    result = run_cli(
        "map", "jobs:fail_on_3_and_150", "in.jsonl", "-o", "out.jsonl", "--workers", "2",
        cwd=jobs_dir,
    )  # fmt: skip
    assert result.returncode == EXIT_FAILURE
    assert not (jobs_dir / "out.jsonl").exists()
    assert files_in(jobs_dir) == before  # no temporary file left behind either
    assert "line 150" in result.stderr  # value 150 is on line 150 once 3 is left out
    assert "ValueError" in result.stderr and "bad value 150" in result.stderr
    assert "Traceback" not in result.stderr
    assert "was not written" in result.stderr


def test_map_failure_keeps_an_existing_output_untouched(jobs_dir: Path) -> None:
    write_lines(jobs_dir / "in.jsonl", list(range(10)))
    (jobs_dir / "out.jsonl").write_text("previous run\n")
    result = run_cli("map", "jobs:fail_on_3_and_150", "in.jsonl", "-o", "out.jsonl", cwd=jobs_dir)
    assert result.returncode == EXIT_FAILURE
    assert (jobs_dir / "out.jsonl").read_text() == "previous run\n"
    assert "line 4" in result.stderr


def test_map_verbose_shows_the_worker_traceback(jobs_dir: Path) -> None:
    write_lines(jobs_dir / "in.jsonl", [1, 2, 3])
    result = run_cli(
        "map", "jobs:fail_on_3_and_150", "in.jsonl", "-o", "out.jsonl", "--verbose", cwd=jobs_dir
    )
    assert result.returncode == EXIT_FAILURE
    assert "Traceback" in result.stderr
    assert "fail_on_3_and_150" in result.stderr
    assert 'raise ValueError(f"bad value {x}")' in result.stderr


def test_map_bad_json_line_names_the_line(jobs_dir: Path) -> None:
    (jobs_dir / "in.jsonl").write_text('1\n2\n\n{"a": \n5\n', encoding="utf-8")
    result = run_cli("map", "jobs:square", "in.jsonl", "-o", "out.jsonl", cwd=jobs_dir)
    assert result.returncode == EXIT_FAILURE
    assert "in.jsonl line 4: not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (jobs_dir / "out.jsonl").exists()


def test_map_on_error_skip(jobs_dir: Path) -> None:
    write_lines(jobs_dir / "in.jsonl", list(range(10)))
    result = run_cli(
        "map", "jobs:fail_on_3_and_150", "in.jsonl", "-o", "out.jsonl", "--on-error", "skip",
        cwd=jobs_dir,
    )  # fmt: skip
    assert result.returncode == EXIT_OK, result.stderr
    assert read_lines(jobs_dir / "out.jsonl") == [v + 1 for v in range(10) if v != 3]
    assert "1 of 10 items failed and were skipped" in result.stderr
    assert "line 4: ValueError: bad value 3" in result.stderr


def test_map_on_error_collect_writes_error_records(jobs_dir: Path) -> None:
    write_lines(jobs_dir / "in.jsonl", [1, 3, 5])
    result = run_cli(
        "map", "jobs:fail_on_3_and_150", "in.jsonl", "-o", "out.jsonl", "--on-error", "collect",
        cwd=jobs_dir,
    )  # fmt: skip
    assert result.returncode == EXIT_OK, result.stderr
    assert read_lines(jobs_dir / "out.jsonl") == [
        2,
        {"error": {"type": "ValueError", "message": "bad value 3", "line": 2}},
        6,
    ]


def test_map_worker_crash_is_reported(jobs_dir: Path) -> None:
    write_lines(jobs_dir / "in.jsonl", [1, 2, 3])
    result = run_cli(
        "map", "jobs:crash_on_2", "in.jsonl", "-o", "out.jsonl", "--retries", "1", cwd=jobs_dir
    )
    assert result.returncode == EXIT_FAILURE
    assert "line 2" in result.stderr and "exit" in result.stderr
    assert not (jobs_dir / "out.jsonl").exists()


def test_map_timeout_stops_a_hung_item(jobs_dir: Path) -> None:
    write_lines(jobs_dir / "in.jsonl", [0, 1, 2])
    result = run_cli(
        "map", "jobs:hang_on_1", "in.jsonl", "-o", "out.jsonl", "--timeout", "0.5", cwd=jobs_dir,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == EXIT_FAILURE
    assert "line 2" in result.stderr and "timeout" in result.stderr
    assert not (jobs_dir / "out.jsonl").exists()


def test_map_stdin_to_stdout(jobs_dir: Path) -> None:
    result = run_cli("map", "jobs:shout", "-", "-o", "-", cwd=jobs_dir, stdin='"a"\n"é"\n')
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout.splitlines() == ['"A!"', '"É!"']


def test_map_unknown_function_is_a_usage_error(jobs_dir: Path) -> None:
    write_lines(jobs_dir / "in.jsonl", [1])
    for spec, message in [
        ("jobs:nope", "has no attribute 'nope'"),
        ("nomodule:fn", "cannot import module 'nomodule'"),
        ("jobs", "expected MODULE:FN"),
        ("jobs:NOT_CALLABLE", "not a function"),
    ]:
        result = run_cli("map", spec, "in.jsonl", "-o", "out.jsonl", cwd=jobs_dir)
        assert result.returncode == EXIT_USAGE, spec
        assert message in result.stderr, spec


# -- map: in-process, one worker (inline), streams injected --------------------------------------

ONE = ("--workers", "1")  # in this process: the inline backend, no worker processes


def test_map_in_process(jobs_module: str, tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", ["x", "ü"])
    code, out, err = call("map", f"{jobs_module}:shout", "in.jsonl", "-o", "-", *ONE)
    assert (code, err) == (EXIT_OK, "")
    assert out == '"X!"\n"Ü!"\n'


def test_map_result_that_is_not_json(jobs_module: str, tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [1])
    for fn in ("not_json", "nan"):
        code, _, err = call("map", f"{jobs_module}:{fn}", "in.jsonl", "-o", "out.jsonl", *ONE)
        assert code == EXIT_FAILURE
        assert "line 1: the result cannot be written as JSON" in err
        assert not (tmp_path / "out.jsonl").exists()


def test_map_options_the_engine_refuses(jobs_module: str, tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", ["a"])
    code, _, err = call(
        "map", f"{jobs_module}:shout", "in.jsonl", "-o", "out.jsonl", "--backend", "threads",
        "--timeout", "1",
    )  # fmt: skip
    assert code == EXIT_USAGE
    assert "timeout= needs a backend that can stop a running task" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_map_missing_input(jobs_module: str, tmp_path: Path) -> None:
    code, _, err = call("map", f"{jobs_module}:shout", "missing.jsonl", "-o", "out.jsonl", *ONE)
    assert code == EXIT_FAILURE
    assert "cannot open missing.jsonl" in err


def test_map_output_directory_missing(jobs_module: str, tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", ["a"])
    code, _, err = call("map", f"{jobs_module}:shout", "in.jsonl", "-o", "no/such/out.jsonl", *ONE)
    assert code == EXIT_FAILURE
    assert "cannot open no/such/out.jsonl" in err


def test_map_binary_input_names_the_line(jobs_module: str, tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(b'"a"\n"\xff\xfe"\n')
    code, _, err = call("map", f"{jobs_module}:shout", "in.jsonl", "-o", "out.jsonl", *ONE)
    assert code == EXIT_FAILURE
    assert "line 2" in err and "UTF-8" in err


# -- atomic_output -------------------------------------------------------------------------------


def test_atomic_output_commits_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_output(str(target)) as f:
            f.write("half")
            raise RuntimeError("stop")
    assert files_in(tmp_path) == set()
    with atomic_output(str(target)) as f:
        f.write("whole\n")
    assert target.read_text() == "whole\n"
    assert files_in(tmp_path) == {"out.txt"}
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_output_keeps_an_existing_files_mode(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    target.chmod(0o640)
    with atomic_output(str(target)) as f:
        f.write("new")
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o640


# -- demo ----------------------------------------------------------------------------------------


def test_demo_quick_end_to_end(tmp_path: Path) -> None:
    result = run_cli("demo", "--quick", "--workers", "2", cwd=tmp_path, timeout=150)
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    out = result.stdout
    assert "FAIL" not in out
    sections, _ = demo_package.available_sections()
    assert f"[{len(sections)}/{len(sections)}]" in out
    assert out.count("check     OK") >= 2 * len(sections)
    assert "all parallel results verified" in out
    assert "speedup" in out and "efficiency" in out
    assert "recall 100%" in out
    assert "process backend" in out


def test_demo_in_process_one_worker() -> None:
    out = io.StringIO()
    sections = [demo_package.NearDuplicates()]
    reports = run_demo(items=20, workers=1, out=out, sections=sections)
    assert [r.verified for r in reports] == [True]
    text = out.getvalue()
    assert "process backend" in text  # one worker is still a worker process (issue 15)
    assert "map(minhash_signature)" in text
    assert "map_reduce(shingle_sketch)" in text


class _FakeSection:
    """Takes 4 fake seconds serially and 2 in parallel, and passes or fails its check."""

    name = "fake"
    title = "A fake section"

    def __init__(self, passes: bool) -> None:
        self.passes = passes

    def run(self, ctx: DemoContext) -> SectionReport:
        report = SectionReport(self.name, self.title)
        report.steps = [Step("map(fake)", 100, 4.0, 2.0, ctx.workers)]
        report.checks = [("fake results agree", self.passes)]
        report.findings = ["nothing to see"]
        report.pool = ctx.meter().figures(2.0)
        return report


def test_demo_table_from_an_injected_clock() -> None:
    ticks = iter(range(1000))
    out = io.StringIO()
    reports = run_demo(
        workers=1, sections=[_FakeSection(True)], out=out, clock=lambda: float(next(ticks))
    )
    assert reports[0].verified
    text = out.getvalue()
    row = next(line for line in text.splitlines() if "map(fake)" in line)
    assert row.split()[1:] == ["100", "4.00", "s", "2.00", "s", "2.00x", "200%", "50"]
    assert "pool start-up 1.00 s" in text
    assert "overall speedup 2.00x on 1 worker(s)" in text


def test_demo_exits_1_when_a_check_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_package, "SECTIONS", [_FakeSection(False)])
    code, out, _ = call("demo", "--workers", "1")
    assert code == EXIT_FAILURE
    assert "FAIL fake results agree" in out
    assert "VERIFICATION FAILED in: fake" in out


def test_demo_kernels_find_planted_duplicates() -> None:
    corpus = make_corpus(60, seed=7)
    signatures = [minhash_signature(d) for d in corpus.documents]
    assert near_duplicates(signatures) == corpus.duplicate_pairs() != set()
    assert make_corpus(60, seed=7) == corpus  # generated data is reproducible
    exact = len(set().union(*(shingle_hashes(d) for d in corpus.documents)))
    sketch = EMPTY_SKETCH
    for document in corpus.documents:
        sketch = merge_sketches(sketch, shingle_sketch(document))
    assert abs(estimate_distinct(sketch) - exact) / exact < 0.1
