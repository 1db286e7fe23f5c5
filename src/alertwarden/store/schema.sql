-- Declared schema of the PostgreSQL store on the partitioned history path, as the migrations in
-- migrations/ produce it (without their schema_migrations bookkeeping, the settings rows and the
-- day partitions). tests/test_migrations.py compares a database built from this file with a
-- migrated one. Change both together: a new migration file and this file.


CREATE TABLE tenants (
    tenant_id text PRIMARY KEY,
    stateful_rules boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE tenants IS 'One row per tenant; a tenant whose stateful_rules flag is off keeps no group state.';
COMMENT ON COLUMN tenants.tenant_id IS 'Tenant identifier as the runner and the API use it.';
COMMENT ON COLUMN tenants.stateful_rules IS 'Feature flag: when false, sweep() deletes the tenant''s group state and checkpoints.';
COMMENT ON COLUMN tenants.created_at IS 'Time the tenant row was inserted.';
COMMENT ON COLUMN tenants.updated_at IS 'Time the tenant row last changed.';

CREATE TABLE rule_definitions (
    tenant_id text NOT NULL,
    rule_id text NOT NULL,
    rule_group text NOT NULL,
    definition jsonb NOT NULL,
    enabled boolean NOT NULL DEFAULT true,
    version integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    source text NOT NULL CHECK (source IN ('file', 'api')),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, rule_id)
);
COMMENT ON TABLE rule_definitions IS 'Rule definitions of each tenant, loaded from rule files or written through the API.';
COMMENT ON COLUMN rule_definitions.tenant_id IS 'Tenant that owns the rule.';
COMMENT ON COLUMN rule_definitions.rule_id IS 'Rule id, unique within the tenant.';
COMMENT ON COLUMN rule_definitions.rule_group IS 'Rule group that evaluates the rule.';
COMMENT ON COLUMN rule_definitions.definition IS 'The rule definition as a JSON object, in the rule file format.';
COMMENT ON COLUMN rule_definitions.enabled IS 'False for a rule that is switched off or no longer in its rule file; sweep() deletes its state.';
COMMENT ON COLUMN rule_definitions.version IS 'Incremented at every change of definition or enabled.';
COMMENT ON COLUMN rule_definitions.source IS 'Origin of the definition: file (rule file sync) or api.';
COMMENT ON COLUMN rule_definitions.updated_at IS 'Time of the last change.';

CREATE TABLE rule_state (
    tenant_id text NOT NULL,
    rule_group text NOT NULL,
    rule_id text NOT NULL,
    group_key text NOT NULL,
    window_s integer NOT NULL CHECK (window_s > 0),
    bucket_s integer NOT NULL CHECK (bucket_s > 0),
    counts integer[] NOT NULL CHECK (array_ndims(counts) = 1 AND 0 <= ALL (counts)),
    head_bucket bigint NOT NULL,
    last_seen_at double precision NOT NULL,
    last_fired_at double precision,
    last_notified_at double precision,
    status text NOT NULL CHECK (status IN ('ok', 'firing')),
    suppressed boolean NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (tenant_id, rule_group, rule_id, group_key)
);
COMMENT ON TABLE rule_state IS 'Last stored snapshot of every live rule + group key; enough to rebuild its window exactly.';
COMMENT ON COLUMN rule_state.tenant_id IS 'Tenant of the rule group.';
COMMENT ON COLUMN rule_state.rule_group IS 'Rule group whose evaluator owns the group.';
COMMENT ON COLUMN rule_state.rule_id IS 'Rule id.';
COMMENT ON COLUMN rule_state.group_key IS 'Values of the rule''s group_by fields as compact JSON array text; null is the missing value.';
COMMENT ON COLUMN rule_state.window_s IS 'Rule window in seconds when the snapshot was taken; a restore with another window starts the group afresh.';
COMMENT ON COLUMN rule_state.bucket_s IS 'Rule bucket in seconds when the snapshot was taken.';
COMMENT ON COLUMN rule_state.counts IS 'The window_s / bucket_s bucket counts, oldest first; the last one belongs to head_bucket.';
COMMENT ON COLUMN rule_state.head_bucket IS 'Newest bucket index, floor(t / bucket_s), that received an event.';
COMMENT ON COLUMN rule_state.last_seen_at IS 'Greatest event time counted for the group, in UTC seconds. Double precision so a snapshot round-trips bit-exactly.';
COMMENT ON COLUMN rule_state.last_fired_at IS 'UTC seconds of the last fired transition; NULL when the group never fired.';
COMMENT ON COLUMN rule_state.last_notified_at IS 'UTC seconds of the last fired or renotified transition; NULL when there was none. Cooldown and re-notify count from it.';
COMMENT ON COLUMN rule_state.status IS 'ok or firing.';
COMMENT ON COLUMN rule_state.suppressed IS 'True while a cooldown_hit episode is open, so the episode is recorded once.';
COMMENT ON COLUMN rule_state.position IS 'Input step after which the state was taken; a flush overwrites the row only with a state of an equal or later step.';

CREATE TABLE input_checkpoints (
    tenant_id text NOT NULL,
    rule_group text NOT NULL,
    source text NOT NULL,
    "offset" bigint NOT NULL,
    position bigint NOT NULL,
    now_s double precision,
    ticked jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, rule_group)
);
COMMENT ON TABLE input_checkpoints IS 'Where each rule group''s input stood at its last flush.';
COMMENT ON COLUMN input_checkpoints.tenant_id IS 'Tenant of the rule group.';
COMMENT ON COLUMN input_checkpoints.rule_group IS 'Rule group.';
COMMENT ON COLUMN input_checkpoints.source IS 'Identity of the input, such as device, inode and a fingerprint of a file''s start.';
COMMENT ON COLUMN input_checkpoints."offset" IS 'Byte offset or stream sequence of the first record not yet applied.';
COMMENT ON COLUMN input_checkpoints.position IS 'Input step number of the flush.';
COMMENT ON COLUMN input_checkpoints.now_s IS 'Evaluator clock in UTC seconds; NULL before the first event.';
COMMENT ON COLUMN input_checkpoints.ticked IS 'JSON object: per rule id, the last bucket index whose boundary was evaluated.';
COMMENT ON COLUMN input_checkpoints.updated_at IS 'Time of the flush that wrote the row.';

CREATE TABLE alertwarden_settings (
    name text PRIMARY KEY,
    value text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE alertwarden_settings IS 'Store settings chosen at migration time, such as the history backend and its retention.';
COMMENT ON COLUMN alertwarden_settings.name IS 'Setting name: history_backend, compress_after_s or retention_s.';
COMMENT ON COLUMN alertwarden_settings.value IS 'Setting value as text.';
COMMENT ON COLUMN alertwarden_settings.updated_at IS 'Time the setting was written.';

CREATE TABLE evaluation_history (
    id bigint GENERATED ALWAYS AS IDENTITY,
    at timestamptz NOT NULL,
    at_s double precision NOT NULL,
    tenant_id text NOT NULL,
    rule_group text NOT NULL,
    rule_id text NOT NULL,
    group_key jsonb NOT NULL,
    kind text NOT NULL CHECK (kind IN ('fired', 'recovered', 'cooldown_hit', 'renotified')),
    count integer NOT NULL,
    transition_id text NOT NULL,
    details jsonb NOT NULL,
    delivered boolean NOT NULL DEFAULT false,
    CONSTRAINT evaluation_history_transition_key UNIQUE (tenant_id, transition_id, at)
) PARTITION BY RANGE (at);
COMMENT ON TABLE evaluation_history IS 'Transition history and notification outbox, partitioned by day of at.';
COMMENT ON COLUMN evaluation_history.id IS 'Row id, increasing in insertion order; the outbox is read in id order.';
COMMENT ON COLUMN evaluation_history.at IS 'Transition time, the partitioning column.';
COMMENT ON COLUMN evaluation_history.at_s IS 'Transition time in UTC seconds, exact, as the evaluator produced it.';
COMMENT ON COLUMN evaluation_history.tenant_id IS 'Tenant of the rule group.';
COMMENT ON COLUMN evaluation_history.rule_group IS 'Rule group that made the transition.';
COMMENT ON COLUMN evaluation_history.rule_id IS 'Rule id.';
COMMENT ON COLUMN evaluation_history.group_key IS 'JSON object: group_by field name to value, null for the missing value.';
COMMENT ON COLUMN evaluation_history.kind IS 'fired, recovered, cooldown_hit or renotified.';
COMMENT ON COLUMN evaluation_history.count IS 'Window count at the transition.';
COMMENT ON COLUMN evaluation_history.transition_id IS 'Stable id of the transition; deliveries are deduplicated by it.';
COMMENT ON COLUMN evaluation_history.details IS 'JSON form of the transition with its captures.';
COMMENT ON COLUMN evaluation_history.delivered IS 'True once a sink accepted the notification; false rows are the outbox.';

CREATE INDEX evaluation_history_tenant_at ON evaluation_history (tenant_id, at);
CREATE INDEX evaluation_history_tenant_rule_at ON evaluation_history (tenant_id, rule_id, at);
-- Keeps the outbox scan proportional to the undelivered rows, not to the whole history.
CREATE INDEX evaluation_history_undelivered ON evaluation_history (tenant_id, rule_group, id)
    WHERE NOT delivered;

-- Create the partition of one UTC day unless it exists. The advisory lock serialises concurrent
-- creators; the catalog cache can still miss a partition another session committed while this
-- one waited for the lock, so a duplicate is caught rather than checked for.
CREATE FUNCTION alertwarden_ensure_history_partition(day date) RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    partition_name text := 'evaluation_history_' || to_char(day, 'YYYYMMDD');
BEGIN
    IF to_regclass(quote_ident(partition_name)) IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('alertwarden_history_partition'));
    BEGIN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF evaluation_history FOR VALUES FROM (%L) TO (%L)',
            partition_name,
            (day::timestamp AT TIME ZONE 'UTC'),
            ((day + 1)::timestamp AT TIME ZONE 'UTC')
        );
    EXCEPTION WHEN duplicate_table THEN
        RETURN false;
    END;
    RETURN true;
END
$fn$;
COMMENT ON FUNCTION alertwarden_ensure_history_partition(date) IS 'Create the evaluation_history partition of a UTC day if missing; true when it was created.';

-- Drop the day partitions that end at or before `cutoff` and return their names.
CREATE FUNCTION alertwarden_drop_history_partitions(cutoff timestamptz) RETURNS SETOF text
LANGUAGE plpgsql AS $fn$
DECLARE
    partition_name text;
    day date;
BEGIN
    FOR partition_name IN
        SELECT child.relname
        FROM pg_inherits
        JOIN pg_class child ON child.oid = pg_inherits.inhrelid
        JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
        WHERE parent.relname = 'evaluation_history'
          AND parent.relnamespace = child.relnamespace
          AND child.relname ~ '^evaluation_history_[0-9]{8}$'
        ORDER BY child.relname
    LOOP
        day := to_date(right(partition_name, 8), 'YYYYMMDD');
        IF ((day + 1)::timestamp AT TIME ZONE 'UTC') <= cutoff THEN
            EXECUTE format('DROP TABLE %I', partition_name);
            RETURN NEXT partition_name;
        END IF;
    END LOOP;
END
$fn$;
COMMENT ON FUNCTION alertwarden_drop_history_partitions(timestamptz) IS 'Drop the evaluation_history day partitions that end at or before cutoff; returns their names.';

-- REST API bearer tokens. Only a salted SHA-256 digest of each secret is stored.
CREATE TABLE api_tokens (
    token_id text PRIMARY KEY,
    tenant_id text NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    name text NOT NULL DEFAULT '',
    salt bytea NOT NULL CHECK (octet_length(salt) = 16),
    secret_sha256 bytea NOT NULL CHECK (octet_length(secret_sha256) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
COMMENT ON TABLE api_tokens IS 'REST API bearer tokens; each one reads and writes only its own tenant.';
COMMENT ON COLUMN api_tokens.token_id IS 'Public token id, the part of the token between its two underscores.';
COMMENT ON COLUMN api_tokens.tenant_id IS 'Tenant the token is scoped to.';
COMMENT ON COLUMN api_tokens.name IS 'Free-text label given when the token was created.';
COMMENT ON COLUMN api_tokens.salt IS 'Random 16-byte salt of this token.';
COMMENT ON COLUMN api_tokens.secret_sha256 IS 'SHA-256 of salt followed by the UTF-8 secret; the secret itself is never stored.';
COMMENT ON COLUMN api_tokens.created_at IS 'Time the token was created.';
COMMENT ON COLUMN api_tokens.revoked_at IS 'Time the token was revoked; NULL while it is valid.';

CREATE INDEX api_tokens_tenant ON api_tokens (tenant_id, created_at);

-- Fencing epochs of the serve nodes' leases (migration 0005). A node that takes a rule group's
-- lease adds one to its epoch; every fenced write locks the row of its own epoch until commit.
CREATE TABLE rule_group_leases (
    tenant_id text NOT NULL,
    rule_group text NOT NULL,
    epoch bigint NOT NULL CHECK (epoch > 0),
    acquired_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, rule_group)
);
COMMENT ON TABLE rule_group_leases IS 'Fencing epoch of each leased tenant + rule group.';
COMMENT ON COLUMN rule_group_leases.epoch IS 'Number of times a node took the lease; a write carries the epoch it was taken at.';
COMMENT ON COLUMN rule_group_leases.acquired_at IS 'Time the current holder took the lease.';

-- The last version of each deleted rule definition (migration 0006), from which a definition
-- created again under the same id continues, so a version never names two definitions.
CREATE TABLE rule_deletions (
    tenant_id text NOT NULL,
    rule_id text NOT NULL,
    version integer NOT NULL CHECK (version >= 1),
    deleted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, rule_id)
);
COMMENT ON TABLE rule_deletions IS 'Last version of each deleted rule definition, from which a new definition of the same id continues.';
COMMENT ON COLUMN rule_deletions.version IS 'Version of the definition when it was deleted.';
COMMENT ON COLUMN rule_deletions.deleted_at IS 'Time of the deletion.';
