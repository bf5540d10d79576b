"""What ``forkjoin info`` reports: the machine, the backends that can run, package versions.

Nothing here imports an optional engine (Ray, Dask, torch): backends are found with
``importlib.util.find_spec`` and versions read from installed package metadata, so the report is
fast and never initialises CUDA or starts a cluster client.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys
from typing import Any

import forkjoin as fj

# Backends that ship with forkjoin and need nothing else.
BUILTIN_BACKENDS = ("inline", "threads", "process")
# Optional backends: name -> (modules that must be importable, pip extra that provides them).
OPTIONAL_BACKENDS = {"ray": (("ray",), "ray"), "dask": (("dask", "distributed"), "dask")}
# Packages whose versions matter when reporting a problem.
KEY_PACKAGES = ("numpy", "cloudpickle", "psutil", "pyarrow", "pandas", "torch", "ray", "dask")


def _module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken parent package, or a half-imported module
        return False


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def backends() -> dict[str, dict[str, Any]]:
    """Each backend's availability, and for a missing one the install command."""
    report: dict[str, dict[str, Any]] = {
        name: {"available": True, "builtin": True} for name in BUILTIN_BACKENDS
    }
    for name, (modules, extra) in OPTIONAL_BACKENDS.items():
        available = all(_module_available(module) for module in modules)
        entry: dict[str, Any] = {"available": available, "builtin": False}
        if not available:
            entry["install"] = f'pip install "forkjoin[{extra}]"'
        report[name] = entry
    return report


def collect_info() -> dict[str, Any]:
    """The whole report as plain JSON-serialisable data (what ``forkjoin info --json`` prints)."""
    machine = fj.devices()
    return {
        "forkjoin": fj.__version__,
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "platform": platform.platform(),
        "cpus": {"usable": machine.cpus, "total": machine.cpus_total},
        "memory": {"total": machine.memory_total, "available": machine.memory_available},
        "gpus": [
            {"index": gpu.index, "name": gpu.name, "memory_total": gpu.memory_total}
            for gpu in machine.gpus
        ],
        "backends": backends(),
        "packages": {name: package_version(name) for name in KEY_PACKAGES},
    }


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def format_info(info: dict[str, Any]) -> str:
    """The report as aligned text for a terminal."""
    python = info["python"]
    cpus = info["cpus"]
    memory = info["memory"]
    lines = [
        f"forkjoin   {info['forkjoin']}",
        f"python     {python['version']} ({python['implementation']}) {python['executable']}",
        f"platform   {info['platform']}",
        f"cpus       {cpus['usable']} usable of {cpus['total']}",
        f"memory     {_gib(memory['total'])} total, {_gib(memory['available'])} available",
    ]
    gpus = info["gpus"]
    if not gpus:
        lines.append("gpus       none found (nvidia-smi absent or no devices)")
    for i, gpu in enumerate(gpus):
        label = "gpus" if i == 0 else ""
        lines.append(f"{label:10} {gpu['index']}: {gpu['name']}, {_gib(gpu['memory_total'])}")
    lines.append("backends")
    for name, entry in info["backends"].items():
        if entry["available"]:
            state = "available" + (" (default)" if name == "process" else "")
        else:
            state = f"not installed: {entry['install']}"
        lines.append(f"  {name:10} {state}")
    lines.append("packages")
    for name, version in info["packages"].items():
        lines.append(f"  {name:12} {version or '-'}")
    return "\n".join(lines)
