-- Per-tenant bearer tokens of the REST API. Only a salted SHA-256 digest of each token's secret
-- is stored, so a copy of the database does not yield usable tokens.

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
