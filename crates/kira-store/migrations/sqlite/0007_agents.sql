-- What agents leave behind (kira-store's `agents`): the steps of every run,
-- human reviews of results, and the primary agent's session per company.
-- Company data: every statement binds the scope's company, as in 0002.
-- Steps and reviews are written once and only removed with their company.

-- One step of a run: an LLM call, a tool call, a task or response message
-- between the primary agent and a specialist, or the run's end.
CREATE TABLE task_steps (
    company_id        TEXT NOT NULL,
    task_id           TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    attempt           INTEGER NOT NULL CHECK (attempt >= 1),
    seq               INTEGER NOT NULL CHECK (seq >= 0),
    agent             TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('llm', 'tool', 'task_message', 'response_message', 'end')),
    prompt_tokens     INTEGER NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens INTEGER NOT NULL CHECK (completion_tokens >= 0),
    latency_ms        INTEGER NOT NULL CHECK (latency_ms >= 0),
    detail            TEXT NOT NULL CHECK (json_valid(detail)),
    at                TEXT NOT NULL,
    PRIMARY KEY (task_id, attempt, seq)
) STRICT;
CREATE INDEX task_steps_company ON task_steps (company_id);

-- A reviewer's decision on a task in needs_review, or a rating alone.
CREATE TABLE task_reviews (
    review_id     INTEGER PRIMARY KEY,
    company_id    TEXT NOT NULL,
    task_id       TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    decision      TEXT NOT NULL CHECK (decision IN ('approved', 'rejected', 'rated')),
    feedback      TEXT,
    edited_result TEXT CHECK (edited_result IS NULL OR json_valid(edited_result)),
    rating        INTEGER CHECK (rating IS NULL OR rating BETWEEN 1 AND 5),
    reviewer      TEXT NOT NULL,
    at            TEXT NOT NULL
) STRICT;
CREATE INDEX task_reviews_task ON task_reviews (task_id, review_id);
CREATE INDEX task_reviews_company ON task_reviews (company_id);

-- The primary agent's persistent session with one company. `version`
-- makes saves optimistic: a save names the version it read.
CREATE TABLE agent_sessions (
    company_id TEXT PRIMARY KEY REFERENCES companies (company_id),
    summary    TEXT NOT NULL,
    turns      TEXT NOT NULL CHECK (json_type(turns) = 'array'),
    tokens     INTEGER NOT NULL CHECK (tokens >= 0),
    version    INTEGER NOT NULL CHECK (version >= 1),
    updated_at TEXT NOT NULL
) STRICT;
