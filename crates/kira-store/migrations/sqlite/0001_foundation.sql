-- Companies, API keys and the hash-chained audit log.
-- Isolation on SQLite is enforced in code: every company-scoped statement
-- binds the CompanyScope's company.

CREATE TABLE companies (
    company_id           TEXT PRIMARY KEY,
    name                 TEXT NOT NULL,
    industry             TEXT NOT NULL,
    jurisdiction         TEXT NOT NULL,
    revenue_usd          INTEGER NOT NULL CHECK (revenue_usd >= 0),
    complexity_score     REAL NOT NULL CHECK (complexity_score BETWEEN 0 AND 1),
    activity_score       REAL NOT NULL CHECK (activity_score BETWEEN 0 AND 1),
    priority_multiplier  REAL NOT NULL CHECK (priority_multiplier BETWEEN 0.1 AND 3.0),
    sla_response_seconds INTEGER NOT NULL CHECK (sla_response_seconds > 0),
    contacts             TEXT NOT NULL,  -- JSON array of {name, email?, webhook?}
    sharing_consent      TEXT NOT NULL,  -- JSON array of scope names
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL,
    archived_at          TEXT
) STRICT;

-- Authentication infrastructure: read before any company is known.
CREATE TABLE api_keys (
    key_id       TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    company_id   TEXT REFERENCES companies (company_id),
    token_sha256 BLOB NOT NULL,
    created_at   TEXT NOT NULL,
    revoked_at   TEXT,
    CHECK ((role = 'admin') = (company_id IS NULL))
) STRICT;
CREATE INDEX api_keys_company ON api_keys (company_id);

-- No foreign key: entries outlive a deleted company so the chain still verifies.
CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY,
    at         TEXT NOT NULL,
    request_id TEXT NOT NULL,
    actor      TEXT NOT NULL,
    company_id TEXT,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    detail     TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
) STRICT;
CREATE INDEX audit_log_company ON audit_log (company_id, seq);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;

-- The last entry, kept apart so a removed tail is detected.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
) STRICT;
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
