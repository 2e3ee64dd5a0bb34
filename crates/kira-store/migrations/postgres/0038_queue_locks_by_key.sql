-- The batch claim and finish lock their queue rows by key: one primary-key
-- probe per task given (a nested loop over the ids), whatever the
-- statistics say. 0004 joined the ids to the queue rows of their
-- companies in the claimable (or running) state. With statistics older
-- than the queue (gathered while few or no rows were claimable, then a
-- burst of tasks), the planner believed those rows few and read all of
-- them, through the partial index of claimable rows, for every batch:
-- 17 ms for a batch of four under `kira bench queue --processes 4`, the
-- largest share of the database's time. Probing by key alone still
-- needs the state checks kept from the indexes: a partial index analyzed
-- while empty looks free to scan in full for each id. So the checks on
-- `status` and `lease_owner` go through coalesce(), which no index
-- matches and from which no partial index's predicate follows. Otherwise
-- as in 0004 (the finish still locks its rows in id order: the nested
-- loop keeps the sorted ids' order).

CREATE OR REPLACE FUNCTION kira_claim_prepare(p_ids TEXT[], p_companies TEXT[], p_period TEXT, p_now TIMESTAMPTZ)
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
      FROM unnest(p_ids, p_companies) AS w(id, co)
     CROSS JOIN LATERAL (
            SELECT q.task_id, q.company_id, q.status, q.estimated_tokens
              FROM task_queue q
             WHERE q.task_id = w.id AND q.company_id = w.co AND q.company_id = ANY (v_locked)
               AND coalesce(q.status, '') IN ('queued', 'waiting_budget') AND q.not_before <= p_now
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

CREATE OR REPLACE FUNCTION kira_finish_prepare(p_worker TEXT, p_ids TEXT[], p_companies TEXT[])
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
      FROM (SELECT x.id, x.co FROM unnest(p_ids, p_companies) AS x(id, co) ORDER BY x.id) AS w
     CROSS JOIN LATERAL (
            SELECT q.task_id, q.company_id
              FROM task_queue q
             WHERE q.task_id = w.id AND q.company_id = w.co AND q.company_id = ANY (v_locked)
               AND coalesce(q.lease_owner, '') = p_worker AND coalesce(q.status, '') = 'running'
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
