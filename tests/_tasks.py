"""Task functions and payload objects that run in forkjoin workers.

They live in an importable module (not in a test file, not in ``__main__``) so that they travel
by reference, the way most user code does; tests that need the by-value path use lambdas and
closures instead. Workers receive the caller's ``sys.path``, so ``import _tasks`` works there.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import sys
import threading
import time

import forkjoin as fj

# -- plain tasks ---------------------------------------------------------------------------------


def square(x):
    return x * x


def add(a, b):
    return a + b


def identity(x):
    return x


def pid_of(_=None):
    return os.getpid()


def sleep_then_square(x, seconds=0.05):
    time.sleep(seconds)
    return x * x


def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


def sleep_then_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def slow_square_reverse(x):
    """Later items finish first (as long as they run concurrently)."""
    time.sleep(0.02 * (5 - x % 5))
    return x * x


def fail_on(x, bad=(3,)):
    if x in bad:
        raise ValueError(f"bad item {x}")
    return x


def fail_on_three(x):
    return fail_on(x)


def raise_key_error(x):
    raise KeyError(x)


def env_var(name):
    return os.environ.get(name)


def draw_numbers(_item):
    """Random numbers from every source forkjoin seeds per item."""
    return (
        [int(v) for v in fj.rng().integers(0, 2**31, size=3)],
        random.random(),
    )


def rng_outside_task(_item):
    try:
        fj.rng()
    except RuntimeError as exc:
        return str(exc)
    return "no error"


def nested_map(x):
    """A task that itself uses forkjoin; reports where the inner call ran."""
    inner = fj.map(square, range(x), workers=2)
    return sum(inner), os.getpid(), os.environ.get("FORKJOIN_WORKER_DEPTH")


def nested_process_map(x):
    """A task that explicitly asks for a process pool inside a worker."""
    inner = fj.map(square, range(x), workers=2, backend="process")
    return sum(inner)


def deeply_nested_process_map(x):
    """Worker -> explicit process pool -> explicit process pool: must be refused, not a bomb."""
    return fj.map(nested_process_map, [x], workers=1, backend="process")[0]


def set_marker(value):
    os.environ["FORKJOIN_TEST_MARKER"] = value


def read_marker(_=None):
    return os.environ.get("FORKJOIN_TEST_MARKER")


def big_bytes(nbytes):
    return b"x" * nbytes


def length(data):
    return len(data)


# -- flaky tasks (state kept in files, so it survives across worker processes) --------------------


def _count_call(path):
    """How many times this was called before, across worker processes (a file of x's)."""
    with open(path, "a+") as f:
        f.seek(0)
        count = len(f.read())
        f.write("x")
    return count


def fail_first_times(path_and_times):
    """Raise ConnectionError the first ``times`` calls (counted in a file), then succeed."""
    path, times = path_and_times
    count = _count_call(path)
    if count < times:
        raise ConnectionError(f"transient failure {count}")
    return count


def crash_first_times(path_and_times):
    """Kill the worker the first ``times`` calls (counted in a file), then succeed."""
    path, times = path_and_times
    count = _count_call(path)
    if count < times:
        os._exit(7)
    return count


# -- ways to die ---------------------------------------------------------------------------------


def segfault():
    ctypes.string_at(0)


def exit0():
    os._exit(0)


def exit1():
    os._exit(1)


def sys_exit():
    sys.exit(0)


def sigkill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def raise_error():
    raise RuntimeError("raised while (un)pickling")


CRASHES = {
    "segfault": segfault,
    "os._exit(0)": exit0,
    "os._exit(1)": exit1,
    "sys.exit(0)": sys_exit,
    "SIGKILL": sigkill_self,
}


def crash(how: str):
    """Die now, in the way named by ``how`` (a key of CRASHES)."""
    CRASHES[how]()


def crash_task(how, _item=None):
    crash(how)
    return "survived"


def crash_on(x, bad=3, how="os._exit(1)"):
    if x == bad:
        crash(how)
    return x


def crash_on_three(x):
    return crash_on(x)


def crash_always(_x):
    os._exit(9)


class CrashOnUnpickle:
    """Pickles fine in the caller; unpickling it in the worker runs ``crash(how)``."""

    def __init__(self, how):
        self.how = how

    def __reduce__(self):
        return (crash, (self.how,))


class CrashOnPickle:
    """Returned by a task: pickling the result in the worker runs ``crash(how)``."""

    def __init__(self, how):
        self.how = how

    def __reduce__(self):
        crash(self.how)
        return (CrashOnPickle, (self.how,))


def return_crash_on_pickle(how):
    return CrashOnPickle(how)


def call_with_arg(arg):
    """The argument's unpickling is the interesting part; the call itself is harmless."""
    return "called"


# -- (un)pickling failures -----------------------------------------------------------------------


class Unpicklable:
    """Fails to pickle anywhere (like an object holding a lock or a socket)."""

    def __init__(self, tag=None):
        self.tag = tag

    def __reduce__(self):
        raise TypeError(f"cannot pickle Unpicklable({self.tag!r})")


def _refuse_to_load(tag):
    raise ValueError(f"refusing to unpickle {tag!r}")


class FailsToUnpickle:
    """Pickles fine; unpickling raises ValueError (in the worker, or in the caller)."""

    def __init__(self, tag=None):
        self.tag = tag

    def __reduce__(self):
        return (_refuse_to_load, (self.tag,))


def return_unpicklable(x):
    if x == 2:
        return Unpicklable(x)
    return x


def return_fails_to_unpickle(x):
    if x == 2:
        return FailsToUnpickle(x)
    return x


class LockedError(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


def raise_locked_error(x):
    raise LockedError(f"locked failure on {x}")


def count_kind(items):
    return len(items)


# -- signals, timeouts ---------------------------------------------------------------------------


def ignore_sigterm_and_hang(seconds):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)
    return "finished"


def _sigkill_then_wait(pid, seconds):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    time.sleep(seconds)
    return os.getpid()


def kill_pid(pid):
    """Used by the workers-kill-each-other test."""
    return _sigkill_then_wait(pid, 0.05)


def kill_random_sibling(sibling_pids):
    """Kill another worker of this pool (and maybe this one)."""
    return _sigkill_then_wait(random.choice(sibling_pids), 0.01)


def sleep_then_crash_on(args):
    x, bad, seconds = args
    if x == bad:
        time.sleep(seconds)
        os._exit(5)
    return x


def kill_after_reading(data):
    """Receives a big payload; dies mid-task with a big payload also on its way back."""
    os.kill(os.getpid(), signal.SIGKILL)
    return data


def write_pid_and_sleep(path_and_seconds):
    """Announce this worker's pid in a file, then sleep (so a test can kill it mid-task)."""
    path, seconds = path_and_seconds
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, path)
    time.sleep(seconds)
    return os.getpid()


def hang_first_time(args):
    """Item ``x``: times ten; the item equal to ``hang`` hangs the first time it runs (it writes
    its pid to ``pid_path`` first), and returns normally when run again."""
    x, hang, pid_path = args
    if x == hang and not os.path.exists(pid_path):
        write_pid_and_sleep((pid_path, 60))
    return x * 10


def sleep_then_square_or_fail(x):
    """Items 0-2 take 0.5 s; item 3 fails at once."""
    if x == 3:
        raise ValueError("item 3 fails fast")
    time.sleep(0.5)
    return x * x


def nested_pids(x):
    """Inner ``fj.map`` with no backend named: runs inline inside a worker."""
    inner = fj.map(pid_of, range(4), workers=2)
    return os.getpid(), inner, os.environ.get("FORKJOIN_WORKER_DEPTH")


def worker_identity(_=None):
    return os.getpid(), os.getsid(0), os.getpgid(0), os.environ.get("FORKJOIN_WORKER_DEPTH")


# -- worker context ------------------------------------------------------------------------------


def load_model_into_worker_state(name: str) -> None:
    """A pool initializer: the expensive load happens once per worker."""
    context = fj.worker_context()
    context.state["model"] = name
    context.state["loads"] = context.state.get("loads", 0) + 1


def use_worker_state(x: int) -> tuple[int, int, str, int, int]:
    context = fj.worker_context()
    context.state["tasks"] = context.state.get("tasks", 0) + 1
    return (context.worker_id, context.pid, context.state["model"], context.state["loads"], x)


def use_worker_state_or_none(_: int) -> int:
    return fj.worker_context().worker_id


# -- memory limit --------------------------------------------------------------------------------

_HOARD: list[bytearray] = []


def allocate_mib(mib: int) -> int:
    """Touch ``mib`` MiB for a moment (pages really resident), then free them; returns mib."""
    block = bytearray(mib * 2**20)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    import time

    time.sleep(0.3)  # long enough for the pool's memory check to see it
    return mib


def hoard_mib_after_returning(mib: int) -> int:
    """Return at once; 0.2 s later a thread makes ``mib`` MiB resident and keeps it (a leak that
    grows while the worker is idle, between tasks)."""
    import threading
    import time

    def leak() -> None:
        time.sleep(0.2)
        block = bytearray(mib * 2**20)
        for offset in range(0, len(block), 4096):
            block[offset] = 1
        _HOARD.append(block)

    threading.Thread(target=leak, daemon=True).start()
    return os.getpid()


# -- exceptions that are hard to rebuild (issue 15) ----------------------------------------------


def raise_called_process_error(_x=None):
    import subprocess

    raise subprocess.CalledProcessError(1, ["false"], output=b"out")


def raise_json_decode_error(_x=None):
    import json

    json.loads("{not json")


def raise_unicode_decode_error(_x=None):
    b"\xff".decode("utf-8")


class NeedsTwoArgs(Exception):
    """A user exception whose __init__ takes required arguments and does not pass them on."""

    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def raise_needs_two_args(_x=None):
    raise NeedsTwoArgs(7, "bad")


def raise_keyboard_interrupt(_x=None):
    raise KeyboardInterrupt("from the task")


class ExitOnUnpickle:
    """Unpickling this in the caller raises SystemExit (a BaseException)."""

    def __reduce__(self):
        return (_exit_now, ())


def _exit_now():
    raise SystemExit("unpickled")


def return_exit_on_unpickle(_x=None):
    return ExitOnUnpickle()


def read_proxy(proxy):
    return proxy.get("key")


def append_to_proxy(proxy):
    proxy.append(os.getpid())
    return True


def count_then_interrupt(path):
    with open(path, "a") as f:
        f.write("x")
    raise KeyboardInterrupt("from the task")


# -- poison items for bisection (issue 21) ---------------------------------------------------------


def crash_at(x, bad=frozenset()):
    """Kills its worker on the items in ``bad`` (every time), else returns x + 1."""
    if x in bad:
        os._exit(1)
    return x + 1


def unreadable_at(x, bad=frozenset()):
    """On the items in ``bad``, a result that pickles but cannot be unpickled in the caller."""
    if x in bad:
        return FailsToUnpickle(x)
    return x + 1
