-- Indexes that another index already serves, dropped (as 0008 did for three others): D1 bills
-- every index entry an insert or update writes, and these served no query the other does not.
--   idx_ai_tasks_task_no  (task_no) = the UNIQUE constraint's own index on ai_tasks.task_no
--   idx_users_email       (email)   = the UNIQUE constraint's own index on users.email
--   idx_orders_user_id    (user_id) ⊂ idx_orders_user_created (user_id, created_at)
-- shared's `sql::tests` checks that no index repeats another's leading columns.
DROP INDEX IF EXISTS idx_ai_tasks_task_no;
DROP INDEX IF EXISTS idx_users_email;
DROP INDEX IF EXISTS idx_orders_user_id;
