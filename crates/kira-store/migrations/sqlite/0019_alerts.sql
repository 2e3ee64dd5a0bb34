-- Alerts (issue 22): what the evaluator found, each notification attempt,
-- and the silences that hold notifications back.
--
-- An alert is one rule's condition for one subject (system, pool, company,
-- agent, provider) from the first time it was seen to its resolution. A
-- company's alert is company data (company_id set); the system's have none.
-- At most one open alert per rule and subject: the partial unique index.
-- `version` moves on every change, so the evaluator's write of a state it
-- read never overwrites an acknowledgement made meanwhile.
CREATE TABLE alerts (
    alert_id         TEXT PRIMARY KEY,
    company_id       TEXT,
    rule             TEXT NOT NULL,
    kind             TEXT NOT NULL,
    severity         TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    subject          TEXT NOT NULL,
    labels           TEXT NOT NULL DEFAULT '{}',
    state            TEXT NOT NULL CHECK (state IN ('pending', 'firing', 'acknowledged', 'resolved')),
    summary          TEXT NOT NULL,
    value            REAL NOT NULL,
    started_at       TEXT NOT NULL,
    fired_at         TEXT,
    acknowledged_at  TEXT,
    acknowledged_by  TEXT,
    escalated_at     TEXT,
    last_notified_at TEXT,
    resolved_at      TEXT,
    resolved_by      TEXT,
    updated_at       TEXT NOT NULL,
    version          INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE UNIQUE INDEX alerts_open ON alerts (rule, subject) WHERE state <> 'resolved';
CREATE INDEX alerts_company ON alerts (company_id, started_at);
CREATE INDEX alerts_started ON alerts (started_at);

-- Every delivery attempt, sent or failed, with the channel and target.
CREATE TABLE alert_notifications (
    notification_id INTEGER PRIMARY KEY,
    alert_id        TEXT NOT NULL,
    company_id      TEXT,
    notice          TEXT NOT NULL CHECK (notice IN ('firing', 'repeat', 'escalation', 'resolved')),
    channel         TEXT NOT NULL,
    target          TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    at              TEXT NOT NULL,
    outcome         TEXT NOT NULL CHECK (outcome IN ('sent', 'failed')),
    error           TEXT
) STRICT;
CREATE INDEX alert_notifications_alert ON alert_notifications (alert_id, notification_id);
CREATE INDEX alert_notifications_company ON alert_notifications (company_id);

-- The admin's: no company owns a silence. Ending one sets ends_at.
CREATE TABLE alert_silences (
    silence_id TEXT PRIMARY KEY,
    matchers   TEXT NOT NULL,
    starts_at  TEXT NOT NULL,
    ends_at    TEXT NOT NULL,
    created_by TEXT NOT NULL,
    comment    TEXT NOT NULL,
    created_at TEXT NOT NULL
) STRICT;
CREATE INDEX alert_silences_ends ON alert_silences (ends_at);
