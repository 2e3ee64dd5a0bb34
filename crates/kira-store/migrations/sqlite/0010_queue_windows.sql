-- The queue snapshot's windows over runnable tasks: each priority level's
-- first by company multiplier then waiting time, and the nearest deadlines.
CREATE INDEX task_queue_level ON task_queue (priority, multiplier DESC, waiting_since, task_id)
    WHERE status IN ('queued', 'waiting_budget');
CREATE INDEX task_queue_deadline ON task_queue (deadline, task_id)
    WHERE status IN ('queued', 'waiting_budget') AND deadline IS NOT NULL;
