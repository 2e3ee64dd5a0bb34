-- Set-based claims and run ends (`claim_batch`, `finish_batch`): each
-- phase of a batch is one call, so a batch of tasks costs a few round trips
-- instead of a dozen per task.
--
-- Row-level security stays whole. The functions are SECURITY INVOKER: they
-- run as the caller (kira_app), under every policy. Since a policy admits one
-- company at a time, each function names each company with
-- set_config('app.current_company_id', .., true) before the statements that
-- touch its rows, and every such statement also binds that company. A
-- function leaves no company named when it returns.
--
-- Locks are taken in the order documented in `postgres/work.rs`, by class
-- and then by id: company rows, queue rows, reservations, allocations (in
-- company order), pools (in (period, pool) order), task rows. So a batch and
-- any single claim, settle or finish never wait on each other in a circle.
--
-- The planning between the two phases (admission, what fits) happens in
-- the store, on what the first phase returned and locked; the second phase
-- still writes every balance with a conditional update and raises if one
-- finds less room than planned, which rolls the whole batch back.

-- Phase 1 of a batch claim. Locks the candidates' company rows (FOR KEY
-- SHARE), then their queue rows that are claimable now (skipping those
-- another claimer holds: they are that claimer's), then the base allocation
-- of every company with a claimable candidate (so phase 2 finds it as read).
-- Returns one row per claimable candidate: its status, its estimated tokens,
-- whether a granted reservation is already held for it, and its company's
-- free base tokens in `p_period` (NULL without an allocation).
CREATE FUNCTION kira_claim_prepare(p_ids TEXT[], p_companies TEXT[], p_period TEXT, p_now TIMESTAMPTZ)
RETURNS TABLE (id TEXT, company TEXT, from_status TEXT, tokens BIGINT, granted BOOLEAN, free BIGINT)
LANGUAGE plpgsql SECURITY INVOKER AS $$
#variable_conflict use_column
DECLARE
    v_c TEXT;
    v_locked TEXT[] := '{}';
    v_ids TEXT[];
    v_cos TEXT[];
    v_sts TEXT[];
    v_est BIGINT[];
    v_granted TEXT[] := '{}';
    v_free JSONB := '{}';
    v_f BIGINT;
BEGIN
    FOR v_c IN SELECT DISTINCT x FROM unnest(p_companies) AS x ORDER BY x LOOP
        PERFORM set_config('app.current_company_id', v_c, true);
        PERFORM 1 FROM companies c WHERE c.company_id = v_c FOR KEY SHARE;
        IF FOUND THEN
            v_locked := v_locked || v_c;
        END IF;
    END LOOP;
    SELECT coalesce(array_agg(s.task_id), '{}'), coalesce(array_agg(s.company_id), '{}'),
           coalesce(array_agg(s.status), '{}'), coalesce(array_agg(s.estimated_tokens), '{}')
      INTO v_ids, v_cos, v_sts, v_est
      FROM (SELECT q.task_id, q.company_id, q.status, q.estimated_tokens
              FROM task_queue q
              JOIN unnest(p_ids, p_companies) AS w(id, co) ON q.task_id = w.id AND q.company_id = w.co
             WHERE q.company_id = ANY (v_locked)
               AND q.status IN ('queued', 'waiting_budget') AND q.not_before <= p_now
             FOR UPDATE OF q SKIP LOCKED) AS s;
    FOR v_c IN SELECT DISTINCT x FROM unnest(v_cos) AS x ORDER BY x LOOP
        PERFORM set_config('app.current_company_id', v_c, true);
        v_granted := v_granted || ARRAY(
            SELECT r.task_id FROM reservations r
             WHERE r.company_id = v_c AND r.task_id = ANY (v_ids) AND r.state = 'held');
        SELECT a.tokens - a.reserved - a.spent INTO v_f
          FROM budget_allocations a
         WHERE a.period_id = p_period AND a.company_id = v_c
           FOR NO KEY UPDATE;
        IF FOUND THEN
            v_free := v_free || jsonb_build_object(v_c, v_f);
        END IF;
    END LOOP;
    PERFORM set_config('app.current_company_id', '', true);
    RETURN QUERY
        SELECT u.id, u.co, u.st, u.est, u.id = ANY (v_granted), (v_free ->> u.co)::BIGINT
          FROM unnest(v_ids, v_cos, v_sts, v_est) AS u(id, co, st, est);
END
$$;

-- Phase 2 of a batch claim: `p_rows` is a JSON array of
-- {n, id, company, amount, rid, from, reason}, the candidates phase 1 found
-- claimable and the store planned to take from their company's base
-- allocation. Moves the queue rows to running, reserves each company's sum
-- with one conditional update, and writes the reservations, ledger lines,
-- task rows and events. Returns the task rows as claimed.
CREATE FUNCTION kira_claim_write(p_rows JSONB, p_period TEXT, p_worker TEXT,
                                 p_lease_until TIMESTAMPTZ, p_now TIMESTAMPTZ)
RETURNS SETOF tasks
LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
    v_c TEXT;
    v_sum BIGINT;
    v_n BIGINT;
BEGIN
    UPDATE task_queue q
       SET status = 'running', lease_owner = p_worker, lease_expires_at = p_lease_until,
           attempts = q.attempts + 1
      FROM jsonb_to_recordset(p_rows) AS j(id TEXT, company TEXT)
     WHERE q.task_id = j.id AND q.company_id = j.company
       AND q.status IN ('queued', 'waiting_budget') AND q.not_before <= p_now;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n <> jsonb_array_length(p_rows) THEN
        RAISE EXCEPTION 'a batch claim found % claimable tasks where it expected %', v_n, jsonb_array_length(p_rows)
            USING ERRCODE = 'KR001';
    END IF;
    FOR v_c, v_sum IN
        SELECT j.company, sum(j.amount) FROM jsonb_to_recordset(p_rows) AS j(company TEXT, amount BIGINT)
         GROUP BY 1 ORDER BY 1
    LOOP
        PERFORM set_config('app.current_company_id', v_c, true);
        UPDATE budget_allocations a SET reserved = a.reserved + v_sum
         WHERE a.period_id = p_period AND a.company_id = v_c AND a.reserved + a.spent + v_sum <= a.tokens;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the allocation of % cannot hold % more tokens', v_c, v_sum
                USING ERRCODE = 'KR001';
        END IF;
    END LOOP;
    FOR v_c IN SELECT DISTINCT j.company FROM jsonb_to_recordset(p_rows) AS j(company TEXT) ORDER BY 1 LOOP
        PERFORM set_config('app.current_company_id', v_c, true);
        RETURN QUERY
        WITH j AS (
            SELECT * FROM jsonb_to_recordset(p_rows)
                AS j(n INT, id TEXT, company TEXT, amount BIGINT, rid TEXT, "from" TEXT, reason TEXT)
             WHERE j.company = v_c),
        r AS (
            INSERT INTO reservations (reservation_id, company_id, task_id, period_id, pool, amount, state, created_at)
            SELECT j.rid, j.company, j.id, p_period, 'base', j.amount, 'held', p_now FROM j ORDER BY j.n),
        l AS (
            INSERT INTO budget_ledger (at, period_id, company_id, task_id, reservation_id, pool, kind, amount, detail)
            SELECT p_now, p_period, j.company, j.id, j.rid, 'base', 'reserve', j.amount, '' FROM j ORDER BY j.n),
        t AS (
            UPDATE tasks SET status = 'running', status_reason = j.reason, updated_at = p_now,
                   attempts = tasks.attempts + 1, started_at = coalesce(tasks.started_at, p_now)
              FROM j
             WHERE tasks.company_id = v_c AND tasks.task_id = j.id
            RETURNING tasks.*),
        e AS (
            INSERT INTO task_events (company_id, task_id, at, from_status, to_status, reason)
            SELECT j.company, j.id, p_now, j."from", 'running', j.reason FROM j ORDER BY j.n)
        SELECT * FROM t;
    END LOOP;
    PERFORM set_config('app.current_company_id', '', true);
END
$$;

-- Phase 1 of a batch finish. Locks the company rows, then the queue rows of
-- the tasks `p_worker` still runs (in id order), then those tasks' held
-- reservations. Returns one row per held reservation of such a task, and
-- one with a NULL reservation for such a task that holds none, in the
-- order the reservations were made.
CREATE FUNCTION kira_finish_prepare(p_worker TEXT, p_ids TEXT[], p_companies TEXT[])
RETURNS TABLE (id TEXT, company TEXT, reservation_id TEXT, period_id TEXT, pool TEXT, amount BIGINT)
LANGUAGE plpgsql SECURITY INVOKER AS $$
#variable_conflict use_column
DECLARE
    v_c TEXT;
    v_locked TEXT[] := '{}';
    v_ids TEXT[];
    v_cos TEXT[];
BEGIN
    FOR v_c IN SELECT DISTINCT x FROM unnest(p_companies) AS x ORDER BY x LOOP
        PERFORM set_config('app.current_company_id', v_c, true);
        PERFORM 1 FROM companies c WHERE c.company_id = v_c FOR KEY SHARE;
        IF FOUND THEN
            v_locked := v_locked || v_c;
        END IF;
    END LOOP;
    SELECT coalesce(array_agg(s.task_id), '{}'), coalesce(array_agg(s.company_id), '{}')
      INTO v_ids, v_cos
      FROM (SELECT q.task_id, q.company_id
              FROM task_queue q
              JOIN unnest(p_ids, p_companies) AS w(id, co) ON q.task_id = w.id AND q.company_id = w.co
             WHERE q.company_id = ANY (v_locked) AND q.lease_owner = p_worker AND q.status = 'running'
             ORDER BY q.task_id
               FOR UPDATE OF q) AS s;
    FOR v_c IN SELECT DISTINCT x FROM unnest(v_cos) AS x ORDER BY x LOOP
        PERFORM set_config('app.current_company_id', v_c, true);
        PERFORM 1 FROM reservations r
         WHERE r.company_id = v_c AND r.task_id = ANY (v_ids) AND r.state = 'held'
         ORDER BY r.reservation_id
           FOR UPDATE;
        RETURN QUERY
            SELECT u.id, u.co, r.reservation_id, r.period_id, r.pool, r.amount
              FROM unnest(v_ids, v_cos) AS u(id, co)
              LEFT JOIN reservations r
                ON r.company_id = v_c AND r.task_id = u.id AND r.state = 'held'
             WHERE u.co = v_c
             ORDER BY u.id, r.created_at, r.reservation_id;
    END LOOP;
    PERFORM set_config('app.current_company_id', '', true);
END
$$;

-- Phase 2 of a batch finish, for the ends the store found plain (the lease
-- held, a settlement within its reservation). JSON arrays:
--   p_closed   {rid, company, period, pool, state, amount, spent}: reservations settled or released
--   p_ledger   {n, period, company, id, rid, pool, kind, amount, detail}
--   p_ended    {id, company}: queue rows of tasks that ended
--   p_requeued {id, company, not_before}: queue rows of retries
--   p_tasks    {n, id, company, result, confidence, review, error, status, reason, finished, p, c, cost}
-- Writes reservations and ledger lines, the balances (allocations, then
-- pools), the queue rows, the task rows and their events; notifies
-- `kira_tasks` once if a task was queued again. Returns the task rows written.
CREATE FUNCTION kira_finish_write(p_now TIMESTAMPTZ, p_closed JSONB, p_ledger JSONB, p_ended JSONB,
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
        UPDATE reservations r SET state = j.state, spent = j.spent, closed_at = p_now
          FROM jsonb_to_recordset(p_closed) AS j(rid TEXT, company TEXT, state TEXT, spent BIGINT)
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

REVOKE ALL ON FUNCTION kira_claim_prepare(TEXT[], TEXT[], TEXT, TIMESTAMPTZ),
    kira_claim_write(JSONB, TEXT, TEXT, TIMESTAMPTZ, TIMESTAMPTZ),
    kira_finish_prepare(TEXT, TEXT[], TEXT[]),
    kira_finish_write(TIMESTAMPTZ, JSONB, JSONB, JSONB, JSONB, JSONB) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kira_claim_prepare(TEXT[], TEXT[], TEXT, TIMESTAMPTZ),
    kira_claim_write(JSONB, TEXT, TEXT, TIMESTAMPTZ, TIMESTAMPTZ),
    kira_finish_prepare(TEXT, TEXT[], TEXT[]),
    kira_finish_write(TIMESTAMPTZ, JSONB, JSONB, JSONB, JSONB, JSONB) TO kira_app;
