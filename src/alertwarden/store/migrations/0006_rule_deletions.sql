-- The last version of each deleted rule definition. A rule created again under the same id
-- continues from it, so a version, and the ETag that the API derives from it, never names two
-- different definitions of one rule.

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
