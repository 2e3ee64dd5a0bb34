-- Each settled reservation keeps the cost the provider reported for its
-- call (issue 22): a company's cost in a period is then the sum over its
-- settled reservations of that period, read with the tokens it spent,
-- instead of a sum over every task it ever ran.
ALTER TABLE reservations ADD COLUMN cost_usd REAL NOT NULL DEFAULT 0 CHECK (cost_usd >= 0);

-- What was recorded before is a task's total only: it goes, whole, to
-- the task's last settled reservation, so each task is counted once, in
-- the period of its last call.
UPDATE reservations SET cost_usd = (
    SELECT t.cost_usd FROM tasks t
     WHERE t.company_id = reservations.company_id AND t.task_id = reservations.task_id)
 WHERE reservation_id IN (
    SELECT (SELECT r.reservation_id FROM reservations r
             WHERE r.task_id = t.task_id AND r.company_id = t.company_id AND r.state = 'settled'
             ORDER BY r.closed_at DESC, r.reservation_id DESC LIMIT 1)
      FROM tasks t WHERE t.cost_usd > 0);
