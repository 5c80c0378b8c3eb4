-- edgeline schema, first migration.
-- The seed tables (users, user_auth, signin_logs, orders, credit_records, credit_consumptions,
-- ai_tasks, subscriptions) keep the seed's columns and indexes; the pipeline's additions are
-- marked "pipeline:". Times are unix seconds; money is minor units; credits are integers.
-- Never edit this file once it has landed: add a new numbered migration instead.

CREATE TABLE users (
  id TEXT PRIMARY KEY,
  email TEXT UNIQUE NOT NULL,
  name TEXT NOT NULL,
  picture TEXT,
  credits INTEGER DEFAULT 3, -- seed column; the balance is derived from the ledger, never from here
  created_at INTEGER DEFAULT (strftime('%s', 'now')),
  updated_at INTEGER DEFAULT (strftime('%s', 'now'))
);
CREATE INDEX idx_users_email ON users(email);
CREATE INDEX idx_users_created_at ON users(created_at);

CREATE TABLE user_auth (
  id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL,
  provider TEXT NOT NULL,
  openid TEXT NOT NULL,
  created_at INTEGER DEFAULT (strftime('%s', 'now')),
  FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX idx_user_auth_provider_openid ON user_auth(provider, openid);
CREATE INDEX idx_user_auth_user_id ON user_auth(user_id);

CREATE TABLE signin_logs (
  id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL,
  ip_address TEXT,
  user_agent TEXT,
  created_at INTEGER DEFAULT (strftime('%s', 'now')),
  FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE
);
CREATE INDEX idx_signin_logs_user_id ON signin_logs(user_id);
CREATE INDEX idx_signin_logs_created_at ON signin_logs(created_at);

CREATE TABLE orders (
  id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL,
  amount INTEGER NOT NULL CHECK (amount >= 0),
  currency TEXT DEFAULT 'CNY',
  status TEXT DEFAULT 'pending' CHECK (status IN
    ('pending','paid','processing','completed','refunding','refunded','cancelled','expired')),
  payment_provider TEXT DEFAULT 'creem',
  payment_id TEXT,
  payment_url TEXT,
  credits INTEGER NOT NULL CHECK (credits >= 0),
  product_id TEXT, -- pipeline: catalogue entry the order is for
  created_at INTEGER DEFAULT (strftime('%s', 'now')),
  updated_at INTEGER DEFAULT (strftime('%s', 'now')),
  FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE
);
CREATE INDEX idx_orders_user_id ON orders(user_id);
CREATE INDEX idx_orders_status ON orders(status);
CREATE INDEX idx_orders_payment_id ON orders(payment_id);
CREATE INDEX idx_orders_created_at ON orders(created_at);

-- Every ledger movement. Grants (purchase, gift, subscription) are positive and may expire;
-- a task holds credits with 'reserve' (negative) and ends the hold with exactly one 'release'
-- (positive), followed on success by one 'consumption' (negative) whose allocation to grants is
-- in credit_consumptions. See shared/src/ledger.rs.
CREATE TABLE credit_records (
  id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL,
  amount INTEGER NOT NULL,
  type TEXT NOT NULL,
  entity_type TEXT,
  entity_id TEXT,
  expires_at INTEGER,
  note TEXT,
  created_at INTEGER DEFAULT (strftime('%s', 'now')),
  FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE
);
CREATE INDEX idx_credit_records_user_id ON credit_records(user_id);
CREATE INDEX idx_credit_records_type ON credit_records(type);
CREATE INDEX idx_credit_records_entity ON credit_records(entity_type, entity_id);
CREATE INDEX idx_credit_records_expires_at ON credit_records(expires_at);
-- pipeline: one ledger row of each kind per entity (one reserve/release/consumption per task,
-- one grant per order or subscription period): a replayed write fails here instead of counting twice.
CREATE UNIQUE INDEX uq_credit_records_entity_kind ON credit_records(entity_type, entity_id, type)
  WHERE entity_type IS NOT NULL;

CREATE TABLE credit_consumptions (
  id TEXT PRIMARY KEY, -- pipeline: deterministic '{entity_id}:{from_record_id}'
  user_id TEXT NOT NULL,
  amount INTEGER NOT NULL CHECK (amount > 0),
  from_record_id TEXT NOT NULL,
  entity_type TEXT NOT NULL,
  entity_id TEXT NOT NULL,
  reason TEXT,
  created_at INTEGER DEFAULT (strftime('%s', 'now')),
  FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE,
  FOREIGN KEY (from_record_id) REFERENCES credit_records(id) ON DELETE CASCADE
);
CREATE INDEX idx_credit_consumptions_user_id ON credit_consumptions(user_id);
CREATE INDEX idx_credit_consumptions_from_record ON credit_consumptions(from_record_id);
CREATE INDEX idx_credit_consumptions_entity ON credit_consumptions(entity_type, entity_id);

-- pipeline: a grant can never be drawn beyond its amount, whatever two settlements race.
CREATE TRIGGER trg_credit_consumptions_no_overdraw
BEFORE INSERT ON credit_consumptions
WHEN NEW.amount + COALESCE((SELECT SUM(amount) FROM credit_consumptions WHERE from_record_id = NEW.from_record_id), 0)
     > COALESCE((SELECT amount FROM credit_records WHERE id = NEW.from_record_id AND amount > 0), 0)
BEGIN
  SELECT RAISE(ABORT, 'grant_overdrawn');
END;

CREATE TABLE ai_tasks (
  id TEXT PRIMARY KEY,
  task_no TEXT UNIQUE NOT NULL,
  user_id TEXT NOT NULL,
  status TEXT DEFAULT 'pending' CHECK (status IN ('pending','submitted','processing','completed','failed')),
  input_params TEXT NOT NULL,
  estimated_start_at INTEGER,
  result_urls TEXT,       -- the provider's result URLs (they expire)
  failure_reason TEXT,
  external_provider TEXT CHECK (external_provider IN ('kie_4o','kie_kontext')),
  external_task_id TEXT,
  created_at INTEGER DEFAULT (strftime('%s', 'now')),
  updated_at INTEGER DEFAULT (strftime('%s', 'now')),
  idempotency_key TEXT,   -- pipeline: client's Idempotency-Key, unique per user
  cost INTEGER NOT NULL DEFAULT 0 CHECK (cost >= 0), -- pipeline: credits held for this task
  result_keys TEXT,       -- pipeline: JSON array of R2 keys holding the stored results
  deadline_at INTEGER,    -- pipeline: past this the task fails with deadline_exceeded
  submitted_at INTEGER,   -- pipeline: when the provider accepted it
  completed_at INTEGER,   -- pipeline: when it reached completed or failed
  FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX idx_ai_tasks_task_no ON ai_tasks(task_no);
CREATE INDEX idx_ai_tasks_user_id ON ai_tasks(user_id);
CREATE INDEX idx_ai_tasks_status ON ai_tasks(status);
CREATE INDEX idx_ai_tasks_external_task_id ON ai_tasks(external_task_id);
CREATE INDEX idx_ai_tasks_created_at ON ai_tasks(created_at);
CREATE UNIQUE INDEX uq_ai_tasks_user_idempotency ON ai_tasks(user_id, idempotency_key)
  WHERE idempotency_key IS NOT NULL;
CREATE INDEX idx_ai_tasks_user_created ON ai_tasks(user_id, created_at DESC, id DESC);

CREATE TABLE subscriptions (
  id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL,
  plan_type TEXT NOT NULL,
  status TEXT DEFAULT 'active',
  billing_cycle TEXT DEFAULT 'monthly',
  third_party_subscription_id TEXT,
  enabled_at INTEGER,
  expires_at INTEGER,
  next_billing_at INTEGER,
  cancelled_at INTEGER,
  created_at INTEGER DEFAULT (strftime('%s', 'now')),
  updated_at INTEGER DEFAULT (strftime('%s', 'now')),
  FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE
);
CREATE INDEX idx_subscriptions_user_id ON subscriptions(user_id);
CREATE INDEX idx_subscriptions_status ON subscriptions(status);
CREATE INDEX idx_subscriptions_expires_at ON subscriptions(expires_at);

-- pipeline: every webhook delivery we accepted, once per (provider, event id).
CREATE TABLE webhook_events (
  id TEXT PRIMARY KEY,
  provider TEXT NOT NULL,
  event_id TEXT NOT NULL,
  event_type TEXT,
  payload TEXT NOT NULL,
  status TEXT NOT NULL DEFAULT 'received' CHECK (status IN ('received','applied','ignored','rejected')),
  error TEXT,
  received_at INTEGER NOT NULL,
  processed_at INTEGER
);
CREATE UNIQUE INDEX uq_webhook_events_provider_event ON webhook_events(provider, event_id);
CREATE INDEX idx_webhook_events_received_at ON webhook_events(received_at);

-- pipeline: messages that exhausted their retries, archived for operators to inspect and replay.
CREATE TABLE dead_letters (
  id TEXT PRIMARY KEY,
  source_queue TEXT NOT NULL,
  message_id TEXT NOT NULL,
  message_type TEXT,
  body TEXT,              -- the message body as JSON, when small
  body_r2_key TEXT,       -- where a large body went instead
  attempts INTEGER NOT NULL DEFAULT 0,
  error_class TEXT,
  error_text TEXT,
  first_failed_at INTEGER NOT NULL,
  last_failed_at INTEGER NOT NULL,
  status TEXT NOT NULL DEFAULT 'dead' CHECK (status IN ('dead','replayed','discarded')),
  replayed_at INTEGER,
  replayed_by TEXT,
  replay_count INTEGER NOT NULL DEFAULT 0,
  discarded_at INTEGER,
  discarded_by TEXT
);
CREATE UNIQUE INDEX uq_dead_letters_source_message ON dead_letters(source_queue, message_id);
CREATE INDEX idx_dead_letters_status_failed ON dead_letters(status, last_failed_at);
