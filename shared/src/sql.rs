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

    /// The plan SQLite picks for `sql` (its `detail` lines).
    fn plan(sql: &str) -> String {
        let conn = db();
        let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = st
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>();
        rows.join("; ")
    }

    /// Migration 0008 dropped indexes that a wider one serves (D1 bills each index entry an
    /// insert or update writes): the lookups they served still use an index, not a scan.
    #[test]
    fn lookups_of_dropped_indexes_use_the_wider_ones() {
        for (sql, index) in [
            (
                "SELECT id FROM ai_tasks WHERE status = 'pending'",
                "idx_ai_tasks_status_",
            ),
            (
                "SELECT id FROM ai_tasks WHERE user_id = 'u'",
                "ai_tasks_user",
            ),
            (
                "SELECT id FROM credit_records WHERE entity_type = 'task' AND entity_id = 't'",
                "uq_credit_records_entity_kind",
            ),
        ] {
            let p = plan(sql);
            assert!(p.contains(index), "{sql}: {p}");
        }
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
                    let columns = conn
                        .prepare(&format!("PRAGMA index_info('{name}')"))
                        .unwrap()
                        .query_map([], |r| r.get::<_, String>(2))
                        .unwrap()
                        .map(Result::unwrap)
                        .collect();
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
