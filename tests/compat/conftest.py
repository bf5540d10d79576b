"""Outside suites run against forkjoin: every test here is marked ``compat``, and the entries of
``expectations.py`` (not applicable, documented differences, open engine findings) are applied
to the upstream tests by node id."""

from __future__ import annotations

import pytest
from expectations import apply_expectations


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/compat/" in item.nodeid:
            item.add_marker(pytest.mark.compat)
            apply_expectations(item)
