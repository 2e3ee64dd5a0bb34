-- Alerts (issue 22): the tables of SQLite's 0019. A company's alerts and
-- their notifications are company data under row-level security; the
-- system's (company_id NULL) match no company's policy. Only the alerts
-- evaluator and the admin's changes set app.alerts, which admits every
-- alert row for that transaction; the admin's reads use app.admin_read,
-- SELECT only.

CREATE TABLE alerts (
    alert_id         UUID PRIMARY KEY,
    company_id       TEXT COLLATE "C",
    rule             TEXT COLLATE "C" NOT NULL,
    kind             TEXT NOT NULL,
    severity         TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    subject          TEXT COLLATE "C" NOT NULL,
    labels           JSONB NOT NULL DEFAULT '{}',
    state            TEXT NOT NULL CHECK (state IN ('pending', 'firing', 'acknowledged', 'resolved')),
    summary          TEXT NOT NULL,
    value            DOUBLE PRECISION NOT NULL,
    started_at       TIMESTAMPTZ NOT NULL,
    fired_at         TIMESTAMPTZ,
    acknowledged_at  TIMESTAMPTZ,
    acknowledged_by  TEXT,
    escalated_at     TIMESTAMPTZ,
    last_notified_at TIMESTAMPTZ,
    resolved_at      TIMESTAMPTZ,
    resolved_by      TEXT,
    updated_at       TIMESTAMPTZ NOT NULL,
    version          BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX alerts_open ON alerts (rule, subject) WHERE state <> 'resolved';
CREATE INDEX alerts_company ON alerts (company_id, started_at);
CREATE INDEX alerts_started ON alerts (started_at);

CREATE TABLE alert_notifications (
    notification_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id        UUID NOT NULL,
    company_id      TEXT COLLATE "C",
    notice          TEXT NOT NULL CHECK (notice IN ('firing', 'repeat', 'escalation', 'resolved')),
    channel         TEXT NOT NULL,
    target          TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    at              TIMESTAMPTZ NOT NULL,
    outcome         TEXT NOT NULL CHECK (outcome IN ('sent', 'failed')),
    error           TEXT
);
CREATE INDEX alert_notifications_alert ON alert_notifications (alert_id, notification_id);
CREATE INDEX alert_notifications_company ON alert_notifications (company_id);

-- The admin's; no company owns a silence, so no row-level security.
CREATE TABLE alert_silences (
    silence_id UUID PRIMARY KEY,
    matchers   JSONB NOT NULL,
    starts_at  TIMESTAMPTZ NOT NULL,
    ends_at    TIMESTAMPTZ NOT NULL,
    created_by TEXT NOT NULL,
    comment    TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX alert_silences_ends ON alert_silences (ends_at);

ALTER TABLE alerts ENABLE ROW LEVEL SECURITY;
ALTER TABLE alerts FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON alerts
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
CREATE POLICY admin_read ON alerts FOR SELECT
    USING (current_setting('app.admin_read', true) = 'on');
CREATE POLICY alerts_job ON alerts
    USING (current_setting('app.alerts', true) = 'on')
    WITH CHECK (current_setting('app.alerts', true) = 'on');

ALTER TABLE alert_notifications ENABLE ROW LEVEL SECURITY;
ALTER TABLE alert_notifications FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON alert_notifications
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
CREATE POLICY admin_read ON alert_notifications FOR SELECT
    USING (current_setting('app.admin_read', true) = 'on');
CREATE POLICY alerts_job ON alert_notifications
    USING (current_setting('app.alerts', true) = 'on')
    WITH CHECK (current_setting('app.alerts', true) = 'on');

GRANT SELECT, INSERT, UPDATE, DELETE ON alerts TO kira_app;
GRANT SELECT, INSERT, DELETE ON alert_notifications TO kira_app;
GRANT SELECT, INSERT, UPDATE ON alert_silences TO kira_app;
