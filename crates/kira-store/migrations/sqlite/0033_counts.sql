-- Monitoring (issue 22): the counts that belong to no company's
-- transaction: requests refused for want of a valid key or session,
-- cross-company reads refused, and calls to the model providers. Each
-- kira process adds them up in memory as they happen and writes them
-- here in batches, so the alerts evaluator and `/metrics` of any process
-- see every process's counts, each once.
--
-- `counts`: per second (`at`, whole seconds), what the alert rules read
-- over their windows; pruned by the evaluator past the longest one.
--   auth_failure:  subject = the key id the token named ('' none),
--                  detail = the client's address; n = refusals
--   denied_read:   subject = detail = ''; n = refusals
--   provider_call: subject = the provider, detail = the model;
--                  n = answered calls, errors = failed ones
CREATE TABLE counts (
    kind    TEXT NOT NULL CHECK (kind IN ('auth_failure', 'denied_read', 'provider_call')),
    at      TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  TEXT NOT NULL,
    n       INTEGER NOT NULL,
    errors  INTEGER NOT NULL,
    PRIMARY KEY (kind, at, subject, detail)
) STRICT;
CREATE INDEX counts_at ON counts (at);

-- All time, never pruned (`/metrics`' counters): one row per kind
-- (subject = detail = '') for auth_failure and denied_read, one per
-- provider and model for provider_call, with the answered calls'
-- seconds and their latency histogram (b0.. per kira_engine's
-- PROVIDER_BOUNDS, the last above them).
CREATE TABLE count_totals (
    kind    TEXT NOT NULL CHECK (kind IN ('auth_failure', 'denied_read', 'provider_call')),
    subject TEXT NOT NULL,
    detail  TEXT NOT NULL,
    n       INTEGER NOT NULL,
    errors  INTEGER NOT NULL,
    seconds REAL NOT NULL,
    b0       INTEGER NOT NULL DEFAULT 0,
    b1       INTEGER NOT NULL DEFAULT 0,
    b2       INTEGER NOT NULL DEFAULT 0,
    b3       INTEGER NOT NULL DEFAULT 0,
    b4       INTEGER NOT NULL DEFAULT 0,
    b5       INTEGER NOT NULL DEFAULT 0,
    b6       INTEGER NOT NULL DEFAULT 0,
    b7       INTEGER NOT NULL DEFAULT 0,
    b8       INTEGER NOT NULL DEFAULT 0,
    b9       INTEGER NOT NULL DEFAULT 0,
    b10      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, subject, detail)
) STRICT;

-- Each provider's latest calls that failed one after another (the
-- provider_failing rule's), every process's together: a batch with an
-- answered call sets it to the failures after that answer, one without
-- adds its failures.
CREATE TABLE provider_streaks (
    provider        TEXT PRIMARY KEY,
    errors_in_a_row INTEGER NOT NULL,
    at              TEXT NOT NULL
) STRICT;
