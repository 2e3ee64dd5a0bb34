-- The all-time sums /metrics exposes, added up per company, per agent and
-- per priority level (issue 22): the table of SQLite's 0028, kept by the
-- roll-up in its own transaction. A company's rows (grouping 'company')
-- are company data under row-level security; the agent and level rows
-- (company_id '*', never a company's id nor an empty setting) add up every
-- company and are read on the admin's path.

CREATE TABLE metric_totals (
    grouping          TEXT COLLATE "C" NOT NULL CHECK (grouping IN ('company', 'agent', 'level')),
    company_id        TEXT COLLATE "C" NOT NULL,
    agent             TEXT COLLATE "C" NOT NULL,
    priority          TEXT COLLATE "C" NOT NULL,
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
    r0                BIGINT NOT NULL DEFAULT 0,
    r1                BIGINT NOT NULL DEFAULT 0,
    r2                BIGINT NOT NULL DEFAULT 0,
    r3                BIGINT NOT NULL DEFAULT 0,
    r4                BIGINT NOT NULL DEFAULT 0,
    r5                BIGINT NOT NULL DEFAULT 0,
    r6                BIGINT NOT NULL DEFAULT 0,
    r7                BIGINT NOT NULL DEFAULT 0,
    r8                BIGINT NOT NULL DEFAULT 0,
    r9                BIGINT NOT NULL DEFAULT 0,
    r10               BIGINT NOT NULL DEFAULT 0,
    r11               BIGINT NOT NULL DEFAULT 0,
    r12               BIGINT NOT NULL DEFAULT 0,
    r13               BIGINT NOT NULL DEFAULT 0,
    w0                BIGINT NOT NULL DEFAULT 0,
    w1                BIGINT NOT NULL DEFAULT 0,
    w2                BIGINT NOT NULL DEFAULT 0,
    w3                BIGINT NOT NULL DEFAULT 0,
    w4                BIGINT NOT NULL DEFAULT 0,
    w5                BIGINT NOT NULL DEFAULT 0,
    w6                BIGINT NOT NULL DEFAULT 0,
    w7                BIGINT NOT NULL DEFAULT 0,
    w8                BIGINT NOT NULL DEFAULT 0,
    w9                BIGINT NOT NULL DEFAULT 0,
    w10               BIGINT NOT NULL DEFAULT 0,
    w11               BIGINT NOT NULL DEFAULT 0,
    w12               BIGINT NOT NULL DEFAULT 0,
    w13               BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (grouping, company_id, agent, priority)
);

-- What the roll-up has already added up (read as the admin: metric_rollups
-- is under row-level security, forced for its owner too).
SELECT set_config('app.admin_read', 'on', true);
INSERT INTO metric_totals (grouping, company_id, agent, priority, ended, completed, failed, cancelled, needs_review, response_ms, queue_wait_ms, started, run_ms, prompt_tokens, completion_tokens, tool_calls, reviews_approved, reviews_rejected, ratings, rating_sum, cost_usd, r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11, r12, r13, w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13)
SELECT 'company', company_id, '', '', sum(ended), sum(completed), sum(failed), sum(cancelled), sum(needs_review), sum(response_ms), sum(queue_wait_ms), sum(started), sum(run_ms), sum(prompt_tokens), sum(completion_tokens), sum(tool_calls), sum(reviews_approved), sum(reviews_rejected), sum(ratings), sum(rating_sum), sum(cost_usd), sum(r0), sum(r1), sum(r2), sum(r3), sum(r4), sum(r5), sum(r6), sum(r7), sum(r8), sum(r9), sum(r10), sum(r11), sum(r12), sum(r13), sum(w0), sum(w1), sum(w2), sum(w3), sum(w4), sum(w5), sum(w6), sum(w7), sum(w8), sum(w9), sum(w10), sum(w11), sum(w12), sum(w13)
FROM metric_rollups WHERE resolution = 'total' GROUP BY company_id;
INSERT INTO metric_totals (grouping, company_id, agent, priority, ended, completed, failed, cancelled, needs_review, response_ms, queue_wait_ms, started, run_ms, prompt_tokens, completion_tokens, tool_calls, reviews_approved, reviews_rejected, ratings, rating_sum, cost_usd, r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11, r12, r13, w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13)
SELECT 'agent', '*', agent, '', sum(ended), sum(completed), sum(failed), sum(cancelled), sum(needs_review), sum(response_ms), sum(queue_wait_ms), sum(started), sum(run_ms), sum(prompt_tokens), sum(completion_tokens), sum(tool_calls), sum(reviews_approved), sum(reviews_rejected), sum(ratings), sum(rating_sum), sum(cost_usd), sum(r0), sum(r1), sum(r2), sum(r3), sum(r4), sum(r5), sum(r6), sum(r7), sum(r8), sum(r9), sum(r10), sum(r11), sum(r12), sum(r13), sum(w0), sum(w1), sum(w2), sum(w3), sum(w4), sum(w5), sum(w6), sum(w7), sum(w8), sum(w9), sum(w10), sum(w11), sum(w12), sum(w13)
FROM metric_rollups WHERE resolution = 'total' GROUP BY agent;
INSERT INTO metric_totals (grouping, company_id, agent, priority, ended, completed, failed, cancelled, needs_review, response_ms, queue_wait_ms, started, run_ms, prompt_tokens, completion_tokens, tool_calls, reviews_approved, reviews_rejected, ratings, rating_sum, cost_usd, r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11, r12, r13, w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13)
SELECT 'level', '*', '', priority, sum(ended), sum(completed), sum(failed), sum(cancelled), sum(needs_review), sum(response_ms), sum(queue_wait_ms), sum(started), sum(run_ms), sum(prompt_tokens), sum(completion_tokens), sum(tool_calls), sum(reviews_approved), sum(reviews_rejected), sum(ratings), sum(rating_sum), sum(cost_usd), sum(r0), sum(r1), sum(r2), sum(r3), sum(r4), sum(r5), sum(r6), sum(r7), sum(r8), sum(r9), sum(r10), sum(r11), sum(r12), sum(r13), sum(w0), sum(w1), sum(w2), sum(w3), sum(w4), sum(w5), sum(w6), sum(w7), sum(w8), sum(w9), sum(w10), sum(w11), sum(w12), sum(w13)
FROM metric_rollups WHERE resolution = 'total' GROUP BY priority;

ALTER TABLE metric_totals ENABLE ROW LEVEL SECURITY;
ALTER TABLE metric_totals FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON metric_totals
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
CREATE POLICY admin_read ON metric_totals FOR SELECT
    USING (current_setting('app.admin_read', true) = 'on');
CREATE POLICY metrics_rollup ON metric_totals
    USING (current_setting('app.metrics_rollup', true) = 'on')
    WITH CHECK (current_setting('app.metrics_rollup', true) = 'on');

GRANT SELECT, INSERT, UPDATE, DELETE ON metric_totals TO kira_app;
