"""The text corpus of bench_inference.py: docstring paragraphs and comment blocks of Python code
that pip installs (the standard library first, then numpy, pandas, torch, transformers...).

Nobody here wrote it, it installs offline with the packages the benchmark needs anyway, and it
is real English technical prose of sentence to paragraph length (20-400 characters). Texts are
unique, in a fixed order (sorted module paths), cached as Parquet so a rerun does not parse
again."""

from __future__ import annotations

import ast
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

# Where texts come from, in order, until enough are found.
PACKAGES = ("numpy", "pandas", "torch", "transformers", "sklearn", "scipy", "pyarrow", "ray")
MIN_CHARS = 20
MAX_CHARS = 400  # sentence-length texts: a model call costs what the padded batch holds
ROW_GROUP_ROWS = 2048  # a partition per ~2k texts: many blocks to spread over the workers


def roots() -> Iterator[str]:
    yield sysconfig.get_paths()["stdlib"]
    for name in PACKAGES:
        try:
            module = __import__(name)
        except ImportError:
            continue
        if getattr(module, "__file__", None):
            yield os.path.dirname(module.__file__)


def texts_of(source: str) -> Iterator[str]:
    block: list[str] = []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
            continue
        if block:
            yield " ".join(part for part in block if part)
            block = []
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node)
            if doc:
                for paragraph in doc.split("\n\n"):
                    yield " ".join(paragraph.split())


def collect(count: int) -> list[str]:
    seen: dict[str, None] = {}
    for root in roots():
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "__pycache__"))
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                try:
                    source = Path(folder, name).read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                for text in texts_of(source):
                    if MIN_CHARS <= len(text) <= MAX_CHARS and text not in seen:
                        seen[text] = None
                        if len(seen) >= count:
                            return list(seen)
    if len(seen) < count:
        raise RuntimeError(
            f"only {len(seen):,} texts found in the installed packages; ask for fewer rows "
            f"or pip install {' '.join(PACKAGES)}"
        )
    return list(seen)


def corpus(path: str, count: int) -> str:
    """A Parquet file of ``count`` texts (column ``text``, plus ``id``) at ``path``: made once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not os.path.exists(path):
        texts = collect(count)
        table = pa.table({"id": pa.array(range(count), pa.int64()), "text": texts})
        staging = f"{path}.tmp"
        pq.write_table(table, staging, row_group_size=ROW_GROUP_ROWS)
        os.replace(staging, path)
    return path
