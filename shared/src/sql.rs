//! A SQL statement and its bound values, as every domain module builds them and every worker
//! binds them (`edge::Db`). D1 has no compile-time query checking, so each module keeps its
//! statements beside the rules they enforce and tests them on SQLite.

/// A value bound to a `?N` placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Text(String),
    Int(i64),
    Null,
}

impl From<&str> for Param {
    fn from(s: &str) -> Self {
        Param::Text(s.to_owned())
    }
}
impl From<String> for Param {
    fn from(s: String) -> Self {
        Param::Text(s)
    }
}
impl From<i64> for Param {
    fn from(n: i64) -> Self {
        Param::Int(n)
    }
}
impl From<Option<i64>> for Param {
    fn from(n: Option<i64>) -> Self {
        n.map_or(Param::Null, Param::Int)
    }
}
impl From<Option<String>> for Param {
    fn from(s: Option<String>) -> Self {
        s.map_or(Param::Null, Param::Text)
    }
}

/// One SQL statement with its parameters, ready to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stmt {
    pub sql: String,
    pub params: Vec<Param>,
}

impl Stmt {
    pub fn new(sql: impl Into<String>, params: Vec<Param>) -> Self {
        Self {
            sql: sql.into(),
            params,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::audit::tests::db;

    /// The plan SQLite picks for `s` bound as the workers bind it (its `detail` lines).
    fn plan(s: &super::Stmt) -> String {
        let conn = db();
        let mut st = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", s.sql))
            .unwrap();
        let rows = st
            .query_map(
                rusqlite::params_from_iter(s.params.iter().map(crate::audit::tests::value)),
                |r| r.get::<_, String>(3),
            )
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>();
        rows.join("; ")
    }

    /// The indexes of `table`, each with its SQL (`None` for a constraint's own).
    fn indexes_of(conn: &rusqlite::Connection, table: &str) -> Vec<(String, Option<String>)> {
        conn.prepare("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1")
            .unwrap()
            .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// The columns of `index`, in order.
    fn columns_of(conn: &rusqlite::Connection, index: &str) -> Vec<String> {
        conn.prepare(&format!("PRAGMA index_info('{index}')"))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(2))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// A partial index's condition, if its SQL has one.
    fn condition_of(sql: Option<&str>) -> Option<&str> {
        sql.and_then(|s| s.split_once(" WHERE ")).map(|(_, w)| w)
    }

    /// Whether `condition` holds for the row `row` (a `SELECT` of the columns it names).
    fn holds(conn: &rusqlite::Connection, condition: &str, row: &str) -> bool {
        conn.query_row(&format!("SELECT ({condition}) FROM ({row})"), [], |r| {
            r.get::<_, Option<bool>>(0)
        })
        .unwrap()
        .unwrap_or(false)
    }

    /// Migrations 0008, 0010 and 0011 dropped indexes (D1 bills each index entry an insert or
    /// update writes): the lookups they served still use an index, not a scan.
    #[test]
    fn lookups_of_dropped_indexes_use_the_ones_left() {
        let stmt = |sql: &str| super::Stmt::new(sql, vec![]);
        let audit_check = |name: &str| {
            crate::audit::CHECKS
                .iter()
                .find(|c| c.name == name)
                .unwrap()
                .stmt(1_000, 60)
        };
        for (s, index) in [
            (
                stmt("SELECT id FROM ai_tasks WHERE user_id = 'u'"),
                "ai_tasks_user",
            ),
            (
                stmt(
                    "SELECT id FROM credit_records WHERE entity_type = 'task' AND entity_id = 't'",
                ),
                "uq_credit_records_entity_kind",
            ),
            // the reads of live tasks and of ended ones (0011)
            (crate::task::overdue(1_000, 50), "idx_ai_tasks_live"),
            (crate::task::stalled(1_000, 900, 50), "idx_ai_tasks_live"),
            (
                audit_check("no_hold_outlives_its_task"),
                "idx_ai_tasks_live",
            ),
            (
                crate::admin_views::ended_per_bucket(1_000, 60),
                "idx_ai_tasks_ended",
            ),
            (audit_check("failed_tasks_released"), "idx_ai_tasks_failed"),
        ] {
            let p = plan(&s);
            assert!(p.contains(index), "{}: {p}", s.sql);
        }
    }

    /// A task moves between live statuses twice (claim, accept), its sign of life is renewed
    /// while it is polled, and it ends once (0011): no full index on `ai_tasks` holds a column
    /// those writes set but `updated_at` (the user's sync feed), the partial ones that name
    /// `status` hold no live task, and the others' conditions name only `completed_at`, set once,
    /// when the task ends. So a claim or an accept rewrites one index entry, not five.
    #[test]
    fn a_task_s_moves_rewrite_only_its_sync_feed_entry() {
        const SET_BY_MOVES: [&str; 7] = [
            "status",
            "external_task_id",
            "submitted_at",
            "provider_submissions",
            "result_urls",
            "result_keys",
            "completed_at",
        ];
        let conn = db();
        let indexes = indexes_of(&conn, "ai_tasks");
        assert!(
            indexes.iter().any(|(n, _)| n == "idx_ai_tasks_live"),
            "{indexes:?}"
        );
        for (name, sql) in &indexes {
            let columns = columns_of(&conn, name);
            let Some(condition) = condition_of(sql.as_deref()) else {
                assert!(
                    !columns.iter().any(|c| SET_BY_MOVES.contains(&c.as_str())),
                    "{name}: {columns:?}"
                );
                continue;
            };
            let holds_for_live = ["pending", "submitted", "processing"].iter().any(|live| {
                holds(
                    &conn,
                    condition,
                    &format!("SELECT '{live}' AS status, NULL AS completed_at, NULL AS deleted_at, NULL AS purged_at, NULL AS idempotency_key"),
                )
            });
            assert!(
                !condition.contains("status") || !holds_for_live,
                "{name}: {sql:?}"
            );
            assert!(
                columns
                    .iter()
                    .all(|c| c == "completed_at" || !SET_BY_MOVES.contains(&c.as_str())),
                "{name}: {columns:?}"
            );
        }
    }

    /// A task writes three ledger rows (hold, release, consumption): each enters only the
    /// indexes a read of task rows needs (the primary key's, the user's rows, one entry per task
    /// and kind), not those of grants or clawbacks, which are partial (0012).
    #[test]
    fn a_task_ledger_row_enters_three_indexes() {
        let conn = db();
        let row =
            "SELECT 'reserve' AS type, 'task' AS entity_type, 't' AS entity_id, NULL AS expires_at";
        let entered: Vec<String> = indexes_of(&conn, "credit_records")
            .into_iter()
            .filter(|(_, sql)| condition_of(sql.as_deref()).is_none_or(|c| holds(&conn, c, row)))
            .map(|(name, _)| name)
            .collect();
        assert_eq!(entered.len(), 3, "{entered:?}");
    }

    /// No index is served by another on the same table (migrations 0008 and 0010): an index
    /// whose columns another one repeats, or begins with, costs a billed row on every write that
    /// touches it and serves no lookup the other does not. A UNIQUE index keeps its own
    /// constraint when it is a prefix; partial indexes cover other rows and are left out.
    #[test]
    fn no_index_repeats_another() {
        let conn = db();
        let tables: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut served = Vec::new();
        for table in &tables {
            // (name, unique, partial, columns)
            let indexes: Vec<(String, bool, bool, Vec<String>)> = conn
                .prepare(&format!("PRAGMA index_list('{table}')"))
                .unwrap()
                .query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get(4)?)))
                .unwrap()
                .map(Result::unwrap)
                .map(|(name, unique, partial): (String, bool, bool)| {
                    let columns = columns_of(&conn, &name);
                    (name, unique, partial, columns)
                })
                .collect();
            for (i, (name, unique, partial, cols)) in indexes.iter().enumerate() {
                for (j, (other, _, other_partial, other_cols)) in indexes.iter().enumerate() {
                    if i == j || *partial || *other_partial {
                        continue;
                    }
                    let repeated = cols == other_cols && name > other;
                    let prefix =
                        !unique && cols.len() < other_cols.len() && other_cols.starts_with(cols);
                    if repeated || prefix {
                        served.push(format!(
                            "{table}: {name} {cols:?} is served by {other} {other_cols:?}"
                        ));
                    }
                }
            }
        }
        assert!(served.is_empty(), "{served:#?}");
    }
}
