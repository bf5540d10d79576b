"""The documentation in docs/ builds with warnings as errors, every link inside it resolves, every
public name is in its API reference, and every Python example on its pages runs.

Examples: each ```python block of a page runs, in page order, as one script in a fresh
interpreter whose working directory is an empty temporary folder (so examples create the files
they read). The script keeps the page's line numbers (every other line is blank), so a failure
points at the line of the .md file. A page that needs an optional package or a marker says so in
its front matter::

    ---
    examples:
      needs: [torch]         # skipped (outside CI) when one of these cannot be imported
      marks: [train]         # pytest markers for its test
      timeout: 120           # seconds (default EXAMPLE_TIMEOUT)
      shell: true            # also run its ```bash blocks, in order, after the Python ones
    ---

Other pages' ```bash blocks (``pip install ...``) are shown, not run.
"""

from __future__ import annotations

import doctest
import html.parser
import importlib
import importlib.util
import inspect
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

import forkjoin as fj

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
# The README's tour runs like a page (its bash block, the install commands, is not run).
EXAMPLE_PAGES = [*PAGES, ROOT / "README.md"]
EXAMPLE_TIMEOUT = 90

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")


def front_matter(text: str) -> dict:
    if not text.startswith("---\n"):
        return {}
    end = text.index("\n---\n", 4)
    return yaml.safe_load(text[4:end]) or {}


def code_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, first line number, lines) of each fenced code block of a Markdown page."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, language = match["fence"], match["info"].strip().split(" ")[0]
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        blocks.append((language, i - len(body) + 1, body))
        i += 1
    return blocks


def example_script(page: Path, language: str = "python") -> str:
    """The page's blocks in ``language`` as one script that keeps the page's line numbers."""
    text = page.read_text()
    script = [""] * (text.count("\n") + 1)
    for block_language, first, body in code_blocks(text):
        if block_language == language:
            script[first - 1 : first - 1 + len(body)] = body
    return "\n".join(script)


def page_params() -> list:
    params = []
    for page in EXAMPLE_PAGES:
        settings = front_matter(page.read_text()).get("examples", {}) or {}
        # each page starts an interpreter and a pool: not for the fast core
        marks = [pytest.mark.slow, *(getattr(pytest.mark, m) for m in settings.get("marks", []))]
        params.append(pytest.param(page, settings, marks=marks, id=str(page.relative_to(ROOT))))
    return params


def require(module: str) -> None:
    """An optional package a page needs: the test extra installs them all, so a missing one
    is a failure that says to add it (never a quiet skip)."""
    importlib.import_module(module)


@pytest.mark.parametrize(("page", "settings"), page_params())
def test_page_examples_run(page: Path, settings: dict, tmp_path: Path) -> None:
    script = example_script(page)
    shell = example_script(page, "bash") if settings.get("shell") else ""
    if not (script.strip() or shell.strip()):
        pytest.skip("no examples to run on this page")
    for module in settings.get("needs", []):
        require(module)
    compile(script, str(page), "exec")  # a syntax error names the page and line at once
    deadline = time.monotonic() + settings.get("timeout", EXAMPLE_TIMEOUT)
    where = f"{page.relative_to(ROOT)} (line numbers are the page's)"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # The examples get a temporary directory of their own (short: Ray puts sockets in it), so
    # that what they leave there is theirs alone, and is checked below.
    private_tmp = Path(tempfile.mkdtemp(prefix="fjdoc-"))
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    # `forkjoin` in shell examples is the console script of the interpreter running the tests
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    try:
        _run_examples(script, shell, page, tmp_path, run_dir, env, deadline, where)
        left = [p.name for p in private_tmp.iterdir() if "forkjoin" in p.name.lower()]
        assert not left, f"the examples in {where} left temporary files behind: {left}"
    finally:
        shutil.rmtree(private_tmp, ignore_errors=True)


def _run_examples(script: str, shell: str, page: Path, tmp_path: Path, run_dir: Path,
                  env: dict[str, str], deadline: float, where: str) -> None:  # fmt: skip
    if script.strip():
        # run as a script would, compiled under the page's name: tracebacks say "page.md", line N
        runner = (
            "import sys; page = sys.argv[1]; "
            "exec(compile(open(page).read(), page, 'exec'), {'__name__': '__main__'})"
        )
        path = tmp_path / page.name
        path.write_text(script)
        done = subprocess.run(
            [sys.executable, "-c", runner, str(path)],
            cwd=run_dir,
            capture_output=True,
            text=True,
            timeout=deadline - time.monotonic(),
            env=env,
        )
        assert done.returncode == 0, f"an example in {where} failed:\n{done.stderr[-4000:]}"
    if shell.strip():
        path = tmp_path / f"{page.stem}.sh"
        path.write_text(shell)
        done = subprocess.run(
            ["bash", "-euo", "pipefail", str(path)],
            cwd=run_dir,
            capture_output=True,
            text=True,
            timeout=deadline - time.monotonic(),
            env=env,
        )
        assert done.returncode == 0, (
            f"a shell example in {where} failed (line {_last_line(done)}):\n"
            f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )


def _last_line(done: subprocess.CompletedProcess) -> str:
    """bash reports '<file>: line N:' for some errors; else the page's last command ran."""
    match = re.search(r"line (\d+):", done.stderr)
    return match[1] if match else "?"


def test_example_extraction_keeps_line_numbers() -> None:
    page = (
        "# Title\n\nText.\n\n```python\nx = 1\n```\n\n"
        "```text\nnot code\n```\n\n```python\ny = x\n```\n"
    )
    blocks = code_blocks(page)
    assert [(lang, first) for lang, first, _ in blocks] == [
        ("python", 6),
        ("text", 10),
        ("python", 14),
    ]


def test_every_python_block_compiles_and_starts_at_the_margin() -> None:
    assert PAGES, "docs/ has pages"
    for page in EXAMPLE_PAGES:
        compile(example_script(page), str(page), "exec")
        indented = re.findall(r"^ +```+ *python", page.read_text(), flags=re.MULTILINE)
        assert not indented, f"{page}: an indented ```python block would not be run; unindent it"


# --- examples in docstrings (the API reference shows them) --------------------------------------

REFERENCE_MODULES_WITHOUT_ALL = ("forkjoin.integrations.joblib",)


def reference_doctests() -> list[doctest.DocTest]:
    """The ``>>>`` examples of everything the API reference renders: each API module's
    docstring, and each public name with its methods. ``fj`` is forkjoin, as in the docs."""
    finder = doctest.DocTestFinder()
    found: dict[tuple[str | None, int | None, str], doctest.DocTest] = {}
    globs = {"fj": fj}
    for module_name, names in public_api().items():
        module = importlib.import_module(module_name)
        for test in doctest.DocTestFinder(recurse=False).find(module, module_name, globs=globs):
            found[(test.filename, test.lineno, test.name)] = test
        for name in names:
            value = getattr(module, name)
            if not (inspect.isclass(value) or inspect.isroutine(value)):
                continue
            for test in finder.find(value, f"{module_name}.{name}", module=False, globs=globs):
                found.setdefault((test.filename, test.lineno, test.docstring or ""), test)
    for module_name in REFERENCE_MODULES_WITHOUT_ALL:
        module = importlib.import_module(module_name)
        for test in finder.find(module, module_name, globs=globs):
            found[(test.filename, test.lineno, test.name)] = test
    return [test for test in found.values() if test.examples]


@pytest.mark.slow
def test_docstring_examples_in_the_reference_run() -> None:
    require("pyarrow")
    require("joblib")
    tests = reference_doctests()
    assert len(tests) >= 3, "the reference shows docstring examples (forkjoin, data, shared...)"
    output = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test, out=output.write)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"docstring examples failed:\n{output.getvalue()}"


# --- the build ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """docs/ built once per module, from scratch, with warnings as errors."""
    require("sphinx")
    require("myst_parser")
    out = tmp_path_factory.mktemp("docs-html")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-E",
            "-q",
            "-b",
            "html",
            str(DOCS),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, f"docs build failed (warnings are errors):\n{done.stderr}"
    print(f"docs built in {time.monotonic() - started:.1f} s")
    return out


@pytest.mark.slow
def test_docs_build_with_warnings_as_errors(built_docs: Path) -> None:
    assert (built_docs / "index.html").is_file()
    for page in PAGES:
        relative = page.relative_to(DOCS).with_suffix(".html")
        assert (built_docs / relative).is_file(), f"{page} is not in the built site (toctree?)"


def public_api() -> dict[str, list[str]]:
    """Module -> its public names: forkjoin.__all__ and each layer's __all__."""
    modules = ["forkjoin", *(f"forkjoin.{layer}" for layer in fj._LAYERS)]
    return {m: list(importlib.import_module(m).__all__) for m in modules}


@pytest.mark.slow
def test_every_public_name_is_in_the_reference(built_docs: Path) -> None:
    from sphinx.util.inventory import InventoryFile

    with open(built_docs / "objects.inv", "rb") as stream:
        inventory = InventoryFile.load(stream, "", os.path.join)
    documented = {
        name
        for kind, entries in _inventory_items(inventory)
        if kind.startswith("py:")
        for name in entries
    }
    missing = [
        f"{module}.{name}"
        for module, names in public_api().items()
        for name in names
        if f"{module}.{name}" not in documented
    ]
    assert not missing, (
        f"public names missing from the API reference: {missing}; a new layer needs a page "
        "docs/reference/<layer>.rst with '.. forkjoin-api:: forkjoin.<layer>' in its toctree"
    )
    modules = {
        name
        for kind, entries in _inventory_items(inventory)
        if kind == "py:module"
        for name in entries
    }
    assert set(public_api()) <= modules


def _inventory_items(inventory: object) -> list[tuple[str, dict]]:
    """(kind, {name: entry}) pairs of an inventory, across Sphinx versions' return types."""
    data = getattr(inventory, "data", inventory)
    return list(data.items())  # type: ignore[attr-defined]


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"] or "")
        if tag in ("a", "link") and values.get("href"):
            self.hrefs.append(values["href"] or "")


@pytest.mark.slow
def test_internal_links_in_the_built_site_resolve(built_docs: Path) -> None:
    parsed: dict[Path, _Links] = {}

    def parse(path: Path) -> _Links:
        if path not in parsed:
            links = _Links()
            links.feed(path.read_text(errors="replace"))
            parsed[path] = links
        return parsed[path]

    broken = []
    pages = sorted(built_docs.rglob("*.html"))
    for page in pages:
        for href in parse(page).hrefs:
            parts = urlsplit(href)
            if parts.scheme or parts.netloc or href.startswith(("mailto:", "javascript:")):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(built_docs)} -> {href}")
            elif parts.fragment and target.suffix == ".html":
                if unquote(parts.fragment) not in parse(target).ids:
                    broken.append(f"{page.relative_to(built_docs)} -> {href} (no such anchor)")
    assert len(pages) > 10
    assert not broken, "broken internal links:\n" + "\n".join(broken)


MARKDOWN_LINK = re.compile(r"\]\((?!https?://|mailto:|#)([^)\s]+)\)")


@pytest.mark.parametrize("name", ["README.md", "CHANGELOG.md"])
def test_relative_links_outside_docs_resolve(name: str) -> None:
    text = (ROOT / name).read_text()
    targets = MARKDOWN_LINK.findall(text)
    missing = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"{name} links to files that do not exist: {missing}"


def test_readme_points_to_the_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/index.md" in readme and "docs/getting-started.md" in readme


def test_aligned_option_lists_become_definition_lists() -> None:
    spec = importlib.util.spec_from_file_location("forkjoin_api", DOCS / "_ext" / "forkjoin_api.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lines = [
        "How one call runs.",
        "",
        "workers:   number of slots.",
        "backend:   where tasks run,",
        "           continued here.",
        "seed:      a seed.",
        "",
        "Note: not a list.",
    ]
    assert module.aligned_lists_to_definitions(lines) == [
        "How one call runs.",
        "",
        "``workers``",
        "    number of slots.",
        "``backend``",
        "    where tasks run,",
        "    continued here.",
        "``seed``",
        "    a seed.",
        "",
        "",
        "Note: not a list.",
    ]
