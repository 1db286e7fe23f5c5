-- One row per tenant + rule group that a serve node has leased. Each node that takes the lease
-- adds one to the epoch, and every fenced write locks the row of its own epoch until it
-- commits, so a write of an earlier holder either commits before the new holder loads the
-- state or finds the epoch moved on and writes nothing.

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
