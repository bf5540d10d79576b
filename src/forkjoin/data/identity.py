"""What a plan's output depends on, as a digest: a sink resumes only when it is unchanged.

``fingerprint(value)`` walks a user function the way Python will run it and hashes everything
that can change what it returns::

    function ──> its code (bytecode, constants, names; nested code objects by content)
       │         defaults and keyword defaults
       │         closure cells ──────────────────┐
       │         globals its code (or nested code) names ──> values, recursively:
       ▼                                          │   another user function: walked the same way
    values: None/bool/int/float/str/bytes, lists, │   a user module: the attributes the code names
    tuples, dicts (in order), sets (sorted by     │   a user class: its methods and attributes
    digest), numpy and Arrow data (their bytes),  │   a library (stdlib, site-packages,
    partial(func, args, keywords), bound methods  │       forkjoin): name and version, not code
    (function + instance), other objects through ◄┘   an instance: class + pickle state
    ``__reduce_ex__`` (class + state), or ``__forkjoin_token__()`` when a class defines it

Where the walk cannot be sure a value is the same as last time (a lock, an open file or socket,
a generator, anything ``__reduce_ex__`` refuses, or a walk too deep) it records why in
``Fingerprint.unsure`` and the sink refuses to resume into an existing output rather than guess.

Why a walk and not the bytes of ``cloudpickle.dumps(fn)``. Measured on cloudpickle 3.1.3,
Python 3.11: (1) the bytes differ between two runs of the same script when the function reads a
global ``set`` of strings (``PYTHONHASHSEED`` changes the set's order), so a rerun could never
resume; (2) a function importable from a module (``mymodule.clean``, or anything the CLI's
``--fn module:name`` names) is pickled by reference, 29 bytes naming it, so an edit to it or to a
helper it calls is invisible, which is the stale output this module exists to prevent; (3) two
blank lines added above the function change the bytes (line numbers are pickled), forcing a
needless rewrite. The walk hashes code without line numbers, sorts sets by content, and follows
user modules by value while treating installed libraries as their name and version.
"""

from __future__ import annotations

import builtins
import copyreg
import functools
import hashlib
import io
import os
import site
import sys
import sysconfig
import types
from dataclasses import dataclass
from typing import Any

# How deep the walk follows nested values before it gives up and calls the plan unsure. Deep
# enough for any realistic closure or config object; it stops a linked list of a million nodes
# from exhausting the interpreter's stack.
MAX_DEPTH = 200

# Class attributes that never change what a method computes, or that Python itself mutates
# (copyreg caches ``__slotnames__`` on first pickle; ``_abc_impl`` is an unpicklable cache).
_SKIPPED_CLASS_ATTRS = frozenset(
    {
        "__dict__",
        "__weakref__",
        "__doc__",
        "__module__",
        "__qualname__",
        "__slotnames__",
        "_abc_impl",
        "__annotations__",
        "__parameters__",
        "__orig_bases__",
    }
)

_ATOMS = (type(None), bool, int, float, complex, str, bytes, bytearray, range, type(Ellipsis))


@dataclass(frozen=True)
class Fingerprint:
    """A digest of a value, and the reasons (if any) why it cannot be trusted across runs."""

    digest: str
    unsure: tuple[str, ...] = ()


def fingerprint(value: Any, name: str = "value") -> Fingerprint:
    """The digest of ``value``: equal across processes and runs exactly when (as far as a walk
    can tell) the value would compute the same thing. ``name`` labels it in ``unsure`` reasons."""
    walker = _Walker()
    digest = walker.value(value, name, 0)
    return Fingerprint(digest.hex()[:16], tuple(dict.fromkeys(walker.unsure)))


class _Walker:
    def __init__(self) -> None:
        self.unsure: list[str] = []
        self._done: dict[int, bytes] = {}  # id -> digest of values already walked
        self._open: dict[int, int] = {}  # id -> order, for values being walked (cycles)
        self._alive: list[Any] = []  # keeps walked values alive, so their ids stay unique
        self._open_modules: set[str] = set()

    def doubt(self, where: str, why: str) -> bytes:
        self.unsure.append(f"{where}: {why}")
        return b"?unsure"

    def value(self, obj: Any, where: str, depth: int) -> bytes:
        kind = type(obj)
        if kind in _ATOMS:
            return _hash(kind.__name__, repr(obj).encode("utf-8", "surrogatepass"))
        key = id(obj)
        if key in self._done:
            return self._done[key]
        if key in self._open:
            return _hash("cycle", str(self._open[key]).encode())
        if depth > MAX_DEPTH:
            return self.doubt(where, f"nested more than {MAX_DEPTH} levels deep")
        self._open[key] = len(self._open)
        self._alive.append(obj)
        try:
            digest = self._dispatch(obj, where, depth + 1)
        except RecursionError:
            digest = self.doubt(where, "nested too deeply to walk")
        except Exception as exc:  # noqa: BLE001 - a value's own code failed: cannot be sure
            digest = self.doubt(where, f"fingerprinting a {kind.__qualname__} failed: {exc!r}")
        finally:
            del self._open[key]
        self._done[key] = digest
        return digest

    def many(self, tag: str, items: Any, where: str, depth: int) -> bytes:
        return _hash(tag, *(self.value(item, where, depth) for item in items))

    def _dispatch(self, obj: Any, where: str, depth: int) -> bytes:  # noqa: PLR0911
        kind = type(obj)
        token = getattr(kind, "__forkjoin_token__", None)
        if token is not None and not isinstance(obj, type):
            return _hash("token", self.value(token(obj), where, depth))
        if kind in (list, tuple):
            return self.many(kind.__name__, obj, where, depth)
        if kind is dict:
            return self.many("dict", (pair for item in obj.items() for pair in item), where, depth)
        if kind is types.MappingProxyType:  # a class's namespace, a dataclass field's metadata
            return self.many("dict", (pair for item in obj.items() for pair in item), where, depth)
        if kind in (set, frozenset):
            return _hash(kind.__name__, *sorted(self.value(item, where, depth) for item in obj))
        if isinstance(obj, types.FunctionType):
            return self.function(obj, depth)
        if isinstance(obj, types.MethodType):
            return _hash(
                "method",
                self.value(obj.__func__, where, depth),
                self.value(obj.__self__, f"{where} (its instance)", depth),
            )
        if isinstance(obj, functools.partial):
            return _hash(
                "partial",
                self.value(obj.func, where, depth),
                self.value(obj.args, f"{where} (partial args)", depth),
                self.value(obj.keywords, f"{where} (partial keywords)", depth),
            )
        if isinstance(obj, type):
            return self.klass(obj, depth)
        if isinstance(obj, types.ModuleType):
            return self.module(obj, frozenset(), depth)
        if isinstance(obj, types.CodeType):
            return self.code(obj, where, depth)
        if isinstance(obj, types.BuiltinFunctionType):  # C functions and bound C methods
            owner = obj.__self__
            if owner is None or isinstance(owner, types.ModuleType):
                if not _is_library(obj.__module__):
                    return self.doubt(
                        where,
                        f"{_qualified(obj)} is compiled code outside the "
                        "installed packages; forkjoin cannot see if it changed",
                    )
                return _hash("cfunc", _qualified(obj).encode(), _version(obj.__module__))
            return _hash(
                "cmethod",
                obj.__name__.encode(),
                self.value(owner, f"{where} (bound to {type(owner).__name__})", depth),
            )
        if isinstance(
            obj,
            (
                types.WrapperDescriptorType,
                types.MethodDescriptorType,
                types.MethodWrapperType,
                types.GetSetDescriptorType,
            ),
        ):
            owner = getattr(obj, "__self__", None)
            text = f"{getattr(obj, '__objclass__', type(owner)).__qualname__}.{obj.__name__}"
            if owner is not None and not isinstance(owner, type):
                return _hash("slot", text.encode(), self.value(owner, where, depth))
            return _hash("slot", text.encode())
        return self.data(obj, where, depth)

    # -- code --------------------------------------------------------------------------------

    def function(self, fn: types.FunctionType, depth: int) -> bytes:
        name = f"{fn.__module__}.{fn.__qualname__}"
        where = fn.__qualname__
        if _is_library(fn.__module__) and not fn.__closure__:
            return _hash("libfn", name.encode(), _version(fn.__module__))
        names = _names(fn.__code__)
        parts = [name.encode(), self.code(fn.__code__, where, depth)]
        parts.append(self.value(fn.__defaults__, f"{where} (defaults)", depth))
        parts.append(self.value(fn.__kwdefaults__, f"{where} (keyword defaults)", depth))
        for var, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
            try:
                content = cell.cell_contents
            except ValueError:  # a cell not yet assigned
                parts.append(_hash("empty", var.encode()))
                continue
            label = f"{where} (closure {var!r})"
            parts.append(_hash(var, self.named(content, names, label, depth)))
        for var in sorted(names):
            if var in fn.__globals__:
                label = f"{where} (global {var!r})"
                parts.append(_hash(var, self.named(fn.__globals__[var], names, label, depth)))
            elif not hasattr(builtins, var) and var not in fn.__code__.co_varnames:
                parts.append(_hash("unbound", var.encode()))  # may be defined later; named
        if fn.__dict__:
            parts.append(self.value(dict(sorted(fn.__dict__.items())), where, depth))
        wrapped = getattr(fn, "__wrapped__", None)
        if wrapped is not None:
            parts.append(self.value(wrapped, f"{where} (wrapped)", depth))
        return _hash("fn", *parts)

    def named(self, found: Any, names: frozenset[str], where: str, depth: int) -> bytes:
        """A value a function refers to by name; a module is followed into the attributes
        that the function's code names."""
        if isinstance(found, types.ModuleType):
            return self.module(found, names, depth + 1)
        return self.value(found, where, depth)

    def code(self, code: types.CodeType, where: str, depth: int) -> bytes:
        """Bytecode, constants and names; not the file name or line numbers, so moving a
        function in its file does not change it."""
        consts = [
            self.code(c, where, depth)
            if isinstance(c, types.CodeType)
            else self.value(c, where, depth)
            for c in code.co_consts
        ]
        return _hash(
            "code",
            code.co_code,
            code.co_exceptiontable if hasattr(code, "co_exceptiontable") else b"",
            repr(
                (
                    code.co_names,
                    code.co_varnames,
                    code.co_freevars,
                    code.co_cellvars,
                    code.co_argcount,
                    code.co_posonlyargcount,
                    code.co_kwonlyargcount,
                    code.co_flags,
                )
            ).encode(),
            *consts,
        )

    def module(self, module: types.ModuleType, names: frozenset[str], depth: int) -> bytes:
        """A library by name and version; a user module by the attributes the code names
        (``helpers.clean(x)`` names ``clean``), each walked."""
        name = module.__name__
        if _is_library(name):
            return _hash("module", name.encode(), _version(name))
        if name in self._open_modules:  # two modules that import each other
            return _hash("cycle", name.encode())
        self._open_modules.add(name)
        parts = [name.encode()]
        for attr in sorted(names):
            if attr in vars(module):
                label = f"{name}.{attr}"
                parts.append(_hash(attr, self.named(vars(module)[attr], names, label, depth)))
        self._open_modules.discard(name)
        return _hash("usermodule", *parts)

    def klass(self, cls: type, depth: int) -> bytes:
        """A library class by name and version; a user class by its bases and its namespace
        (methods walked as functions, class attributes as values)."""
        name = f"{cls.__module__}.{cls.__qualname__}"
        if _is_library(cls.__module__):
            return _hash("libclass", name.encode(), _version(cls.__module__))
        parts = [name.encode(), self.value(cls.__bases__, name, depth)]
        for attr, found in sorted(vars(cls).items()):
            if attr in _SKIPPED_CLASS_ATTRS:
                continue
            if isinstance(found, (staticmethod, classmethod)):
                found = found.__func__
            elif isinstance(found, property):
                found = (found.fget, found.fset, found.fdel)
            parts.append(_hash(attr, self.value(found, f"{name}.{attr}", depth)))
        return _hash("class", *parts)

    # -- data --------------------------------------------------------------------------------

    def data(self, obj: Any, where: str, depth: int) -> bytes:
        """Arrays by their bytes; anything else by what pickle would save of it."""
        kind = type(obj)
        module = kind.__module__
        if module == "numpy" and kind.__name__ == "ndarray" and obj.dtype.hasobject is False:
            import numpy as np

            raw = np.ascontiguousarray(obj).reshape(-1).view(np.uint8)  # copies only if strided
            return _hash("ndarray", str(obj.dtype).encode(), repr(obj.shape).encode(), raw.data)
        if module.startswith("pyarrow") and hasattr(obj, "schema") and hasattr(obj, "num_rows"):
            return _hash("arrow", arrow_digest(obj))
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(obj, torch.Tensor):
            return self.tensor(obj, where)
        try:  # as pickle does: a reducer registered with copyreg first (numpy's ufuncs)
            reducer = copyreg.dispatch_table.get(kind)
            reduced = reducer(obj) if reducer is not None else obj.__reduce_ex__(4)
        except Exception as exc:  # noqa: BLE001 - any refusal means: cannot be sure
            return self.doubt(
                where, f"a {kind.__module__}.{kind.__qualname__} cannot be fingerprinted ({exc})"
            )
        if isinstance(reduced, str):  # pickled by name: a module-level singleton
            return _hash("global", f"{module}.{reduced}".encode(), _version(module))
        func, args, *rest = (*reduced, None, None, None, None)[:6]
        parts = [
            self.value(kind, where, depth),
            self.value(func, where, depth),
            self.value(args, where, depth),
        ]
        state, items, pairs = rest[0], rest[1], rest[2]
        parts.append(self.value(state, where, depth))
        if items is not None:
            parts.append(self.many("items", items, where, depth))
        if pairs is not None:
            parts.append(self.many("pairs", (v for pair in pairs for v in pair), where, depth))
        return _hash("object", *parts)

    def tensor(self, obj: Any, where: str) -> bytes:
        """A tensor by dtype, shape and bytes: its pickle is not the same in two runs."""
        import torch

        try:
            flat = obj.detach().cpu().contiguous().reshape(-1)
            raw = flat.view(torch.uint8).numpy().data
        except (RuntimeError, TypeError) as exc:  # sparse, quantized, meta tensors
            return self.doubt(where, f"a {obj.dtype} tensor cannot be fingerprinted ({exc})")
        meta = (type(obj).__qualname__, str(obj.dtype), tuple(obj.shape), obj.requires_grad)
        return _hash("tensor", repr(meta).encode(), raw)


def arrow_digest(table: Any) -> bytes:
    """The content of an Arrow Table or RecordBatch: its IPC stream, hashed as it is written
    (never held whole in memory)."""
    import pyarrow as pa

    hasher = _HashingFile()
    sink = pa.PythonFile(hasher, mode="w")
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write(table)
    return hasher.digest.digest()


class _HashingFile(io.RawIOBase):
    def __init__(self) -> None:
        self.digest = hashlib.blake2b(digest_size=16)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.digest.update(data)
        return memoryview(data).nbytes


def _hash(tag: str, *parts: bytes | memoryview) -> bytes:
    digest = hashlib.blake2b(tag.encode(), digest_size=16)
    for part in parts:
        digest.update(memoryview(part).nbytes.to_bytes(8, "little"))
        digest.update(part)
    return digest.digest()


def _names(code: types.CodeType) -> frozenset[str]:
    """Every global or attribute name the code, or code nested in it, refers to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return frozenset(names)


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', None)}.{getattr(obj, '__qualname__', obj.__name__)}"


@functools.lru_cache(maxsize=1)
def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = [paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths]
    dirs += site.getsitepackages() if hasattr(site, "getsitepackages") else []
    dirs.append(site.getusersitepackages())
    return tuple(sorted({os.path.realpath(d) + os.sep for d in dirs}))


@functools.lru_cache(maxsize=4096)
def _is_library(module_name: str | None) -> bool:
    """Installed code (the standard library, site-packages, forkjoin itself): identified by
    name and version. Everything else (``__main__``, the user's own modules, editable
    checkouts) is walked."""
    if not module_name:
        return False
    top = module_name.partition(".")[0]
    if top == "forkjoin":  # itself, even from a checkout: its version names its behaviour
        return True
    if top in sys.builtin_module_names or top in getattr(sys, "stdlib_module_names", ()):
        return top != "__main__"
    module = sys.modules.get(module_name) or sys.modules.get(top)
    path = getattr(module, "__file__", None)
    if not path:
        return False
    path = os.path.realpath(path)
    return any(path.startswith(d) for d in _library_dirs())


def _version(module_name: str | None) -> bytes:
    top = (module_name or "").partition(".")[0]
    version = getattr(sys.modules.get(top), "__version__", None)
    if version is None and _is_library(top) and top in getattr(sys, "stdlib_module_names", ()):
        version = sys.version.split()[0]
    return str(version).encode()
