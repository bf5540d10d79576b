"""Where the outside suites come from: they are found in installed packages at test time and
loaded from there, never copied into this repository.

- CPython 3.11's ``test_concurrent_futures`` (one file in 3.11) ships in the interpreter's own
  ``test`` package when it was built with its tests, or in Debian's ``libpython3.11-testsuite``
  (``/usr/lib/python3.11/test/``); ``.ci/run`` installs that package.
- joblib's ``joblib/test`` ships inside the joblib wheel.
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

CPYTHON_MODULE = "test_concurrent_futures"
# Debian's libpython3.X-testsuite installs the standard library's tests here.
_DEBIAN_TEST_DIR = "/usr/lib/python{major}.{minor}/test"


def cpython_futures_path() -> Path | None:
    """The 3.11-style single-file ``test_concurrent_futures.py`` for this interpreter's version."""
    version = {"major": sys.version_info[0], "minor": sys.version_info[1]}
    candidates = [
        Path(sysconfig.get_paths()["stdlib"]) / "test" / f"{CPYTHON_MODULE}.py",
        Path(_DEBIAN_TEST_DIR.format(**version)) / f"{CPYTHON_MODULE}.py",
    ]
    return next((path for path in candidates if path.is_file()), None)


def load_cpython_futures() -> ModuleType:
    """Import CPython's test module under its own top-level name, so that worker processes can
    import it too (its task functions are pickled by reference, as the standard library's
    executor pickles them): a private directory holding a link to the file goes on
    ``sys.path``, which forkjoin's workers inherit."""
    if sys.version_info[:2] != (3, 11):
        pytest.skip(
            "CPython's process-pool tests are wired for 3.11's single-file "
            "test_concurrent_futures; this interpreter is "
            f"{sys.version_info[0]}.{sys.version_info[1]}",
            allow_module_level=True,
        )
    path = cpython_futures_path()
    if path is None:
        message = (
            "CPython's test_concurrent_futures.py is not installed: "
            "apt-get install libpython3.11-testsuite (Debian/Ubuntu), or use an interpreter "
            "built with its test suite"
        )
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)
    if CPYTHON_MODULE in sys.modules:
        return sys.modules[CPYTHON_MODULE]
    link_dir = tempfile.mkdtemp(prefix="cpython-compat-")
    atexit.register(shutil.rmtree, link_dir, True)
    os.symlink(path, os.path.join(link_dir, f"{CPYTHON_MODULE}.py"))
    sys.path.append(link_dir)
    return importlib.import_module(CPYTHON_MODULE)
