-- Payments: the provider's order id, subscription periods and event ordering.

ALTER TABLE orders ADD COLUMN provider_order_id TEXT;  -- Creem's order id (orders.payment_id holds the checkout id)
CREATE INDEX idx_orders_provider_order_id ON orders(provider_order_id);
CREATE INDEX idx_orders_user_created ON orders(user_id, created_at);

ALTER TABLE subscriptions ADD COLUMN product_id TEXT;
ALTER TABLE subscriptions ADD COLUMN current_period_start INTEGER;
ALTER TABLE subscriptions ADD COLUMN last_event_at INTEGER;  -- newest provider event applied: older ones never undo it
CREATE UNIQUE INDEX uq_subscriptions_third_party ON subscriptions(third_party_subscription_id);

CREATE INDEX idx_webhook_events_status_type ON webhook_events(status, event_type, received_at);
