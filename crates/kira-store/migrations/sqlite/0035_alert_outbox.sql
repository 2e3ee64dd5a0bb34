-- Alerts (issue 22): the notices held for their group, kept in the
-- database so that whichever process evaluates next sends them (one
-- evaluator at a time) and a restart loses none.
--
-- A group is one rule's notices of one kind (firing, repeat, escalation,
-- resolved) for one audience (`team:NAME`, or `company_contact` with the
-- company in company_id); its row says when it last went out and since
-- when its first held notice waits. A held notice names its alert (sent
-- as the alert stands when the group goes out) and carries the alert's
-- company, whose data it is; the system's carry none.
CREATE TABLE alert_groups (
    rule       TEXT NOT NULL,
    notice     TEXT NOT NULL CHECK (notice IN ('firing', 'repeat', 'escalation', 'resolved')),
    audience   TEXT NOT NULL,
    company_id TEXT,
    held_since TEXT,
    sent_at    TEXT
) STRICT;
CREATE UNIQUE INDEX alert_groups_key ON alert_groups (rule, notice, audience, coalesce(company_id, ''));
CREATE INDEX alert_groups_company ON alert_groups (company_id);

CREATE TABLE alert_held_notices (
    rule       TEXT NOT NULL,
    notice     TEXT NOT NULL CHECK (notice IN ('firing', 'repeat', 'escalation', 'resolved')),
    audience   TEXT NOT NULL,
    alert_id   TEXT NOT NULL,
    company_id TEXT,
    seq        INTEGER NOT NULL,
    PRIMARY KEY (rule, notice, audience, alert_id)
) STRICT;
CREATE INDEX alert_held_notices_company ON alert_held_notices (company_id);
