-- A task's status changes three times (claim, accept, completion) and D1 bills every index entry
-- a write touches as a row written. Three indexes began with `status` and one more held
-- `updated_at`, so each change rewrote four index entries besides the row: 10 of the 50 rows a
-- completed task wrote (measured with Miniflare's D1, whose `meta.rows_written` counts them).
--
-- The reads those indexes served are of live tasks (the reconciler's `overdue` and `stalled`, the
-- auditor's `no_hold_outlives_its_task`) and of ended ones (the console's tasks per bucket). Both
-- are served by partial indexes keyed on columns that change once: `completed_at` is set exactly
-- when a task reaches `completed` or `failed` (`task::succeed`, `ledger::fail_task`), so a live
-- task is one with `completed_at IS NULL`. An entry is written when a task is created and when it
-- ends, never when it moves between live statuses (a partial index is written only for rows its
-- condition holds for). The auditor's check of failed tasks reads them through the last index,
-- which only a failed task enters; its check of completed tasks reads the table, as the status
-- index it walked before held nearly every row. A count of tasks by status scans the table as it
-- scanned the whole status index before; the console's filtered lists walk `created_at`.
-- The index on the provider's task id served no read: a callback's signed token names our task,
-- and every statement finds a task by its own id. Writing the provider's id cost an entry at the
-- insert (NULL), at the accept and at the completion.
-- Now a claim writes 2 rows (the row, and the user's sync feed index on `updated_at`), an
-- accept 2 and a completion 3; a completed task writes 37 rows in all.

-- Tasks that ended before the pipeline's columns existed (the seed's rows) get their end now, so
-- the live index holds live tasks only.
UPDATE ai_tasks SET completed_at = COALESCE(updated_at, created_at)
  WHERE completed_at IS NULL AND status IN ('completed', 'failed');

DROP INDEX IF EXISTS idx_ai_tasks_deadline;         -- (status, deadline_at)
DROP INDEX IF EXISTS idx_ai_tasks_status_updated;   -- (status, updated_at)
DROP INDEX IF EXISTS idx_ai_tasks_status_created;   -- (status, created_at)
DROP INDEX IF EXISTS idx_ai_tasks_external_task_id; -- (external_task_id)
CREATE INDEX idx_ai_tasks_live ON ai_tasks(deadline_at) WHERE completed_at IS NULL;
CREATE INDEX idx_ai_tasks_ended ON ai_tasks(completed_at) WHERE completed_at IS NOT NULL;
CREATE INDEX idx_ai_tasks_failed ON ai_tasks(completed_at) WHERE status = 'failed';
