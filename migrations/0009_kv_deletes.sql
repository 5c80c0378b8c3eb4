-- KV deletes that KV refused (it takes one write per second per key, so a delete right after a
-- put of the same key is refused): the cron's `clear_kv_keys` job deletes them. Nothing waits in
-- an isolate for that second. See shared/src/kv_deletes.rs.
CREATE TABLE kv_deletes (
  key TEXT PRIMARY KEY NOT NULL,
  since INTEGER NOT NULL,            -- when the first delete was refused
  attempts INTEGER NOT NULL DEFAULT 0  -- the job's refused tries since
);
CREATE INDEX idx_kv_deletes_since ON kv_deletes(since);
