"""``forkjoin train MODULE:FN``: run a training function on a gang of ranks from the shell.

Only argparse and typing are imported here; torch and the launcher load when the command runs,
so ``forkjoin --help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

_EPILOG = """\
FN runs in every rank, like the function given to fj.train.launch; keyword arguments come from
--arg KEY=VALUE (VALUE parsed as JSON when it can be, else kept as a string). MODULE is
imported with the current directory on sys.path; a file path (path/to/train.py:main) works too.
Rank 0's return value is printed as JSON (its repr when it is not JSON).

examples:
  forkjoin train mytrain:main --workers 2
  forkjoin train examples/train_mlp_digits.py:train_digits --workers 2 --arg epochs=5
  forkjoin train mytrain:main --device cuda --max-restarts 2 --timeout 300

exit status: 0 success, 1 a rank failed (its rank and traceback are shown), 2 usage error,
130 interrupted
"""


def register(commands: Any) -> dict[str, Callable[..., int]]:
    parser = commands.add_parser(
        "train",
        help="run MODULE:FN on a gang of training ranks (torch.distributed, DDP/FSDP)",
        description="Run a training function on N ranks: forkjoin.train.launch from the shell.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("function", metavar="MODULE:FN", help="the training function")
    parser.add_argument("--workers", "-w", type=int, default=None,
                        help="ranks (default: one per GPU, or up to 4 CPU processes)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--max-restarts", type=int, default=0,
                        help="relaunch the gang this many times after a failure")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds a rank may go without a heartbeat before the gang stops")
    parser.add_argument("--threads-per-rank", type=int, default=None)
    parser.add_argument("--backend", choices=["process", "ray"], default="process")
    parser.add_argument("--log-file", default=None,
                        help="append fj.train.log records here as JSON lines")
    parser.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                        help="a keyword argument for FN (repeatable)")
    return {"train": cmd_train}


def _parse_kwargs(pairs: list[str]) -> dict[str, Any]:
    import json

    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--arg expects KEY=VALUE, got {pair!r}")
        try:
            kwargs[key] = json.loads(value)
        except ValueError:
            kwargs[key] = value
    return kwargs


def _load(spec: str) -> Callable[..., Any]:
    import os
    import sys

    from forkjoin.mapfile import load_function

    path, sep, attribute = spec.rpartition(":")
    if sep and path.endswith(".py"):
        directory, filename = os.path.split(os.path.abspath(path))
        if not os.path.isfile(os.path.join(directory, filename)):
            raise ValueError(f"no such file: {path}")
        if directory not in sys.path:
            sys.path.insert(0, directory)  # ranks get the same sys.path
        spec = f"{filename[:-3]}:{attribute}"
    return load_function(spec)


def cmd_train(args: argparse.Namespace, streams: Any) -> int:
    import json
    import os
    import traceback

    from forkjoin.mapfile import MapFileError

    try:
        fn = _load(args.function)
        kwargs = _parse_kwargs(args.arg)
    except (MapFileError, ValueError) as exc:
        streams.error("train", str(exc))
        return 2
    from .errors import TrainingError
    from .gang import launch

    env = {"FORKJOIN_TRAIN_LOG": os.path.abspath(args.log_file)} if args.log_file else None
    try:
        value = launch(
            fn, workers=args.workers, device=args.device, kwargs=kwargs,
            max_restarts=args.max_restarts, timeout=args.timeout,
            threads_per_rank=args.threads_per_rank, backend=args.backend, env=env,
        )
    except KeyboardInterrupt:
        streams.error("train", "interrupted")
        return 130
    except TrainingError as exc:
        detail = f"\n{exc.__cause__}" if exc.__cause__ is not None else ""
        streams.error("train", f"{exc}{detail}")
        return 1
    except (ValueError, TypeError) as exc:  # bad options, caught before any rank started
        streams.error("train", f"{type(exc).__name__}: {exc}")
        return 2
    except Exception as exc:
        streams.error("train", "".join(traceback.format_exception(exc)))
        return 1
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    print(text, file=streams.stdout, flush=True)
    return 0
