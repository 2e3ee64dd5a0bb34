-- Monitoring (issue 22): the scheduled verifications as jobs of their
-- own, and held notices delivered at least once.
--
-- verification_runs: each scheduled check's latest run (`audit verify`,
-- `budget verify`), written by the verification job (one process at a
-- time) and read by the alerts evaluator, which no longer runs them.
-- audit_checkpoint: the last (seq, hash) the scheduled audit check
-- verified, so each run walks the entries appended since and a slice of
-- the older ones (`swept`: where the sweep through them stands); `kira
-- audit verify` still walks the whole chain.
CREATE TABLE verification_runs (
    check_name TEXT PRIMARY KEY CHECK (check_name IN ('audit verify', 'budget verify')),
    ran_at     TEXT NOT NULL,
    failure    TEXT
) STRICT;

CREATE TABLE audit_checkpoint (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   INTEGER NOT NULL,
    hash  TEXT NOT NULL,
    swept INTEGER NOT NULL
) STRICT;
INSERT INTO audit_checkpoint (id, seq, hash, swept)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 0);

-- A group taken out of alert_held_notices to be sent: its notices stay
-- here, under one sending_id, until the delivery is recorded (then they
-- go); a process that dies before leaves them, and once lease_until has
-- passed the next evaluator takes the group again, under a new id.
CREATE TABLE alert_sending_notices (
    sending_id  TEXT NOT NULL,
    rule        TEXT NOT NULL,
    notice      TEXT NOT NULL CHECK (notice IN ('firing', 'repeat', 'escalation', 'resolved')),
    audience    TEXT NOT NULL,
    alert_id    TEXT NOT NULL,
    company_id  TEXT,
    seq         INTEGER NOT NULL,
    lease_until TEXT NOT NULL,
    PRIMARY KEY (sending_id, alert_id)
) STRICT;
CREATE INDEX alert_sending_notices_lease ON alert_sending_notices (lease_until);
CREATE INDEX alert_sending_notices_company ON alert_sending_notices (company_id);
