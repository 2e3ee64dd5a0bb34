-- Every claim moved a task in this index (status changes) and every end
-- removed it, while nothing needs it: the snapshot reads the runnable
-- tasks through task_queue_oldest / _level / _deadline, and what runs
-- (the snapshot's `running`, the reaper) through task_queue_lease, since
-- a running task always holds a lease.
DROP INDEX task_queue_ready;
