-- Transition history on native PostgreSQL range partitions, one partition per UTC day.
-- The runner sets alertwarden.compress_after_s and alertwarden.retention_s for this transaction.

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
-- creators, because CREATE TABLE IF NOT EXISTS alone can still fail on a race.
CREATE FUNCTION alertwarden_ensure_history_partition(day date) RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    partition_name text := 'evaluation_history_' || to_char(day, 'YYYYMMDD');
BEGIN
    IF to_regclass(quote_ident(partition_name)) IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('alertwarden_history_partition'));
    IF to_regclass(quote_ident(partition_name)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'CREATE TABLE %I PARTITION OF evaluation_history FOR VALUES FROM (%L) TO (%L)',
        partition_name,
        (day::timestamp AT TIME ZONE 'UTC'),
        ((day + 1)::timestamp AT TIME ZONE 'UTC')
    );
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

INSERT INTO alertwarden_settings (name, value) VALUES
    ('history_backend', 'partitioned'),
    ('compress_after_s', current_setting('alertwarden.compress_after_s')),
    ('retention_s', current_setting('alertwarden.retention_s'));
