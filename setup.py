"""Compile the per-event modules with mypyc; everything else is in pyproject.toml.

Set ALERTWARDEN_COMPILE=0 to build a pure Python package. Without a C compiler, or when mypyc
rejects the sources, the build falls back to it with a warning: the extension modules are
optional (see docs/operations.md, Compiled modules).
"""

import os
import runpy
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def compiled_extensions() -> list:
    if os.environ.get("ALERTWARDEN_COMPILE", "1") == "0":
        return []
    from mypyc.build import mypycify

    # native.py has no imports from the package, so it runs without the dependencies installed.
    modules = runpy.run_path(str(HERE / "src" / "alertwarden" / "native.py"))["COMPILED_MODULES"]
    paths = ["src/" + module.replace(".", "/") + ".py" for module in modules]
    try:
        extensions = mypycify(
            ["--config-file", str(HERE / "pyproject.toml"), *paths], opt_level="3", group_name="alertwarden"
        )
    except (Exception, SystemExit) as error:  # noqa: BLE001 - mypy reports type errors by exiting
        # A mypy release that rejects the sources must not make the package uninstallable.
        print(f"warning: not compiling the per-event modules, mypyc failed: {error!r}", file=sys.stderr)
        return []
    for extension in extensions:
        extension.optional = True
    return extensions


setup(ext_modules=compiled_extensions())
