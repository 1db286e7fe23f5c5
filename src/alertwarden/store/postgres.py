"""The production state store on PostgreSQL, with transition history on TimescaleDB or partitions.

Every statement takes its values as bound parameters, and each batch travels as one array per
column through `unnest`, so a flush is one INSERT and one DELETE whatever its size. COPY is not
used because the store must also run over proxies and embedded servers that do not support
COPY FROM STDIN.

Run `alertwarden.store.migrate.migrate` before open(): the store reads the history backend that
the migration chose from alertwarden_settings.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import struct
import sys
import time
from array import array
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import accumulate, chain
from typing import Any, LiteralString

import orjson
import psycopg
from psycopg.adapt import Dumper
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import Format
from psycopg_pool import AsyncConnectionPool

from alertwarden.engine.records import (
    Checkpoint,
    FlushBatch,
    GroupKey,
    GroupSnapshot,
    GroupStatus,
    Transition,
)
from alertwarden.cluster.leases import FENCE_HELD, Fence, LeaseLostError, fence_params
from alertwarden.errors import StoreError
from alertwarden.logs import get_logger
from alertwarden.store.base import HistoryRecord, StoredState
from alertwarden.store.checks import (
    INT64_MAX,
    INT64_MIN,
    check_int,
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

log = get_logger(__name__)

PING_TIMEOUT_S = 5.0
"""Maximum wait of the readiness check's query, connection included."""
RECONNECT_CYCLE_S = 10.0
"""Seconds of failed connection attempts after which the pool starts again from a 1 s delay.

psycopg_pool doubles the delay between attempts until its reconnect_timeout, so with its
default of 5 minutes an attempt can come almost as long after the server is back as the outage
lasted (19 s after a 40 s outage, measured). A short cycle that restarts keeps every gap
between attempts under 4 s."""
CONNECTION_DEFAULTS: dict[str, str] = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",
}
"""libpq parameters that a connection URL may override.

Without them a connection to a server that vanished during a failover, without closing its
sockets, waits for the kernel's TCP timeouts (about 15 minutes on Linux). With them an idle
dead connection is found within about 60 s, and unacknowledged data fails a statement after
60 s."""
POOL_LOG_INTERVAL_S = 60.0
"""Minimum seconds between two psycopg_pool warnings of the same kind."""
HISTORY_LIMIT_MAX = 10_000
"""Upper bound on the rows one history() call returns, whatever `limit` the caller passes."""

_INT32_MAX = 2**31 - 1

_GROUP_COLUMNS: LiteralString = (
    "rule_id, group_key, window_s, bucket_s, counts, head_bucket, last_seen_at,"
    " last_fired_at, last_notified_at, status, suppressed, position"
)

# Every array travels in the binary wire format that _group_params builds, which saves the
# driver's per-element conversion and the server's text parsing. Arrays of arrays do not exist
# in PostgreSQL, so all counts travel as one flat integer[] that each row slices by its 1-based
# end index and length. The WHERE clause of the update is the position guard: a snapshot taken
# at an earlier input step never replaces a newer one that record_transitions wrote.
_UPSERT_GROUPS: LiteralString = f"""
INSERT INTO rule_state (tenant_id, rule_group, {_GROUP_COLUMNS})
SELECT %(tenant)s, %(rule_group)s, r.rule_id, r.group_key, r.window_s, r.bucket_s,
       (%(counts)b::integer[])[r.counts_end - r.counts_len + 1 : r.counts_end], r.head_bucket,
       r.last_seen_at, r.last_fired_at, r.last_notified_at, r.status, r.suppressed, r.position
FROM unnest(
    %(rule_id)b::text[], %(group_key)b::text[], %(window_s)b::integer[], %(bucket_s)b::integer[],
    %(counts_end)b::integer[], %(counts_len)b::integer[], %(head_bucket)b::bigint[],
    %(last_seen_at)b::float8[], %(last_fired_at)b::float8[], %(last_notified_at)b::float8[],
    %(status)b::text[], %(suppressed)b::boolean[], %(position)b::bigint[]
) AS r(rule_id, group_key, window_s, bucket_s, counts_end, counts_len, head_bucket,
       last_seen_at, last_fired_at, last_notified_at, status, suppressed, position)
ON CONFLICT (tenant_id, rule_group, rule_id, group_key) DO UPDATE SET
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
WHERE excluded.position >= rule_state.position
"""

# A forgotten group is deleted only when its row is not newer than the flush's checkpoint, for
# the same reason as the upsert guard.
_DELETE_GROUPS: LiteralString = """
DELETE FROM rule_state AS s
USING unnest(%(rule_id)s::text[], %(group_key)s::text[]) AS f(rule_id, group_key)
WHERE s.tenant_id = %(tenant)s AND s.rule_group = %(rule_group)s
  AND s.rule_id = f.rule_id AND s.group_key = f.group_key AND s.position <= %(position)s
"""

# An obsolete group's row is deleted whatever its position (see FlushBatch.obsolete).
_DELETE_OBSOLETE_GROUPS: LiteralString = """
DELETE FROM rule_state AS s
USING unnest(%(rule_id)s::text[], %(group_key)s::text[]) AS f(rule_id, group_key)
WHERE s.tenant_id = %(tenant)s AND s.rule_group = %(rule_group)s
  AND s.rule_id = f.rule_id AND s.group_key = f.group_key
"""

_UPSERT_CHECKPOINT: LiteralString = """
INSERT INTO input_checkpoints
    (tenant_id, rule_group, source, "offset", position, now_s, ticked, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, now())
ON CONFLICT (tenant_id, rule_group) DO UPDATE SET
    source = excluded.source,
    "offset" = excluded."offset",
    position = excluded.position,
    now_s = excluded.now_s,
    ticked = excluded.ticked,
    updated_at = excluded.updated_at
"""

_HISTORY_ARRAYS = ("at_s", "rule_id", "group_key", "kind", "count", "transition_id", "details")

# The history rows and their groups' state in one statement, so in one implicit transaction,
# which saves BEGIN and COMMIT round trips per transition. The history arrays carry an h_
# prefix because rule_id and group_key also name the arrays of _UPSERT_GROUPS. With a fence
# (fence_pid not NULL) both inserts write only while the lease is held, and the result row
# whose transition_id is NULL carries that condition.
_FENCED = "\nWHERE (SELECT held FROM fence)\nON CONFLICT "
_RECORD_TRANSITIONS: LiteralString = (
    "WITH fence AS (SELECT CASE WHEN %(fence_pid)s::integer IS NULL THEN true ELSE "
    + FENCE_HELD
    + """ END AS held), inserted AS (
INSERT INTO evaluation_history
    (at, at_s, tenant_id, rule_group, rule_id, group_key, kind, count, transition_id, details)
SELECT to_timestamp(h.at_s), h.at_s, %(tenant)s, %(rule_group)s, h.rule_id, h.group_key::jsonb,
       h.kind, h.count, h.transition_id, h.details::jsonb
FROM unnest(
    %(h_at_s)b::float8[], %(h_rule_id)b::text[], %(h_group_key)b::text[], %(h_kind)b::text[],
    %(h_count)b::integer[], %(h_transition_id)b::text[], %(h_details)b::text[]
) AS h(at_s, rule_id, group_key, kind, count, transition_id, details)
WHERE (SELECT held FROM fence)
ON CONFLICT (tenant_id, transition_id, at) DO NOTHING
RETURNING transition_id, id
), upserted AS ("""
    + _UPSERT_GROUPS.replace("\nON CONFLICT ", _FENCED)
    + ") SELECT NULL::text, NULL::bigint, (SELECT held FROM fence)"
    " UNION ALL SELECT transition_id, id, NULL FROM inserted"
)

# The day of a row is computed in SQL from the same to_timestamp() as the insert, so a time that
# rounds up to midnight lands in the partition the insert routes it to.
_ENSURE_PARTITIONS: LiteralString = """
SELECT alertwarden_ensure_history_partition(day)
FROM (
    SELECT DISTINCT (to_timestamp(at_s) AT TIME ZONE 'UTC')::date AS day
    FROM unnest(%s::float8[]) AS at_s
) AS days
"""

_HISTORY_COLUMNS: LiteralString = (
    "id, tenant_id, rule_group, transition_id, at_s, rule_id, group_key, kind, count, details,"
    " delivered"
)

# A rule that was deleted continues from its last version, kept in rule_deletions.
_SYNC_RULES: LiteralString = """
INSERT INTO rule_definitions (tenant_id, rule_id, rule_group, definition, enabled, source, version)
SELECT %(tenant)s, r.rule_id, %(rule_group)s, r.definition::jsonb, r.enabled, %(source)s,
    1 + coalesce(d.version, 0)
FROM unnest(%(rule_id)s::text[], %(definition)s::text[], %(enabled)s::boolean[])
    AS r(rule_id, definition, enabled)
LEFT JOIN rule_deletions AS d ON d.tenant_id = %(tenant)s AND d.rule_id = r.rule_id
ON CONFLICT (tenant_id, rule_id) DO UPDATE SET
    rule_group = excluded.rule_group,
    definition = excluded.definition,
    enabled = excluded.enabled,
    source = excluded.source,
    version = rule_definitions.version + 1,
    updated_at = now()
WHERE (rule_definitions.rule_group, rule_definitions.definition, rule_definitions.enabled,
       rule_definitions.source)
    IS DISTINCT FROM (excluded.rule_group, excluded.definition, excluded.enabled, excluded.source)
RETURNING (xmax = 0) AS inserted
"""

_DISABLE_MISSING_FILE_RULES: LiteralString = """
UPDATE rule_definitions SET enabled = false, version = version + 1, updated_at = now()
WHERE tenant_id = %s AND rule_group = %s AND source = 'file' AND enabled
  AND NOT (rule_id = ANY (%s::text[]))
"""

# A rule group is managed once it has at least one rule definition. Only then does a rule
# without an enabled definition count as deleted, so a tenant that runs rule files without
# syncing them keeps its state.
_SWEEP_RULE_STATE: LiteralString = """
DELETE FROM rule_state AS s
WHERE EXISTS (
        SELECT 1 FROM tenants AS t
        WHERE t.tenant_id = s.tenant_id AND NOT t.stateful_rules)
   OR (EXISTS (
        SELECT 1 FROM rule_definitions AS d
        WHERE d.tenant_id = s.tenant_id AND d.rule_group = s.rule_group)
       AND NOT EXISTS (
        SELECT 1 FROM rule_definitions AS d
        WHERE d.tenant_id = s.tenant_id AND d.rule_group = s.rule_group
          AND d.rule_id = s.rule_id AND d.enabled))
"""

_SWEEP_CHECKPOINTS: LiteralString = """
DELETE FROM input_checkpoints AS c
WHERE EXISTS (
        SELECT 1 FROM tenants AS t
        WHERE t.tenant_id = c.tenant_id AND NOT t.stateful_rules)
   OR (EXISTS (
        SELECT 1 FROM rule_definitions AS d
        WHERE d.tenant_id = c.tenant_id AND d.rule_group = c.rule_group)
       AND NOT EXISTS (
        SELECT 1 FROM rule_definitions AS d
        WHERE d.tenant_id = c.tenant_id AND d.rule_group = c.rule_group AND d.enabled))
"""


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    """History partitions that one maintain() call created and dropped, and the rows dropped."""

    created: tuple[str, ...]
    dropped: tuple[str, ...]
    dropped_rows: int


@dataclass(frozen=True, slots=True)
class SyncReport:
    """Rule definition rows that one sync_rules() call inserted, changed and disabled."""

    inserted: int
    updated: int
    disabled: int


class RuleDeletion(enum.Enum):
    """Outcome of delete_rule_definition()."""

    DELETED = "deleted"
    NOT_FOUND = "not_found"
    VERSION_MISMATCH = "version_mismatch"
    """The rule exists at a version other than the expected one, and was not deleted."""


@dataclass(frozen=True, slots=True)
class SweepReport:
    """Rows that one sweep() call deleted."""

    rule_state_rows: int
    checkpoint_rows: int


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Settings the migration recorded in alertwarden_settings."""

    history_backend: str
    compress_after_s: int
    retention_s: int


class PostgresStore:
    """StateStore on PostgreSQL through a psycopg connection pool.

    pool_min and pool_max bound the pool's connections; pool_max=1 suits servers that accept one
    connection at a time. On the partitioned history path prune_history() runs maintain() at most
    once per maintain_interval_s, and maintain() creates partitions_ahead_days day partitions
    ahead of the current day. prepare_threshold is psycopg's: None turns server-side prepared
    statements off, which servers that hand one backend session to successive clients need.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_min: int = 1,
        pool_max: int = 4,
        pool_timeout_s: float = 30.0,
        maintain_interval_s: float = 3600.0,
        partitions_ahead_days: int = 3,
        prepare_threshold: int | None = 5,
        reconnect_cycle_s: float = RECONNECT_CYCLE_S,
    ) -> None:
        if not 1 <= pool_min <= pool_max:
            raise StoreError(
                f"invalid pool size min={pool_min!r} max={pool_max!r}: expected 1 <= min <= max"
            )
        if partitions_ahead_days < 0:
            raise StoreError(
                f"invalid partitions_ahead_days {partitions_ahead_days!r}: expected 0 or more"
            )
        self._url = url
        self._pool_min = pool_min
        self._pool_max = pool_max
        self._pool_timeout_s = pool_timeout_s
        self._maintain_interval_s = maintain_interval_s
        self._partitions_ahead_days = partitions_ahead_days
        self._prepare_threshold = prepare_threshold
        self._reconnect_cycle_s = reconnect_cycle_s
        self._pool: AsyncConnectionPool | None = None
        # Pings that timed out and whose cancellation is still running; kept so that the tasks
        # are not garbage-collected before they finish.
        self._cancelled_pings: set[asyncio.Future[None]] = set()
        self._settings: StoreSettings | None = None
        self._last_maintain: float | None = None
        # Days whose history partition this store created or found. maintain() and any failed
        # write clear the set, because another node's maintenance may drop a partition.
        self._partition_days: set[date] = set()

    # ------------------------------------------------------------ lifecycle

    @property
    def settings(self) -> StoreSettings:
        if self._settings is None:
            raise StoreError("PostgreSQL store is not open: call open() first")
        return self._settings

    async def open(self) -> None:
        """Open the pool and read the migration settings. A second call does nothing."""
        if self._pool is not None:
            return
        await self._check_reachable()
        _limit_pool_warnings()
        pool = AsyncConnectionPool(
            self._url,
            min_size=self._pool_min,
            max_size=self._pool_max,
            timeout=self._pool_timeout_s,
            kwargs={
                **connection_defaults(self._url),
                "autocommit": True,
                "prepare_threshold": self._prepare_threshold,
            },
            configure=_configure_connection,
            # A connection that died while idle, as in a server restart, fails this check and
            # is replaced, so the first statement after an outage does not fail on it.
            check=AsyncConnectionPool.check_connection,
            reconnect_timeout=self._reconnect_cycle_s,
            reconnect_failed=_restart_reconnect,
            open=False,
        )
        try:
            with _translate_errors("open"):
                await pool.open(wait=True, timeout=self._pool_timeout_s)
            self._pool = pool
            self._settings = await self._read_settings()
        except BaseException:
            self._pool = None
            await pool.close()
            raise
        log.info(
            "postgres_store_opened",
            history_backend=self._settings.history_backend,
            pool_max=self._pool_max,
        )

    async def _check_reachable(self) -> None:
        """Connect once, so an unreachable server fails at once with the server's own reason.

        The pool would only retry in the background and report a timeout after pool_timeout_s.
        """
        try:
            conn = await psycopg.AsyncConnection.connect(
                with_connection_defaults(self._url), prepare_threshold=self._prepare_threshold
            )
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to PostgreSQL at {_describe_url(self._url)}: "
                f"{str(exc).strip()}; check --database and that the server is running"
            ) from exc
        await conn.close()

    async def close(self) -> None:
        """Close the pool. Calling it on a closed store does nothing."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        with _translate_errors("close"):
            await pool.close()
        log.info("postgres_store_closed")

    async def _read_settings(self) -> StoreSettings:
        async with self._transaction("open") as conn:
            cursor = await conn.execute(
                "SELECT to_regclass('alertwarden_settings') IS NOT NULL"
            )
            row = await cursor.fetchone()
            if not (row and row[0]):
                raise StoreError(
                    "database has no alertwarden schema: run `alertwarden migrate` first"
                )
            cursor = await conn.execute("SELECT name, value FROM alertwarden_settings")
            values = dict(await cursor.fetchall())
        try:
            return StoreSettings(
                history_backend=values["history_backend"],
                compress_after_s=int(values["compress_after_s"]),
                retention_s=int(values["retention_s"]),
            )
        except (KeyError, ValueError) as exc:
            raise StoreError(
                f"alertwarden_settings is incomplete or invalid ({exc!r}): run `alertwarden"
                " migrate` again or restore the table"
            ) from exc

    # ------------------------------------------------------------ state

    async def load(self, tenant: str, rule_group: str) -> StoredState:
        """Return every stored group snapshot of the rule group, by rule id, and its checkpoint."""
        check_scope(tenant, rule_group)
        # REPEATABLE READ makes the groups and the checkpoint come from the same snapshot.
        async with self._transaction("load", repeatable_read=True) as conn:
            cursor = await conn.execute(
                f"SELECT {_GROUP_COLUMNS} FROM rule_state"
                " WHERE tenant_id = %s AND rule_group = %s ORDER BY rule_id, group_key",
                (tenant, rule_group),
            )
            group_rows = await cursor.fetchall()
            cursor = await conn.execute(
                'SELECT source, "offset", position, now_s, ticked FROM input_checkpoints'
                " WHERE tenant_id = %s AND rule_group = %s",
                (tenant, rule_group),
            )
            checkpoint_row = await cursor.fetchone()

        state = StoredState()
        with _translate_decode_errors(tenant, rule_group):
            for row in group_rows:
                snapshot = snapshot_from_row(row, tuple)
                state.groups.setdefault(snapshot.rule_id, []).append(snapshot)
            if checkpoint_row is not None:
                state.checkpoint = _checkpoint_from_row(checkpoint_row)
        return state

    async def record_transitions(
        self,
        tenant: str,
        rule_group: str,
        transitions: Sequence[Transition],
        *,
        fence: Fence | None = None,
    ) -> list[int]:
        """Insert the history rows and upsert the snapshots of the transitions in one transaction.

        Returns the history id of each transition, in order. A transition already recorded keeps
        its row and returns that row's id, so a retry after a crash is harmless. With `fence`,
        nothing is written and LeaseLostError is raised unless the lease is still held.
        """
        check_scope(tenant, rule_group)
        if not transitions:
            return []
        history = _history_columns(tenant, rule_group, transitions)
        groups = _group_params([t.snapshot for t in transitions])

        days = {_utc_day(at_s) for at_s in history["at_s"]}
        if self.settings.history_backend == "partitioned" and not days <= self._partition_days:
            # Its own short transaction: a partition made for a batch that then fails is harmless.
            async with self._transaction("record_transitions") as conn:
                await conn.execute(_ENSURE_PARTITIONS, (history["at_s"],))
            self._partition_days |= days

        try:
            ids = await self._insert_transitions(tenant, rule_group, history, groups, fence)
        except LeaseLostError:
            raise
        except StoreError:
            self._partition_days.clear()
            raise
        return [ids[tid] for tid in history["transition_id"]]

    async def _insert_transitions(
        self,
        tenant: str,
        rule_group: str,
        history: dict[str, Any],
        groups: _GroupParams,
        fence: Fence | None,
    ) -> dict[str, int]:
        params: dict[str, Any] = {
            "tenant": tenant, "rule_group": rule_group, **groups.arrays, **fence_params(fence)
        }
        params.update(_encode_history_columns(history))
        async with self._connection("record_transitions") as conn:
            cursor = await conn.execute(_RECORD_TRANSITIONS, params)
            rows = await cursor.fetchall()
            held = next(row[2] for row in rows if row[0] is None)
            if not held:
                raise _lease_lost(tenant, rule_group)
            ids: dict[str, int] = {row[0]: row[1] for row in rows if row[0] is not None}
            # A transition recorded before a restart keeps its row, and the insert returns no id
            # for it. A separate query also reads rows that another writer committed meanwhile.
            missing = [tid for tid in history["transition_id"] if tid not in ids]
            if missing:
                cursor = await conn.execute(
                    "SELECT transition_id, id FROM evaluation_history"
                    " WHERE tenant_id = %s AND transition_id = ANY (%s::text[])",
                    (tenant, missing),
                )
                ids.update(await cursor.fetchall())
        return ids

    async def flush(
        self, tenant: str, rule_group: str, batch: FlushBatch, *, fence: Fence | None = None
    ) -> None:
        """Upsert the changed groups, delete the forgotten ones and store the checkpoint.

        All three happen in one transaction, so a crash leaves this flush or the previous one.
        With `fence`, the transaction first checks that the lease session still holds the rule
        group's lock, and raises LeaseLostError, writing nothing, when it does not.
        """
        check_scope(tenant, rule_group)
        groups = _group_params(batch.changed)
        forgotten_rule_ids, forgotten_keys = _group_identities(batch.forgotten)
        obsolete_rule_ids, obsolete_keys = _group_identities(batch.obsolete)
        checkpoint = _checkpoint_params(tenant, rule_group, batch.checkpoint)

        async with self._transaction("flush") as conn:
            if fence is not None:
                await _check_fence(conn, tenant, rule_group, fence)
            if groups.rows:
                await conn.execute(
                    _UPSERT_GROUPS, {"tenant": tenant, "rule_group": rule_group, **groups.arrays}
                )
            if forgotten_rule_ids:
                await conn.execute(
                    _DELETE_GROUPS,
                    {
                        "tenant": tenant,
                        "rule_group": rule_group,
                        "rule_id": forgotten_rule_ids,
                        "group_key": forgotten_keys,
                        "position": batch.checkpoint.position,
                    },
                )
            if obsolete_rule_ids:
                await conn.execute(
                    _DELETE_OBSOLETE_GROUPS,
                    {
                        "tenant": tenant,
                        "rule_group": rule_group,
                        "rule_id": obsolete_rule_ids,
                        "group_key": obsolete_keys,
                    },
                )
            await conn.execute(_UPSERT_CHECKPOINT, checkpoint)

    # ------------------------------------------------------------ outbox and history

    async def undelivered(
        self, tenant: str, rule_group: str, *, after_id: int = 0, limit: int | None = None
    ) -> list[HistoryRecord]:
        """Return the rule group's history rows not yet marked delivered, oldest id first.

        Only rows with an id above `after_id` are returned, at most `limit` of them.
        """
        check_scope(tenant, rule_group)
        check_int64("history id", after_id)
        async with self._transaction("undelivered") as conn:
            cursor = await conn.execute(
                f"SELECT {_HISTORY_COLUMNS} FROM evaluation_history"
                " WHERE tenant_id = %s AND rule_group = %s AND NOT delivered AND id > %s"
                " ORDER BY id LIMIT %s",
                (tenant, rule_group, after_id, limit),
            )
            rows = await cursor.fetchall()
        with _translate_decode_errors(tenant, rule_group):
            return [_history_from_row(row) for row in rows]

    async def mark_delivered(self, tenant: str, ids: Sequence[int]) -> None:
        """Mark the tenant's history rows with these ids delivered, ignoring other tenants' ids."""
        check_text("tenant", tenant)
        checked = [check_int64("history id", history_id) for history_id in ids]
        if not checked:
            return
        async with self._connection("mark_delivered") as conn:
            await conn.execute(
                "UPDATE evaluation_history SET delivered = true"
                " WHERE tenant_id = %s AND id = ANY (%s::bigint[]) AND NOT delivered",
                (tenant, checked),
            )

    async def prune_history(self, tenant: str, before_s: float) -> int:
        """Drop expired history and return how many rows went.

        History expires by the retention_s recorded at migration, for all tenants at once, so
        `before_s` is only checked. On TimescaleDB the retention policy drops old chunks and this
        returns 0. On the partitioned path this runs maintain() at most once per
        maintain_interval_s of wall-clock time. Unlike the SQLite store, a dropped day takes its
        undelivered rows with it.
        """
        check_text("tenant", tenant)
        check_time("before_s", before_s)
        if self.settings.history_backend != "partitioned":
            return 0
        now = time.monotonic()
        if self._last_maintain is not None and now - self._last_maintain < self._maintain_interval_s:
            return 0
        report = await self.maintain()
        return report.dropped_rows

    async def maintain(self, now_s: float | None = None) -> MaintenanceReport:
        """Create the day partitions ahead of `now_s` and drop the ones past the retention.

        `now_s` defaults to the wall clock. On the TimescaleDB path the policies do this work
        and the report is empty.
        """
        self._last_maintain = time.monotonic()
        self._partition_days.clear()
        if self.settings.history_backend != "partitioned":
            return MaintenanceReport((), (), 0)
        now_s = time.time() if now_s is None else check_time("now_s", now_s)
        today = _utc_day(now_s)
        last_day = today + timedelta(days=self._partitions_ahead_days)
        # Only whole days end before the cutoff, so the rows dropped are those before its day.
        cutoff_day = _utc_day(now_s - self.settings.retention_s)

        async with self._transaction("maintain") as conn:
            cursor = await conn.execute(
                "SELECT 'evaluation_history_' || to_char(day, 'YYYYMMDD')"
                " FROM generate_series(%s::date, %s::date, interval '1 day') AS day"
                " WHERE alertwarden_ensure_history_partition(day::date)",
                (today, last_day),
            )
            created = tuple(name for (name,) in await cursor.fetchall())
            cursor = await conn.execute(
                "SELECT count(*) FROM evaluation_history WHERE at < %s",
                (_day_start(cutoff_day),),
            )
            row = await cursor.fetchone()
            dropped_rows = int(row[0]) if row else 0
            cursor = await conn.execute(
                "SELECT alertwarden_drop_history_partitions(%s)", (_day_start(cutoff_day),)
            )
            dropped = tuple(name for (name,) in await cursor.fetchall())
        if created or dropped:
            log.info(
                "history_partitions_maintained",
                created=list(created),
                dropped=list(dropped),
                dropped_rows=dropped_rows,
            )
        return MaintenanceReport(created, dropped, dropped_rows)

    async def run_history_jobs(self) -> list[int]:
        """Run the TimescaleDB compression and retention jobs of the history now; return their ids.

        The policies normally run in TimescaleDB's background workers. This is for servers
        where those workers do not run, and for tests. On the partitioned path it does nothing.
        """
        if self.settings.history_backend != "timescaledb":
            return []
        async with self._transaction("run_history_jobs") as conn:
            cursor = await conn.execute(
                "SELECT job_id FROM timescaledb_information.jobs"
                " WHERE hypertable_name = 'evaluation_history'"
                " AND proc_name IN ('policy_compression', 'policy_retention') ORDER BY job_id"
            )
            job_ids = [job_id for (job_id,) in await cursor.fetchall()]
        if self._pool is None:
            raise StoreError("PostgreSQL store is not open: call open() first")
        # CALL run_job commits inside the job, so it runs outside a transaction block.
        with _translate_errors("run_history_jobs"):
            async with self._pool.connection() as conn:
                for job_id in job_ids:
                    await conn.execute("CALL run_job(%s)", (job_id,))
        return job_ids

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

        clauses, params = _history_filters(tenant, rule_id, kind, None, since_s, until_s)
        params.append(min(limit, HISTORY_LIMIT_MAX))

        where: LiteralString = " AND ".join(clauses)
        sql: LiteralString = (
            f"SELECT {_HISTORY_COLUMNS} FROM evaluation_history WHERE {where}"
            " ORDER BY at_s, id LIMIT %s"
        )
        async with self._transaction("history") as conn:
            cursor = await conn.execute(sql, params)
            rows = await cursor.fetchall()
        with _translate_decode_errors(tenant, None):
            return [_history_from_row(row) for row in rows]

    # ------------------------------------------------------------ tenants and rules

    async def ensure_tenant(self, tenant: str, stateful_rules: bool | None = None) -> bool:
        """Insert the tenant if missing, set its flag unless None, and return the flag."""
        check_text("tenant", tenant)
        if stateful_rules is not None and not isinstance(stateful_rules, bool):
            raise StoreError(f"invalid stateful_rules {stateful_rules!r}: expected True, False or None")
        async with self._transaction("ensure_tenant") as conn:
            cursor = await conn.execute(
                "INSERT INTO tenants (tenant_id, stateful_rules) VALUES (%s, coalesce(%s, false))"
                " ON CONFLICT (tenant_id) DO UPDATE"
                " SET stateful_rules = coalesce(%s, tenants.stateful_rules), updated_at = now()"
                " RETURNING stateful_rules",
                (tenant, stateful_rules, stateful_rules),
            )
            row = await cursor.fetchone()
        return bool(row and row[0])

    async def set_feature(self, tenant: str, stateful_rules: bool) -> None:
        """Switch the tenant's stateful_rules flag, inserting the tenant when missing."""
        if not isinstance(stateful_rules, bool):
            raise StoreError(f"invalid stateful_rules {stateful_rules!r}: expected True or False")
        await self.ensure_tenant(tenant, stateful_rules)

    async def sync_rules(
        self,
        tenant: str,
        rule_group: str,
        rules: Sequence[tuple[str, dict[str, Any], bool]],
        source: str = "file",
    ) -> SyncReport:
        """Upsert the rule group's definitions from `rules` (rule_id, definition, enabled).

        With source 'file', the group's file rules missing from `rules` are disabled, not
        deleted, so sweep() can remove their state. A changed rule gets version + 1.
        """
        check_scope(tenant, rule_group)
        if source not in ("file", "api"):
            raise StoreError(f"invalid rule source {source!r}: expected 'file' or 'api'")
        rule_ids: list[str] = []
        definitions: list[str] = []
        enabled: list[bool] = []
        for rule_id, definition, is_enabled in rules:
            check_text("rule_id", rule_id)
            if rule_id in rule_ids:
                raise StoreError(f"duplicate rule_id {preview(rule_id)} in one sync_rules call")
            if not isinstance(is_enabled, bool):
                raise StoreError(f"invalid enabled {is_enabled!r} of rule {preview(rule_id)}")
            rule_ids.append(rule_id)
            definitions.append(_encode_json(f"definition of rule {preview(rule_id)}", definition))
            enabled.append(is_enabled)

        async with self._transaction("sync_rules") as conn:
            await conn.execute(
                "INSERT INTO tenants (tenant_id) VALUES (%s) ON CONFLICT DO NOTHING", (tenant,)
            )
            cursor = await conn.execute(
                _SYNC_RULES,
                {
                    "tenant": tenant,
                    "rule_group": rule_group,
                    "source": source,
                    "rule_id": rule_ids,
                    "definition": definitions,
                    "enabled": enabled,
                },
            )
            changed = [bool(inserted) for (inserted,) in await cursor.fetchall()]
            disabled = 0
            if source == "file":
                cursor = await conn.execute(
                    _DISABLE_MISSING_FILE_RULES, (tenant, rule_group, rule_ids)
                )
                disabled = cursor.rowcount
        inserted = sum(changed)
        return SyncReport(inserted=inserted, updated=len(changed) - inserted, disabled=disabled)

    async def forget_rule_group(self, tenant: str, rule_group: str) -> bool:
        """Delete a rule group's state and checkpoint when it has no rule definition left.

        Returns True when something was deleted. Call it after the group's evaluator stopped;
        an evaluator of the group started later writes a new checkpoint.
        """
        check_scope(tenant, rule_group)
        async with self._transaction("forget_rule_group") as conn:
            cursor = await conn.execute(
                "SELECT 1 FROM rule_definitions WHERE tenant_id = %s AND rule_group = %s LIMIT 1",
                (tenant, rule_group),
            )
            if await cursor.fetchone() is not None:
                return False
            states = await conn.execute(
                "DELETE FROM rule_state WHERE tenant_id = %s AND rule_group = %s", (tenant, rule_group)
            )
            checkpoints = await conn.execute(
                "DELETE FROM input_checkpoints WHERE tenant_id = %s AND rule_group = %s",
                (tenant, rule_group),
            )
            # No evaluator of the group runs any more, so its lease row goes too. A node that
            # takes the lease again starts a new row at epoch 1.
            await conn.execute(
                "DELETE FROM rule_group_leases WHERE tenant_id = %s AND rule_group = %s",
                (tenant, rule_group),
            )
            return states.rowcount + checkpoints.rowcount > 0

    async def sweep(self) -> SweepReport:
        """Delete the group state and checkpoints that no rule or tenant flag keeps.

        A rule_state row goes when its tenant's stateful_rules flag is off, or when its rule
        group has rule definitions and none of them is an enabled definition of its rule. A
        checkpoint goes when its tenant's flag is off or its rule group has definitions but no
        enabled one. Tenants and rule groups without rows in tenants or rule_definitions are
        left alone.
        """
        async with self._transaction("sweep") as conn:
            cursor = await conn.execute(_SWEEP_RULE_STATE)
            state_rows = cursor.rowcount
            cursor = await conn.execute(_SWEEP_CHECKPOINTS)
            checkpoint_rows = cursor.rowcount
        if state_rows or checkpoint_rows:
            log.info("state_swept", rule_state_rows=state_rows, checkpoint_rows=checkpoint_rows)
        return SweepReport(rule_state_rows=state_rows, checkpoint_rows=checkpoint_rows)

    # ------------------------------------------------------------ plumbing

    @asynccontextmanager
    async def _connection(self, action: str) -> AsyncIterator[psycopg.AsyncConnection]:
        """Lend a pooled connection in autocommit mode, for single statements."""
        if self._pool is None:
            raise StoreError("PostgreSQL store is not open: call open() first")
        with _translate_errors(action):
            async with self._pool.connection() as conn:
                yield conn

    @asynccontextmanager
    async def _transaction(
        self, action: str, *, repeatable_read: bool = False
    ) -> AsyncIterator[psycopg.AsyncConnection]:
        """Run the block in one transaction on a pooled connection, translating driver errors."""
        if self._pool is None:
            raise StoreError("PostgreSQL store is not open: call open() first")
        with _translate_errors(action):
            async with self._pool.connection() as conn:
                async with conn.transaction():
                    if repeatable_read:
                        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    yield conn


    # ------------------------------------------------------------ REST API

    async def ping(self, timeout_s: float = PING_TIMEOUT_S) -> None:
        """Run one trivial query; raises StoreError when the server cannot be reached.

        Bounded by its own timeout, shorter than the pool's, so that a readiness probe gets a
        response while the server is down.
        """
        query = asyncio.ensure_future(self._ping_query())
        done, _ = await asyncio.wait({query}, timeout=timeout_s)
        if not done:
            # Cancelling the statement makes psycopg ask the server to cancel it too, which on a
            # server that accepts connections but never responds waits for connect_timeout. The
            # probe does not wait for that: the cancellation finishes in the background.
            query.cancel()
            self._cancelled_pings.add(query)
            query.add_done_callback(self._forget_cancelled_ping)
            raise StoreError(f"PostgreSQL did not respond within {timeout_s:g} s")
        query.result()

    async def _ping_query(self) -> None:
        async with self._transaction("ping") as conn:
            await conn.execute("SELECT 1")

    def _forget_cancelled_ping(self, query: asyncio.Future[None]) -> None:
        self._cancelled_pings.discard(query)
        if not query.cancelled():
            # Retrieved, so that asyncio does not report it as never retrieved.
            query.exception()

    async def create_tenant(self, tenant: str) -> bool:
        """Insert the tenant with its flag off unless it exists; return True when it was inserted."""
        check_text("tenant", tenant)
        async with self._transaction("create_tenant") as conn:
            cursor = await conn.execute(
                "INSERT INTO tenants (tenant_id) VALUES (%s) ON CONFLICT DO NOTHING", (tenant,)
            )
            return cursor.rowcount == 1

    async def tenant_ids(self) -> set[str]:
        """Return the ids of every tenant."""
        async with self._connection("tenant_ids") as conn:
            cursor = await conn.execute("SELECT tenant_id FROM tenants")
            rows = await cursor.fetchall()
        return {str(row[0]) for row in rows}

    async def tenant_flag(self, tenant: str) -> bool | None:
        """Return the tenant's stateful_rules flag, or None when the tenant does not exist."""
        check_text("tenant", tenant)
        async with self._transaction("tenant_flag") as conn:
            cursor = await conn.execute(
                "SELECT stateful_rules FROM tenants WHERE tenant_id = %s", (tenant,)
            )
            row = await cursor.fetchone()
        return None if row is None else bool(row[0])

    async def insert_api_token(
        self, tenant: str, token_id: str, name: str, salt: bytes, secret_sha256: bytes
    ) -> datetime:
        """Store a new API token of an existing tenant and return its creation time."""
        check_text("tenant", tenant)
        check_text("token name", name)
        async with self._transaction("insert_api_token") as conn:
            cursor = await conn.execute(
                "INSERT INTO api_tokens (token_id, tenant_id, name, salt, secret_sha256)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING created_at",
                (token_id, tenant, name, salt, secret_sha256),
            )
            row = await cursor.fetchone()
        assert row is not None  # INSERT ... RETURNING returns its row or raises
        created_at: datetime = row[0]
        return created_at

    async def active_api_token(self, token_id: str) -> tuple[str, bytes, bytes] | None:
        """Return (tenant, salt, secret_sha256) of an unrevoked token, or None."""
        check_text("token_id", token_id)
        async with self._transaction("active_api_token") as conn:
            cursor = await conn.execute(
                "SELECT tenant_id, salt, secret_sha256 FROM api_tokens"
                " WHERE token_id = %s AND revoked_at IS NULL",
                (token_id,),
            )
            row = await cursor.fetchone()
        return None if row is None else (row[0], bytes(row[1]), bytes(row[2]))

    async def list_api_tokens(self, tenant: str) -> list[tuple[str, str, datetime, datetime | None]]:
        """Return (token_id, name, created_at, revoked_at) of the tenant's tokens, oldest first."""
        check_text("tenant", tenant)
        async with self._transaction("list_api_tokens") as conn:
            cursor = await conn.execute(
                "SELECT token_id, name, created_at, revoked_at FROM api_tokens"
                " WHERE tenant_id = %s ORDER BY created_at, token_id",
                (tenant,),
            )
            return list(await cursor.fetchall())

    async def revoke_api_token(self, tenant: str, token_id: str) -> bool:
        """Mark the tenant's token revoked; return False when it has no such unrevoked token."""
        check_text("tenant", tenant)
        check_text("token_id", token_id)
        async with self._transaction("revoke_api_token") as conn:
            cursor = await conn.execute(
                "UPDATE api_tokens SET revoked_at = now()"
                " WHERE tenant_id = %s AND token_id = %s AND revoked_at IS NULL",
                (tenant, token_id),
            )
            return cursor.rowcount == 1

    async def rule_definitions(
        self, tenant: str, rule_id: str | None = None
    ) -> list[tuple[str, str, dict[str, Any], bool, int, str, datetime]]:
        """Return the tenant's rule definitions, or the one of `rule_id`, ordered by rule id.

        Each row is (rule_id, rule_group, definition, enabled, version, source, updated_at).
        """
        check_text("tenant", tenant)
        clause: LiteralString = "" if rule_id is None else " AND rule_id = %s"
        params = [tenant] if rule_id is None else [tenant, check_text("rule_id", rule_id)]
        async with self._transaction("rule_definitions") as conn:
            cursor = await conn.execute(
                "SELECT rule_id, rule_group, definition, enabled, version, source, updated_at"
                " FROM rule_definitions WHERE tenant_id = %s" + clause + " ORDER BY rule_id",
                params,
            )
            return list(await cursor.fetchall())

    async def active_rule_definitions(self) -> list[tuple[str, str, str, dict[str, Any], int]]:
        """Return the enabled rule definitions of every tenant whose stateful_rules flag is on.

        Each row is (tenant, rule_group, rule_id, definition, version), ordered by tenant, rule
        group and rule id. This is what the service evaluates.
        """
        async with self._transaction("active_rule_definitions") as conn:
            cursor = await conn.execute(
                "SELECT d.tenant_id, d.rule_group, d.rule_id, d.definition, d.version"
                " FROM rule_definitions AS d JOIN tenants AS t ON t.tenant_id = d.tenant_id"
                " WHERE t.stateful_rules AND d.enabled"
                " ORDER BY d.tenant_id, d.rule_group, d.rule_id"
            )
            return list(await cursor.fetchall())

    async def put_api_rule(
        self,
        tenant: str,
        rule_id: str,
        rule_group: str,
        definition: dict[str, Any],
        enabled: bool,
        expected_version: int | None = None,
    ) -> int | None:
        """Insert or replace a rule definition with source 'api' and return its new version.

        Every successful call adds exactly one to the version, even when nothing changed. With
        expected_version the write happens only while the stored version equals it, and None is
        returned otherwise, also when the rule does not exist (version 0 never matches). The row lock that the UPDATE and
        ON CONFLICT DO UPDATE take makes concurrent writers of one rule run one after another.
        """
        check_scope(tenant, rule_group)
        check_text("rule_id", rule_id)
        encoded = _encode_json(f"definition of rule {preview(rule_id)}", definition)
        async with self._transaction("put_api_rule") as conn:
            if expected_version is None:
                await _lock_rule_id(conn, tenant, rule_id)
                cursor = await conn.execute(
                    "INSERT INTO rule_definitions"
                    " (tenant_id, rule_id, rule_group, definition, enabled, source, version)"
                    " VALUES (%s, %s, %s, %s::jsonb, %s, 'api', 1 + coalesce((SELECT version"
                    " FROM rule_deletions WHERE tenant_id = %s AND rule_id = %s), 0))"
                    " ON CONFLICT (tenant_id, rule_id) DO UPDATE SET"
                    " rule_group = excluded.rule_group, definition = excluded.definition,"
                    " enabled = excluded.enabled, source = 'api',"
                    " version = rule_definitions.version + 1, updated_at = now()"
                    " RETURNING version",
                    (tenant, rule_id, rule_group, encoded, enabled, tenant, rule_id),
                )
            else:
                cursor = await conn.execute(
                    "UPDATE rule_definitions SET rule_group = %s, definition = %s::jsonb,"
                    " enabled = %s, source = 'api', version = version + 1, updated_at = now()"
                    " WHERE tenant_id = %s AND rule_id = %s AND version = %s"
                    " RETURNING version",
                    (rule_group, encoded, enabled, tenant, rule_id,
                     check_int("expected_version", expected_version, 0, _INT32_MAX)),
                )
            row = await cursor.fetchone()
        return None if row is None else int(row[0])

    async def delete_rule_definition(
        self, tenant: str, rule_id: str, expected_version: int | None = None
    ) -> RuleDeletion:
        """Delete a rule definition, only while its version equals `expected_version` if given.

        The version check is part of the DELETE statement, which re-reads the row after any
        concurrent writer of the rule commits, so a rule that a concurrent put_api_rule moved to
        another version is never deleted. The rule's group state stays until sweep() removes it.
        """
        check_text("tenant", tenant)
        check_text("rule_id", rule_id)
        clause: LiteralString = "" if expected_version is None else " AND version = %s"
        params: list[Any] = [tenant, rule_id]
        if expected_version is not None:
            params.append(check_int("expected_version", expected_version, 0, _INT32_MAX))
        async with self._transaction("delete_rule_definition") as conn:
            await _lock_rule_id(conn, tenant, rule_id)
            # The deleted version is kept, so that a definition created again continues from it.
            cursor = await conn.execute(
                "WITH deleted AS (DELETE FROM rule_definitions WHERE tenant_id = %s AND rule_id = %s"
                + clause
                + " RETURNING tenant_id, rule_id, version)"
                " INSERT INTO rule_deletions (tenant_id, rule_id, version)"
                " SELECT tenant_id, rule_id, version FROM deleted"
                " ON CONFLICT (tenant_id, rule_id) DO UPDATE SET"
                " version = excluded.version, deleted_at = now()",
                params,
            )
            if cursor.rowcount == 1:
                return RuleDeletion.DELETED
            if expected_version is None:
                return RuleDeletion.NOT_FOUND
            # The DELETE above has decided. This SELECT only picks which failure to report.
            cursor = await conn.execute(
                "SELECT 1 FROM rule_definitions WHERE tenant_id = %s AND rule_id = %s",
                (tenant, rule_id),
            )
            found = await cursor.fetchone() is not None
        return RuleDeletion.VERSION_MISMATCH if found else RuleDeletion.NOT_FOUND

    async def rule_groups_page(
        self, tenant: str, rule_id: str, *, after: tuple[str, str] | None, limit: int
    ) -> list[tuple[str, str, GroupSnapshot]]:
        """Return up to `limit` stored groups of a rule as (rule_group, group_key, snapshot).

        Rows are ordered by (rule_group, group_key), the stored JSON text of the key, and start
        after the pair `after` when it is given.
        """
        check_text("tenant", tenant)
        check_text("rule_id", rule_id)
        check_int("limit", limit, 1, HISTORY_LIMIT_MAX + 1)
        clause: LiteralString = ""
        params: list[Any] = [tenant, rule_id]
        if after is not None:
            clause = " AND (rule_group, group_key) > (%s, %s)"
            params.extend((check_text("cursor rule_group", after[0]),
                           check_text("cursor group_key", after[1])))
        params.append(limit)
        async with self._transaction("rule_groups_page") as conn:
            cursor = await conn.execute(
                f"SELECT rule_group, {_GROUP_COLUMNS} FROM rule_state"
                " WHERE tenant_id = %s AND rule_id = %s" + clause +
                " ORDER BY rule_group, group_key LIMIT %s",
                params,
            )
            rows = await cursor.fetchall()
        with _translate_decode_errors(tenant, None):
            return [(row[0], row[2], snapshot_from_row(row[1:], tuple)) for row in rows]

    async def history_page(
        self,
        tenant: str,
        *,
        rule_id: str | None = None,
        kind: str | None = None,
        group: dict[str, str | None] | None = None,
        since_s: float | None = None,
        until_s: float | None = None,
        after: tuple[float, int] | None = None,
        limit: int = 100,
    ) -> list[HistoryRecord]:
        """Return the tenant's history rows with since_s <= at < until_s, oldest first.

        Rows are ordered by (at_s, id) and start after the pair `after`, so a caller pages by
        passing the last row's (at, id). `group` matches rows whose group contains every given
        field with the given value.
        """
        check_int("limit", limit, 1, HISTORY_LIMIT_MAX + 1)
        clauses, params = _history_filters(tenant, rule_id, kind, group, since_s, until_s)
        if after is not None:
            after_at = check_time("cursor at", after[0])
            clauses.append("at >= to_timestamp(%s) - interval '1 second' AND (at_s, id) > (%s, %s)")
            params.extend((after_at, after_at, check_int64("cursor id", after[1])))
        params.append(limit)

        where: LiteralString = " AND ".join(clauses)
        sql: LiteralString = (
            f"SELECT {_HISTORY_COLUMNS} FROM evaluation_history WHERE {where}"
            " ORDER BY at_s, id LIMIT %s"
        )
        async with self._transaction("history_page") as conn:
            cursor = await conn.execute(sql, params)
            rows = await cursor.fetchall()
        with _translate_decode_errors(tenant, None):
            return [_history_from_row(row) for row in rows]


async def _configure_connection(conn: psycopg.AsyncConnection) -> None:
    conn.adapters.register_dumper(_BinaryArray, _BinaryArrayDumper)


RULE_ID_LOCK_CLASS = 0x4157_5244
"""First key of the transaction advisory lock that a rule's creation and deletion take."""


async def _lock_rule_id(conn: psycopg.AsyncConnection, tenant: str, rule_id: str) -> None:
    """Serialize the creation and the deletion of one rule id until the transaction ends.

    A creation that waited for a concurrent deletion then reads the deleted version in its own
    statement's snapshot, so it continues from that version instead of starting again at 1.
    """
    await conn.execute(
        "SELECT pg_advisory_xact_lock(%s::int4, hashtext(%s))",
        (RULE_ID_LOCK_CLASS, f"{tenant}/{rule_id}"),
    )


def connection_defaults(url: str) -> dict[str, str]:
    """Return the CONNECTION_DEFAULTS that the URL does not set itself."""
    try:
        url_params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        # An invalid URL fails at connect with psycopg's own message.
        return dict(CONNECTION_DEFAULTS)
    return {name: value for name, value in CONNECTION_DEFAULTS.items() if name not in url_params}


def with_connection_defaults(url: str) -> str:
    """Return the URL as a conninfo string with the CONNECTION_DEFAULTS it does not set."""
    try:
        return make_conninfo(url, **connection_defaults(url))
    except psycopg.ProgrammingError:
        # An invalid URL fails at connect with psycopg's own message.
        return url


async def _restart_reconnect(pool: AsyncConnectionPool) -> None:
    # psycopg_pool calls this when a series of attempts gave up, and then stops trying until a
    # client waits for a connection. check() makes it grow again at once, from a 1 s delay.
    if not pool.closed:
        await pool.check()


class _RepeatFilter(logging.Filter):
    """A filter that passes one record per message template and interval.

    While the server is down, psycopg_pool warns on every failed attempt, several times in a
    RECONNECT_CYCLE_S cycle. The first of each minute is enough, and keeps the server's reason.
    """

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        now = time.monotonic()
        template = str(record.msg)
        last = self._last.get(template)
        if last is not None and now - last < self._interval_s:
            return False
        self._last[template] = now
        return True


def _limit_pool_warnings() -> None:
    pool_logger = logging.getLogger("psycopg.pool")
    if not any(isinstance(existing, _RepeatFilter) for existing in pool_logger.filters):
        pool_logger.addFilter(_RepeatFilter(POOL_LOG_INTERVAL_S))


def _history_filters(
    tenant: str,
    rule_id: str | None,
    kind: str | None,
    group: Any,
    since_s: float | None,
    until_s: float | None,
) -> tuple[list[LiteralString], list[Any]]:
    """Build the WHERE clauses and parameters shared by the history queries.

    The clauses are fixed strings and every value is a bound parameter. The `at` bounds with one
    second of slack let PostgreSQL skip partitions, and at_s filters exactly.
    """
    clauses: list[LiteralString] = ["tenant_id = %s"]
    params: list[Any] = [check_text("tenant", tenant)]
    if rule_id is not None:
        clauses.append("rule_id = %s")
        params.append(check_text("rule_id", rule_id))
    if kind is not None:
        clauses.append("kind = %s")
        params.append(check_text("kind", kind))
    if group is not None:
        clauses.append("group_key @> %s::jsonb")
        params.append(_encode_json("group filter", group))
    if since_s is not None:
        since = check_time("since_s", since_s)
        clauses.append("at >= to_timestamp(%s) - interval '1 second' AND at_s >= %s")
        params.extend((since, since))
    if until_s is not None:
        until = check_time("until_s", until_s)
        clauses.append("at < to_timestamp(%s) + interval '1 second' AND at_s < %s")
        params.extend((until, until))
    return clauses, params


def _describe_url(url: str) -> str:
    """Return host, port and database of a connection URL, without the password."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "the configured URL"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or ''}"


@contextmanager
def _translate_errors(action: str) -> Iterator[None]:
    """Turn driver errors into StoreError. This is the one place where that happens."""
    try:
        yield
    except psycopg.Error as exc:
        # PoolTimeout derives from psycopg.OperationalError, so it lands here too.
        raise StoreError(f"PostgreSQL {action} failed: {type(exc).__name__}: {exc}") from exc


@contextmanager
def _translate_decode_errors(tenant: str, rule_group: str | None) -> Iterator[None]:
    try:
        yield
    except (ValueError, TypeError, KeyError) as exc:
        scope = f"tenant {preview(tenant)}"
        if rule_group is not None:
            scope += f", rule group {preview(rule_group)}"
        raise StoreError(
            f"stored row of {scope} is invalid: {exc}. The database was changed outside"
            " alertwarden or is damaged. Restore it from a backup"
        ) from exc


def _lease_lost(tenant: str, rule_group: str) -> LeaseLostError:
    return LeaseLostError(
        f"lease of tenant {preview(tenant)}, rule group {preview(rule_group)} is lost: its "
        "session ended, so another node may evaluate the rule group now; nothing was written"
    )


async def _check_fence(conn: psycopg.AsyncConnection, tenant: str, rule_group: str, fence: Fence) -> None:
    # The check locks the lease row until this transaction ends (see FENCE_HELD).
    cursor = await conn.execute("SELECT " + FENCE_HELD, fence_params(fence))
    row = await cursor.fetchone()
    if row is None or not row[0]:
        raise _lease_lost(tenant, rule_group)


def _utc_day(at_s: float) -> date:
    return datetime.fromtimestamp(at_s, UTC).date()


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


# Input checks. PostgreSQL text and jsonb cannot hold a NUL character, and a lone surrogate
# cannot be encoded as UTF-8, so both are rejected before any SQL runs.


def _encode_json(field: str, value: object) -> str:
    try:
        # Captures come from event fields and may hold any type, so unknown types are stored as
        # their str() instead of failing the write.
        text = orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError as exc:
        raise StoreError(f"{field} cannot be encoded as JSON: {exc}") from exc
    if "\\u0000" in text:
        raise StoreError(
            f"invalid {field}: contains a NUL character, which PostgreSQL jsonb cannot hold."
            " Remove it from the input or the rule"
        )
    return text


# Row codecs.


def _check_counts(rule_id: str, counts: object) -> tuple[int, ...]:
    if not isinstance(counts, tuple):
        raise StoreError(f"invalid counts {counts!r} of rule {preview(rule_id)}: expected a tuple")
    for count in counts:
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= _INT32_MAX:
            raise StoreError(
                f"invalid bucket count {count!r} of rule {preview(rule_id)}: expected an integer"
                f" from 0 to {_INT32_MAX}"
            )
    return counts


_COLUMN_NAMES = (
    "rule_id", "group_key", "window_s", "bucket_s", "counts", "head_bucket", "last_seen_at",
    "last_fired_at", "last_notified_at", "status", "suppressed", "position",
)
_STATUS_VALUES = {status.value: status.value for status in GroupStatus}


def _group_params(snapshots: Sequence[GroupSnapshot]) -> _GroupParams:
    """Check the snapshots and encode them as the array parameters of _UPSERT_GROUPS.

    A group may appear more than once, such as when one tick both fires and recovers it. One
    INSERT ... ON CONFLICT cannot touch a row twice, so only the snapshot that a sequence of
    single upserts would leave is kept: the last one among those with the greatest position.
    """
    # The bulk checks run in C over whole columns. When they fail or raise, the row-by-row
    # checks run instead: they accept what the bulk checks only doubted, such as an int
    # subclass, and raise an error that names the invalid field and its rule.
    try:
        columns = _bulk_group_columns(snapshots)
    except (TypeError, ValueError, OverflowError, KeyError):
        columns = None
    if columns is None:
        columns = _checked_group_columns(snapshots)
    return _encode_group_columns(columns)


def _bulk_group_columns(snapshots: Sequence[GroupSnapshot]) -> dict[str, list[Any]] | None:
    """Return one list per rule_state column, or None when a bulk check fails."""
    latest: dict[tuple[str, bytes], GroupSnapshot] = {}
    for snapshot in snapshots:
        identity = (snapshot.rule_id, orjson.dumps(snapshot.key))
        previous = latest.get(identity)
        if previous is None or snapshot.position >= previous.position:
            latest[identity] = snapshot
    rows = list(latest.values())

    rule_ids = [s.rule_id for s in rows]
    keys = [s.key for s in rows]
    key_values = list(chain.from_iterable(keys))
    counts = [s.counts for s in rows]
    last_seen_at = [s.last_seen_at for s in rows]
    last_fired_at = [s.last_fired_at for s in rows]
    last_notified_at = [s.last_notified_at for s in rows]
    suppressed = [s.suppressed for s in rows]
    columns: dict[str, list[Any]] = {
        "rule_id": rule_ids,
        "group_key": [encoded_key.decode() for _, encoded_key in latest],
        "window_s": [s.window_s for s in rows],
        "bucket_s": [s.bucket_s for s in rows],
        "counts": counts,
        "head_bucket": [s.head_bucket for s in rows],
        "last_seen_at": last_seen_at,
        "last_fired_at": last_fired_at,
        "last_notified_at": last_notified_at,
        "status": [_STATUS_VALUES[s.status] for s in rows],
        "suppressed": suppressed,
        "position": [s.position for s in rows],
    }
    valid = (
        _is_valid_text(rule_ids)
        and _types_within(keys, {tuple})
        and _types_within(key_values, {str, type(None)})
        and _is_valid_text([v for v in key_values if v is not None])
        and _are_ints_within(columns["window_s"], 1, _INT32_MAX)
        and _are_ints_within(columns["bucket_s"], 1, _INT32_MAX)
        and _types_within(counts, {tuple})
        and _are_ints_within(list(chain.from_iterable(counts)), 0, _INT32_MAX)
        and _are_ints_within(columns["head_bucket"], INT64_MIN, INT64_MAX)
        and _are_ints_within(columns["position"], INT64_MIN, INT64_MAX)
        and _are_finite_floats(last_seen_at)
        and _are_finite_floats([t for t in last_fired_at if t is not None])
        and _are_finite_floats([t for t in last_notified_at if t is not None])
        and _types_within(suppressed, {bool})
    )
    return columns if valid else None


def _types_within(values: Iterable[object], types: set[type]) -> bool:
    # Exact types on purpose: bool must not pass for int.
    return set(map(type, values)) <= types


def _is_valid_text(values: list[Any]) -> bool:
    if not _types_within(values, {str}):
        return False
    joined = "".join(values)
    if "\x00" in joined:
        return False
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _are_ints_within(values: list[Any], low: int, high: int) -> bool:
    if not values:
        return True
    return _types_within(values, {int}) and low <= min(values) and max(values) <= high


def _are_finite_floats(values: list[Any]) -> bool:
    # The binary float8 encoding packs an int as the float that float() returns for it.
    return _types_within(values, {float, int}) and all(map(math.isfinite, values))


def _checked_group_columns(snapshots: Sequence[GroupSnapshot]) -> dict[str, list[Any]]:
    """Check the snapshots one by one and return them as one list per rule_state column.

    It raises StoreError naming the first invalid field, and keeps the same snapshots as
    _bulk_group_columns.
    """
    latest: dict[tuple[str, str], GroupSnapshot] = {}
    keys: dict[tuple[str, str], str] = {}
    for snapshot in snapshots:
        check_text("rule_id", snapshot.rule_id)
        group_key = encode_key(snapshot.rule_id, snapshot.key)
        identity = (snapshot.rule_id, group_key)
        previous = latest.get(identity)
        if previous is None or snapshot.position >= previous.position:
            latest[identity] = snapshot
            keys[identity] = group_key

    columns: dict[str, list[Any]] = {
        name: []
        for name in _COLUMN_NAMES
    }
    for identity, snapshot in latest.items():
        rule_id = snapshot.rule_id
        if not isinstance(snapshot.suppressed, bool):
            raise StoreError(
                f"invalid suppressed {snapshot.suppressed!r} of rule {preview(rule_id)}:"
                " expected True or False"
            )
        try:
            status = GroupStatus(snapshot.status).value
        except ValueError as exc:
            raise StoreError(
                f"invalid status {snapshot.status!r} of rule {preview(rule_id)}: expected one"
                f" of {[s.value for s in GroupStatus]}"
            ) from exc
        columns["rule_id"].append(rule_id)
        columns["group_key"].append(keys[identity])
        columns["window_s"].append(check_int("window_s", snapshot.window_s, 1, _INT32_MAX))
        columns["bucket_s"].append(check_int("bucket_s", snapshot.bucket_s, 1, _INT32_MAX))
        columns["counts"].append(_check_counts(rule_id, snapshot.counts))
        columns["head_bucket"].append(check_int64("head_bucket", snapshot.head_bucket))
        columns["last_seen_at"].append(check_time("last_seen_at", snapshot.last_seen_at))
        columns["last_fired_at"].append(
            check_optional_time("last_fired_at", snapshot.last_fired_at)
        )
        columns["last_notified_at"].append(
            check_optional_time("last_notified_at", snapshot.last_notified_at)
        )
        columns["status"].append(status)
        columns["suppressed"].append(snapshot.suppressed)
        columns["position"].append(check_int64("position", snapshot.position))
    return columns


# Binary wire format of one-dimensional arrays (array_send in PostgreSQL's arrayfuncs.c): a
# header of dimension count, has-null flag, element type oid, length and lower bound, then each
# element as its byte length (-1 for NULL) and its bytes, all integers big-endian.

_ARRAY_HEADER = struct.Struct(">iiIii")
_ELEMENT_LENGTH = struct.Struct(">i")
_NULL_ELEMENT = _ELEMENT_LENGTH.pack(-1)
_OID_BOOL = 16
_OID_INT8 = 20
_OID_INT4 = 23
_OID_TEXT = 25
_OID_FLOAT8 = 701


@dataclass(frozen=True, slots=True)
class _BinaryArray:
    """A one-dimensional PostgreSQL array in the binary wire format, sent with a %b placeholder."""

    data: bytes


class _BinaryArrayDumper(Dumper):
    """Dumper that sends a _BinaryArray as is.

    Its oid stays 0 (unknown), so the server takes the array type from the cast that follows
    the placeholder, and that cast must name the element type written in the array header.
    """

    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return obj.data


@dataclass(frozen=True, slots=True)
class _GroupParams:
    """The rule_state rows of one upsert: their count and the array parameters of _UPSERT_GROUPS."""

    rows: int
    arrays: dict[str, _BinaryArray]


def _encode_group_columns(columns: dict[str, list[Any]]) -> _GroupParams:
    counts: list[tuple[int, ...]] = columns["counts"]
    counts_len = list(map(len, counts))
    # NOTE: an array holds at most MaxArraySize (134,217,727) elements, which caps the counts of
    # one flush in total, such as about 2.2 million groups with 60-bucket windows.
    return _GroupParams(
        rows=len(counts),
        arrays={
            "rule_id": _text_array(columns["rule_id"]),
            "group_key": _text_array(columns["group_key"]),
            "window_s": _int4_array(columns["window_s"]),
            "bucket_s": _int4_array(columns["bucket_s"]),
            "counts": _int4_array(list(chain.from_iterable(counts))),
            "counts_end": _int4_array(list(accumulate(counts_len))),
            "counts_len": _int4_array(counts_len),
            "head_bucket": _fixed_array(_OID_INT8, "q", 8, columns["head_bucket"]),
            "last_seen_at": _fixed_array(_OID_FLOAT8, "d", 8, columns["last_seen_at"]),
            "last_fired_at": _fixed_array(_OID_FLOAT8, "d", 8, columns["last_fired_at"]),
            "last_notified_at": _fixed_array(_OID_FLOAT8, "d", 8, columns["last_notified_at"]),
            "status": _text_array(columns["status"]),
            "suppressed": _fixed_array(_OID_BOOL, "?", 1, columns["suppressed"]),
            "position": _fixed_array(_OID_INT8, "q", 8, columns["position"]),
        },
    )


def _array_header(element_oid: int, length: int, has_null: bool) -> bytes:
    return _ARRAY_HEADER.pack(1, int(has_null), element_oid, length, 1)


def _int4_array(values: list[int]) -> _BinaryArray:
    # array("i") does the interleaving and the byte swap in C. Its items are a C int, 4 bytes on
    # LP64 and LLP64 platforms, and it raises OverflowError for a value outside that range.
    body = array("i", [4]) * (2 * len(values))
    body[1::2] = array("i", values)
    if sys.byteorder == "little":
        body.byteswap()
    return _BinaryArray(_array_header(_OID_INT4, len(values), False) + body.tobytes())


def _fixed_array(element_oid: int, code: str, size: int, values: list[Any]) -> _BinaryArray:
    """Encode values of one fixed-size struct format code, None as NULL."""
    nulls = values.count(None)
    if nulls == len(values):
        body = _NULL_ELEMENT * len(values)
    elif nulls:
        formats: list[str] = []
        items: list[Any] = []
        for value in values:
            if value is None:
                formats.append("i")
                items.append(-1)
            else:
                formats.append("i" + code)
                items.extend((size, value))
        body = struct.pack(">" + "".join(formats), *items)
    else:
        items = [size] * (2 * len(values))
        items[1::2] = values
        body = struct.pack(">" + ("i" + code) * len(values), *items)
    return _BinaryArray(_array_header(element_oid, len(values), nulls > 0) + body)


def _text_array(values: list[str]) -> _BinaryArray:
    encoded = [value.encode("utf-8") for value in values]
    lengths = map(_ELEMENT_LENGTH.pack, map(len, encoded))
    body = b"".join(chain.from_iterable(zip(lengths, encoded)))
    return _BinaryArray(_array_header(_OID_TEXT, len(values), False) + body)


def _encode_history_columns(history: dict[str, list[Any]]) -> dict[str, _BinaryArray]:
    """Encode the checked columns of _history_columns as the h_ array parameters.

    psycopg's list dumper escapes each element of a text array with a regex in Python, which took
    most of the time of a record_transitions statement. Binary arrays need no escaping.
    """
    arrays = {
        "h_at_s": _fixed_array(_OID_FLOAT8, "d", 8, history["at_s"]),
        "h_count": _int4_array(history["count"]),
    }
    for name in ("rule_id", "group_key", "kind", "transition_id", "details"):
        arrays[f"h_{name}"] = _text_array(history[name])
    return arrays


def _group_identities(groups: Sequence[tuple[str, GroupKey]]) -> tuple[list[str], list[str]]:
    """Return the rule ids and encoded group keys of (rule id, group key) pairs, as two arrays."""
    rule_ids: list[str] = []
    keys: list[str] = []
    for rule_id, key in groups:
        check_text("rule_id", rule_id)
        rule_ids.append(rule_id)
        keys.append(encode_key(rule_id, key))
    return rule_ids, keys


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
    )


def _checkpoint_from_row(row: tuple[Any, ...]) -> Checkpoint:
    source, offset, position, now_s, ticked = row
    if not isinstance(ticked, dict):
        raise ValueError(f"checkpoint ticked {ticked!r} is not a JSON object")
    return Checkpoint(source=source, offset=offset, position=position, now=now_s, ticked=ticked)


def _history_columns(
    tenant: str, rule_group: str, transitions: Sequence[Transition]
) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {name: [] for name in _HISTORY_ARRAYS}
    for transition in transitions:
        rule_id, at, kind, details = check_transition(transition)

        columns["at_s"].append(at)
        columns["rule_id"].append(rule_id)
        columns["group_key"].append(orjson.dumps(dict(transition.group)).decode())
        columns["kind"].append(kind)
        columns["count"].append(check_int("transition count", transition.count, 0, _INT32_MAX))
        columns["transition_id"].append(transition.transition_id(tenant, rule_group))
        columns["details"].append(
            _encode_json(f"details of a transition of rule {preview(rule_id)}", details)
        )
    return columns


def _history_from_row(row: tuple[Any, ...]) -> HistoryRecord:
    (
        history_id,
        tenant,
        rule_group,
        transition_id,
        at_s,
        rule_id,
        group_key,
        kind,
        count,
        details,
        delivered,
    ) = row
    if not isinstance(group_key, dict) or not isinstance(details, dict):
        raise ValueError(f"history row {history_id} has a group_key or details that is not an object")
    return HistoryRecord(
        id=history_id,
        tenant=tenant,
        rule_group=rule_group,
        transition_id=transition_id,
        at=at_s,
        rule_id=rule_id,
        group=group_key,
        kind=kind,
        count=count,
        details=details,
        delivered=delivered,
    )
