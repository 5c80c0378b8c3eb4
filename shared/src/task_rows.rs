//! A task as the api reads it: its row ([`TaskRow`], [`COLUMNS`]), the owner's reads and the
//! operators'. (A provider callback reads no row: its signed URL carries what it needs.) What moves a task is `task`; its history (deleting,
//! syncing) is `history`; its ledger rows are `ledger`'s.
//!
//! - an owner reads their own tasks only, and never a deleted one ([`owned`], [`list_owned`]);
//!   a repeated idempotency key finds the task it made ([`by_idempotency_key`]);
//! - operators read any task, deleted ones too ([`list_for_operators`], [`for_operators`]), and
//!   one task's timeline ([`timeline`], [`retries_of`]).

use crate::ids::{IdempotencyKey, TaskId, UserId};
use crate::page::Page;
use crate::sql::{Param, Stmt};
use serde::Deserialize;

/// What the api reads of a task ([`TaskRow`]).
pub const COLUMNS: &str =
    "id, task_no, status, input_params, external_provider, cost, result_keys, failure_reason,
     created_at, updated_at, submitted_at, completed_at, deadline_at";

/// A task row as the api reads it ([`COLUMNS`]).
#[derive(Debug, Deserialize)]
pub struct TaskRow {
    pub id: String,
    pub task_no: String,
    pub status: String,
    pub input_params: String,
    pub external_provider: Option<String>,
    pub cost: i64,
    pub result_keys: Option<String>,
    pub failure_reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub submitted_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub deadline_at: Option<i64>,
}

impl TaskRow {
    /// The R2 keys of its results, in order (none until it completes).
    pub fn result_keys(&self) -> Vec<String> {
        self.result_keys
            .as_deref()
            .and_then(|k| serde_json::from_str(k).ok())
            .unwrap_or_default()
    }
}

/// The task `user` made with idempotency key `key`, if any ([`TaskRow`]).
pub fn by_idempotency_key(user: &UserId, key: &IdempotencyKey) -> Stmt {
    Stmt::new(
        format!("SELECT {COLUMNS} FROM ai_tasks WHERE user_id = ?1 AND idempotency_key = ?2"),
        vec![user.to_string().into(), key.as_str().into()],
    )
}

/// The task if `user` owns it and has not deleted it ([`TaskRow`]).
pub fn owned(task: &TaskId, user: &UserId) -> Stmt {
    Stmt::new(
        format!(
            "SELECT {COLUMNS} FROM ai_tasks WHERE id = ?1 AND user_id = ?2 AND deleted_at IS NULL"
        ),
        vec![task.to_string().into(), user.to_string().into()],
    )
}

/// A page of `user`'s tasks that are not deleted, newest first ([`TaskRow`]): after the page's
/// position, `page.limit + 1` rows to learn whether another page follows.
pub fn list_owned(user: &UserId, page: &Page) -> Stmt {
    let [at, id, first] = page.keyset();
    Stmt::new(
        format!(
            "SELECT {COLUMNS} FROM ai_tasks
             WHERE user_id = ?1 AND deleted_at IS NULL
               AND (created_at < ?2 OR (created_at = ?2 AND id < ?3) OR ?4 = 1)
             ORDER BY created_at DESC, id DESC LIMIT ?5"
        ),
        vec![
            user.to_string().into(),
            at,
            id,
            first,
            Param::Int(page.limit + 1),
        ],
    )
}

/// A task as operators read it: its owner, the provider's id and the task it retries besides
/// the [`TaskRow`].
#[derive(Debug, Deserialize)]
pub struct OperatorTaskRow {
    pub user_id: String,
    pub external_task_id: Option<String>,
    pub retry_of: Option<String>,
    #[serde(flatten)]
    pub task: TaskRow,
}

/// The operators' page of tasks, newest first ([`OperatorTaskRow`]): those in `status` when
/// given, created at `created_before` or earlier, after the page's position, `page.limit + 1`
/// rows to learn whether another page follows.
pub fn list_for_operators(status: Option<String>, created_before: i64, page: &Page) -> Stmt {
    let [at, id, first] = page.keyset();
    Stmt::new(
        format!(
            "SELECT user_id, external_task_id, retry_of, {COLUMNS} FROM ai_tasks
             WHERE (?1 IS NULL OR status = ?1) AND created_at <= ?2
               AND (?5 = 1 OR created_at < ?3 OR (created_at = ?3 AND id < ?4))
             ORDER BY created_at DESC, id DESC LIMIT ?6"
        ),
        vec![
            status.into(),
            created_before.into(),
            at,
            id,
            first,
            Param::Int(page.limit + 1),
        ],
    )
}

/// The task, whoever owns it ([`OperatorTaskRow`]).
pub fn for_operators(task: &TaskId) -> Stmt {
    Stmt::new(
        format!(
            "SELECT user_id, external_task_id, retry_of, {COLUMNS} FROM ai_tasks WHERE id = ?1"
        ),
        vec![task.to_string().into()],
    )
}

/// The task as its timeline reads it: when it moved, the provider calls its claims counted, and
/// when the reconciler last re-sent its step.
pub fn timeline(task: &TaskId) -> Stmt {
    Stmt::new(
        "SELECT id, status, external_provider, external_task_id, provider_submissions, failure_reason, cost,
                created_at, updated_at, submitted_at, completed_at, deadline_at, reconciled_at, retry_of
         FROM ai_tasks WHERE id = ?1",
        vec![task.to_string().into()],
    )
}

/// The tasks that retry `task`, oldest first.
pub fn retries_of(task: &TaskId) -> Stmt {
    Stmt::new(
        "SELECT id, status, created_at FROM ai_tasks WHERE retry_of = ?1 ORDER BY created_at, id",
        vec![task.to_string().into()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::db;
    use crate::history::tests::{rows, task, user};
    use rusqlite::Connection;

    fn read<T: serde::de::DeserializeOwned>(conn: &Connection, s: &Stmt) -> Vec<T> {
        rows(conn, s)
            .into_iter()
            .map(|r| serde_json::from_value(r).unwrap())
            .collect()
    }

    fn ids(rows: &[TaskRow]) -> Vec<&str> {
        rows.iter().map(|r| r.id.as_str()).collect()
    }

    fn id(raw: &str) -> TaskId {
        TaskId::parse(raw).unwrap()
    }

    #[test]
    fn an_owner_reads_only_their_tasks_that_are_not_deleted() {
        let conn = db();
        let (u, other) = (user(&conn), user(&conn));
        let a = task(&conn, &u, "completed", 10, "{}");
        let b = task(&conn, &u, "pending", 10, "{}");
        let gone = task(&conn, &u, "failed", 10, "{}");
        let theirs = task(&conn, &other, "completed", 10, "{}");
        for (t, at) in [(&a, 10), (&b, 20), (&gone, 30)] {
            conn.execute(
                "UPDATE ai_tasks SET created_at = ?2 WHERE id = ?1",
                rusqlite::params![t, at],
            )
            .unwrap();
        }
        conn.execute(
            "UPDATE ai_tasks SET deleted_at = 40, idempotency_key = 'k1' WHERE id = ?1",
            [&gone],
        )
        .unwrap();
        conn.execute(
            "UPDATE ai_tasks SET idempotency_key = 'k1' WHERE id = ?1",
            [&theirs],
        )
        .unwrap();

        let row: Vec<TaskRow> = read(&conn, &owned(&id(&a), &u));
        assert_eq!(ids(&row), [a.as_str()]);
        assert_eq!(
            row[0].result_keys(),
            [format!("result/kie_4o/{a}/result_0.png")]
        );
        assert!(
            read::<TaskRow>(&conn, &owned(&id(&theirs), &u)).is_empty(),
            "another's"
        );
        assert!(
            read::<TaskRow>(&conn, &owned(&id(&gone), &u)).is_empty(),
            "deleted"
        );

        let first = Page {
            limit: 1,
            before: None,
        };
        assert_eq!(
            ids(&read(&conn, &list_owned(&u, &first))),
            [b.as_str(), a.as_str()]
        );
        let later = Page {
            limit: 1,
            before: Some((20, b.clone())),
        };
        assert_eq!(ids(&read(&conn, &list_owned(&u, &later))), [a.as_str()]);

        let key = IdempotencyKey::parse("k1").unwrap();
        assert_eq!(
            ids(&read(&conn, &by_idempotency_key(&u, &key))),
            [gone.as_str()],
            "a deleted one too"
        );
        assert_eq!(
            ids(&read(&conn, &by_idempotency_key(&other, &key))),
            [theirs.as_str()]
        );
    }

    #[test]
    fn a_callback_and_operators_read_any_task() {
        let conn = db();
        let (u, other) = (user(&conn), user(&conn));
        let a = task(&conn, &u, "failed", 10, "{}");
        let b = task(&conn, &other, "completed", 10, "{}");
        conn.execute(
            "UPDATE ai_tasks SET created_at = 10, external_task_id = 'ext', deadline_at = 99, deleted_at = 50 WHERE id = ?1",
            [&a],
        )
        .unwrap();
        conn.execute(
            "UPDATE ai_tasks SET created_at = 20, retry_of = ?2 WHERE id = ?1",
            [&b, &a],
        )
        .unwrap();

        let row: Vec<OperatorTaskRow> = read(&conn, &for_operators(&id(&b)));
        assert_eq!(
            (
                row[0].user_id.as_str(),
                row[0].retry_of.as_deref(),
                row[0].task.id.as_str()
            ),
            (other.to_string().as_str(), Some(a.as_str()), b.as_str())
        );
        let list = |status: Option<&str>, before: i64, page: &Page| -> Vec<String> {
            read::<OperatorTaskRow>(
                &conn,
                &list_for_operators(status.map(str::to_owned), before, page),
            )
            .into_iter()
            .map(|r| r.task.id)
            .collect()
        };
        let first = Page {
            limit: 10,
            before: None,
        };
        assert_eq!(
            list(None, 100, &first),
            [b.clone(), a.clone()],
            "deleted ones too"
        );
        assert_eq!(list(Some("failed"), 100, &first), [a.as_str()]);
        assert_eq!(
            list(None, 15, &first),
            [a.as_str()],
            "created at 15 or before"
        );
        let later = Page {
            limit: 10,
            before: Some((20, b.clone())),
        };
        assert_eq!(list(None, 100, &later), [a.as_str()]);

        let t = rows(&conn, &timeline(&id(&a))).remove(0);
        assert_eq!(
            (&t["external_task_id"], &t["provider_submissions"]),
            (&serde_json::json!("ext"), &serde_json::json!(0))
        );
        let retries = rows(&conn, &retries_of(&id(&a)));
        assert_eq!(
            retries,
            [serde_json::json!({"id": b, "status": "completed", "created_at": 20})]
        );
    }
}
