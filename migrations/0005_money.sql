-- Money that is never lost or doubled (issue 11): orders keep the terms they were created with,
-- subscriptions the credits their order bought, the catalogue lives in D1 (KV `setting:config` is
-- its snapshot), provider submissions are counted, recovery jobs find stuck events, and the
-- auditor's reports are recorded.

-- An order keeps its terms: what kind of product it bought and how long the credits last. A
-- payment grants from these columns, never from a catalogue read later.
ALTER TABLE orders ADD COLUMN product_kind TEXT CHECK (product_kind IN ('pack','plan'));
ALTER TABLE orders ADD COLUMN credits_expire_days INTEGER CHECK (credits_expire_days > 0);
-- A plan order's plan and cycle, copied onto the subscription it starts.
ALTER TABLE orders ADD COLUMN plan_type TEXT;
ALTER TABLE orders ADD COLUMN billing_cycle TEXT;
-- Creem's transaction id for the order's payment (refunds name it).
ALTER TABLE orders ADD COLUMN provider_transaction_id TEXT;
CREATE INDEX idx_orders_provider_transaction ON orders(provider_transaction_id);

-- A subscription grants, every period, what the order that started it bought.
ALTER TABLE subscriptions ADD COLUMN credits_per_period INTEGER CHECK (credits_per_period > 0);
ALTER TABLE subscriptions ADD COLUMN order_id TEXT;
-- Events are ordered by (created time, event id): ties no longer go to arrival order. From this
-- migration on, last_event_at holds the event's time in unix milliseconds, as Creem sends it.
ALTER TABLE subscriptions ADD COLUMN last_event_id TEXT;

-- Create calls that may have reached the provider: incremented by the claim, decremented when
-- the provider answered that it did not take the task. The auditor checks it never passes 1.
ALTER TABLE ai_tasks ADD COLUMN provider_submissions INTEGER NOT NULL DEFAULT 0;

-- The event reconciler re-queues an event left 'received' at most once per lease.
ALTER TABLE webhook_events ADD COLUMN reconciled_at INTEGER;
CREATE INDEX idx_webhook_events_status_received ON webhook_events(status, received_at);

-- What a run found (the auditor's violations, as JSON).
ALTER TABLE cron_runs ADD COLUMN detail TEXT;

-- Runtime settings, D1 the truth. `catalog`: the products users can buy, changed by operators
-- through PUT /admin/catalog (audited) without a redeploy; KV `setting:config` caches it.
CREATE TABLE settings (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL,      -- JSON
  version INTEGER NOT NULL, -- grows by one per change
  updated_at INTEGER NOT NULL,
  updated_by TEXT
);
INSERT INTO settings (key, value, version, updated_at, updated_by) VALUES ('catalog', '{"packs": [
  {"id": "pack_starter", "creem_product_id": "prod_pack_starter", "price": 499, "currency": "USD", "credits": 50, "expires_in_days": 365},
  {"id": "pack_large", "creem_product_id": "prod_pack_large", "price": 1999, "currency": "USD", "credits": 250}
 ],
 "plans": [
  {"id": "basic_monthly", "plan": "basic", "cycle": "monthly", "creem_product_id": "prod_basic_monthly", "price": 999, "currency": "USD", "credits_per_period": 100},
  {"id": "pro_monthly", "plan": "pro", "cycle": "monthly", "creem_product_id": "prod_pro_monthly", "price": 1999, "currency": "USD", "credits_per_period": 300},
  {"id": "premium_yearly", "plan": "premium", "cycle": "yearly", "creem_product_id": "prod_premium_yearly", "price": 19900, "currency": "USD", "credits_per_period": 5000}
 ]}', 1, 0, 'migration');
