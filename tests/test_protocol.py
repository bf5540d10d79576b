"""The caller <-> worker protocol (backends/protocol.py): records read by name, kinds and reasons
as Enums, and plain values on the wire (an Enum member or a NamedTuple would pickle as a call to
its class, several times slower)."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest

import forkjoin as fj
from forkjoin.backends import protocol
from forkjoin.backends.protocol import (
    Descriptor,
    Msg,
    Reply,
    ResultEntry,
    is_inline,
    segment_id_of,
    view,
)

pytestmark = pytest.mark.timeout(60)

BACKENDS = Path(fj.__file__).parent / "backends"
WIRE_ENUMS = {"Msg", "Reply", "ZygoteMsg", "RemoteKind"}  # Command, KillReason stay in-process


def test_a_record_reads_a_plain_tuple_by_name_without_copying_it():
    raw = pickle.loads(pickle.dumps((7, Reply.DONE.value, 1.0, 2.0, (b"x",), [])))
    entry = view(ResultEntry, raw)
    assert entry == raw and type(entry) is ResultEntry
    assert entry.task_id == 7 and entry.status == Reply.DONE and entry.values == (b"x",)


def test_kinds_compare_equal_to_their_wire_values():
    for enum in (protocol.Msg, protocol.Reply, protocol.ZygoteMsg, protocol.RemoteKind):
        for member in enum:
            value = pickle.loads(pickle.dumps(member.value))
            assert type(value) is str and value == member and {member: 1}[value] == 1


def test_descriptors():
    assert is_inline((b"stream",))
    segment = (None, ((0, 8),), (8, 4), 4096, 12, 0)
    assert not is_inline(segment)
    assert segment_id_of(segment) == view(Descriptor, segment).segment_id == 12


def wire_enum_members_in_tuples(path: Path) -> list[str]:
    """``(Msg.X, ...)``-like tuples: an Enum member put on the wire instead of its value."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Tuple):
            continue
        for element in node.elts:
            if (
                isinstance(element, ast.Attribute)
                and isinstance(element.value, ast.Name)
                and element.value.id in WIRE_ENUMS
            ):
                found.append(f"{path.name}:{element.lineno} {element.value.id}.{element.attr}")
    return found


def test_senders_put_plain_values_on_the_wire():
    found = [
        hit for path in sorted(BACKENDS.glob("*.py")) for hit in wire_enum_members_in_tuples(path)
    ]
    assert not found, f"send .value, not the member: {found}"


def test_the_scan_finds_a_member_on_the_wire(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("send((Msg.TASKS, specs))\nsend((Msg.TASKS.value, specs))\n")
    assert wire_enum_members_in_tuples(sample) == ["sample.py:1 Msg.TASKS"]


def test_every_message_a_worker_reads_has_a_record():
    records = {
        cls.__name__
        for cls in vars(protocol).values()
        if isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")
    }
    assert {"Init", "Tasks", "TaskSpec", "Results", "ResultEntry", "MayRun", "MayRunAnswer",
            "Release", "Unmap", "Forget", "DropFunction", "Stop", "Ready", "InitError",
            "Descriptor", "SharedEntry", "RemoteReply", "Spawn", "Spawned", "Exited",
            "Import"} <= records  # fmt: skip
    # a record whose first field is a kind names it in a comment: one per Msg member
    source = Path(protocol.__file__).read_text()
    for member in Msg:
        assert f"# Msg.{member.name}" in source, member


def test_a_task_spec_round_trips_through_a_real_worker():
    # the sender builds TaskSpec positionally (process_dispatch._encode); a wrong order or
    # count would fail every task, so one real call on each side of the wire is the check
    with fj.Pool(workers=1) as pool:
        assert pool.map_list(abs, [-1, -2, -3], chunksize=2) == [1, 2, 3]
