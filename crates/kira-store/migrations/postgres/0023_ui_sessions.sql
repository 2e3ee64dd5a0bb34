-- Dashboard sessions (issue 22): the table of SQLite's 0023. Read before
-- any company is known (like api_keys), so no row-level security; only
-- the secret's SHA-256 is kept.
CREATE TABLE ui_sessions (
    session_id    TEXT COLLATE "C" PRIMARY KEY,
    key_id        TEXT COLLATE "C" NOT NULL REFERENCES api_keys (key_id) ON DELETE CASCADE,
    secret_sha256 BYTEA NOT NULL CHECK (length(secret_sha256) = 32),
    csrf          TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX ui_sessions_key ON ui_sessions (key_id);
CREATE INDEX ui_sessions_expires ON ui_sessions (expires_at);

GRANT SELECT, INSERT, DELETE ON ui_sessions TO kira_app;
