-- Operator actions and task retries.

-- Every admin action, who did it and to what.
CREATE TABLE admin_audit (
  id TEXT PRIMARY KEY,
  actor TEXT NOT NULL,
  action TEXT NOT NULL,
  target TEXT,
  detail TEXT,            -- JSON
  created_at INTEGER NOT NULL
);
CREATE INDEX idx_admin_audit_created_at ON admin_audit(created_at);
CREATE INDEX idx_admin_audit_target ON admin_audit(target);

-- A retried task is a new task linked to the one that failed.
ALTER TABLE ai_tasks ADD COLUMN retry_of TEXT;
CREATE INDEX idx_ai_tasks_status_created ON ai_tasks(status, created_at);
CREATE INDEX idx_dead_letters_filters ON dead_letters(source_queue, message_type, error_class, last_failed_at);
