-- Monitoring (issue 22): the tables of SQLite's 0033. Deployment-wide
-- rows: no company owns them, so no row-level security.
CREATE TABLE counts (
    kind    TEXT COLLATE "C" NOT NULL CHECK (kind IN ('auth_failure', 'denied_read', 'provider_call')),
    at      TIMESTAMPTZ NOT NULL,
    subject TEXT COLLATE "C" NOT NULL,
    detail  TEXT COLLATE "C" NOT NULL,
    n       BIGINT NOT NULL,
    errors  BIGINT NOT NULL,
    PRIMARY KEY (kind, at, subject, detail)
);
CREATE INDEX counts_at ON counts (at);

CREATE TABLE count_totals (
    kind    TEXT COLLATE "C" NOT NULL CHECK (kind IN ('auth_failure', 'denied_read', 'provider_call')),
    subject TEXT COLLATE "C" NOT NULL,
    detail  TEXT COLLATE "C" NOT NULL,
    n       BIGINT NOT NULL,
    errors  BIGINT NOT NULL,
    seconds DOUBLE PRECISION NOT NULL,
    b0       BIGINT NOT NULL DEFAULT 0,
    b1       BIGINT NOT NULL DEFAULT 0,
    b2       BIGINT NOT NULL DEFAULT 0,
    b3       BIGINT NOT NULL DEFAULT 0,
    b4       BIGINT NOT NULL DEFAULT 0,
    b5       BIGINT NOT NULL DEFAULT 0,
    b6       BIGINT NOT NULL DEFAULT 0,
    b7       BIGINT NOT NULL DEFAULT 0,
    b8       BIGINT NOT NULL DEFAULT 0,
    b9       BIGINT NOT NULL DEFAULT 0,
    b10      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, subject, detail)
);

CREATE TABLE provider_streaks (
    provider        TEXT COLLATE "C" PRIMARY KEY,
    errors_in_a_row BIGINT NOT NULL,
    at              TIMESTAMPTZ NOT NULL
);

GRANT SELECT, INSERT, UPDATE, DELETE ON counts, count_totals, provider_streaks TO kira_app;
