-- Tool credentials (issue 23): the table of SQLite's 0022, company data
-- under row-level security with no admin read.
CREATE TABLE tool_credentials (
    company_id TEXT COLLATE "C" NOT NULL REFERENCES companies (company_id),
    tool       TEXT COLLATE "C" NOT NULL,
    sealed     TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    rotated_at TIMESTAMPTZ,
    PRIMARY KEY (company_id, tool)
);

ALTER TABLE tool_credentials ENABLE ROW LEVEL SECURITY;
ALTER TABLE tool_credentials FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON tool_credentials
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));

GRANT SELECT, INSERT, UPDATE, DELETE ON tool_credentials TO kira_app;
