"""Compile the per-event modules with mypyc; everything else is in pyproject.toml.

Set ALERTWARDEN_COMPILE=0 to build a pure Python package. Without a C compiler, when any
extension module fails to build, or when mypyc rejects the sources, the build falls back to it
with a warning (see docs/operations.md, Compiled modules).
"""

import os
import runpy
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
SOURCE_ROOT = HERE / "src"
GROUP_NAME = "alertwarden"
"""mypyc's group: one shared library, alertwarden__mypyc, that every compiled module imports."""


def warn(message: str) -> None:
    print(f"warning: not compiling the per-event modules: {message}", file=sys.stderr)


def compiled_modules() -> list[str]:
    # native.py has no imports from the package, so it runs without the dependencies installed.
    return runpy.run_path(str(SOURCE_ROOT / "alertwarden" / "native.py"))["COMPILED_MODULES"]


def remove_extension_modules() -> None:
    """Delete extension modules that an earlier `pip install -e .` left next to the sources.

    Python imports them before the sources, so a pure Python build would otherwise go on
    running them.
    """
    names = [*compiled_modules(), f"{GROUP_NAME}__mypyc"]
    for name in names:
        source = SOURCE_ROOT.joinpath(*name.split("."))
        for path in source.parent.glob(source.name + ".*.so"):
            path.unlink()


class BuildAllOrNone(build_ext):
    """Build every extension module or none: each compiled module needs the shared library."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # noqa: BLE001 - compiler and linker failures have many types
            warn(f"building an extension module failed: {error}")
            for extension in self.extensions:
                built = Path(self.get_ext_fullpath(extension.name))
                in_place = SOURCE_ROOT / self.get_ext_filename(extension.name)
                for path in (built, in_place):
                    if path.exists():
                        path.unlink()
            self.extensions = []


def compiled_extensions() -> list:
    if os.environ.get("ALERTWARDEN_COMPILE", "1") == "0":
        remove_extension_modules()
        return []
    from mypyc.build import mypycify

    paths = ["src/" + module.replace(".", "/") + ".py" for module in compiled_modules()]
    try:
        return mypycify(
            ["--config-file", str(HERE / "pyproject.toml"), *paths], opt_level="3", group_name=GROUP_NAME
        )
    except (Exception, SystemExit) as error:  # noqa: BLE001 - mypy reports type errors by exiting
        # A mypy release that rejects the sources must not make the package uninstallable.
        warn(f"mypyc failed: {error!r}")
        remove_extension_modules()
        return []


setup(ext_modules=compiled_extensions(), cmdclass={"build_ext": BuildAllOrNone})
