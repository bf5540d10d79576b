"""The messages between the caller and its workers, in one place: kinds, records, reasons.

The process backend, one worker (time flows down; ``──sock──>`` is the worker's socket, a
``socketpair`` end, framed by ``wire.py``; ``[fds]`` ride along with a frame as SCM_RIGHTS)::

    caller: manager thread                                          worker process
    ──────────────────────                                          ──────────────
    the zygote forks the worker (ZygoteMsg.SPAWN, process_zygote.py), handing it three fds:
      its socket end · the watchdog pipe's read end · the "current task" slot (a memfd)
    Init ─────────────────────sock──[initializer, fj.shared segments]──>  runs the initializer
                                           <──sock── Ready               (or InitError; exit 3)
    Tasks([TaskSpec...], [SharedEntry...])
         ─────────────────────sock──[argument, function, fj.shared segments]──> inbox
                                                   each task: slot <- (task id, seq), then runs
                                           <──sock── MayRun(seq)   a task that waited long asks
    MayRunAnswer(seq, refused) ──sock──>           ...for it and every task queued behind it (up
                                                   to seq): which were given to another worker
                                           <──sock── Results([ResultEntry...], peak RSS, released)
                                                     [result segments]  batched every ~2 ms; a
                                                     streaming chunk sends Reply.PARTIAL entries
    Release(segment ids)  ──sock──>   result segments the caller let go of: reuse them
    Unmap(segment ids)    ──sock──>   argument segments the caller closed: stop mapping them
    Forget(shared ids)    ──sock──>   fj.shared objects gone in the caller
    DropFunction(key)     ──sock──>   a function carrying large data is done with
    Stop                  ──sock──>   exits 0 (a shutdown, or a retired worker)
    SIGTERM, then SIGKILL (KillReason: timeout, memory, cancelled, shutdown...)
    worker death: pidfd readable; the caller reads the slot memfd to blame the task it ran
    caller death: the watchdog pipe's last write end closes; the worker kills its process group

Inside the caller, other threads reach the manager only through ``Command`` entries on its
command deque (and a byte on the wake pipe); see process.py.

The wire carries plain tuples in each record's field order, with the kind's string value first:
a NamedTuple or an Enum member pickles as a call to its class, several times slower than a
tuple of strings and numbers. So a sender builds the tuple in the order the record lists (one
place states it), and a receiver reads it through ``view(Record, raw)``: the same tuple, with
names, for the cost of one C call.
"""

from __future__ import annotations

from enum import Enum
from operator import itemgetter
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

# -- kinds and reasons -----------------------------------------------------------------------------


class Msg(str, Enum):
    """The first field of every message on a worker's socket (its value travels)."""

    INIT = "init"  # caller -> worker, once
    TASKS = "tasks"
    MAY_RUN = "may run"  # both ways: the worker's question, the caller's answer
    RELEASE = "release"
    UNMAP = "unmap"
    FORGET = "forget"
    DROP_FUNCTION = "drop function"
    STOP = "stop"
    READY = "ready"  # worker -> caller
    INIT_ERROR = "init_error"
    RESULTS = "results"


class Reply(str, Enum):
    """How a task ended in the worker: ``ResultEntry.status``."""

    DONE = "done"  # values: the results (a Descriptor); failures: records of items that raised
    PARTIAL = "partial"  # the results of a streaming chunk's next items; the task still runs
    UNREADABLE_FUNCTION = "unreadable function"  # values: the message
    UNREADABLE_ARGUMENT = "unreadable argument"


class Command(Enum):
    """What another caller thread asks of the manager thread (in-process: never pickled)."""

    CANCEL = "cancel"  # (grace seconds, task ids): stop these now, or after the grace
    RELEASE = "release"  # (worker id, segment id): a result segment's last view is gone
    FORGET = "forget"  # shared id: an fj.shared handle was garbage-collected
    UNMAP = "unmap"  # segment id: an argument segment was closed
    DROP_FUNCTION = "drop function"  # function key: its large captured data is done with


class KillReason(str, Enum):
    """Why the caller stopped a worker (``WorkerHandle.kill_reason``); None: it died itself."""

    TIMEOUT = "timeout"  # its task ran past timeout=
    MEMORY = "memory"  # it outgrew memory_limit= while running a task
    RECYCLE = "recycle"  # it holds memory_limit= between tasks: replaced
    CANCELLED = "cancelled"  # its tasks were cancelled (or abandoned past their grace)
    SHUTDOWN = "shutdown"  # the pool shut down
    RETIRED = "retired"  # it ran max_tasks_per_child= tasks
    BROKEN = "broken"  # the pool is broken: every worker goes


class ZygoteMsg(str, Enum):
    """The caller <-> zygote control socket (process_zygote.py)."""

    IMPORT = "import"  # (modules, sys.path): import these before the next fork
    SPAWN = "spawn"  # (cwd, env) [the worker's three fds]: fork a worker
    SPAWNED = "spawned"  # (pid)
    EXITED = "exited"  # (pid, exit code, peak RSS): a worker was reaped
    IMPORTED = "imported"  # (): the last Import is done (the caller waits longer until then)


class RemoteKind(str, Enum):
    """How a task ended on a cluster engine's worker (remote_task.py -> cluster.py)."""

    DONE = "done"
    TIMEOUT = "timeout"
    EXIT = "exit"  # the task called sys.exit
    UNREADABLE = "unreadable"  # a Spark host could not unpickle the call, or pickle the reply


# -- records: caller -> worker ---------------------------------------------------------------------


class Descriptor(NamedTuple):
    """An object pickled by ``buffers.pack`` whose buffers live in a shared-memory segment. One
    that fits in the message is the 1-tuple ``(stream,)`` instead (see ``is_inline``)."""

    stream: bytes | None  # the pickle stream, or None when it lives in the segment too
    spans: tuple[tuple[int, int], ...]  # (offset, length) of each out-of-band buffer
    stream_span: tuple[int, int] | None  # where the stream lies in the segment, if there
    size: int  # the segment's size
    segment_id: int  # a pooled segment's id (the receiver reports it released), else 0
    fd_index: int  # which of the frame's fds is the segment


def is_inline(descriptor: tuple[Any, ...]) -> bool:
    """True for ``(stream,)``: no segment, nothing to map."""
    return len(descriptor) == 1


# Descriptor.segment_id of a raw descriptor, read per task without building the record.
segment_id_of = itemgetter(Descriptor._fields.index("segment_id"))


class SharedEntry(NamedTuple):
    """An fj.shared object a worker receives once, before the first task that uses it."""

    shared_id: int
    descriptor: tuple[Any, ...]


class Init(NamedTuple):
    kind: str  # Msg.INIT
    worker_id: int
    sys_path: list[str]
    depth: int  # nesting depth of pools (FORKJOIN_WORKER_DEPTH)
    initializer: tuple[Any, ...] | None  # descriptor of (initializer, initargs)
    shared: list[SharedEntry]
    device: str  # what the slot's worker sees ("cpu", "cuda:0")
    gpus: list[int]
    authkey: bytes  # multiprocessing's, so Manager proxies authenticate


class TaskSpec(NamedTuple):
    """One task, as a worker receives it in a Tasks message."""

    task_id: int
    fn_key: int  # the function's key in the worker's cache (a mirror of it is kept here)
    function: tuple[Any, ...] | None  # its descriptor, the first time this worker gets it
    kind: int  # CallKind: how items are passed to the function
    arguments: tuple[Any, ...]  # descriptor of the items
    first_index: int  # the first item's index in the call
    seed: int | None
    seq: int  # dispatch sequence number (the slot records the last one started)
    sent_at: float  # when it was sent (a long wait means: ask MayRun first)
    stream: bool  # send partial results while it runs (the job has seen a worker die)


class Tasks(NamedTuple):
    kind: str  # Msg.TASKS
    specs: list[TaskSpec]
    shared: list[SharedEntry]  # fj.shared objects the tasks use that the worker lacks


class MayRunAnswer(NamedTuple):
    kind: str  # Msg.MAY_RUN
    seq: int  # the question's: the caller takes back no task up to it from now on
    refused: list[int]  # the tasks up to ``seq`` that were given to another worker meanwhile


class Release(NamedTuple):
    kind: str  # Msg.RELEASE
    segment_ids: list[int]


class Unmap(NamedTuple):
    kind: str  # Msg.UNMAP
    segment_ids: list[int]


class Forget(NamedTuple):
    kind: str  # Msg.FORGET
    shared_ids: list[int]


class DropFunction(NamedTuple):
    kind: str  # Msg.DROP_FUNCTION
    fn_key: int


class Stop(NamedTuple):
    kind: str  # Msg.STOP


# -- records: worker -> caller ---------------------------------------------------------------------


class Ready(NamedTuple):
    kind: str  # Msg.READY
    pid: int


class InitError(NamedTuple):
    kind: str  # Msg.INIT_ERROR
    summary: str  # "TypeName: message"
    traceback: str


class MayRun(NamedTuple):
    kind: str  # Msg.MAY_RUN
    seq: int  # the newest task this worker holds: the question covers every one up to it


class ResultEntry(NamedTuple):
    task_id: int
    status: str  # a Reply
    start: float  # when the task started, the worker's monotonic clock (shared on one host)
    end: float
    values: Any  # Reply.DONE/PARTIAL: a descriptor of the values; else the error message
    failures: list[tuple[Any, ...]]  # failures.py records: (position, ...) of items that raised


class Results(NamedTuple):
    kind: str  # Msg.RESULTS
    entries: list[ResultEntry]
    peak_rss: int  # the worker's peak RSS so far, bytes
    released: list[int]  # argument segments whose last view in the worker is gone


# -- records: caller <-> zygote (process_zygote.py) -----------------------------------------------


class Import(NamedTuple):
    kind: str  # ZygoteMsg.IMPORT
    modules: list[str]
    sys_path: list[str]


class Spawn(NamedTuple):
    """[fds: the worker's socket end, its slot memfd if any]"""

    kind: str  # ZygoteMsg.SPAWN
    cwd: str
    env_id: int  # the worker's environment, sent once per id (process_zygote.py)
    env: dict[str, str] | None  # None: as sent before under env_id


class Spawned(NamedTuple):
    kind: str  # ZygoteMsg.SPAWNED
    pid: int


class Exited(NamedTuple):
    kind: str  # ZygoteMsg.EXITED
    pid: int
    exitcode: int
    peak_rss: int


# -- records: cluster engines (remote_task.py -> cluster.py) ---------------------------------------


class RemoteReply(NamedTuple):
    """A cluster task's reply (always all five fields): ``detail`` is the run's seconds (DONE,
    TIMEOUT), the exit code (EXIT) or the error message (UNREADABLE); ``values`` and
    ``failures`` are None but for DONE."""

    kind: str  # a RemoteKind
    pid: int
    detail: Any
    values: list[Any] | None
    failures: list[tuple[Any, ...]] | None


R = TypeVar("R", bound=tuple)  # type: ignore[type-arg]


def view(record: type[R], raw: tuple[Any, ...]) -> R:
    """``raw``, a tuple received from the wire, read as ``record`` (by field name)."""
    return tuple.__new__(record, raw)


if not TYPE_CHECKING:
    view = tuple.__new__  # the same, as one C call: it runs for every task on both sides
