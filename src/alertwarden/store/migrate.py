"""Schema migrations of the PostgreSQL store: versioned SQL files applied in order.

Each step runs in its own transaction under a transaction-level advisory lock, and the runner
reads the applied versions again after taking the lock. So several nodes can run `migrate` at
once: the first one applies a step, the others wait for its commit and then skip it. The table
schema_migrations records the version, name and SHA-256 checksum of every applied file. A file
edited after it was applied fails the run, because databases in the field already ran the old
text: add a new file instead.

Step 2 has one file per history backend, chosen when it runs: a TimescaleDB hypertable where the
timescaledb extension is available, native daily range partitions otherwise.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from alertwarden.errors import StoreError
from alertwarden.logs import get_logger
from alertwarden.store.postgres import with_connection_defaults

log = get_logger(__name__)

MIGRATION_LOCK_KEY = 0x616C_6572_7477_6400
"""Key of the advisory lock that serialises migration runs (the ASCII bytes of "alertwd\\0")."""

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")

_CREATE_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class HistoryBackend(enum.StrEnum):
    AUTO = "auto"
    TIMESCALEDB = "timescaledb"
    PARTITIONED = "partitioned"


@dataclass(frozen=True, slots=True)
class MigrationFile:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migration_files() -> dict[int, list[MigrationFile]]:
    """Return the packaged migration files by version; a version has several backend variants."""
    by_version: dict[int, list[MigrationFile]] = {}
    for entry in resources.files("alertwarden.store.migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        file = MigrationFile(int(match["version"]), entry.name[:-4], entry.read_text("utf-8"))
        by_version.setdefault(file.version, []).append(file)
    return dict(sorted(by_version.items()))


def _choose_variant(variants: list[MigrationFile], backend: HistoryBackend) -> MigrationFile:
    if len(variants) == 1:
        return variants[0]
    suffix = f"_{backend.value}"
    for file in variants:
        if file.name.endswith(suffix):
            return file
    names = [file.name for file in variants]
    raise StoreError(f"no migration variant for history backend {backend.value!r} among {names}")


async def migrate(
    url: str,
    *,
    history_backend: str = "auto",
    compress_after_s: int = 86400,
    retention_s: int = 7 * 86400,
) -> list[int]:
    """Apply the pending migrations to the database at `url` and return the applied versions.

    history_backend: auto (timescaledb when the extension is available, partitioned otherwise),
    timescaledb or partitioned. compress_after_s and retention_s set the history policies and
    are recorded in alertwarden_settings; they take effect only when the history step runs.
    """
    backend = _parse_backend(history_backend)
    for field, value in (("compress_after_s", compress_after_s), ("retention_s", retention_s)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise StoreError(f"invalid {field} {value!r}: expected a positive whole number of seconds")

    files = migration_files()
    applied: list[int] = []
    try:
        # The connection defaults bound the wait on a server that accepts the connection but
        # never responds. Without them the migration, and so a start of serve, would hang.
        async with await psycopg.AsyncConnection.connect(
            with_connection_defaults(url), autocommit=True
        ) as conn:
            # Resolved before any step runs, so a missing extension fails the run before it
            # changes anything.
            resolved = await _resolve_backend(conn, backend)
            while True:
                version = await _apply_next(
                    conn,
                    files,
                    requested=backend,
                    resolved=resolved,
                    compress_after_s=compress_after_s,
                    retention_s=retention_s,
                )
                if version is None:
                    break
                applied.append(version)
    except psycopg.Error as exc:
        raise StoreError(f"PostgreSQL migration failed: {exc}") from exc
    log.info("postgres_migrations_done", applied=applied)
    return applied


def _parse_backend(value: str) -> HistoryBackend:
    try:
        return HistoryBackend(value)
    except ValueError:
        raise StoreError(
            f"invalid history_backend {value!r}: expected one of"
            f" {[backend.value for backend in HistoryBackend]}"
        ) from None


async def _apply_next(
    conn: psycopg.AsyncConnection,
    files: dict[int, list[MigrationFile]],
    *,
    requested: HistoryBackend,
    resolved: HistoryBackend,
    compress_after_s: int,
    retention_s: int,
) -> int | None:
    """Apply the first pending step in one transaction and return its version, or None."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        await conn.execute(_CREATE_BOOKKEEPING)
        cursor = await conn.execute("SELECT version, name, checksum FROM schema_migrations")
        recorded = {version: (name, checksum) for version, name, checksum in await cursor.fetchall()}
        # An explicit backend must match the recorded one; auto accepts whatever was chosen.
        _verify(recorded, files, requested)

        pending = [version for version in files if version not in recorded]
        if not pending:
            return None
        version = pending[0]
        file = _choose_variant(files[version], resolved)

        await conn.execute(
            "SELECT set_config('alertwarden.compress_after_s', %s, true),"
            " set_config('alertwarden.retention_s', %s, true)",
            (str(compress_after_s), str(retention_s)),
        )
        # The files are packaged with alertwarden, never built from input, so they run as SQL.
        # Bytes are a valid query type, so no cast of the file text to LiteralString is needed.
        await conn.execute(file.sql.encode())
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
            (version, file.name, file.checksum),
        )
    log.info("postgres_migration_applied", version=version, name=file.name)
    return version


def _verify(
    recorded: dict[int, tuple[str, str]],
    files: dict[int, list[MigrationFile]],
    backend: HistoryBackend,
) -> None:
    for version, (name, checksum) in sorted(recorded.items()):
        variants = {file.name: file for file in files.get(version, [])}
        if not variants:
            raise StoreError(
                f"database has migration {version} ({name}) that this alertwarden does not"
                " contain: upgrade alertwarden or use another database"
            )
        file = variants.get(name)
        if file is None:
            raise StoreError(
                f"database recorded migration {version} as {name!r}, which is not one of"
                f" {sorted(variants)}: the database was migrated by another alertwarden build"
            )
        if file.checksum != checksum:
            raise StoreError(
                f"checksum mismatch for applied migration {name}: the file changed after it ran."
                " Restore the released file and add the change as a new migration"
            )
        if len(variants) > 1 and backend is not HistoryBackend.AUTO:
            if not name.endswith(f"_{backend.value}"):
                raise StoreError(
                    f"history_backend {backend.value!r} was requested, but the database was"
                    f" migrated with {name!r}: use --history-backend auto (history_backend='auto') or another database"
                )


async def _resolve_backend(conn: psycopg.AsyncConnection, backend: HistoryBackend) -> HistoryBackend:
    cursor = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')"
    )
    row = await cursor.fetchone()
    available = bool(row and row[0])
    if backend is HistoryBackend.AUTO:
        return HistoryBackend.TIMESCALEDB if available else HistoryBackend.PARTITIONED
    if backend is HistoryBackend.TIMESCALEDB and not available:
        raise StoreError(
            "history_backend 'timescaledb' was requested, but the timescaledb extension is not"
            " available on this server: install it or use --history-backend partitioned (history_backend='partitioned')"
        )
    return backend
