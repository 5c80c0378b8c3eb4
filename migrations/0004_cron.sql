-- Scheduled jobs: every run recorded; jobs that stop at their budget continue from a cursor.

CREATE TABLE cron_runs (
  id TEXT PRIMARY KEY,
  job TEXT NOT NULL,
  schedule TEXT NOT NULL,          -- the cron expression, or 'manual' for an operator's run
  started_at INTEGER NOT NULL,     -- unix milliseconds
  finished_at INTEGER,
  examined INTEGER NOT NULL DEFAULT 0,
  changed INTEGER NOT NULL DEFAULT 0,
  errors INTEGER NOT NULL DEFAULT 0,
  error_text TEXT,
  stopped_early INTEGER NOT NULL DEFAULT 0,
  cursor TEXT                      -- where the next run of this job continues, if it stopped early
);
CREATE INDEX idx_cron_runs_started ON cron_runs(started_at);
CREATE INDEX idx_cron_runs_job_started ON cron_runs(job, started_at);

-- The reconciler re-enqueues a task at most once per lease.
ALTER TABLE ai_tasks ADD COLUMN reconciled_at INTEGER;
CREATE INDEX idx_ai_tasks_deadline ON ai_tasks(status, deadline_at);
CREATE INDEX idx_ai_tasks_status_updated ON ai_tasks(status, updated_at);
