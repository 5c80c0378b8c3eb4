-- Indexes that another index already serves, dropped: D1 bills every index entry an insert or
-- update writes, and a task's life writes these on every transition for no query.
--   idx_ai_tasks_status        (status)              ⊂ idx_ai_tasks_status_created (status, created_at)
--   idx_ai_tasks_user_id       (user_id)             ⊂ idx_ai_tasks_user_created (user_id, created_at, id)
--   idx_credit_records_entity  (entity_type, entity_id) ⊂ uq_credit_records_entity_kind (entity_type, entity_id, type)
-- A query on the leading columns uses the wider index (shared's tests check the plans).
DROP INDEX IF EXISTS idx_ai_tasks_status;
DROP INDEX IF EXISTS idx_ai_tasks_user_id;
DROP INDEX IF EXISTS idx_credit_records_entity;
