"""Pytest plugin that serves TimescaleDB over the PostgreSQL protocol from PGlite.

The server is tests/pglite/server.mjs: PGlite (PostgreSQL 17 compiled to WASM) with TimescaleDB 2.23,
from the npm package pinned in tests/pglite/package.json, behind PGLiteSocketServer on 127.0.0.1.
The npm packages are installed once into a cache folder keyed by a hash of package.json and
package-lock.json: ALERTWARDEN_PGLITE_CACHE sets the parent folder (default ~/.cache/alertwarden).

The fixture fails when node or npm is missing, because a silent skip would hide that the
TimescaleDB path went untested. ALERTWARDEN_SKIP_TIMESCALE=1 turns that failure into a skip.

PGlite runs a single backend, so the server serves one client at a time and a second client
waits until the first disconnects. Session state (settings, prepared statements, advisory locks,
an unfinished transaction) carries over from one client to the next: tests/pglite/README.md lists
what a client must do about it.
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent / "pglite"
SERVER_SCRIPT = "server.mjs"
PACKAGE_FILES = ("package.json", "package-lock.json")
READY_PREFIX = "PGLITE READY port="
INSTALLED_MARKER = ".alertwarden-installed"

SKIP_ENV = "ALERTWARDEN_SKIP_TIMESCALE"
CACHE_ENV = "ALERTWARDEN_PGLITE_CACHE"
START_TIMEOUT_ENV = "ALERTWARDEN_PGLITE_START_TIMEOUT_S"

# An estimate with margin: the first start unpacks the WASM PostgreSQL and the TimescaleDB
# bundle, which took about 3 s on a 2-core machine.
DEFAULT_START_TIMEOUT_S = 60.0
NPM_INSTALL_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class PgliteServer:
    """A running server.mjs process and the URL that reaches it."""

    process: subprocess.Popen[str]
    port: int
    stderr_path: Path

    @property
    def url(self) -> str:
        # PGlite replies to the SSL request with a byte that libpq rejects, so SSL must be off.
        # The user, password and database name are ignored: every client gets the one database.
        return f"postgresql://postgres:postgres@127.0.0.1:{self.port}/postgres?sslmode=disable"


def _skip_requested() -> bool:
    return os.environ.get(SKIP_ENV, "") == "1"


def _fail_or_skip(message: str) -> None:
    if _skip_requested():
        pytest.skip(f"{message} ({SKIP_ENV}=1)")
    pytest.fail(f"{message}. Set {SKIP_ENV}=1 to skip the TimescaleDB tests instead.", pytrace=False)


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        _fail_or_skip(
            f"{name} not found on PATH: the TimescaleDB tests need Node.js 20 or later and npm "
            f"to run tests/pglite/server.mjs (Debian: apt-get install nodejs npm)"
        )
        raise AssertionError("unreachable: _fail_or_skip raises")
    return path


def package_hash() -> str:
    """Return a short hash of the npm manifest and lock file, which names the install folder."""
    digest = hashlib.sha256()
    for name in PACKAGE_FILES:
        path = PACKAGE_DIR / name
        if path.exists():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """Return the folder that contains node_modules for the current package.json."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "alertwarden"
    return base / f"pglite-{package_hash()}"


def _run_npm_install(npm: str, target: Path) -> None:
    has_lock = (target / "package-lock.json").exists()
    command = [npm, "ci" if has_lock else "install", "--no-audit", "--no-fund", "--loglevel=error"]
    try:
        result = subprocess.run(
            command,
            cwd=target,
            capture_output=True,
            text=True,
            timeout=NPM_INSTALL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        _fail_or_skip(f"{' '.join(command)} in {target} timed out after {NPM_INSTALL_TIMEOUT_S:.0f} s")
        return
    if result.returncode != 0:
        _fail_or_skip(
            f"{' '.join(command)} in {target} failed with exit code {result.returncode}: "
            f"{result.stderr.strip()[-2000:]}"
        )


def ensure_installed(npm: str) -> Path:
    """Install the pinned npm packages into cache_dir() unless a finished install is there.

    The install runs in a temporary sibling folder that is renamed into place, so an
    interrupted install never looks finished and two sessions never share a half-made folder.
    """
    target = cache_dir()
    if (target / INSTALLED_MARKER).exists():
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
    try:
        for name in PACKAGE_FILES:
            source = PACKAGE_DIR / name
            if source.exists():
                shutil.copy2(source, staging / name)
        _run_npm_install(npm, staging)
        (staging / INSTALLED_MARKER).write_text(package_hash() + "\n")
        if (target / INSTALLED_MARKER).exists():
            # Another session finished the same install meanwhile, so this one uses it.
            return target
        if target.exists():
            # A folder without the marker is a crashed install, so it is replaced.
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:
            # Another session finished the same install first, so this one uses it.
            if not (target / INSTALLED_MARKER).exists():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _copy_server_script(install_dir: Path) -> Path:
    # Node resolves the script's imports from the script's own folder, so the script must sit
    # beside node_modules. It is copied on every start so that edits take effect at once.
    script = install_dir / SERVER_SCRIPT
    staged = install_dir / f".{SERVER_SCRIPT}.{os.getpid()}"
    shutil.copy2(PACKAGE_DIR / SERVER_SCRIPT, staged)
    staged.replace(script)
    return script


def _start_timeout_s() -> float:
    raw = os.environ.get(START_TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_START_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        pytest.fail(f"{START_TIMEOUT_ENV}={raw!r} is invalid: set a positive number of seconds", pytrace=False)
    return value


def _read_lines(stream: object, lines: queue.Queue[str | None]) -> None:
    assert hasattr(stream, "readline")
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


def _wait_ready(
    process: subprocess.Popen[str], lines: queue.Queue[str | None], stderr_path: Path, timeout_s: float
) -> int:
    try:
        while True:
            line = lines.get(timeout=timeout_s)
            if line is None:
                break
            if line.startswith(READY_PREFIX):
                return int(line[len(READY_PREFIX) :].strip())
    except queue.Empty:
        _stop_process(process)
        pytest.fail(
            f"pglite server did not print '{READY_PREFIX}<port>' within {timeout_s:.0f} s; "
            f"raise {START_TIMEOUT_ENV} on a slow machine. stderr: {_tail(stderr_path)}",
            pytrace=False,
        )
    process.wait(timeout=STOP_TIMEOUT_S)
    pytest.fail(
        f"pglite server exited with code {process.returncode} before it was ready. stderr: {_tail(stderr_path)}",
        pytrace=False,
    )
    raise AssertionError("unreachable: pytest.fail raises")


def _tail(path: Path, max_chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace").strip()[-max_chars:]
    except OSError as error:
        return f"<cannot read {path}: {error}>"


def _stop_process(process: subprocess.Popen[str]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


@contextmanager
def running_pglite_server() -> Iterator[PgliteServer]:
    """Install the npm packages if needed, start server.mjs on a free loopback port, stop it on exit.

    The server binds port 0 and prints the port the OS chose, so no other process can take
    the port between choosing and binding it.
    """
    node = _require_tool("node")
    npm = _require_tool("npm")
    install_dir = ensure_installed(npm)
    script = _copy_server_script(install_dir)
    timeout_s = _start_timeout_s()

    with tempfile.TemporaryDirectory(prefix="alertwarden-pglite-") as log_dir:
        stderr_path = Path(log_dir) / "server.stderr"
        with stderr_path.open("w") as stderr:
            process = subprocess.Popen(
                [node, str(script), "0"],
                cwd=install_dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True)
        reader.start()
        try:
            port = _wait_ready(process, lines, stderr_path, timeout_s)
            yield PgliteServer(process=process, port=port, stderr_path=stderr_path)
        finally:
            _stop_process(process)
            # The reader ends at end of file once the process is gone; closing the pipe under it
            # earlier would raise in that thread.
            reader.join(timeout=STOP_TIMEOUT_S)
            if process.stdout is not None:
                process.stdout.close()


@pytest.fixture(scope="session")
def timescale_url() -> Iterator[str]:
    """Yield a postgresql:// URL of a PGlite server with TimescaleDB, shared by the whole session."""
    with running_pglite_server() as server:
        yield server.url
