-- A task writes three ledger rows (its hold, the release, the consumption), and each wrote an
-- entry in every index of credit_records: six rows written apiece, where D1 bills each index
-- entry as a row. Two of those indexes served no read of a task's rows:
--   idx_credit_records_expires_at (expires_at): no statement looks rows up by expiry (a grant's
--     expiry is read with the user's rows). Not replaced: a partial index of the rows with an
--     expiry is small enough that SQLite, once `ANALYZE` has run (D1 advises `PRAGMA optimize`),
--     prefers it to the user's index for the balance's lapsed grants, and walks every user's.
--   idx_credit_records_type (type): the only reads it served are the auditor's walks of the
--     grants (`grants_not_overdrawn`) and of the clawbacks (`clawbacks_match_grants`). Each now
--     has a partial index whose condition is the check's own, word for word (as SQLite needs to
--     use one), keyed on what the other reads of those rows look up: a user's grants (the
--     balance, the allocation), an entity's clawbacks. A task's rows enter neither.
-- A task's ledger rows now write four rows apiece, and a completed task 31 in all.
DROP INDEX IF EXISTS idx_credit_records_expires_at;
DROP INDEX IF EXISTS idx_credit_records_type;
CREATE INDEX idx_credit_records_grants ON credit_records(user_id) WHERE type IN ('purchase','gift','subscription');
CREATE INDEX idx_credit_records_clawbacks ON credit_records(entity_type, entity_id) WHERE type = 'clawback';
