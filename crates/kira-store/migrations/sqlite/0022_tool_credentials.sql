-- Tool credentials (issue 23): one sealed secret per company and tool
-- registration. `sealed` is ChaCha20-Poly1305 under KIRA_SECRET_KEY (the
-- master key is never in the database) with the company and the tool as
-- associated data, so a value copied to another company's or tool's row
-- does not open. Never read back by any route: only its name and ages.
CREATE TABLE tool_credentials (
    company_id TEXT NOT NULL,
    tool       TEXT NOT NULL,
    sealed     TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    rotated_at TEXT,
    PRIMARY KEY (company_id, tool)
) STRICT;
