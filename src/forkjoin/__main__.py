"""``python -m forkjoin``: the same command line as the ``forkjoin`` script."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
