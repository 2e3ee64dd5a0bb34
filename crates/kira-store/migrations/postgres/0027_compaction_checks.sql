-- Context retention (issue 22's KPI): the table of SQLite's 0027, company
-- data under row-level security, read across companies only on the
-- admin's path (app.admin_read).
CREATE TABLE compaction_checks (
    company_id TEXT COLLATE "C" NOT NULL REFERENCES companies (company_id),
    summary_id UUID NOT NULL,
    at         TIMESTAMPTZ NOT NULL,
    sources    INTEGER NOT NULL CHECK (sources >= 2),
    facts      BIGINT NOT NULL CHECK (facts >= 0),
    kept       BIGINT NOT NULL CHECK (kept >= 0 AND kept <= facts),
    PRIMARY KEY (company_id, summary_id)
);
CREATE INDEX compaction_checks_at ON compaction_checks (company_id, at);

ALTER TABLE compaction_checks ENABLE ROW LEVEL SECURITY;
ALTER TABLE compaction_checks FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON compaction_checks
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
CREATE POLICY admin_read ON compaction_checks FOR SELECT
    USING (current_setting('app.admin_read', true) = 'on');

GRANT SELECT, INSERT, DELETE ON compaction_checks TO kira_app;
