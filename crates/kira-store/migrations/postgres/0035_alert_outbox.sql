-- Alerts (issue 22): the tables of SQLite's 0035, the notices held for
-- their group. A company's held notices (its alerts') and its contact's
-- groups are company data under row-level security, like its alerts; the
-- system's and the teams' groups (company_id NULL) match no company's
-- policy. Only the evaluator writes them (app.alerts); the admin reads
-- them with app.admin_read.
CREATE TABLE alert_groups (
    rule       TEXT COLLATE "C" NOT NULL,
    notice     TEXT NOT NULL CHECK (notice IN ('firing', 'repeat', 'escalation', 'resolved')),
    audience   TEXT COLLATE "C" NOT NULL,
    company_id TEXT COLLATE "C",
    held_since TIMESTAMPTZ,
    sent_at    TIMESTAMPTZ
);
CREATE UNIQUE INDEX alert_groups_key ON alert_groups (rule, notice, audience, coalesce(company_id, ''));
CREATE INDEX alert_groups_company ON alert_groups (company_id);

CREATE TABLE alert_held_notices (
    rule       TEXT COLLATE "C" NOT NULL,
    notice     TEXT NOT NULL CHECK (notice IN ('firing', 'repeat', 'escalation', 'resolved')),
    audience   TEXT COLLATE "C" NOT NULL,
    alert_id   UUID NOT NULL,
    company_id TEXT COLLATE "C",
    seq        INTEGER NOT NULL,
    PRIMARY KEY (rule, notice, audience, alert_id)
);
CREATE INDEX alert_held_notices_company ON alert_held_notices (company_id);

ALTER TABLE alert_groups ENABLE ROW LEVEL SECURITY;
ALTER TABLE alert_groups FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON alert_groups
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
CREATE POLICY admin_read ON alert_groups FOR SELECT
    USING (current_setting('app.admin_read', true) = 'on');
CREATE POLICY alerts_job ON alert_groups
    USING (current_setting('app.alerts', true) = 'on')
    WITH CHECK (current_setting('app.alerts', true) = 'on');

ALTER TABLE alert_held_notices ENABLE ROW LEVEL SECURITY;
ALTER TABLE alert_held_notices FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON alert_held_notices
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
CREATE POLICY admin_read ON alert_held_notices FOR SELECT
    USING (current_setting('app.admin_read', true) = 'on');
CREATE POLICY alerts_job ON alert_held_notices
    USING (current_setting('app.alerts', true) = 'on')
    WITH CHECK (current_setting('app.alerts', true) = 'on');

GRANT SELECT, INSERT, UPDATE, DELETE ON alert_groups TO kira_app;
GRANT SELECT, INSERT, DELETE ON alert_held_notices TO kira_app;
