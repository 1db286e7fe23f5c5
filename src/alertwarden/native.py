"""The modules that the build compiles with mypyc, and the choice between them and their sources.

Every event passes through these modules. Compiled, they let `serve` evaluate 1.3 to 1.4 times
as many events per second (bench/README.md, Compiled modules and several processes). An
installed package contains both the extension modules and the sources, and Python imports an
extension module before a source file of the same name.

In a source checkout installed with `pip install -e .`, the extension modules are built next to
the sources, and editing a source leaves its extension module stale: Python would go on running
the old code. When any compiled module is older than its source there, or when
ALERTWARDEN_PURE_PYTHON=1 is set, `use_sources_when_needed` makes Python import all of them from
their sources. All or none, because the compiled modules call each other's functions directly.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

COMPILED_MODULES = (
    "alertwarden.events",
    "alertwarden.engine.table",
    "alertwarden.engine.evaluator",
    "alertwarden.rules.match",
    "alertwarden.sources.timestamps",
    "alertwarden.sources.jsonl",
    "alertwarden.sources.pull",
    "alertwarden.pipeline",
    "alertwarden.service.batch",
)
"""Modules on the per-event path; setup.py compiles these and no others.

NOTE: service/worker.py stays interpreted. When it was compiled together with pipeline.py, a
stopping worker's final flush ended in a CancelledError (mypy 2.4.1, CPython 3.11.7). Its remote
sink's stop had already caught that error, and the cause in mypyc is not known. The end-to-end
test in tests/test_serve.py fails that way. The worker's per-record loop is in service/batch.py.
"""

PURE_PYTHON_VARIABLE = "ALERTWARDEN_PURE_PYTHON"

_PACKAGE_DIR = Path(__file__).resolve().parent


def source_path(module: str, package_dir: Path = _PACKAGE_DIR) -> Path:
    return package_dir.joinpath(*module.split(".")[1:]).with_suffix(".py")


def stale_modules(package_dir: Path = _PACKAGE_DIR) -> list[str]:
    """Return the compiled modules whose source changed after their extension module was built."""
    stale: list[str] = []
    for module in COMPILED_MODULES:
        source = source_path(module, package_dir)
        if not source.exists():
            continue
        built = [source.with_name(source.stem + suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES]
        if any(path.exists() and source.stat().st_mtime > path.stat().st_mtime for path in built):
            stale.append(module)
    return stale


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Find the compiled modules as source files, ahead of the path finder's extension modules."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED_MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def _in_source_checkout() -> bool:
    """Return True for a package imported from src/ of a checkout, where pip builds in place."""
    return _PACKAGE_DIR.parent.name == "src" and (_PACKAGE_DIR.parents[1] / "pyproject.toml").exists()


def use_sources_when_needed() -> str | None:
    """Import the compiled modules from source when asked to or when stale; return the reason.

    Run before any of them is imported: the package's __init__ calls it.
    """
    stale = stale_modules() if _in_source_checkout() else []
    if os.environ.get(PURE_PYTHON_VARIABLE, "") not in ("", "0"):
        reason = f"{PURE_PYTHON_VARIABLE} is set"
    elif stale:
        reason = (
            f"{len(stale)} compiled module(s) are older than their source, {stale[0]} first; "
            "run `pip install -e .` again to rebuild them"
        )
    else:
        return None
    if not any(isinstance(finder, _SourceFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())
    return reason


def is_compiled() -> bool:
    """Return True when the evaluator runs as a compiled extension module."""
    from alertwarden.engine import evaluator

    return not (evaluator.__file__ or "").endswith(".py")
