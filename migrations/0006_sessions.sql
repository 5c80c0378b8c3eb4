-- Sessions in D1, the truth; KV keeps one key per live session (`session:{id}`) as a cache that
-- expires with it. Replaces the per-user KV list `auth-uid:{userId}` that every sign-in and
-- sign-out read, changed and wrote back (concurrent writers dropped each other's sessions).
-- See shared/src/session.rs for the rules and the SQL.

CREATE TABLE sessions (
  id TEXT PRIMARY KEY NOT NULL,          -- 32 hex digits; the `sid` claim of the session's tokens
  user_id TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  last_used_at INTEGER NOT NULL,         -- written at sign-in and with each renewal, never per request
  refreshed_at INTEGER NOT NULL,         -- `iat` of the session's newest token (renewal's compare-and-set)
  expires_at INTEGER NOT NULL,           -- expiry of its newest token; renewal moves it ttl_secs ahead
  ttl_secs INTEGER NOT NULL CHECK (ttl_secs > 0),
  revoked_at INTEGER,
  user_agent TEXT,
  ip TEXT,
  FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE
);
CREATE INDEX idx_sessions_user_created ON sessions(user_id, created_at);

-- Sign-out-everywhere: sessions created before this second are never live, and no session
-- created before it can be inserted afterwards.
ALTER TABLE users ADD COLUMN sessions_revoked_before INTEGER NOT NULL DEFAULT 0;
