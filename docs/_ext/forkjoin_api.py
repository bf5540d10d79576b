"""The ``forkjoin-api`` directive: one module's whole public API, read from its ``__all__``.

``.. forkjoin-api:: forkjoin.data`` documents the module (its docstring) and then every name in
``forkjoin.data.__all__`` with the matching autodoc directive, so a name added to ``__all__``
appears in the reference at the next build, and one removed disappears: the reference cannot
drift from the code. A name that is the same object as one documented under an earlier module
(``forkjoin.data.DataError`` is ``forkjoin.DataError``) gets a short entry pointing there
instead of a second copy. Functions, then classes, then exceptions, then constants; each group
in ``__all__``'s order.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.ext.autodoc.mock import mock
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

# Where an object re-exported by several modules is documented: the first of these that lists
# it. A layer missing here is documented after them (see ``api_modules``).
CANONICAL_ORDER = ("forkjoin", "forkjoin.data", "forkjoin.train", "forkjoin.bench")

KIND_ORDER = ("function", "class", "exception", "data")


def api_modules() -> list[str]:
    """Every module whose ``__all__`` is public API: the package and each layer it exposes."""
    import forkjoin

    layers = [f"forkjoin.{name}" for name in forkjoin._LAYERS]
    return [
        "forkjoin",
        *[m for m in CANONICAL_ORDER if m in layers],
        *sorted(m for m in layers if m not in CANONICAL_ORDER),
    ]


def kind_of(value: Any) -> str:
    if inspect.isclass(value):
        return "exception" if issubclass(value, BaseException) else "class"
    if inspect.isroutine(value):
        return "function"
    return "data"


def canonical_name(module: str, name: str) -> str:
    """The full name under which ``module.name`` is documented (itself unless it is the same
    object as a name of a module earlier in ``api_modules()``)."""
    value = getattr(importlib.import_module(module), name)
    if kind_of(value) == "data" and isinstance(value, (str, int, float, tuple, frozenset)):
        # equal constants are not necessarily the same thing; only classes and functions alias
        owners = [module]
    else:
        owners = [
            m
            for m in api_modules()
            if name in getattr(importlib.import_module(m), "__all__", ())
            and getattr(importlib.import_module(m), name) is value
        ]
    return f"{owners[0] if owners else module}.{name}"


def rst_for(module: str, name: str) -> list[str]:
    value = getattr(importlib.import_module(module), name)
    kind = kind_of(value)
    full = f"{module}.{name}"
    canonical = canonical_name(module, name)
    if canonical != full:
        directive = {"function": "function", "data": "data"}.get(kind, kind)
        role = {"function": "func", "data": "data", "exception": "exc"}.get(kind, kind)
        return [
            f".. py:{directive}:: {name}",
            f"   :module: {module}",
            "",
            f"   The same object as :py:{role}:`{canonical}`, re-exported here.",
            "",
        ]
    if kind == "function":
        return [f".. autofunction:: {full}", ""]
    if kind in ("class", "exception"):
        # public methods without a docstring still belong in the reference (their signature)
        lines = [f".. auto{kind}:: {full}", "   :members:", "   :undoc-members:"]
        if value.__bases__ != (object,):
            lines.append("   :show-inheritance:")
        return [*lines, ""]
    return [f".. autodata:: {full}", ""]


class ForkjoinApi(SphinxDirective):
    """``.. forkjoin-api:: MODULE``: the module's docstring, then each name in its ``__all__``."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        # the same stand-ins for missing optional engines as autodoc uses (conf.py)
        with mock(self.config.autodoc_mock_imports):
            return self._run()

    def _run(self) -> list[nodes.Node]:
        module_name = self.arguments[0]
        module = importlib.import_module(module_name)
        public = getattr(module, "__all__", None)
        if public is None:
            raise self.error(f"{module_name} has no __all__: nothing says what is public")
        by_kind: dict[str, list[str]] = {kind: [] for kind in KIND_ORDER}
        for name in public:
            by_kind[kind_of(getattr(module, name))].append(name)
        lines = [f".. automodule:: {module_name}", ""]
        for kind in KIND_ORDER:
            for name in by_kind[kind]:
                lines += rst_for(module_name, name)
        # the generated text counts as a dependency of this page on the module's source
        self.env.note_dependency(inspect.getfile(module))
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(
            self.state, StringList(lines, source=f"<forkjoin-api {module_name}>"), container
        )
        return container.children


# "name:   text" at the docstring's left margin, continued by lines indented further: the way
# forkjoin's docstrings list options (``RunOptions``). Read as reStructuredText it is a run-on
# paragraph with indentation errors, so ``aligned_lists_to_definitions`` rewrites such a list
# (three items or more) as a definition list before autodoc parses it.
ALIGNED_ITEM = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):\s+(\S.*)$")
MIN_ALIGNED_ITEMS = 3


def aligned_lists_to_definitions(lines: list[str]) -> list[str]:
    """``name:   text`` lists (``ALIGNED_ITEM``) as definition lists; other lines unchanged."""
    run: list[tuple[str, list[str], list[str]]] = []  # (name, text lines, original lines)
    out: list[str] = []

    def flush() -> None:
        if len(run) >= MIN_ALIGNED_ITEMS:
            if out and out[-1].strip():
                out.append("")
            for name, text, _ in run:
                out.append(f"``{name}``")
                out.extend(f"    {line}" for line in text)
            out.append("")
        else:
            for _, _, original in run:
                out.extend(original)
        run.clear()

    for line in lines:
        match = ALIGNED_ITEM.match(line)
        if match:
            run.append((match[1], [match[2]], [line]))
        elif run and line.startswith(" ") and line.strip():
            run[-1][1].append(line.strip())
            run[-1][2].append(line)
        else:
            flush()
            out.append(line)
    flush()
    return out


def rewrite_aligned_lists(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    lines[:] = aligned_lists_to_definitions(lines)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("forkjoin-api", ForkjoinApi)
    app.connect("autodoc-process-docstring", rewrite_aligned_lists)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
