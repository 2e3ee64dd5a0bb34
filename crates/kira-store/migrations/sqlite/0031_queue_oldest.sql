-- The queue snapshot's first window: the runnable tasks waiting longest,
-- read in order from this index instead of sorting every runnable task on
-- each scheduling pass.
CREATE INDEX task_queue_oldest ON task_queue (waiting_since, task_id)
    WHERE status IN ('queued', 'waiting_budget');
