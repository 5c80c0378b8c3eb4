-- A task writes three ledger rows (its hold, the release, the consumption), and each wrote an
-- entry in every index of credit_records: six rows written apiece, where D1 bills each index
-- entry as a row. Two of those indexes served no read of a task's rows:
--   idx_credit_records_expires_at (expires_at): no statement looks rows up by expiry (a grant's
--     expiry is read with the user's rows, through idx_credit_records_user_id); a task's rows
--     have none. Kept for the rows that have one, should a job walk them by expiry.
--   idx_credit_records_type (type): the only reads it served are the auditor's walks of the
--     grants (`grants_not_overdrawn`) and of the clawbacks (`clawbacks_match_grants`). Each now
--     has a partial index whose condition is the check's own, word for word (as SQLite needs to
--     use one); grants are a few rows per user, clawbacks fewer, and a task's rows enter neither.
-- A task's ledger rows now write four rows apiece, and a completed task 31 in all.
DROP INDEX IF EXISTS idx_credit_records_expires_at;
DROP INDEX IF EXISTS idx_credit_records_type;
CREATE INDEX idx_credit_records_expiring ON credit_records(expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX idx_credit_records_grants ON credit_records(type) WHERE type IN ('purchase','gift','subscription');
CREATE INDEX idx_credit_records_clawbacks ON credit_records(type) WHERE type = 'clawback';
