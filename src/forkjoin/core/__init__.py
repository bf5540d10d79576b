"""The bottom layer: what a task is, and what runs it inside a worker.

Both ``engine/`` (which plans, schedules and merges tasks) and ``backends/`` (which run them)
import this package, and it imports nothing of forkjoin above it (only ``errors``, ``machine``
and ``_text``), so the layers point one way: ``engine -> backends.base -> core``.

Modules: ``task`` (Task, TaskOutcome, FunctionRef: the task model), ``resources`` (worker slot
shapes and the GPUs each owns), ``execute`` (the per-item loop every backend runs),
``context`` (``fj.worker_context()``), ``shared`` (``fj.shared`` handles) and ``seeding``
(per-item random streams). Worker processes import only these, which keeps their start-up light.
"""
