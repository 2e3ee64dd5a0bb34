-- The all-time sums /metrics exposes, added up per company, per agent and
-- per priority level (issue 22), so a scrape reads about a thousand rows
-- instead of adding up every (company, agent, level) 'total' row of
-- metric_rollups. The roll-up adds each batch's deltas here in the same
-- transaction as the series rows. grouping 'company' rows carry the
-- company in company_id (agent and priority ''); 'agent' rows the agent,
-- 'level' rows the priority level, with company_id '*' (never a
-- company's id, nor the empty setting of a connection named no company). A deleted
-- company's own row goes with it; the agent and level rows keep what its
-- runs added (counters never go back).

CREATE TABLE metric_totals (
    grouping          TEXT NOT NULL CHECK (grouping IN ('company', 'agent', 'level')),
    company_id        TEXT NOT NULL,
    agent             TEXT NOT NULL,
    priority          TEXT NOT NULL,
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
    r0                INTEGER NOT NULL DEFAULT 0,
    r1                INTEGER NOT NULL DEFAULT 0,
    r2                INTEGER NOT NULL DEFAULT 0,
    r3                INTEGER NOT NULL DEFAULT 0,
    r4                INTEGER NOT NULL DEFAULT 0,
    r5                INTEGER NOT NULL DEFAULT 0,
    r6                INTEGER NOT NULL DEFAULT 0,
    r7                INTEGER NOT NULL DEFAULT 0,
    r8                INTEGER NOT NULL DEFAULT 0,
    r9                INTEGER NOT NULL DEFAULT 0,
    r10               INTEGER NOT NULL DEFAULT 0,
    r11               INTEGER NOT NULL DEFAULT 0,
    r12               INTEGER NOT NULL DEFAULT 0,
    r13               INTEGER NOT NULL DEFAULT 0,
    w0                INTEGER NOT NULL DEFAULT 0,
    w1                INTEGER NOT NULL DEFAULT 0,
    w2                INTEGER NOT NULL DEFAULT 0,
    w3                INTEGER NOT NULL DEFAULT 0,
    w4                INTEGER NOT NULL DEFAULT 0,
    w5                INTEGER NOT NULL DEFAULT 0,
    w6                INTEGER NOT NULL DEFAULT 0,
    w7                INTEGER NOT NULL DEFAULT 0,
    w8                INTEGER NOT NULL DEFAULT 0,
    w9                INTEGER NOT NULL DEFAULT 0,
    w10               INTEGER NOT NULL DEFAULT 0,
    w11               INTEGER NOT NULL DEFAULT 0,
    w12               INTEGER NOT NULL DEFAULT 0,
    w13               INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (grouping, company_id, agent, priority)
) STRICT;

-- What the roll-up has already added up.
INSERT INTO metric_totals (grouping, company_id, agent, priority, ended, completed, failed, cancelled, needs_review, response_ms, queue_wait_ms, started, run_ms, prompt_tokens, completion_tokens, tool_calls, reviews_approved, reviews_rejected, ratings, rating_sum, cost_usd, r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11, r12, r13, w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13)
SELECT 'company', company_id, '', '', sum(ended), sum(completed), sum(failed), sum(cancelled), sum(needs_review), sum(response_ms), sum(queue_wait_ms), sum(started), sum(run_ms), sum(prompt_tokens), sum(completion_tokens), sum(tool_calls), sum(reviews_approved), sum(reviews_rejected), sum(ratings), sum(rating_sum), sum(cost_usd), sum(r0), sum(r1), sum(r2), sum(r3), sum(r4), sum(r5), sum(r6), sum(r7), sum(r8), sum(r9), sum(r10), sum(r11), sum(r12), sum(r13), sum(w0), sum(w1), sum(w2), sum(w3), sum(w4), sum(w5), sum(w6), sum(w7), sum(w8), sum(w9), sum(w10), sum(w11), sum(w12), sum(w13)
FROM metric_rollups WHERE resolution = 'total' GROUP BY company_id;
INSERT INTO metric_totals (grouping, company_id, agent, priority, ended, completed, failed, cancelled, needs_review, response_ms, queue_wait_ms, started, run_ms, prompt_tokens, completion_tokens, tool_calls, reviews_approved, reviews_rejected, ratings, rating_sum, cost_usd, r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11, r12, r13, w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13)
SELECT 'agent', '*', agent, '', sum(ended), sum(completed), sum(failed), sum(cancelled), sum(needs_review), sum(response_ms), sum(queue_wait_ms), sum(started), sum(run_ms), sum(prompt_tokens), sum(completion_tokens), sum(tool_calls), sum(reviews_approved), sum(reviews_rejected), sum(ratings), sum(rating_sum), sum(cost_usd), sum(r0), sum(r1), sum(r2), sum(r3), sum(r4), sum(r5), sum(r6), sum(r7), sum(r8), sum(r9), sum(r10), sum(r11), sum(r12), sum(r13), sum(w0), sum(w1), sum(w2), sum(w3), sum(w4), sum(w5), sum(w6), sum(w7), sum(w8), sum(w9), sum(w10), sum(w11), sum(w12), sum(w13)
FROM metric_rollups WHERE resolution = 'total' GROUP BY agent;
INSERT INTO metric_totals (grouping, company_id, agent, priority, ended, completed, failed, cancelled, needs_review, response_ms, queue_wait_ms, started, run_ms, prompt_tokens, completion_tokens, tool_calls, reviews_approved, reviews_rejected, ratings, rating_sum, cost_usd, r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11, r12, r13, w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13)
SELECT 'level', '*', '', priority, sum(ended), sum(completed), sum(failed), sum(cancelled), sum(needs_review), sum(response_ms), sum(queue_wait_ms), sum(started), sum(run_ms), sum(prompt_tokens), sum(completion_tokens), sum(tool_calls), sum(reviews_approved), sum(reviews_rejected), sum(ratings), sum(rating_sum), sum(cost_usd), sum(r0), sum(r1), sum(r2), sum(r3), sum(r4), sum(r5), sum(r6), sum(r7), sum(r8), sum(r9), sum(r10), sum(r11), sum(r12), sum(r13), sum(w0), sum(w1), sum(w2), sum(w3), sum(w4), sum(w5), sum(w6), sum(w7), sum(w8), sum(w9), sum(w10), sum(w11), sum(w12), sum(w13)
FROM metric_rollups WHERE resolution = 'total' GROUP BY priority;
