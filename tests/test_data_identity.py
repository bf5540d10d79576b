"""A sink never resumes with stale output: a rerun whose function (its closure, defaults,
partial arguments, the globals and helpers it reads, its instance's state) or in-memory input
changed is refused with what changed; where forkjoin cannot be sure, it refuses to resume and
says why. The same code in another process (another PYTHONHASHSEED) still resumes."""

from __future__ import annotations

import functools
import importlib
import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import forkjoin.data as fd
from forkjoin.data.identity import fingerprint
from forkjoin.errors import DataError

pytestmark = pytest.mark.timeout(60)

RUN = {"backend": "inline"}


def source() -> fd.Dataset:
    return fd.from_items([{"x": i} for i in range(20)], partitions=2)


def write(fn, out, **kwargs) -> list[int]:
    """Write ``source().map_batches(fn)`` to ``out`` and return the rows read back."""
    source().map_batches(fn, **kwargs).write_parquet(str(out), **RUN)
    return sorted(fd.read_parquet(str(out)).to_pandas(**RUN)["y"].tolist())


def expect_recompute_or_refusal(first, second, tmp_path, want_first, want_second, **kwargs):
    """First run writes ``want_first``; the changed function is refused (naming the changed
    operation), and with ``mode="overwrite"`` writes ``want_second``. Before the fix the second
    run resumed silently and left ``want_first`` in place."""
    out = tmp_path / "out"
    assert write(first, out, **kwargs) == want_first
    with pytest.raises(DataError, match=r"different plan.*changed: operation 1: map_batches"):
        write(second, out, **kwargs)
    source().map_batches(second, **kwargs).write_parquet(str(out), mode="overwrite", **RUN)
    assert sorted(fd.read_parquet(str(out)).to_pandas(**RUN)["y"]) == want_second


def times(k):
    return [i * k for i in range(20)]


# -- what a function's output depends on ---------------------------------------------------------


def make_scaler(k):
    def scale(batch):
        return {"y": [x * k for x in batch["x"].to_pylist()]}

    return scale


def test_closure_value(tmp_path):
    expect_recompute_or_refusal(make_scaler(1), make_scaler(100), tmp_path, times(1), times(100))


def test_lambda_closure(tmp_path):
    def lam(k):
        return lambda b: {"y": [x * k for x in b["x"].to_pylist()]}

    expect_recompute_or_refusal(lam(2), lam(3), tmp_path, times(2), times(3))


def make_defaulted(k):
    def scale(batch, k=k):  # the same code and no closure: only the default differs
        return {"y": [x * k for x in batch["x"].to_pylist()]}

    return scale


def make_kwdefaulted(k):
    def scale(batch, *, k=k):
        return {"y": [x * k for x in batch["x"].to_pylist()]}

    return scale


def test_default_value(tmp_path):
    expect_recompute_or_refusal(make_defaulted(1), make_defaulted(7), tmp_path, times(1), times(7))


def test_keyword_default_value(tmp_path):
    first, second = make_kwdefaulted(1), make_kwdefaulted(7)
    expect_recompute_or_refusal(first, second, tmp_path, times(1), times(7))


def add_table(batch, table):
    return {"y": [x + int(table[x]) for x in batch["x"].to_pylist()]}


def test_partial_arguments(tmp_path):
    # numpy prints a long array as "[0 0 0 ... 0 0 0]": a change in the middle must still count
    before = np.zeros(5000, dtype=np.int64)
    after = before.copy()
    after[7] = 1000
    want = sorted(i + (1000 if i == 7 else 0) for i in range(20))
    first, second = (
        functools.partial(add_table, table=before),
        functools.partial(add_table, table=after),
    )
    expect_recompute_or_refusal(first, second, tmp_path, times(1), want)


def test_fn_kwargs(tmp_path):
    before = np.zeros(5000, dtype=np.int64)
    after = before.copy()
    after[3] = 5
    out = tmp_path / "out"
    assert write(add_table, out, fn_kwargs={"table": before}) == times(1)
    with pytest.raises(DataError, match="different plan"):
        write(add_table, out, fn_kwargs={"table": after})


FACTOR = 1


def scale_by_global(batch):
    return {"y": [x * FACTOR for x in batch["x"].to_pylist()]}


def test_global_value(tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert write(scale_by_global, out) == times(1)
    monkeypatch.setattr(sys.modules[__name__], "FACTOR", 5)
    with pytest.raises(DataError, match=r"changed: operation 1: map_batches\(scale_by_global\)"):
        write(scale_by_global, out)


def helper(x):
    return x * 2


def uses_helper(batch):
    return {"y": [helper(x) for x in batch["x"].to_pylist()]}


def test_helper_code(tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert write(uses_helper, out) == times(2)

    def helper(x):  # same name, other code
        return x * 3

    monkeypatch.setattr(sys.modules[__name__], "helper", helper)
    with pytest.raises(DataError, match="different plan"):
        write(uses_helper, out)


def test_helper_in_another_module_edited_between_runs(tmp_path, monkeypatch):
    """The ``forkjoin process --fn udfs:clean`` case: the function is importable (cloudpickle
    would pickle it by name) and the edit is in a helper module it calls."""
    (tmp_path / "helpers_mod.py").write_text("def adjust(x):\n    return x * 2\n")
    (tmp_path / "udfs_mod.py").write_text(
        "import helpers_mod\n\ndef clean(batch):\n"
        "    return {'y': [helpers_mod.adjust(x) for x in batch['x'].to_pylist()]}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("helpers_mod", "udfs_mod"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    udfs = importlib.import_module("udfs_mod")
    out = tmp_path / "out"
    assert write(udfs.clean, out) == times(2)
    (tmp_path / "helpers_mod.py").write_text("def adjust(x):\n    return x * 4\n")
    importlib.reload(sys.modules["helpers_mod"])
    with pytest.raises(DataError, match=r"changed: operation 1: map_batches\(clean\)"):
        write(udfs.clean, out)


class Scaler:
    """A callable UDF object: its instance state and its class's code decide its output."""

    offset = 0

    def __init__(self, k):
        self.k = k

    def __call__(self, batch):
        return {"y": [x * self.k + self.offset for x in batch["x"].to_pylist()]}


def test_callable_instance_state(tmp_path):
    expect_recompute_or_refusal(Scaler(1), Scaler(9), tmp_path, times(1), times(9))


def test_callable_class_attribute(tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert write(Scaler(1), out) == times(1)
    monkeypatch.setattr(Scaler, "offset", 1)
    with pytest.raises(DataError, match="different plan"):
        write(Scaler(1), out)


def test_in_memory_input_values(tmp_path):
    """Same row count and byte size, other values: before, only those two were in the key."""
    out = tmp_path / "out"
    fd.from_items([{"y": i} for i in range(20)]).write_parquet(str(out), **RUN)
    with pytest.raises(DataError, match=r"different plan.*changed: input"):
        fd.from_items([{"y": i + 1} for i in range(20)]).write_parquet(str(out), **RUN)


# -- where it cannot be sure: refuse to resume, say why ------------------------------------------

LOCK = threading.Lock()


def locked_double(batch):
    with LOCK:
        return {"y": [x * 2 for x in batch["x"].to_pylist()]}


def test_unsure_identity_refuses_to_resume_and_says_why(tmp_path):
    out = tmp_path / "out"
    assert write(locked_double, out) == times(2)  # a new directory: written
    assert json.loads((out / "_manifest.json").read_text())["unsure"]
    with pytest.raises(DataError) as caught:
        write(locked_double, out)
    message = str(caught.value)
    assert "refusing to resume" in message and "global 'LOCK'" in message
    assert "_thread.lock" in message and "mode='overwrite'" in message
    source().map_batches(locked_double).write_parquet(str(out), mode="overwrite", **RUN)
    assert sorted(fd.read_parquet(str(out)).to_pandas(**RUN)["y"]) == times(2)


class Tokened:
    """A value forkjoin cannot walk, made identifiable by its owner."""

    def __init__(self, version):
        self.version = version
        self.lock = threading.Lock()

    def __forkjoin_token__(self):
        return self.version


class BrokenToken:
    def __forkjoin_token__(self):
        raise RuntimeError("no token today")


def test_a_value_whose_own_code_fails_makes_the_plan_unsure_not_the_write_fail():
    (reason,) = fingerprint({"k": BrokenToken()}, "config").unsure
    assert reason.startswith("config: fingerprinting a BrokenToken failed") and "no token" in reason


def test_forkjoin_token_vouches_for_an_unwalkable_value():
    assert fingerprint(Tokened(1)).unsure == ()
    assert fingerprint(Tokened(1)).digest == fingerprint(Tokened(1)).digest
    assert fingerprint(Tokened(1)).digest != fingerprint(Tokened(2)).digest
    assert "cannot be fingerprinted" in fingerprint(threading.Lock()).unsure[0]


def nested_forkjoin(batch):
    import forkjoin as fj

    return {"y": fj.map(abs, batch["x"].to_pylist(), backend="inline")}


def test_forkjoin_itself_is_a_library_not_walked():
    """Even from a checkout: walking its internals would meet locks and call every plan that
    uses forkjoin inside a UDF unsure."""
    found = fingerprint(nested_forkjoin)
    assert found.unsure == ()


# -- what must not change it ---------------------------------------------------------------------

PROBE = textwrap.dedent(
    """
    {pad}import sys
    sys.path.insert(0, {tests!r})
    from forkjoin.data.identity import fingerprint
    import dataclasses
    import pandas as pd
    import torch
    from test_data_identity import Scaler
    WORDS = {{"alpha", "beta", "gamma", "delta"}}
    TABLE = {{"b": 2, "a": 1}}
    FRAME = pd.DataFrame({{"s": ["a", None], "c": pd.Categorical(["u", "v"])}})
    torch.manual_seed(0)
    MODEL = torch.nn.Linear(3, 2)  # a tensor's own pickle differs between runs

    @dataclasses.dataclass
    class Config:
        tags: frozenset = frozenset({{"p", "q"}})

    def clean(batch, *, keep=frozenset({{"x", "y", "z"}})):
        names = [n for n in batch if n in keep and n not in WORDS]
        return {{n: TABLE.get(n) for n in names}}

    found = fingerprint([clean, Scaler(3), WORDS, FRAME, MODEL, Config()])
    print(found.digest, found.unsure)
    """
)


def test_same_code_same_identity_in_other_processes(tmp_path):
    """Hash randomisation (set order), another process, and the function moved down its file
    leave the identity unchanged, so a rerun resumes instead of refusing."""
    tests = os.path.dirname(__file__)
    probes = []
    for seed, pad in (("1", ""), ("2", "\n\n\n")):  # both at once: each imports torch
        script = tmp_path / f"probe{seed}.py"
        script.write_text(PROBE.format(pad=pad, tests=tests))
        env = {**os.environ, "PYTHONHASHSEED": seed}
        probes.append(subprocess.Popen([sys.executable, str(script)], env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
    digests = set()
    for probe in probes:
        try:
            out, err = probe.communicate(timeout=60)
        finally:
            probe.kill()
        assert probe.returncode == 0, err
        digests.add(out.strip())
    assert len(digests) == 1, digests
    assert digests.pop().endswith(" ()")  # and sure of it


def test_unchanged_plan_resumes(tmp_path):
    out = tmp_path / "out"
    write(make_scaler(3), out)
    again = source().map_batches(make_scaler(3)).write_parquet(str(out), **RUN)
    assert again.files_written == 0  # everything was committed: nothing recomputed
