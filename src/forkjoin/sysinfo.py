"""What ``forkjoin info`` reports: the machine, the backends that can run, package versions.

Nothing here imports an optional engine (Ray, Dask, torch): backends are found with
``importlib.util.find_spec`` and versions read from installed package metadata, so the report is
fast and never initialises CUDA or starts a cluster client.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import socket
import subprocess
import sys
from typing import Any

import forkjoin as fj

# Backends that ship with forkjoin and need nothing else.
BUILTIN_BACKENDS = ("inline", "threads", "process")
# Optional backends: name -> (modules that must be importable, pip extra that provides them).
OPTIONAL_BACKENDS = {
    "ray": (("ray",), "ray"),
    "dask": (("dask", "distributed"), "dask"),
    "spark": (("pyspark",), "spark"),
}
# Packages whose versions matter when reporting a problem.
KEY_PACKAGES = (
    "numpy", "cloudpickle", "psutil", "pyarrow", "pandas", "torch", "ray", "dask", "pyspark",
)  # fmt: skip


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


# Where a cluster backend would connect without address=: Ray's and Dask's own conventions.
CLUSTER_ADDRESS_SOURCES = {
    "ray": ("RAY_ADDRESS", "/tmp/ray/ray_current_cluster"),  # the latter: what "auto" finds
    "dask": ("DASK_SCHEDULER_ADDRESS", None),
    "spark": (None, None),  # forkjoin joins a Spark only when address= names it
}
# How long ``forkjoin info`` waits for a cluster's port to answer.
PROBE_SECONDS = 0.5


def cluster_address(name: str) -> str | None:
    """The cluster a Ray/Dask backend would join with no address= (None: a local start)."""
    variable, latest_file = CLUSTER_ADDRESS_SOURCES[name]
    address = os.environ.get(variable) if variable else None
    if not address and latest_file and os.path.exists(latest_file):
        with open(latest_file) as fh:
            address = fh.read().strip() or None
    return address or None


def reachable(address: str) -> bool:
    """Whether something accepts TCP connections at ``address`` (tcp://host:port, host:port,
    ray://host:port): a cheap probe, no engine imported and nothing sent."""
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), PROBE_SECONDS):
            return True
    except (OSError, ValueError):
        return False


JAVA_INSTALL = "Java 17 or 21 (apt-get install openjdk-17-jre-headless; set JAVA_HOME)"


def java_report() -> dict[str, Any]:
    """Spark's system requirement: which java pyspark would run, and its version."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if java is None or not os.access(java, os.X_OK):
        return {"java": None, "java_version": None}
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=10)
        first = (done.stderr or done.stdout).strip().splitlines()
        version = first[0] if first else None
    except (OSError, subprocess.TimeoutExpired):
        version = None
    return {"java": java, "java_version": version}


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
        if name == "spark":
            entry.update(java_report())
            if available and entry["java"] is None:
                entry["available"] = False
                entry["install"] = JAVA_INSTALL
        address = cluster_address(name)
        entry["cluster"] = address
        if address is not None:
            entry["reachable"] = reachable(address)
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
        if "java" in entry:
            state += f"; java: {entry['java_version'] or entry['java'] or 'MISSING'}"
        if "cluster" in entry:
            address = entry["cluster"]
            if address is None:
                state += "; no cluster configured: starts a local one (127.0.0.1) on first use"
            else:
                answer = "reachable" if entry.get("reachable") else "NOT reachable"
                state += f"; cluster {address} {answer}"
        lines.append(f"  {name:10} {state}")
    lines.append("packages")
    for name, version in info["packages"].items():
        lines.append(f"  {name:12} {version or '-'}")
    return "\n".join(lines)
