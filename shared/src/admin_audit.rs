//! Who changed what (`admin_audit`): every operator change writes one row naming the actor, the
//! action, its target and a JSON detail ([`record`]). Where the change is a D1 write, its row
//! goes in the same batch, so a change is never without its record and a record never without
//! its change; before a conditional write, the row is written on the same condition
//! ([`record_when`]). Operators read the rows back ([`list`]), and per dead letter
//! ([`of_target`]) or task ([`of_task`]).

use crate::ids::TaskId;
use crate::sql::{Param, Stmt};
use serde_json::Value;

const INSERT: &str = "INSERT INTO admin_audit (id, actor, action, target, detail, created_at)";

fn params(actor: &str, action: &str, target: &str, detail: &Value, at: i64) -> Vec<Param> {
    vec![
        format!("aud_{}", uuid::Uuid::new_v4().simple()).into(),
        actor.into(),
        action.into(),
        target.into(),
        detail.to_string().into(),
        at.into(),
    ]
}

/// One audit row: `actor` did `action` to `target` at `at`, with `detail`.
pub fn record(actor: &str, action: &str, target: &str, detail: &Value, at: i64) -> Stmt {
    Stmt::new(
        format!("{INSERT} VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
        params(actor, action, target, detail, at),
    )
}

/// One audit row, written only if `when` (a SQL condition over `when_params`, numbered from ?7)
/// holds when the statement runs. Placed before a conditional write in the same batch with the
/// same condition, it records the change exactly when the change happens: nothing else runs
/// between two statements of one batch. `when` is fixed SQL; values only ever travel as params.
pub fn record_when(
    actor: &str,
    action: &str,
    target: &str,
    detail: &Value,
    at: i64,
    when: &'static str,
    when_params: Vec<Param>,
) -> Stmt {
    let mut all = params(actor, action, target, detail, at);
    all.extend(when_params);
    Stmt::new(
        format!("{INSERT} SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE {when}"),
        all,
    )
}

/// An audit row's `detail` is stored as JSON text: it is handed back as JSON.
pub fn detail_as_json(row: &mut Value) {
    if let Some(d) = row["detail"]
        .as_str()
        .and_then(|d| serde_json::from_str::<Value>(d).ok())
    {
        row["detail"] = d;
    }
}

/// The `limit` newest rows, about `target`, of `action` and by `actor` when given.
pub fn list(
    target: Option<String>,
    action: Option<String>,
    actor: Option<String>,
    limit: i64,
) -> Stmt {
    Stmt::new(
        "SELECT id, actor, action, target, detail, created_at FROM admin_audit
         WHERE (?1 IS NULL OR target = ?1) AND (?2 IS NULL OR action = ?2) AND (?3 IS NULL OR actor = ?3)
         ORDER BY created_at DESC, id DESC LIMIT ?4",
        vec![target.into(), action.into(), actor.into(), Param::Int(limit)],
    )
}

/// What operators did to `target` (a dead letter), oldest first.
pub fn of_target(target: &str) -> Stmt {
    Stmt::new(
        "SELECT actor, action, detail, created_at FROM admin_audit WHERE target = ?1 ORDER BY created_at, id",
        vec![target.into()],
    )
}

/// Up to `limit` rows about `task` or about a dead letter whose stored body names it, oldest
/// first (a task's timeline).
pub fn of_task(task: &TaskId, limit: i64) -> Stmt {
    Stmt::new(
        "SELECT actor, action, target, detail, created_at FROM admin_audit
         WHERE target = ?1 OR target IN (SELECT id FROM dead_letters WHERE body LIKE '%' || ?1 || '%')
         ORDER BY created_at, id LIMIT ?2",
        vec![task.to_string().into(), Param::Int(limit)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{db, exec};
    use crate::history::tests::rows;
    use serde_json::json;

    #[test]
    fn a_row_is_written_as_told_or_only_when_its_condition_holds() {
        let conn = db();
        assert_eq!(
            exec(
                &conn,
                &record("op", "user.create", "u1", &json!({"credits": 5}), 10)
            ),
            1
        );
        let guard = "EXISTS (SELECT 1 FROM admin_audit WHERE target = ?7)";
        let when = |target: &str, at: i64| {
            record_when(
                "op",
                "x.update",
                target,
                &json!({}),
                at,
                guard,
                vec!["u1".into()],
            )
        };
        assert_eq!(exec(&conn, &when("u2", 11)), 1);
        let none = record_when(
            "op",
            "x.update",
            "u3",
            &json!({}),
            12,
            guard,
            vec!["nobody".into()],
        );
        assert_eq!(exec(&conn, &none), 0);

        let mut listed = rows(&conn, &list(None, None, None, 10));
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0]["target"], "u2", "newest first");
        let row = &mut listed[1];
        assert!(row["id"].as_str().unwrap().starts_with("aud_"));
        assert_eq!(row["detail"], "{\"credits\":5}");
        detail_as_json(row);
        assert_eq!(row["detail"], json!({"credits": 5}));
        assert_eq!(
            rows(&conn, &list(Some("u1".into()), None, None, 10)).len(),
            1
        );
        assert_eq!(
            rows(
                &conn,
                &list(None, Some("x.update".into()), Some("op".into()), 10)
            )
            .len(),
            1
        );
        assert_eq!(
            rows(&conn, &list(None, None, Some("other".into()), 10)).len(),
            0
        );
        assert_eq!(rows(&conn, &list(None, None, None, 1)).len(), 1, "bounded");
    }

    #[test]
    fn a_letter_and_a_task_have_their_rows() {
        let conn = db();
        let task = TaskId::new();
        conn.execute(
            "INSERT INTO dead_letters (id, source_queue, message_id, body, first_failed_at, last_failed_at)
             VALUES ('dl_1', 'q', 'm', ?1, 0, 0)",
            [format!("{{\"task_id\":\"{task}\"}}")],
        )
        .unwrap();
        exec(
            &conn,
            &record("op", "dead_letter.replay", "dl_1", &json!({}), 20),
        );
        exec(
            &conn,
            &record("op", "task.retry", &task.to_string(), &json!({}), 10),
        );
        exec(&conn, &record("op", "user.create", "u1", &json!({}), 5));
        let of = rows(&conn, &of_target("dl_1"));
        assert_eq!(
            of,
            [
                json!({"actor": "op", "action": "dead_letter.replay", "detail": "{}", "created_at": 20})
            ]
        );
        let actions: Vec<Value> = rows(&conn, &of_task(&task, 10))
            .into_iter()
            .map(|r| r["action"].clone())
            .collect();
        assert_eq!(actions, [json!("task.retry"), json!("dead_letter.replay")]);
        assert_eq!(rows(&conn, &of_task(&task, 1)).len(), 1, "bounded");
    }
}
