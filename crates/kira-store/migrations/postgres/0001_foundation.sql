-- The foundation: companies, API keys and the audit chain, with row-level
-- security keeping each company's rows apart.
--
-- The server works as the role kira_app, which owns nothing and has no
-- BYPASSRLS, so the policies below bind it. Each company-scoped transaction
-- sets app.current_company_id (transaction-locally); admin reads set
-- app.admin_read. Roles are cluster-wide and several databases of one
-- cluster may run this at the same moment, hence the guarded role creation.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kira_app') THEN
        CREATE ROLE kira_app NOLOGIN NOBYPASSRLS;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL; -- another database's migration created it first
END $$;

-- The store connects as the owner and switches to kira_app with SET ROLE
-- unless it is given a separate app login; that needs membership (a
-- superuser has it implicitly). An owner who may not grant it is fine as long
-- as an app login is configured, so a refusal is not an error here.
DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'kira_app', 'MEMBER') THEN
        EXECUTE format('GRANT kira_app TO %I', current_user);
    END IF;
EXCEPTION WHEN insufficient_privilege OR duplicate_object OR unique_violation THEN
    NULL;
END $$;

-- Ids compare bytewise (COLLATE "C") whatever the cluster's locale, so
-- listings order the same way on both backends.
CREATE TABLE companies (
    company_id           TEXT COLLATE "C" PRIMARY KEY,
    name                 TEXT NOT NULL,
    industry             TEXT NOT NULL,
    jurisdiction         TEXT NOT NULL,
    revenue_usd          BIGINT NOT NULL,
    complexity_score     DOUBLE PRECISION NOT NULL,
    activity_score       DOUBLE PRECISION NOT NULL,
    priority_multiplier  DOUBLE PRECISION NOT NULL,
    sla_response_seconds INTEGER NOT NULL,
    -- [{"name": ..., "email"?: ..., "webhook"?: ...}]
    contacts             JSONB NOT NULL CHECK (jsonb_typeof(contacts) = 'array'),
    -- ["process_templates", ...]
    sharing_consent      JSONB NOT NULL CHECK (jsonb_typeof(sharing_consent) = 'array'),
    created_at           TIMESTAMPTZ NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL,
    archived_at          TIMESTAMPTZ
);

-- Authentication infrastructure, read before any company is known: no
-- row-level security. Reached only through the KeyStore methods.
CREATE TABLE api_keys (
    key_id       TEXT COLLATE "C" PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    company_id   TEXT COLLATE "C" REFERENCES companies (company_id),
    token_sha256 BYTEA NOT NULL CHECK (length(token_sha256) = 32),
    created_at   TIMESTAMPTZ NOT NULL,
    revoked_at   TIMESTAMPTZ,
    CHECK ((role = 'admin') = (company_id IS NULL))
);
CREATE INDEX api_keys_company_id ON api_keys (company_id);

-- No foreign key to companies: entries outlive a deleted company.
CREATE TABLE audit_log (
    seq        BIGINT PRIMARY KEY,
    at         TIMESTAMPTZ NOT NULL,
    request_id TEXT NOT NULL,
    actor      TEXT NOT NULL,
    company_id TEXT COLLATE "C",
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    outcome    TEXT NOT NULL CHECK (outcome IN ('ok', 'denied', 'rejected', 'error')),
    detail     TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX audit_log_company_seq ON audit_log (company_id, seq);

-- The end of the chain. Appenders lock this one row, which makes the chain a
-- single line across transactions and processes; verification compares the
-- log's last entry with it, which catches a cut tail.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Row-level security. FORCE makes it bind the table owner too.
ALTER TABLE companies ENABLE ROW LEVEL SECURITY;
ALTER TABLE companies FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON companies
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
-- The one cross-company path: only the AdminScope methods set app.admin_read,
-- transaction-locally, and each such read is audited.
CREATE POLICY admin_read ON companies FOR SELECT
    USING (current_setting('app.admin_read', true) = 'on');

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON audit_log
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
CREATE POLICY admin_read ON audit_log FOR SELECT
    USING (current_setting('app.admin_read', true) = 'on');
-- Entries that concern no company (bootstrap, key management, failed logins).
CREATE POLICY system_insert ON audit_log FOR INSERT
    WITH CHECK (company_id IS NULL);

-- kira_app's privileges. The audit log is append-only by privilege: no
-- UPDATE, no DELETE.
GRANT USAGE ON SCHEMA public TO kira_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON companies TO kira_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON api_keys TO kira_app;
GRANT SELECT, INSERT ON audit_log TO kira_app;
GRANT SELECT, UPDATE ON audit_head TO kira_app;
