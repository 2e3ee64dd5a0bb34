-- no-transaction
-- Issue 22: a `metrics` key reads the system-wide Prometheus exposition
-- (`GET /metrics`) and nothing else. Like an admin key it belongs to no
-- company.
-- SQLite cannot change a CHECK: api_keys is rebuilt. ui_sessions refers to
-- it with ON DELETE CASCADE, so foreign keys are off while the old table
-- is dropped (else its sessions would go with it); that pragma cannot
-- change inside a transaction, hence no-transaction and our own BEGIN.
PRAGMA foreign_keys = OFF;
BEGIN;
CREATE TABLE api_keys_new (
    key_id       TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer', 'metrics')),
    company_id   TEXT REFERENCES companies (company_id),
    token_sha256 BLOB NOT NULL,
    created_at   TEXT NOT NULL,
    revoked_at   TEXT,
    CHECK ((role IN ('admin', 'metrics')) = (company_id IS NULL))
) STRICT;
INSERT INTO api_keys_new (key_id, name, role, company_id, token_sha256, created_at, revoked_at)
    SELECT key_id, name, role, company_id, token_sha256, created_at, revoked_at FROM api_keys;
DROP TABLE api_keys;
ALTER TABLE api_keys_new RENAME TO api_keys;
CREATE INDEX api_keys_company ON api_keys (company_id);
COMMIT;
PRAGMA foreign_keys = ON;
