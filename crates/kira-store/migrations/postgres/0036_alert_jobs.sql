-- Monitoring (issue 22): the tables of SQLite's 0036. The verification
-- runs and the audit checkpoint are the deployment's (no company owns
-- them, so no row-level security); a company's notices being sent are
-- company data under row-level security, like its held notices.
CREATE TABLE verification_runs (
    check_name TEXT COLLATE "C" PRIMARY KEY CHECK (check_name IN ('audit verify', 'budget verify')),
    ran_at     TIMESTAMPTZ NOT NULL,
    failure    TEXT
);

CREATE TABLE audit_checkpoint (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   BIGINT NOT NULL,
    hash  TEXT NOT NULL,
    swept BIGINT NOT NULL
);
INSERT INTO audit_checkpoint (id, seq, hash, swept)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 0);

CREATE TABLE alert_sending_notices (
    sending_id  UUID NOT NULL,
    rule        TEXT COLLATE "C" NOT NULL,
    notice      TEXT NOT NULL CHECK (notice IN ('firing', 'repeat', 'escalation', 'resolved')),
    audience    TEXT COLLATE "C" NOT NULL,
    alert_id    UUID NOT NULL,
    company_id  TEXT COLLATE "C",
    seq         INTEGER NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (sending_id, alert_id)
);
CREATE INDEX alert_sending_notices_lease ON alert_sending_notices (lease_until);
CREATE INDEX alert_sending_notices_company ON alert_sending_notices (company_id);

ALTER TABLE alert_sending_notices ENABLE ROW LEVEL SECURITY;
ALTER TABLE alert_sending_notices FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON alert_sending_notices
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
CREATE POLICY admin_read ON alert_sending_notices FOR SELECT
    USING (current_setting('app.admin_read', true) = 'on');
CREATE POLICY alerts_job ON alert_sending_notices
    USING (current_setting('app.alerts', true) = 'on')
    WITH CHECK (current_setting('app.alerts', true) = 'on');

GRANT SELECT, INSERT, UPDATE ON verification_runs TO kira_app;
GRANT SELECT, UPDATE ON audit_checkpoint TO kira_app;
GRANT SELECT, INSERT, DELETE ON alert_sending_notices TO kira_app;
