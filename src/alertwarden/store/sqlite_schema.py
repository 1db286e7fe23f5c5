"""Schema migrations of the SQLite store, applied in order and tracked by PRAGMA user_version.

Step N (1-based) moves a database from user_version N - 1 to N. Append new steps at the end and
never edit a released one, because databases in the field have already run it.

Every table is keyed by tenant first so that each tenant's rows form one contiguous range of the
primary key, and every query the store runs filters by tenant.
"""

from __future__ import annotations

_CREATE_GROUPS = """
CREATE TABLE groups (
    tenant TEXT NOT NULL,
    rule_group TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    group_key TEXT NOT NULL,
    window_s INTEGER NOT NULL,
    bucket_s INTEGER NOT NULL,
    counts BLOB NOT NULL CHECK (length(counts) % 4 = 0),
    head_bucket INTEGER NOT NULL,
    last_seen_at REAL NOT NULL,
    last_fired_at REAL,
    last_notified_at REAL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'firing')),
    suppressed INTEGER NOT NULL CHECK (suppressed IN (0, 1)),
    position INTEGER NOT NULL,
    PRIMARY KEY (tenant, rule_group, rule_id, group_key)
) WITHOUT ROWID
"""

_CREATE_CHECKPOINTS = """
CREATE TABLE checkpoints (
    tenant TEXT NOT NULL,
    rule_group TEXT NOT NULL,
    source TEXT NOT NULL,
    "offset" INTEGER NOT NULL,
    position INTEGER NOT NULL,
    now REAL,
    ticked TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (tenant, rule_group)
) WITHOUT ROWID
"""

_CREATE_HISTORY = """
CREATE TABLE history (
    id INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    rule_group TEXT NOT NULL,
    transition_id TEXT NOT NULL,
    at REAL NOT NULL,
    rule_id TEXT NOT NULL,
    group_json TEXT NOT NULL,
    kind TEXT NOT NULL,
    count INTEGER NOT NULL,
    details TEXT NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0 CHECK (delivered IN (0, 1)),
    UNIQUE (tenant, transition_id)
)
"""

# The partial index keeps the outbox scan of undelivered() proportional to the undelivered rows,
# not to the whole history.
_HISTORY_INDEXES = (
    "CREATE INDEX history_tenant_at ON history (tenant, at)",
    "CREATE INDEX history_tenant_rule_at ON history (tenant, rule_id, at)",
    "CREATE INDEX history_undelivered ON history (tenant, rule_group, id) WHERE delivered = 0",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (_CREATE_GROUPS, _CREATE_CHECKPOINTS, _CREATE_HISTORY, *_HISTORY_INDEXES),
)
"""Migration steps; each is a list of statements run in one transaction."""

SCHEMA_VERSION = len(MIGRATIONS)
