"""Faults: a task that raises, a worker that dies, a task that hangs; nothing else is lost.

Run:  python examples/faults.py
"""

from __future__ import annotations

import os
import signal
import time

import forkjoin as fj


def flaky(x: int) -> int:
    if x == 3:
        raise ValueError(f"cannot handle {x}")
    if x == 5:
        os.kill(os.getpid(), signal.SIGKILL)  # as if the OOM killer struck
    if x == 7:
        time.sleep(60)  # a hang
    return x * x


def main() -> None:
    results = fj.map(flaky, range(10), on_error="collect", timeout=2, retries=1)
    for index, value in enumerate(results):
        kind = type(value).__name__ if isinstance(value, Exception) else "ok"
        print(f"item {index}: {kind:<28} {value}")
    good = [v for v in results if not isinstance(v, Exception)]
    assert good == [x * x for x in range(10) if x not in (3, 5, 7)]

    try:
        fj.map(flaky, range(5))
    except ValueError as error:  # a TaskError is also the original exception type
        print(f"\nraised: {error!r}\nworker traceback attached: {error.__cause__ is not None}")


if __name__ == "__main__":
    main()
