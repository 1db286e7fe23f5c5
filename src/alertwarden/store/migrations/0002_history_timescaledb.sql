-- Transition history as a TimescaleDB hypertable on `at` with 1-day chunks, compressed and
-- dropped by TimescaleDB policies. The runner sets alertwarden.compress_after_s and
-- alertwarden.retention_s for this transaction.

CREATE EXTENSION IF NOT EXISTS timescaledb;

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
);
COMMENT ON TABLE evaluation_history IS 'Transition history and notification outbox, a TimescaleDB hypertable on at.';
COMMENT ON COLUMN evaluation_history.id IS 'Row id, increasing in insertion order; the outbox is read in id order.';
COMMENT ON COLUMN evaluation_history.at IS 'Transition time, the hypertable time column.';
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

SELECT create_hypertable('evaluation_history', by_range('at', INTERVAL '1 day'));

CREATE INDEX evaluation_history_tenant_at ON evaluation_history (tenant_id, at);
CREATE INDEX evaluation_history_tenant_rule_at ON evaluation_history (tenant_id, rule_id, at);
-- Keeps the outbox scan proportional to the undelivered rows, not to the whole history.
CREATE INDEX evaluation_history_undelivered ON evaluation_history (tenant_id, rule_group, id)
    WHERE NOT delivered;

ALTER TABLE evaluation_history SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'tenant_id, rule_id',
    timescaledb.compress_orderby = 'at DESC'
);
SELECT add_compression_policy(
    'evaluation_history',
    compress_after => current_setting('alertwarden.compress_after_s')::bigint * INTERVAL '1 second'
);
SELECT add_retention_policy(
    'evaluation_history',
    drop_after => current_setting('alertwarden.retention_s')::bigint * INTERVAL '1 second'
);

INSERT INTO alertwarden_settings (name, value) VALUES
    ('history_backend', 'timescaledb'),
    ('compress_after_s', current_setting('alertwarden.compress_after_s')),
    ('retention_s', current_setting('alertwarden.retention_s'));
