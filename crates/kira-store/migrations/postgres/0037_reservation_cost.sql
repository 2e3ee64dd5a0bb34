-- Each settled reservation keeps the cost the provider reported for its
-- call (issue 22): a company's cost in a period is then the sum over its
-- settled reservations of that period, read with the tokens it spent,
-- instead of a sum over every task it ever ran.
ALTER TABLE reservations ADD COLUMN cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0 CHECK (cost_usd >= 0);

-- What was recorded before is a task's total only: it goes, whole, to
-- the task's last settled reservation, so each task is counted once, in
-- the period of its last call. Company by company: reservations are
-- under row-level security, forced for their owner too.
DO $$
DECLARE
    v_c TEXT;
BEGIN
    PERFORM set_config('app.admin_read', 'on', true);
    FOR v_c IN SELECT company_id FROM companies ORDER BY company_id LOOP
        PERFORM set_config('app.current_company_id', v_c, true);
        UPDATE reservations r SET cost_usd = t.cost_usd
          FROM tasks t
         WHERE t.company_id = v_c AND t.cost_usd > 0
           AND r.company_id = v_c AND r.task_id = t.task_id
           AND r.reservation_id = (
               SELECT l.reservation_id FROM reservations l
                WHERE l.company_id = v_c AND l.task_id = t.task_id AND l.state = 'settled'
                ORDER BY l.closed_at DESC, l.reservation_id DESC LIMIT 1);
    END LOOP;
    PERFORM set_config('app.current_company_id', '', true);
    PERFORM set_config('app.admin_read', '', true);
END
$$;

-- A budget line sums its company's settled reservations of the period:
-- the company's index names the period too (after the state, so the
-- held reservations of a company are still found by its prefix).
DROP INDEX reservations_company;
CREATE INDEX reservations_company ON reservations (company_id, state, period_id);

-- The batch finish writes each closed reservation's cost (`cost` in
-- p_closed); otherwise as in 0004.
CREATE OR REPLACE FUNCTION kira_finish_write(p_now TIMESTAMPTZ, p_closed JSONB, p_ledger JSONB, p_ended JSONB,
                                  p_requeued JSONB, p_tasks JSONB)
RETURNS BIGINT
LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
    v_c TEXT;
    v_period TEXT;
    v_pool TEXT;
    v_amount BIGINT;
    v_spent BIGINT;
    v_n BIGINT;
    v_want BIGINT;
    v_written BIGINT := 0;
    v_first TEXT;
BEGIN
    FOR v_c, v_want IN
        SELECT j.company, count(*) FROM jsonb_to_recordset(p_closed) AS j(company TEXT) GROUP BY 1 ORDER BY 1
    LOOP
        PERFORM set_config('app.current_company_id', v_c, true);
        UPDATE reservations r SET state = j.state, spent = j.spent, cost_usd = j.cost, closed_at = p_now
          FROM jsonb_to_recordset(p_closed) AS j(rid TEXT, company TEXT, state TEXT, spent BIGINT,
                                                 cost DOUBLE PRECISION)
         WHERE j.company = v_c AND r.company_id = v_c AND r.reservation_id = j.rid AND r.state = 'held';
        GET DIAGNOSTICS v_n = ROW_COUNT;
        IF v_n <> v_want THEN
            RAISE EXCEPTION 'a reservation of % changed during a batch finish', v_c USING ERRCODE = 'KR001';
        END IF;
        INSERT INTO budget_ledger (at, period_id, company_id, task_id, reservation_id, pool, kind, amount, detail)
        SELECT p_now, j.period, j.company, j.id, j.rid, j.pool, j.kind, j.amount, j.detail
          FROM jsonb_to_recordset(p_ledger)
            AS j(n INT, period TEXT, company TEXT, id TEXT, rid TEXT, pool TEXT, kind TEXT, amount BIGINT, detail TEXT)
         WHERE j.company = v_c
         ORDER BY j.n;
    END LOOP;
    FOR v_c, v_period, v_amount, v_spent IN
        SELECT j.company, j.period, sum(j.amount), sum(j.spent)
          FROM jsonb_to_recordset(p_closed) AS j(company TEXT, period TEXT, pool TEXT, amount BIGINT, spent BIGINT)
         WHERE j.pool = 'base' GROUP BY 1, 2 ORDER BY 1, 2
    LOOP
        PERFORM set_config('app.current_company_id', v_c, true);
        UPDATE budget_allocations a SET reserved = a.reserved - v_amount, spent = a.spent + v_spent
         WHERE a.period_id = v_period AND a.company_id = v_c;
    END LOOP;
    FOR v_period, v_pool, v_amount, v_spent IN
        SELECT j.period, j.pool, sum(j.amount), sum(j.spent)
          FROM jsonb_to_recordset(p_closed) AS j(period TEXT, pool TEXT, amount BIGINT, spent BIGINT)
         WHERE j.pool <> 'base' GROUP BY 1, 2 ORDER BY 1, 2
    LOOP
        UPDATE budget_pools p SET reserved = p.reserved - v_amount, spent = p.spent + v_spent
         WHERE p.period_id = v_period AND p.pool = v_pool;
    END LOOP;
    DELETE FROM task_queue q USING jsonb_to_recordset(p_ended) AS j(id TEXT, company TEXT)
     WHERE q.task_id = j.id AND q.company_id = j.company;
    UPDATE task_queue q
       SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, not_before = coalesce(j.not_before, p_now)
      FROM jsonb_to_recordset(p_requeued) AS j(id TEXT, company TEXT, not_before TIMESTAMPTZ)
     WHERE q.task_id = j.id AND q.company_id = j.company;
    FOR v_c IN SELECT DISTINCT j.company FROM jsonb_to_recordset(p_tasks) AS j(company TEXT) ORDER BY 1 LOOP
        PERFORM set_config('app.current_company_id', v_c, true);
        WITH j AS (
            SELECT * FROM jsonb_to_recordset(p_tasks)
                AS j(n INT, id TEXT, company TEXT, result JSONB, confidence DOUBLE PRECISION, review BOOLEAN,
                     error TEXT, status TEXT, reason TEXT, finished BOOLEAN, p BIGINT, c BIGINT,
                     cost DOUBLE PRECISION)
             WHERE j.company = v_c),
        t AS (
            UPDATE tasks SET result = j.result, confidence = j.confidence, requires_human_review = j.review,
                   last_error = coalesce(j.error, tasks.last_error), status = j.status, status_reason = j.reason,
                   updated_at = p_now, finished_at = CASE WHEN j.finished THEN p_now ELSE tasks.finished_at END,
                   prompt_tokens = tasks.prompt_tokens + j.p, completion_tokens = tasks.completion_tokens + j.c,
                   cost_usd = tasks.cost_usd + j.cost
              FROM j
             WHERE tasks.company_id = v_c AND tasks.task_id = j.id
            RETURNING 1),
        e AS (
            INSERT INTO task_events (company_id, task_id, at, from_status, to_status, reason)
            SELECT j.company, j.id, p_now, 'running', j.status, j.reason FROM j ORDER BY j.n)
        SELECT count(*) INTO v_n FROM t;
        v_written := v_written + v_n;
    END LOOP;
    PERFORM set_config('app.current_company_id', '', true);
    SELECT j.id INTO v_first FROM jsonb_to_recordset(p_requeued) AS j(id TEXT) LIMIT 1;
    IF v_first IS NOT NULL THEN
        PERFORM pg_notify('kira_tasks', v_first);
    END IF;
    RETURN v_written;
END
$$;
