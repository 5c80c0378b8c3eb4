//! The operator console's figures: how many tasks, dead letters, payment events and orders are
//! in each status, tasks per time bucket, and the cron jobs' recorded runs. Read-only counts
//! that enforce nothing; they live here so they are tested on the schema like every statement.
//! A count by status gives rows `{status, n}` with only the statuses found.

use crate::ids::UserId;
use crate::sql::{Param, Stmt};

/// Tasks by status.
pub fn tasks_by_status() -> Stmt {
    Stmt::new(
        "SELECT status, COUNT(*) AS n FROM ai_tasks GROUP BY status",
        vec![],
    )
}

/// Dead letters by error class (`unknown` when none) and status: rows `{error_class, status, n}`.
pub fn dead_letters_by_class() -> Stmt {
    Stmt::new(
        "SELECT COALESCE(error_class, 'unknown') AS error_class, status, COUNT(*) AS n FROM dead_letters GROUP BY 1, 2 ORDER BY 1, 2",
        vec![],
    )
}

/// Payment events by status.
pub fn events_by_status() -> Stmt {
    Stmt::new(
        "SELECT status, COUNT(*) AS n FROM webhook_events GROUP BY status",
        vec![],
    )
}

/// Orders by status.
pub fn orders_by_status() -> Stmt {
    Stmt::new(
        "SELECT status, COUNT(*) AS n FROM orders GROUP BY status",
        vec![],
    )
}

/// Ended tasks by the bucket of their end: rows `{bucket, status, n}`, bucket `b` being the
/// `size` seconds from `start + b * size`, read through the partial index on `completed_at` that
/// only ended tasks have (migration 0011). D1 binds JS numbers as REAL: the bucket is cast back
/// to an integer.
pub fn ended_per_bucket(start: i64, size: i64) -> Stmt {
    Stmt::new(
        "SELECT CAST((completed_at - ?1) / ?2 AS INTEGER) AS bucket, status, COUNT(*) AS n FROM ai_tasks
         WHERE completed_at >= ?1 AND status IN ('completed', 'failed')
         GROUP BY 1, 2",
        vec![start.into(), size.into()],
    )
}

/// Tasks by the bucket of their creation, as [`ended_per_bucket`] with status `created`.
pub fn created_per_bucket(start: i64, size: i64) -> Stmt {
    Stmt::new(
        "SELECT CAST((created_at - ?1) / ?2 AS INTEGER) AS bucket, 'created' AS status, COUNT(*) AS n FROM ai_tasks
         WHERE created_at >= ?1 GROUP BY 1",
        vec![start.into(), size.into()],
    )
}

/// `user`'s tasks by status, deleted ones included.
pub fn user_tasks_by_status(user: &UserId) -> Stmt {
    Stmt::new(
        "SELECT status, COUNT(*) AS n FROM ai_tasks WHERE user_id = ?1 GROUP BY status",
        vec![user.to_string().into()],
    )
}

/// `user`'s orders by status.
pub fn user_orders_by_status(user: &UserId) -> Stmt {
    Stmt::new(
        "SELECT status, COUNT(*) AS n FROM orders WHERE user_id = ?1 GROUP BY status",
        vec![user.to_string().into()],
    )
}

/// The `limit` newest cron runs, of `job` when given (`started_at` is in milliseconds).
pub fn cron_runs(job: Option<String>, limit: i64) -> Stmt {
    Stmt::new(
        "SELECT id, job, schedule, started_at, finished_at, examined, changed, errors, error_text, stopped_early, cursor
         FROM cron_runs WHERE (?1 IS NULL OR job = ?1) ORDER BY started_at DESC, id DESC LIMIT ?2",
        vec![job.into(), Param::Int(limit)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{db, order, user};
    use crate::history::tests::{rows, task};
    use serde_json::{json, Value};

    #[test]
    fn counts_by_status_and_bucket() {
        let conn = db();
        user(&conn, "u");
        let u = UserId::parse("11111111-1111-4111-8111-111111111111").unwrap();
        conn.execute(
            "INSERT INTO users (id, email, name) VALUES (?1, 'v@t', 'v')",
            [u.to_string()],
        )
        .unwrap();
        for (status, created, completed) in [
            ("completed", 1000, Some(1250)),
            ("failed", 1010, Some(1700)),
            ("pending", 1400, None),
        ] {
            let t = task(&conn, &u, status, 0, "{}");
            conn.execute(
                "UPDATE ai_tasks SET created_at = ?2, completed_at = ?3, updated_at = COALESCE(?3, ?2) WHERE id = ?1",
                rusqlite::params![t, created, completed],
            )
            .unwrap();
        }
        order(&conn, "o1", "paid", Some("pack"), 10);
        order(&conn, "o2", "paid", Some("pack"), 10);
        order(&conn, "o3", "pending", Some("pack"), 10);

        let by = |s: &Stmt| -> Vec<(Value, Value)> {
            let mut v: Vec<_> = rows(&conn, s)
                .into_iter()
                .map(|r| (r["status"].clone(), r["n"].clone()))
                .collect();
            v.sort_by_key(|(s, _)| s.to_string());
            v
        };
        assert_eq!(
            by(&tasks_by_status()),
            [
                (json!("completed"), json!(1)),
                (json!("failed"), json!(1)),
                (json!("pending"), json!(1))
            ]
        );
        assert_eq!(by(&user_tasks_by_status(&u)).len(), 3);
        assert_eq!(
            by(&orders_by_status()),
            [(json!("paid"), json!(2)), (json!("pending"), json!(1))]
        );
        assert!(
            by(&user_orders_by_status(&u)).is_empty(),
            "the orders are another user's"
        );

        // 300-second buckets from 1000: the completion falls in bucket 0, the failure in 2
        let ended: Vec<Value> = rows(&conn, &ended_per_bucket(1000, 300));
        let mut ended: Vec<(i64, String)> = ended
            .iter()
            .map(|r| {
                (
                    r["bucket"].as_i64().unwrap(),
                    r["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        ended.sort();
        assert_eq!(
            ended,
            [(0, "completed".to_owned()), (2, "failed".to_owned())]
        );
        let created = rows(&conn, &created_per_bucket(1000, 300));
        assert_eq!(
            created,
            [
                json!({"bucket": 0, "status": "created", "n": 2}),
                json!({"bucket": 1, "status": "created", "n": 1})
            ]
        );
        assert!(rows(&conn, &ended_per_bucket(2000, 300)).is_empty());

        for (id, class, status) in [
            ("d1", Some("timeout"), "dead"),
            ("d2", None, "dead"),
            ("d3", Some("timeout"), "discarded"),
        ] {
            conn.execute(
                "INSERT INTO dead_letters (id, source_queue, message_id, error_class, status, first_failed_at, last_failed_at)
                 VALUES (?1, 'q', ?1, ?2, ?3, 0, 0)",
                rusqlite::params![id, class, status],
            )
            .unwrap();
        }
        assert_eq!(
            rows(&conn, &dead_letters_by_class()),
            [
                json!({"error_class": "timeout", "status": "dead", "n": 1}),
                json!({"error_class": "timeout", "status": "discarded", "n": 1}),
                json!({"error_class": "unknown", "status": "dead", "n": 1}),
            ]
        );
        crate::audit::tests::event(&conn, "whe_1", "x", "applied", "{}", 1);
        assert_eq!(by(&events_by_status()), [(json!("applied"), json!(1))]);
    }

    #[test]
    fn cron_runs_newest_first_by_job() {
        let conn = db();
        for (id, job, at) in [
            ("r1", "audit", 1000),
            ("r2", "retention", 2000),
            ("r3", "audit", 3000),
        ] {
            conn.execute(
                "INSERT INTO cron_runs (id, job, schedule, started_at) VALUES (?1, ?2, 's', ?3)",
                rusqlite::params![id, job, at],
            )
            .unwrap();
        }
        let ids = |s: &Stmt| -> Vec<Value> {
            rows(&conn, s)
                .into_iter()
                .map(|r| r["id"].clone())
                .collect()
        };
        assert_eq!(
            ids(&cron_runs(None, 10)),
            [json!("r3"), json!("r2"), json!("r1")]
        );
        assert_eq!(
            ids(&cron_runs(Some("audit".into()), 10)),
            [json!("r3"), json!("r1")]
        );
        assert_eq!(ids(&cron_runs(None, 1)), [json!("r3")]);
    }
}
