-- Monitoring (issue 22): the task metrics' outbox and their time series.
--
-- metric_events is filled by triggers, in the transaction that makes the
-- change, whatever path makes it (a run's end one at a time or in a
-- batch, a cancel, the reaper, a settlement, a tool step, a review): a
-- run's end (a task reaching completed, failed, cancelled or needs_review
-- from any status but needs_review, whose decision is a review), the usage
-- a settlement adds to a task (the deltas), a tool step, a review. The
-- metrics job adds them to metric_rollups and deletes them in one
-- transaction, so each is counted once. Company data: ids, levels, times
-- and numbers, never a task's text.
CREATE TABLE metric_events (
    event_id          INTEGER PRIMARY KEY,
    company_id        TEXT NOT NULL,
    task_id           TEXT NOT NULL,
    agent             TEXT NOT NULL,
    priority          TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('task', 'tool', 'review')),
    at                TEXT NOT NULL,
    outcome           TEXT,
    created_at        TEXT,
    started_at        TEXT,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd          REAL NOT NULL DEFAULT 0,
    decision          TEXT,
    rating            INTEGER,
    -- A rating's task's latest rating before it: a later rating replaces it.
    prev_rating       INTEGER
) STRICT;
-- No index but the key: every run's end inserts here, and the roll-up
-- drains it every few seconds, so a company's delete scans a short table.

-- The sums per company, agent and priority level, per minute, hour and day
-- bucket, and all time ('total', bucket at the epoch). r* and w* are the
-- response-time and queue-wait histograms' buckets (kira_core::metrics::BOUNDS_MS).
CREATE TABLE metric_rollups (
    company_id        TEXT NOT NULL,
    agent             TEXT NOT NULL,
    priority          TEXT NOT NULL,
    resolution        TEXT NOT NULL CHECK (resolution IN ('minute', 'hour', 'day', 'total')),
    bucket            TEXT NOT NULL,
    ended             INTEGER NOT NULL DEFAULT 0,
    completed         INTEGER NOT NULL DEFAULT 0,
    failed            INTEGER NOT NULL DEFAULT 0,
    cancelled         INTEGER NOT NULL DEFAULT 0,
    needs_review      INTEGER NOT NULL DEFAULT 0,
    response_ms       INTEGER NOT NULL DEFAULT 0,
    queue_wait_ms     INTEGER NOT NULL DEFAULT 0,
    started           INTEGER NOT NULL DEFAULT 0,
    run_ms            INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    tool_calls        INTEGER NOT NULL DEFAULT 0,
    reviews_approved  INTEGER NOT NULL DEFAULT 0,
    reviews_rejected  INTEGER NOT NULL DEFAULT 0,
    ratings           INTEGER NOT NULL DEFAULT 0,
    rating_sum        INTEGER NOT NULL DEFAULT 0,
    cost_usd          REAL NOT NULL DEFAULT 0,
    r0  INTEGER NOT NULL DEFAULT 0,
    r1  INTEGER NOT NULL DEFAULT 0,
    r2  INTEGER NOT NULL DEFAULT 0,
    r3  INTEGER NOT NULL DEFAULT 0,
    r4  INTEGER NOT NULL DEFAULT 0,
    r5  INTEGER NOT NULL DEFAULT 0,
    r6  INTEGER NOT NULL DEFAULT 0,
    r7  INTEGER NOT NULL DEFAULT 0,
    r8  INTEGER NOT NULL DEFAULT 0,
    r9  INTEGER NOT NULL DEFAULT 0,
    r10 INTEGER NOT NULL DEFAULT 0,
    r11 INTEGER NOT NULL DEFAULT 0,
    r12 INTEGER NOT NULL DEFAULT 0,
    r13 INTEGER NOT NULL DEFAULT 0,
    w0  INTEGER NOT NULL DEFAULT 0,
    w1  INTEGER NOT NULL DEFAULT 0,
    w2  INTEGER NOT NULL DEFAULT 0,
    w3  INTEGER NOT NULL DEFAULT 0,
    w4  INTEGER NOT NULL DEFAULT 0,
    w5  INTEGER NOT NULL DEFAULT 0,
    w6  INTEGER NOT NULL DEFAULT 0,
    w7  INTEGER NOT NULL DEFAULT 0,
    w8  INTEGER NOT NULL DEFAULT 0,
    w9  INTEGER NOT NULL DEFAULT 0,
    w10 INTEGER NOT NULL DEFAULT 0,
    w11 INTEGER NOT NULL DEFAULT 0,
    w12 INTEGER NOT NULL DEFAULT 0,
    w13 INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (resolution, bucket, company_id, agent, priority)
) STRICT;
CREATE INDEX metric_rollups_company ON metric_rollups (company_id, resolution, bucket);

-- The review backlog, counted per company without reading every task.
CREATE INDEX tasks_needs_review ON tasks (company_id) WHERE status = 'needs_review';

CREATE TRIGGER tasks_metric_end AFTER UPDATE ON tasks
WHEN (NEW.status <> OLD.status AND OLD.status <> 'needs_review'
      AND NEW.status IN ('completed', 'failed', 'cancelled', 'needs_review'))
  OR NEW.prompt_tokens <> OLD.prompt_tokens
  OR NEW.completion_tokens <> OLD.completion_tokens
  OR NEW.cost_usd <> OLD.cost_usd
BEGIN
    INSERT INTO metric_events (company_id, task_id, agent, priority, kind, at, outcome,
                               created_at, started_at, prompt_tokens, completion_tokens, cost_usd)
    VALUES (NEW.company_id, NEW.task_id, NEW.agent, NEW.priority, 'task', NEW.updated_at,
            CASE WHEN NEW.status <> OLD.status AND OLD.status <> 'needs_review'
                      AND NEW.status IN ('completed', 'failed', 'cancelled', 'needs_review')
                 THEN NEW.status END,
            NEW.created_at, NEW.started_at,
            NEW.prompt_tokens - OLD.prompt_tokens, NEW.completion_tokens - OLD.completion_tokens,
            NEW.cost_usd - OLD.cost_usd);
END;

CREATE TRIGGER task_steps_metric_tool AFTER INSERT ON task_steps
WHEN NEW.kind = 'tool'
BEGIN
    INSERT INTO metric_events (company_id, task_id, agent, priority, kind, at)
    SELECT NEW.company_id, NEW.task_id, NEW.agent, t.priority, 'tool', NEW.at
    FROM tasks t WHERE t.task_id = NEW.task_id;
END;

CREATE TRIGGER task_reviews_metric AFTER INSERT ON task_reviews
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
END;
