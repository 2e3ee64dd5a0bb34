-- Monitoring (issue 22): the tables of SQLite's 0018, company data under
-- row-level security. The triggers run as the caller (kira_app) in the
-- company's scoped transaction, so their inserts pass the company policy.
-- Only the metrics job sets app.metrics_rollup, which admits every
-- company's rows for its roll-up (events read and deleted, sums added);
-- the admin's reads use app.admin_read, SELECT only.

CREATE TABLE metric_events (
    event_id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id        TEXT COLLATE "C" NOT NULL,
    task_id           TEXT NOT NULL,
    agent             TEXT NOT NULL,
    priority          TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('task', 'tool', 'review')),
    at                TIMESTAMPTZ NOT NULL,
    outcome           TEXT,
    created_at        TIMESTAMPTZ,
    started_at        TIMESTAMPTZ,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd          DOUBLE PRECISION NOT NULL DEFAULT 0,
    decision          TEXT,
    rating            INTEGER,
    -- A rating's task's latest rating before it: a later rating replaces it.
    prev_rating       INTEGER
);
-- No index but the key: every run's end inserts here, and the roll-up
-- drains it every few seconds, so a company's delete scans a short table.

CREATE TABLE metric_rollups (
    company_id        TEXT COLLATE "C" NOT NULL,
    agent             TEXT COLLATE "C" NOT NULL,
    priority          TEXT COLLATE "C" NOT NULL,
    resolution        TEXT COLLATE "C" NOT NULL CHECK (resolution IN ('minute', 'hour', 'day', 'total')),
    bucket            TIMESTAMPTZ NOT NULL,
    ended             BIGINT NOT NULL DEFAULT 0,
    completed         BIGINT NOT NULL DEFAULT 0,
    failed            BIGINT NOT NULL DEFAULT 0,
    cancelled         BIGINT NOT NULL DEFAULT 0,
    needs_review      BIGINT NOT NULL DEFAULT 0,
    response_ms       BIGINT NOT NULL DEFAULT 0,
    queue_wait_ms     BIGINT NOT NULL DEFAULT 0,
    started           BIGINT NOT NULL DEFAULT 0,
    run_ms            BIGINT NOT NULL DEFAULT 0,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    tool_calls        BIGINT NOT NULL DEFAULT 0,
    reviews_approved  BIGINT NOT NULL DEFAULT 0,
    reviews_rejected  BIGINT NOT NULL DEFAULT 0,
    ratings           BIGINT NOT NULL DEFAULT 0,
    rating_sum        BIGINT NOT NULL DEFAULT 0,
    cost_usd          DOUBLE PRECISION NOT NULL DEFAULT 0,
    r0  BIGINT NOT NULL DEFAULT 0,
    r1  BIGINT NOT NULL DEFAULT 0,
    r2  BIGINT NOT NULL DEFAULT 0,
    r3  BIGINT NOT NULL DEFAULT 0,
    r4  BIGINT NOT NULL DEFAULT 0,
    r5  BIGINT NOT NULL DEFAULT 0,
    r6  BIGINT NOT NULL DEFAULT 0,
    r7  BIGINT NOT NULL DEFAULT 0,
    r8  BIGINT NOT NULL DEFAULT 0,
    r9  BIGINT NOT NULL DEFAULT 0,
    r10 BIGINT NOT NULL DEFAULT 0,
    r11 BIGINT NOT NULL DEFAULT 0,
    r12 BIGINT NOT NULL DEFAULT 0,
    r13 BIGINT NOT NULL DEFAULT 0,
    w0  BIGINT NOT NULL DEFAULT 0,
    w1  BIGINT NOT NULL DEFAULT 0,
    w2  BIGINT NOT NULL DEFAULT 0,
    w3  BIGINT NOT NULL DEFAULT 0,
    w4  BIGINT NOT NULL DEFAULT 0,
    w5  BIGINT NOT NULL DEFAULT 0,
    w6  BIGINT NOT NULL DEFAULT 0,
    w7  BIGINT NOT NULL DEFAULT 0,
    w8  BIGINT NOT NULL DEFAULT 0,
    w9  BIGINT NOT NULL DEFAULT 0,
    w10 BIGINT NOT NULL DEFAULT 0,
    w11 BIGINT NOT NULL DEFAULT 0,
    w12 BIGINT NOT NULL DEFAULT 0,
    w13 BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (resolution, bucket, company_id, agent, priority)
);
CREATE INDEX metric_rollups_company ON metric_rollups (company_id, resolution, bucket);

-- The review backlog, counted per company without reading every task.
CREATE INDEX tasks_needs_review ON tasks (company_id) WHERE status = 'needs_review';

CREATE FUNCTION kira_metric_task() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO metric_events (company_id, task_id, agent, priority, kind, at, outcome,
                               created_at, started_at, prompt_tokens, completion_tokens, cost_usd)
    VALUES (NEW.company_id, NEW.task_id, NEW.agent, NEW.priority, 'task', NEW.updated_at,
            CASE WHEN (NEW.status IS DISTINCT FROM OLD.status AND OLD.status <> 'needs_review'
        AND NEW.status IN ('completed', 'failed', 'cancelled', 'needs_review')) THEN NEW.status END,
            NEW.created_at, NEW.started_at,
            NEW.prompt_tokens - OLD.prompt_tokens, NEW.completion_tokens - OLD.completion_tokens,
            NEW.cost_usd - OLD.cost_usd);
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_metric_end AFTER UPDATE ON tasks FOR EACH ROW
    WHEN ((NEW.status IS DISTINCT FROM OLD.status AND OLD.status <> 'needs_review'
        AND NEW.status IN ('completed', 'failed', 'cancelled', 'needs_review'))
          OR NEW.prompt_tokens <> OLD.prompt_tokens
          OR NEW.completion_tokens <> OLD.completion_tokens
          OR NEW.cost_usd <> OLD.cost_usd)
    EXECUTE FUNCTION kira_metric_task();

CREATE FUNCTION kira_metric_tool() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO metric_events (company_id, task_id, agent, priority, kind, at)
    SELECT NEW.company_id, NEW.task_id, NEW.agent, t.priority, 'tool', NEW.at
    FROM tasks t WHERE t.task_id = NEW.task_id;
    RETURN NULL;
END $$;
CREATE TRIGGER task_steps_metric_tool AFTER INSERT ON task_steps FOR EACH ROW
    WHEN (NEW.kind = 'tool')
    EXECUTE FUNCTION kira_metric_tool();

CREATE FUNCTION kira_metric_review() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO metric_events (company_id, task_id, agent, priority, kind, at, decision, rating,
                               prev_rating)
    SELECT NEW.company_id, NEW.task_id, t.agent, t.priority, 'review', NEW.at,
           CASE WHEN NEW.decision IN ('approved', 'rejected') THEN NEW.decision END, NEW.rating,
           CASE WHEN NEW.rating IS NOT NULL THEN
               (SELECT r.rating FROM task_reviews r
                 WHERE r.task_id = NEW.task_id AND r.review_id < NEW.review_id
                   AND r.rating IS NOT NULL
                 ORDER BY r.review_id DESC LIMIT 1) END
    FROM tasks t WHERE t.task_id = NEW.task_id;
    RETURN NULL;
END $$;
CREATE TRIGGER task_reviews_metric AFTER INSERT ON task_reviews FOR EACH ROW
    EXECUTE FUNCTION kira_metric_review();

ALTER TABLE metric_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE metric_events FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON metric_events
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
CREATE POLICY admin_read ON metric_events FOR SELECT
    USING (current_setting('app.admin_read', true) = 'on');
CREATE POLICY metrics_rollup ON metric_events
    USING (current_setting('app.metrics_rollup', true) = 'on')
    WITH CHECK (current_setting('app.metrics_rollup', true) = 'on');

ALTER TABLE metric_rollups ENABLE ROW LEVEL SECURITY;
ALTER TABLE metric_rollups FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON metric_rollups
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
CREATE POLICY admin_read ON metric_rollups FOR SELECT
    USING (current_setting('app.admin_read', true) = 'on');
CREATE POLICY metrics_rollup ON metric_rollups
    USING (current_setting('app.metrics_rollup', true) = 'on')
    WITH CHECK (current_setting('app.metrics_rollup', true) = 'on');

-- UPDATE only because the roll-up takes its events FOR UPDATE SKIP LOCKED.
GRANT SELECT, INSERT, UPDATE, DELETE ON metric_events TO kira_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON metric_rollups TO kira_app;
