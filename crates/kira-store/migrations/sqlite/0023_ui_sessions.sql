-- Dashboard sessions (issue 22): a browser signed in with an API key holds
-- a cookie naming one of these rows; only the secret's SHA-256 is kept.
-- Read before any company is known (like api_keys), so no company owns it;
-- a session ends with its key (deleted with the key's company).
CREATE TABLE ui_sessions (
    session_id    TEXT PRIMARY KEY,
    key_id        TEXT NOT NULL REFERENCES api_keys (key_id) ON DELETE CASCADE,
    secret_sha256 BLOB NOT NULL CHECK (length(secret_sha256) = 32),
    csrf          TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    expires_at    TEXT NOT NULL
) STRICT;
CREATE INDEX ui_sessions_key ON ui_sessions (key_id);
CREATE INDEX ui_sessions_expires ON ui_sessions (expires_at);
