-- Tools (issue 23): the tables of SQLite's 0021. A company's registrations
-- and tool configurations are company data under row-level security;
-- infrastructure and domain registrations (company_id NULL) are read by
-- every company's transaction and written only where app.tools_registry
-- is set (the admin's registrations, through the store).

CREATE TABLE tool_registrations (
    tool_id     UUID PRIMARY KEY,
    slot        TEXT COLLATE "C" NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    layer       TEXT NOT NULL CHECK (layer IN ('infrastructure', 'domain', 'company')),
    domain      TEXT,
    company_id  TEXT COLLATE "C" REFERENCES companies (company_id),
    description TEXT NOT NULL,
    source      JSONB NOT NULL,
    timeout_ms  BIGINT,
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    CHECK ((layer = 'company') = (company_id IS NOT NULL))
);
CREATE UNIQUE INDEX tool_registrations_slot_name ON tool_registrations (slot, name);
CREATE INDEX tool_registrations_company ON tool_registrations (company_id);

CREATE TABLE tool_configs (
    company_id TEXT COLLATE "C" NOT NULL REFERENCES companies (company_id),
    tool       TEXT COLLATE "C" NOT NULL,
    config     JSONB NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (company_id, tool)
);

ALTER TABLE tool_registrations ENABLE ROW LEVEL SECURITY;
ALTER TABLE tool_registrations FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON tool_registrations
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
CREATE POLICY shared_tools_read ON tool_registrations FOR SELECT
    USING (company_id IS NULL);
CREATE POLICY shared_tools_write ON tool_registrations
    USING (company_id IS NULL AND current_setting('app.tools_registry', true) = 'on')
    WITH CHECK (company_id IS NULL AND current_setting('app.tools_registry', true) = 'on');

ALTER TABLE tool_configs ENABLE ROW LEVEL SECURITY;
ALTER TABLE tool_configs FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON tool_configs
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));

GRANT SELECT, INSERT, UPDATE, DELETE ON tool_registrations TO kira_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON tool_configs TO kira_app;
