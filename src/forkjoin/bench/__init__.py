"""forkjoin.bench: why a parallel job is fast or slow, and whether it survives faults.

- ``scaling(fn, items, workers=[1, 2, 4])``: speedup, efficiency, Karp-Flatt, an Amdahl fit with
  a confidence interval, Gustafson's view, predictions, a breakdown of where the time went, and
  advice in words (``ScalingReport``).
- ``write_run_report(pool, "run.html")``: the same breakdown and a per-worker timeline for any
  real run.
- ``stress(...)``: a workload at high load with injected faults, checked against a serial
  reference (``StressReport``); ``forkjoin.testing.chaos`` is the same for tests.

Names load lazily, so ``import forkjoin.bench`` does not import matplotlib or rich.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "scaling": "forkjoin.bench.scaling",
    "ScalingReport": "forkjoin.bench.scaling",
    "Breakdown": "forkjoin.bench.breakdown",
    "compute_breakdown": "forkjoin.bench.breakdown",
    "AmdahlFit": "forkjoin.bench.model",
    "fit_amdahl": "forkjoin.bench.model",
    "write_run_report": "forkjoin.bench.report",
    "run_breakdown": "forkjoin.bench.report",
    "stress": "forkjoin.bench.stress",
    "StressReport": "forkjoin.bench.stress",
    "FAULT_KINDS": "forkjoin.bench.stress",
}

__all__ = [
    "FAULT_KINDS",
    "AmdahlFit",
    "Breakdown",
    "ScalingReport",
    "StressReport",
    "compute_breakdown",
    "fit_amdahl",
    "run_breakdown",
    "scaling",
    "stress",
    "write_run_report",
]
assert set(__all__) == set(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'forkjoin.bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from .breakdown import Breakdown, compute_breakdown
    from .model import AmdahlFit, fit_amdahl
    from .report import run_breakdown, write_run_report
    from .scaling import ScalingReport, scaling
    from .stress import FAULT_KINDS, StressReport, stress

# ``scaling`` and ``stress`` are each a function and the module that defines it. Importing a
# submodule binds its name on the package, which would hide the lazily loaded function
# (``import forkjoin.testing`` imports ``forkjoin.bench.stress``, after which
# ``fj.bench.stress`` was the module). Imported here, so the name is the function from the start;
# both modules are light (no matplotlib, no rich).
from .scaling import scaling  # noqa: E402
from .stress import stress  # noqa: E402
