-- What agents leave behind (kira-store's `agents`): the tables of SQLite's
-- 0007, every one company data under row-level security, as in 0003. No
-- admin_read policy: no admin path reads them.
--
-- Steps and reviews are written once: kira_app may insert and read them,
-- and delete them only with their company (a forced delete).

CREATE TABLE task_steps (
    company_id        TEXT COLLATE "C" NOT NULL,
    task_id           TEXT COLLATE "C" NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    attempt           INTEGER NOT NULL CHECK (attempt >= 1),
    seq               INTEGER NOT NULL CHECK (seq >= 0),
    agent             TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('llm', 'tool', 'task_message', 'response_message', 'end')),
    prompt_tokens     BIGINT NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens BIGINT NOT NULL CHECK (completion_tokens >= 0),
    latency_ms        BIGINT NOT NULL CHECK (latency_ms >= 0),
    detail            JSONB NOT NULL,
    at                TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (task_id, attempt, seq)
);
CREATE INDEX task_steps_company ON task_steps (company_id);

CREATE TABLE task_reviews (
    review_id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id    TEXT COLLATE "C" NOT NULL,
    task_id       TEXT COLLATE "C" NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    decision      TEXT NOT NULL CHECK (decision IN ('approved', 'rejected', 'rated')),
    feedback      TEXT,
    edited_result JSONB,
    rating        SMALLINT CHECK (rating BETWEEN 1 AND 5),
    reviewer      TEXT NOT NULL,
    at            TIMESTAMPTZ NOT NULL
);
CREATE INDEX task_reviews_task ON task_reviews (task_id, review_id);
CREATE INDEX task_reviews_company ON task_reviews (company_id);

CREATE TABLE agent_sessions (
    company_id TEXT COLLATE "C" PRIMARY KEY REFERENCES companies (company_id),
    summary    TEXT NOT NULL,
    turns      JSONB NOT NULL CHECK (jsonb_typeof(turns) = 'array'),
    tokens     BIGINT NOT NULL CHECK (tokens >= 0),
    version    BIGINT NOT NULL CHECK (version >= 1),
    updated_at TIMESTAMPTZ NOT NULL
);

ALTER TABLE task_steps ENABLE ROW LEVEL SECURITY;
ALTER TABLE task_steps FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON task_steps
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));

ALTER TABLE task_reviews ENABLE ROW LEVEL SECURITY;
ALTER TABLE task_reviews FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON task_reviews
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));

ALTER TABLE agent_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE agent_sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON agent_sessions
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));

GRANT SELECT, INSERT, DELETE ON task_steps TO kira_app;
GRANT SELECT, INSERT, DELETE ON task_reviews TO kira_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON agent_sessions TO kira_app;
GRANT USAGE ON SEQUENCE task_reviews_review_id_seq TO kira_app;
