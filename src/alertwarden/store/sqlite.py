"""The embedded state store: one SQLite file that stores group snapshots, checkpoints and history.

The methods are `async def` to fit the StateStore protocol but call sqlite3 directly, because
each call is a short local transaction. No method awaits while a transaction is open, so two
coroutines never interleave statements on the one shared connection.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import struct
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import orjson

from alertwarden.engine.records import (
    Checkpoint,
    FlushBatch,
    GroupKey,
    GroupSnapshot,
    GroupStatus,
    Transition,
)
from alertwarden.errors import StoreError
from alertwarden.logs import get_logger
from alertwarden.store.base import HistoryRecord, StoredState
from alertwarden.store.checks import (
    PREVIEW_CHARS,
    check_int64,
    check_optional_time,
    check_scope,
    check_text,
    check_time,
    check_transition,
    snapshot_from_row,
    encode_key,
    preview,
)
from alertwarden.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION

log = get_logger(__name__)

HISTORY_LIMIT_MAX = 10_000
"""Upper bound on the rows one history() call returns, whatever `limit` the caller passes."""

BUSY_TIMEOUT_MS = 5_000
"""How long a write waits for another connection's write lock before it fails."""

_UINT32_MAX = 2**32 - 1

# Bucket counts are stored as little-endian uint32, 4 bytes per bucket. A blob has a fixed size
# per window, decodes with one struct.unpack instead of a JSON parse on every load, and cannot
# hold a negative or fractional count. The cost is the 2**32 - 1 limit per bucket, checked below.
_COUNT_FORMAT = "<{}I"

_GROUP_COLUMNS = (
    "rule_id, group_key, window_s, bucket_s, counts, head_bucket, last_seen_at,"
    " last_fired_at, last_notified_at, status, suppressed, position"
)

# The WHERE clause of the update is the position guard: a snapshot taken at an earlier input step
# than the stored one never replaces it, so a late flush cannot undo a state that
# record_transitions wrote ahead of the checkpoint.
_UPSERT_GROUP = f"""
INSERT INTO groups (tenant, rule_group, {_GROUP_COLUMNS})
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (tenant, rule_group, rule_id, group_key) DO UPDATE SET
    window_s = excluded.window_s,
    bucket_s = excluded.bucket_s,
    counts = excluded.counts,
    head_bucket = excluded.head_bucket,
    last_seen_at = excluded.last_seen_at,
    last_fired_at = excluded.last_fired_at,
    last_notified_at = excluded.last_notified_at,
    status = excluded.status,
    suppressed = excluded.suppressed,
    position = excluded.position
WHERE excluded.position >= groups.position
"""

# A forgotten group is deleted only when its row is not newer than the flush's checkpoint, for
# the same reason as the upsert guard.
_DELETE_GROUP = """
DELETE FROM groups
WHERE tenant = ? AND rule_group = ? AND rule_id = ? AND group_key = ? AND position <= ?
"""

# An obsolete group's row is deleted whatever its position (see FlushBatch.obsolete).
_DELETE_OBSOLETE_GROUP = """
DELETE FROM groups WHERE tenant = ? AND rule_group = ? AND rule_id = ? AND group_key = ?
"""

_UPSERT_CHECKPOINT = """
INSERT INTO checkpoints (tenant, rule_group, source, "offset", position, now, ticked, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (tenant, rule_group) DO UPDATE SET
    source = excluded.source,
    "offset" = excluded."offset",
    position = excluded.position,
    now = excluded.now,
    ticked = excluded.ticked,
    updated_at = excluded.updated_at
"""

_INSERT_HISTORY = """
INSERT INTO history
    (tenant, rule_group, transition_id, at, rule_id, group_json, kind, count, details, delivered)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)
ON CONFLICT (tenant, transition_id) DO NOTHING
"""

_HISTORY_COLUMNS = (
    "id, tenant, rule_group, transition_id, at, rule_id, group_json, kind, count, details,"
    " delivered"
)


class SQLiteStore:
    """StateStore on one SQLite database file, or on a private in-memory one for `":memory:"`."""

    def __init__(self, path: str | Path, *, exclusive: bool = False) -> None:
        self._path = str(path)
        self._conn: sqlite3.Connection | None = None
        # With `exclusive`, open() takes a lock on `<path>.lock` that one process holds at a
        # time: two runs on one state file would both replay and both notify.
        self._exclusive = exclusive and self._path != ":memory:"
        self._lock_file: IO[str] | None = None

    async def open(self) -> None:
        """Connect, set the pragmas and apply pending migrations. A second call does nothing.

        Raises StoreError when `exclusive` is set and another process holds the state file.
        """
        if self._conn is not None:
            return
        if self._exclusive:
            self._lock_file = _lock_state_file(self._path)
        try:
            await self._connect()
        except BaseException:
            self._release_lock()
            raise

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor releases the flock
            self._lock_file = None

    async def _connect(self) -> None:
        with self._translate_errors("open"):
            conn = sqlite3.connect(self._path, isolation_level=None)
        try:
            with self._translate_errors("open"):
                _configure(conn, self._path)
            applied = self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        log.info(
            "state_store_opened",
            path=self._path,
            schema_version=SCHEMA_VERSION,
            migrations_applied=applied,
        )

    async def close(self) -> None:
        """Close the connection. Calling it on a closed store does nothing."""
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            with self._translate_errors("close"):
                conn.close()
        finally:
            self._release_lock()
        log.info("state_store_closed", path=self._path)

    async def load(self, tenant: str, rule_group: str) -> StoredState:
        """Return every stored group snapshot of the rule group, by rule id, and its checkpoint."""
        check_scope(tenant, rule_group)
        # One read transaction, so the groups and the checkpoint come from the same commit even
        # while another process writes.
        with self._transaction("load", "DEFERRED") as conn:
            group_rows = conn.execute(
                f"SELECT {_GROUP_COLUMNS} FROM groups WHERE tenant = ? AND rule_group = ?"
                " ORDER BY rule_id, group_key",
                (tenant, rule_group),
            ).fetchall()
            checkpoint_row = conn.execute(
                'SELECT source, "offset", position, now, ticked FROM checkpoints'
                " WHERE tenant = ? AND rule_group = ?",
                (tenant, rule_group),
            ).fetchone()

        state = StoredState()
        with _translate_decode_errors(tenant, rule_group):
            for row in group_rows:
                snapshot = snapshot_from_row(row, _decode_counts)
                state.groups.setdefault(snapshot.rule_id, []).append(snapshot)
            if checkpoint_row is not None:
                state.checkpoint = _checkpoint_from_row(checkpoint_row)
        return state

    async def record_transitions(
        self, tenant: str, rule_group: str, transitions: Sequence[Transition]
    ) -> list[int]:
        """Insert the history rows and upsert the snapshots of the transitions in one transaction.

        Returns the history id of each transition, in order. A transition already recorded keeps
        its row and returns that row's id, so a retry after a crash is harmless.
        """
        check_scope(tenant, rule_group)
        history_rows = [_history_params(tenant, rule_group, t) for t in transitions]
        group_rows = [_snapshot_params(tenant, rule_group, t.snapshot) for t in transitions]
        if not history_rows:
            return []

        ids: list[int] = []
        with self._transaction("record_transitions") as conn:
            for params in history_rows:
                conn.execute(_INSERT_HISTORY, params)
                transition_id = params[2]
                row = conn.execute(
                    "SELECT id FROM history WHERE tenant = ? AND transition_id = ?",
                    (tenant, transition_id),
                ).fetchone()
                ids.append(row[0])
            conn.executemany(_UPSERT_GROUP, group_rows)
        return ids

    async def flush(self, tenant: str, rule_group: str, batch: FlushBatch) -> None:
        """Upsert the changed groups, delete the forgotten ones and store the checkpoint.

        All three happen in one transaction, so a crash leaves this flush or the previous one.
        """
        check_scope(tenant, rule_group)
        group_rows = [_snapshot_params(tenant, rule_group, s) for s in batch.changed]
        checkpoint_row = _checkpoint_params(tenant, rule_group, batch.checkpoint)
        forgotten_rows = [
            (tenant, rule_group, *_group_identity_params(rule_id, key), batch.checkpoint.position)
            for rule_id, key in batch.forgotten
        ]

        obsolete_rows = [
            (tenant, rule_group, *_group_identity_params(rule_id, key)) for rule_id, key in batch.obsolete
        ]

        with self._transaction("flush") as conn:
            conn.executemany(_UPSERT_GROUP, group_rows)
            conn.executemany(_DELETE_GROUP, forgotten_rows)
            conn.executemany(_DELETE_OBSOLETE_GROUP, obsolete_rows)
            conn.execute(_UPSERT_CHECKPOINT, checkpoint_row)

    async def undelivered(
        self, tenant: str, rule_group: str, *, after_id: int = 0, limit: int | None = None
    ) -> list[HistoryRecord]:
        """Return the rule group's history rows not yet marked delivered, oldest id first.

        Only rows with an id above `after_id` are returned, at most `limit` of them.
        """
        check_scope(tenant, rule_group)
        check_int64("history id", after_id)
        with self._translate_errors("undelivered"):
            rows = self._connection().execute(
                f"SELECT {_HISTORY_COLUMNS} FROM history"
                " WHERE tenant = ? AND rule_group = ? AND delivered = 0 AND id > ? ORDER BY id LIMIT ?",
                # SQLite reads a negative LIMIT as no limit.
                (tenant, rule_group, after_id, -1 if limit is None else limit),
            ).fetchall()
        with _translate_decode_errors(tenant, rule_group):
            return [_history_from_row(row) for row in rows]

    async def mark_delivered(self, tenant: str, ids: Sequence[int]) -> None:
        """Mark the tenant's history rows with these ids delivered, ignoring other tenants' ids."""
        check_text("tenant", tenant)
        params = [(tenant, check_int64("history id", history_id)) for history_id in ids]
        if not params:
            return
        with self._transaction("mark_delivered") as conn:
            conn.executemany(
                "UPDATE history SET delivered = 1 WHERE tenant = ? AND id = ?", params
            )

    async def prune_history(self, tenant: str, before_s: float) -> int:
        """Delete the tenant's delivered history rows older than `before_s` and return how many.

        Undelivered rows stay whatever their age, because they are the outbox of notifications
        that a sink has not yet accepted.
        """
        check_text("tenant", tenant)
        before_s = check_time("before_s", before_s)
        with self._transaction("prune_history") as conn:
            cursor = conn.execute(
                "DELETE FROM history WHERE tenant = ? AND delivered = 1 AND at < ?",
                (tenant, before_s),
            )
            return cursor.rowcount

    async def history(
        self,
        tenant: str,
        *,
        rule_id: str | None = None,
        kind: str | None = None,
        since_s: float | None = None,
        until_s: float | None = None,
        limit: int = 1000,
    ) -> list[HistoryRecord]:
        """Return the tenant's history rows with since_s <= at < until_s, ordered by at, then id.

        Each filter left as None matches everything. At most min(limit, HISTORY_LIMIT_MAX) rows
        are returned.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"invalid history limit {limit!r}: pass an integer of 1 or more")

        # The clauses are fixed strings, and every value reaches SQLite as a bound parameter.
        clauses = ["tenant = ?"]
        params: list[Any] = [check_text("tenant", tenant)]
        if rule_id is not None:
            clauses.append("rule_id = ?")
            params.append(check_text("rule_id", rule_id))
        if kind is not None:
            clauses.append("kind = ?")
            params.append(check_text("kind", kind))
        if since_s is not None:
            clauses.append("at >= ?")
            params.append(check_time("since_s", since_s))
        if until_s is not None:
            clauses.append("at < ?")
            params.append(check_time("until_s", until_s))
        params.append(min(limit, HISTORY_LIMIT_MAX))

        sql = (
            f"SELECT {_HISTORY_COLUMNS} FROM history WHERE {' AND '.join(clauses)}"
            " ORDER BY at, id LIMIT ?"
        )
        with self._translate_errors("history"):
            rows = self._connection().execute(sql, params).fetchall()
        with _translate_decode_errors(tenant, None):
            return [_history_from_row(row) for row in rows]

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"state store {self._path} is not open: call open() first")
        return self._conn

    def _migrate(self, conn: sqlite3.Connection) -> int:
        """Apply the pending migration steps in one transaction and return how many ran."""
        with self._translate_errors("migrate"):
            if self._schema_version(conn) == SCHEMA_VERSION:
                return 0
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Read again under the write lock: another process may have migrated meanwhile.
                start = self._schema_version(conn)
                for number in range(start + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[number - 1]:
                        conn.execute(statement)
                    # PRAGMA takes no bound parameters, so the int `number` is formatted in.
                    conn.execute(f"PRAGMA user_version = {number:d}")
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        return SCHEMA_VERSION - start

    def _schema_version(self, conn: sqlite3.Connection) -> int:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {self._path} has schema version {version}, newer than version"
                f" {SCHEMA_VERSION} that this alertwarden supports: upgrade alertwarden or use"
                " another database file"
            )
        return version

    @contextmanager
    def _transaction(self, action: str, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """Run the block in one transaction: commit when it returns, roll back when it raises.

        IMMEDIATE takes the write lock at BEGIN, so a writer waits for it up to the busy timeout
        instead of failing at its first write when another connection wrote in between.
        """
        conn = self._connection()
        with self._translate_errors(action):
            conn.execute(f"BEGIN {mode}")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

    @contextmanager
    def _translate_errors(self, action: str) -> Iterator[None]:
        """Turn driver errors into StoreError. This is the one place where that happens."""
        try:
            yield
        except (sqlite3.Error, OverflowError) as exc:
            raise StoreError(f"SQLite {action} failed on database {self._path}: {exc}") from exc


def _lock_state_file(path: str) -> IO[str]:
    """Take the exclusive lock of a state file, or raise StoreError naming the holder."""
    lock_path = path + ".lock"
    try:
        lock_file = open(lock_path, "a+")  # noqa: SIM115 - held open for the store's lifetime
    except OSError as exc:
        raise StoreError(f"cannot create the lock file {lock_path!r}: {exc}") from exc
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "unknown"
        lock_file.close()
        raise StoreError(
            f"state file {path!r} is in use by another alertwarden process (pid {holder}); "
            "wait for it to finish or use another --state file"
        ) from None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(str(os.getpid()))
    lock_file.flush()
    return lock_file


def _configure(conn: sqlite3.Connection, path: str) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal" and path != ":memory:":
        # Rollback-journal mode is still atomic, but readers then block the writer.
        log.warning("state_store_wal_not_enabled", path=path, journal_mode=mode)
    # With WAL, NORMAL syncs at WAL checkpoints, not at every commit (SQLite docs, PRAGMA
    # synchronous). A committed transaction survives a killed process, but a power loss or OS
    # crash can lose the last commits, though never leave a partial one. synchronous = FULL
    # would close that gap at the cost of one fsync per flush.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
    conn.execute("PRAGMA foreign_keys = ON")


def _rollback(conn: sqlite3.Connection) -> None:
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        # The error that caused the rollback matters more, so it is the one that propagates.
        log.error("state_store_rollback_failed", error=str(exc))


@contextmanager
def _translate_decode_errors(tenant: str, rule_group: str | None) -> Iterator[None]:
    try:
        yield
    except (ValueError, TypeError, KeyError, struct.error) as exc:
        scope = f"tenant {preview(tenant)}"
        if rule_group is not None:
            scope += f", rule group {preview(rule_group)}"
        raise StoreError(
            f"stored row of {scope} is invalid: {exc}. The database was changed outside"
            " alertwarden or is damaged. Restore it from a backup or delete it to start afresh"
        ) from exc


# Row codecs.


def _group_identity_params(rule_id: str, key: GroupKey) -> tuple[str, str]:
    check_text("rule_id", rule_id)
    return rule_id, encode_key(rule_id, key)


def _encode_counts(rule_id: str, counts: tuple[int, ...]) -> bytes:
    for count in counts:
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= _UINT32_MAX:
            raise StoreError(
                f"invalid bucket count {count!r} of rule {preview(rule_id)}: expected an integer"
                f" from 0 to {_UINT32_MAX}"
            )
    return struct.pack(_COUNT_FORMAT.format(len(counts)), *counts)


def _decode_counts(blob: bytes) -> tuple[int, ...]:
    return struct.unpack(_COUNT_FORMAT.format(len(blob) // 4), blob)


def _snapshot_params(tenant: str, rule_group: str, snapshot: GroupSnapshot) -> tuple[Any, ...]:
    rule_id, group_key = _group_identity_params(snapshot.rule_id, snapshot.key)
    if not isinstance(snapshot.suppressed, bool):
        raise StoreError(
            f"invalid suppressed {snapshot.suppressed!r} of rule {preview(rule_id)}:"
            " expected True or False"
        )
    try:
        status = GroupStatus(snapshot.status).value
    except ValueError as exc:
        raise StoreError(
            f"invalid status {snapshot.status!r} of rule {preview(rule_id)}: expected one of"
            f" {[s.value for s in GroupStatus]}"
        ) from exc
    return (
        tenant,
        rule_group,
        rule_id,
        group_key,
        check_int64("window_s", snapshot.window_s),
        check_int64("bucket_s", snapshot.bucket_s),
        _encode_counts(rule_id, snapshot.counts),
        check_int64("head_bucket", snapshot.head_bucket),
        check_time("last_seen_at", snapshot.last_seen_at),
        check_optional_time("last_fired_at", snapshot.last_fired_at),
        check_optional_time("last_notified_at", snapshot.last_notified_at),
        status,
        int(snapshot.suppressed),
        check_int64("position", snapshot.position),
    )


def _checkpoint_params(tenant: str, rule_group: str, checkpoint: Checkpoint) -> tuple[Any, ...]:
    for rule_id, bucket in checkpoint.ticked.items():
        check_text("ticked rule_id", rule_id)
        check_int64(f"ticked bucket of rule {preview(rule_id)}", bucket)
    return (
        tenant,
        rule_group,
        check_text("checkpoint source", checkpoint.source),
        check_int64("checkpoint offset", checkpoint.offset),
        check_int64("checkpoint position", checkpoint.position),
        check_optional_time("checkpoint now", checkpoint.now),
        orjson.dumps(checkpoint.ticked).decode(),
        time.time(),
    )


def _checkpoint_from_row(row: tuple[Any, ...]) -> Checkpoint:
    source, offset, position, now, ticked = row
    ticked_map = orjson.loads(ticked)
    if not isinstance(ticked_map, dict):
        raise ValueError(f"checkpoint ticked {ticked[:PREVIEW_CHARS]!r} is not a JSON object")
    return Checkpoint(source=source, offset=offset, position=position, now=now, ticked=ticked_map)


def _history_params(tenant: str, rule_group: str, transition: Transition) -> tuple[Any, ...]:
    rule_id, at, kind, details = check_transition(transition)
    try:
        # Captures come from event fields and may hold any type, so unknown types are stored as
        # their str() instead of failing the transition.
        details_json = orjson.dumps(details, default=str, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError as exc:
        raise StoreError(
            f"details of a transition of rule {preview(rule_id)} cannot be encoded as JSON: {exc}"
        ) from exc

    return (
        tenant,
        rule_group,
        transition.transition_id(tenant, rule_group),
        at,
        rule_id,
        orjson.dumps(dict(transition.group)).decode(),
        kind,
        check_int64("transition count", transition.count),
        details_json.decode(),
    )


def _history_from_row(row: tuple[Any, ...]) -> HistoryRecord:
    (
        history_id,
        tenant,
        rule_group,
        transition_id,
        at,
        rule_id,
        group_json,
        kind,
        count,
        details,
        delivered,
    ) = row
    return HistoryRecord(
        id=history_id,
        tenant=tenant,
        rule_group=rule_group,
        transition_id=transition_id,
        at=at,
        rule_id=rule_id,
        group=orjson.loads(group_json),
        kind=kind,
        count=count,
        details=orjson.loads(details),
        delivered=bool(delivered),
    )
