-- History (issue 13): shared results, lasting links, deleting and syncing a user's tasks.

-- A deleted task keeps its row: its ledger rows name it (money history is never deleted), and
-- other devices learn of the deletion from it (a tombstone in the sync feed). Every user-facing
-- read hides it. purged_at: when the retention job confirmed its R2 objects gone (the delete
-- request removes them; the job finishes whatever a request could not).
ALTER TABLE ai_tasks ADD COLUMN deleted_at INTEGER;
ALTER TABLE ai_tasks ADD COLUMN purged_at INTEGER;

-- The sync feed walks a user's tasks in (updated_at, id) order.
CREATE INDEX idx_ai_tasks_user_updated ON ai_tasks(user_id, updated_at, id);
-- Deleted tasks whose objects are not confirmed gone.
CREATE INDEX idx_ai_tasks_unpurged ON ai_tasks(deleted_at) WHERE deleted_at IS NOT NULL AND purged_at IS NULL;

-- A user's share of one of their completed tasks. D1 is the truth; KV `share:{id}` caches its
-- public record for 30 days. view_count is written in batches (see shared/src/sharing.rs).
CREATE TABLE shares (
  id TEXT PRIMARY KEY,               -- random UUID: the share's public name
  user_id TEXT NOT NULL,
  task_id TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  revoked_at INTEGER,                -- revoked by its owner, or by deleting the task
  view_count INTEGER NOT NULL DEFAULT 0,
  last_viewed_at INTEGER,
  FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE,
  FOREIGN KEY (task_id) REFERENCES ai_tasks(id) ON DELETE CASCADE
);
CREATE INDEX idx_shares_user_created ON shares(user_id, created_at, id);
CREATE INDEX idx_shares_task ON shares(task_id);
