"""Outside suites run against forkjoin: every test here is marked ``compat``, and the entries of
``expectations.py`` (not applicable, documented differences, open engine findings) are applied
to the upstream tests by node id."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from expectations import apply_expectations


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/compat/" in item.nodeid:
            item.add_marker(pytest.mark.compat)
            apply_expectations(item)


@pytest.fixture(autouse=True)
def stop_lokys_workers() -> Iterator[None]:
    """Some upstream joblib tests use joblib's own loky backend on purpose; its reusable executor
    keeps workers between calls, which the leak check after each test would report."""
    yield
    loky = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(loky, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)
