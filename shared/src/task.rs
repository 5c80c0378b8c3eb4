//! The task state machine.
//!
//! ```text
//! pending ──claim──▶ submitted ──accepted──▶ processing ──succeeded──▶ completed
//!    │                  │  ▲  │                 │                      ▲
//!    │                  │  │  └──────────────succeeded (a callback names the id)
//!    │                  │  └──unclaim (the provider answered that it did not take the task)
//!    └──────────────────┴──────────fail─────────┴───────────────────▶ failed
//! ```
//!
//! `pending`: credits held, waiting for the consumer. `submitted`: one consumer has claimed the
//! task and is calling the provider (the claim is what stops a duplicate message from submitting
//! twice, and it counts the call in `provider_submissions`). `processing`: the provider accepted
//! the task and D1 records its id, written as soon as the create call returns it: a task the
//! provider accepted is never created there again, and recovery resumes polling that id.
//! A task left `submitted` (the create call's outcome is unknown: a timeout, or a crash between
//! the call and the write) is never submitted again: a provider callback names its id (the
//! callback's token proves it is for this task), or its deadline fails it. A provider's answer
//! about a task id applies only to the task D1 knows under that id or under none yet
//! ([`FOR_ANSWER`]).
//! `completed` and `failed` are terminal: the hold has been settled or released exactly once.
//!
//! Every transition is a row of [`TRANSITIONS`]; the workers apply one with a conditional UPDATE
//! whose `WHERE status IN (...)` is [`Transition::from_sql`], so a transition that is no longer
//! allowed changes no row. Recovery ([`recovery`]) decides what to re-send for a stalled task and
//! never changes its status by hand.
//!
//! The statements that move a task live here too, next to the table they follow: the consumer's
//! [`claim`], [`unclaim`], [`accept`] and [`succeed`] (failing is `ledger::fail_task`, because it
//! releases the hold in the same batch), the poll chain's [`renew_lease`], and the reconciler's
//! reads of live tasks ([`overdue`], [`stalled`]) and its once-per-lease mark
//! ([`mark_reconciled`]).

use crate::ids::TaskId;
use crate::sql::Stmt;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Pending,
    Submitted,
    Processing,
    Completed,
    Failed,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Pending,
        TaskStatus::Submitted,
        TaskStatus::Processing,
        TaskStatus::Completed,
        TaskStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Submitted => "submitted",
            TaskStatus::Processing => "processing",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
        }
    }

    pub fn parse(raw: &str) -> Option<TaskStatus> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Failed)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The events that move a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// A consumer takes the task to call the provider.
    Claim,
    /// The provider refused or failed transiently before accepting: give the claim back.
    Unclaim,
    /// The provider accepted the task and gave us its id.
    Accepted,
    /// Results are stored and the hold is settled.
    Succeeded,
    /// The task ended without a result; the hold is released.
    Fail,
}

use TaskStatus::*;
use Transition::*;

/// The whole machine: (event, states it may start from, state it ends in).
pub const TRANSITIONS: &[(Transition, &[TaskStatus], TaskStatus)] = &[
    (Claim, &[Pending], Submitted),
    (Unclaim, &[Submitted], Pending),
    (Accepted, &[Submitted], Processing),
    (Succeeded, &[Submitted, Processing], Completed),
    (Fail, &[Pending, Submitted, Processing], Failed),
];

impl Transition {
    fn row(self) -> (&'static [TaskStatus], TaskStatus) {
        TRANSITIONS
            .iter()
            .find(|(t, _, _)| *t == self)
            .map(|(_, from, to)| (*from, *to))
            .unwrap_or((&[], Failed))
    }

    pub fn from(self) -> &'static [TaskStatus] {
        self.row().0
    }

    pub fn to(self) -> TaskStatus {
        self.row().1
    }

    /// Where the task goes if this event happens in `current`, or `None` if it may not.
    pub fn apply(self, current: TaskStatus) -> Option<TaskStatus> {
        self.from().contains(&current).then(|| self.to())
    }

    /// The conditional UPDATE that applies this transition to task `?1`, also setting `set`
    /// (placeholders from `?2`): it changes no row unless the task is in a state the
    /// transition starts from. Callers may append more `AND …` conditions or `RETURNING …`.
    pub fn update_sql(self, set: &str) -> String {
        format!(
            "UPDATE ai_tasks SET status = '{}', {set} WHERE id = ?1 AND status IN ({})",
            self.to().as_str(),
            self.from_sql()
        )
    }

    /// `'a','b'` for a `status IN (...)` guard.
    pub fn from_sql(self) -> String {
        self.from()
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What the reconciler does for a live task that made no progress within its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Never claimed (its submit message was lost): send `task.submit` again; the claim keeps a
    /// duplicate from calling the provider twice.
    Resubmit,
    /// The provider has it under a known id: resume polling that id.
    ResumePolling,
    /// Claimed, but whether the provider took it is unknown: creating it again could pay the
    /// provider twice, so wait for the provider's callback or the deadline.
    AwaitCallback,
}

/// The recovery for a stalled task in `status`, given whether D1 knows its provider id.
pub fn recovery(status: TaskStatus, external_id_known: bool) -> Option<Recovery> {
    match (status, external_id_known) {
        (Completed | Failed, _) => None,
        (_, true) => Some(Recovery::ResumePolling),
        (Pending, false) => Some(Recovery::Resubmit),
        (Submitted | Processing, false) => Some(Recovery::AwaitCallback),
    }
}

// -------------------------------------------------------------------------------------------------
// The consumer's transitions
// -------------------------------------------------------------------------------------------------

/// What a claim returns: the task as the submit step needs it.
#[derive(Debug, Deserialize)]
pub struct Claimed {
    pub input_params: String,
    pub deadline_at: Option<i64>,
}

/// `pending -> submitted`, returning the task ([`Claimed`]) only to the delivery that claimed
/// it. The claim counts a create call that may reach the provider (`provider_submissions`).
pub fn claim(task: &TaskId, now: i64) -> Stmt {
    Stmt::new(
        format!(
            "{} RETURNING input_params, deadline_at",
            Claim.update_sql("updated_at = ?2, provider_submissions = provider_submissions + 1")
        ),
        vec![task.to_string().into(), now.into()],
    )
}

/// `submitted -> pending`: the provider answered that it did not take the task, so a retry may
/// claim it again and that create call is no longer counted. Never once the provider's id is
/// known: that task is the provider's.
pub fn unclaim(task: &TaskId, now: i64) -> Stmt {
    Stmt::new(
        format!(
            "{} AND external_task_id IS NULL",
            Unclaim.update_sql(
                "updated_at = ?2, provider_submissions = MAX(provider_submissions - 1, 0)"
            )
        ),
        vec![task.to_string().into(), now.into()],
    )
}

/// `submitted -> processing` with the provider's task id, written as soon as the provider
/// returns it: from here on recovery polls this id and never creates the task again.
pub fn accept(task: &TaskId, external_id: &str, now: i64) -> Stmt {
    Stmt::new(
        Accepted.update_sql("external_task_id = ?2, submitted_at = ?3, updated_at = ?3"),
        vec![task.to_string().into(), external_id.into(), now.into()],
    )
}

/// `submitted|processing -> completed` with the results (`urls` from the provider, `keys` in
/// R2), `RETURNING user_id` (`ledger::TaskOwner`) only when this statement ended the task. A
/// callback may complete a task whose id was never written, so the id and `submitted_at` are
/// filled in if missing. An answer about another provider task (a callback naming the wrong id)
/// changes nothing: see [`FOR_ANSWER`]. Put `ledger::settle` after it, in the same batch.
pub fn succeed(
    task: &TaskId,
    external_id: &str,
    urls: &[String],
    keys: &[String],
    now: i64,
) -> Stmt {
    Stmt::new(
        format!(
            "{}{} RETURNING user_id",
            Succeeded.update_sql(
                "result_urls = ?2, result_keys = ?3, external_task_id = COALESCE(external_task_id, ?4),
             completed_at = ?5, updated_at = ?5, submitted_at = COALESCE(submitted_at, ?5)",
            ),
            FOR_ANSWER.replace("?N", "?4")
        ),
        vec![
            task.to_string().into(),
            serde_json::to_string(urls).unwrap_or_default().into(),
            serde_json::to_string(keys).unwrap_or_default().into(),
            external_id.into(),
            now.into(),
        ],
    )
}

/// The guard on a transition a provider's answer about task `?N` makes: it applies only to the
/// task D1 knows under that id, or to one whose id D1 does not know yet. The callback's token
/// proves which of our tasks it is for, not which provider task its body names, and the callback
/// reads no row to compare them: the comparison happens here, in the statement that would act.
pub const FOR_ANSWER: &str = " AND (external_task_id IS NULL OR external_task_id = ?N)";

/// Tells D1 a poll chain is alive for this task (its lease): the reconciler leaves tasks with a
/// live chain alone ([`stalled`]). Not a state change, so not a transition.
pub fn renew_lease(task: &TaskId, now: i64) -> Stmt {
    Stmt::new(
        "UPDATE ai_tasks SET updated_at = ?2 WHERE id = ?1 AND status = 'processing'",
        vec![task.to_string().into(), now.into()],
    )
}

// -------------------------------------------------------------------------------------------------
// The reconciler's reads
// -------------------------------------------------------------------------------------------------

/// The live statuses, those `Fail` starts from, for a `status IN (...)` guard.
macro_rules! live {
    () => {
        "'pending','submitted','processing'"
    };
}
const LIVE: &str = live!();

/// Live tasks, in a read of many: `completed_at` is set exactly when a task ends ([`succeed`],
/// `ledger::fail_task`), so `completed_at IS NULL` lets SQLite use the partial index
/// `idx_ai_tasks_live` (migration 0011), which a move between live statuses never rewrites. The
/// status guard stays: a row that broke that rule would still not be read as live.
const LIVE_WHERE: &str = concat!("completed_at IS NULL AND status IN (", live!(), ")");

/// What the reconciler reads of a live task; `dead_lettered` is 1 when a dead letter still
/// `dead` names the task in its body (its message gave up).
const LIVE_COLUMNS: &str = "id, status, external_provider, external_task_id, deadline_at,
         EXISTS (SELECT 1 FROM dead_letters d WHERE d.status = 'dead' AND d.body LIKE '%' || ai_tasks.id || '%') AS dead_lettered";

/// A live task as [`overdue`] and [`stalled`] return it.
#[derive(Debug, Deserialize)]
pub struct LiveTask {
    pub id: String,
    pub status: String,
    pub external_provider: Option<String>,
    pub external_task_id: Option<String>,
    pub deadline_at: Option<i64>,
    pub dead_lettered: i64,
}

impl LiveTask {
    /// Why an overdue task fails: its message was dead-lettered, or it simply ran out of time.
    pub fn failure_reason(&self) -> &'static str {
        if self.dead_lettered == 1 {
            "dead_lettered"
        } else {
            "deadline_exceeded"
        }
    }
}

/// Up to `limit` live tasks past their deadline: the reconciler fails them (`ledger::fail_task`).
pub fn overdue(now: i64, limit: i64) -> Stmt {
    Stmt::new(
        format!(
            "SELECT {LIVE_COLUMNS} FROM ai_tasks WHERE {LIVE_WHERE} AND deadline_at < ?1 LIMIT ?2"
        ),
        vec![now.into(), limit.into()],
    )
}

/// Up to `limit` live tasks within their deadline with no sign of life since `stale_before`
/// (the lease) and not yet reconciled in this lease: the reconciler re-sends their step
/// ([`recovery`]) after [`mark_reconciled`].
pub fn stalled(now: i64, stale_before: i64, limit: i64) -> Stmt {
    Stmt::new(
        format!(
            "SELECT {LIVE_COLUMNS} FROM ai_tasks
                     WHERE {LIVE_WHERE} AND deadline_at >= ?1 AND updated_at < ?2 AND (reconciled_at IS NULL OR reconciled_at < ?2)
                     LIMIT ?3"
        ),
        vec![now.into(), stale_before.into(), limit.into()],
    )
}

/// Marks a stalled task as seen in this lease (not a state change), so two runs never both
/// re-send its step: it changes one row only for the run that got there first.
pub fn mark_reconciled(id: &str, now: i64, stale_before: i64) -> Stmt {
    Stmt::new(
        format!(
            "UPDATE ai_tasks SET reconciled_at = ?2
                     WHERE id = ?1 AND status IN ({LIVE}) AND (reconciled_at IS NULL OR reconciled_at < ?3)"
        ),
        vec![id.into(), now.into(), stale_before.into()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_path_is_allowed() {
        let mut s = Pending;
        for t in [Claim, Accepted, Succeeded] {
            s = t.apply(s).unwrap();
        }
        assert_eq!(s, Completed);
    }

    #[test]
    fn terminal_states_accept_nothing() {
        for t in [Claim, Unclaim, Accepted, Succeeded, Fail] {
            assert_eq!(t.apply(Completed), None, "{t:?} from completed");
            assert_eq!(t.apply(Failed), None, "{t:?} from failed");
        }
    }

    #[test]
    fn a_claim_happens_once() {
        let claimed = Claim.apply(Pending).unwrap();
        assert_eq!(Claim.apply(claimed), None);
        assert_eq!(Unclaim.apply(claimed), Some(Pending));
        assert_eq!(
            Accepted.apply(Pending),
            None,
            "cannot accept what was never claimed"
        );
    }

    #[test]
    fn every_live_state_can_fail_and_guards_render() {
        for s in [Pending, Submitted, Processing] {
            assert_eq!(Fail.apply(s), Some(Failed));
        }
        assert_eq!(Fail.from_sql(), "'pending','submitted','processing'");
        assert_eq!(Succeeded.from_sql(), "'submitted','processing'");
        assert_eq!(
            Claim.update_sql("updated_at = ?2"),
            "UPDATE ai_tasks SET status = 'submitted', updated_at = ?2 WHERE id = ?1 AND status IN ('pending')"
        );
        for s in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn recovery_never_creates_a_task_the_provider_may_have() {
        assert_eq!(recovery(Pending, false), Some(Recovery::Resubmit));
        assert_eq!(recovery(Submitted, false), Some(Recovery::AwaitCallback));
        assert_eq!(recovery(Submitted, true), Some(Recovery::ResumePolling));
        assert_eq!(recovery(Processing, true), Some(Recovery::ResumePolling));
        assert_eq!(recovery(Completed, true), None);
        assert_eq!(recovery(Failed, false), None);
    }

    // ---------------------------------------------------------------------------------------------
    // The statements on the real schema (SQLite)
    // ---------------------------------------------------------------------------------------------

    use crate::audit::tests::{db, exec};
    use crate::history::tests::{rows, task, user};
    use rusqlite::Connection;

    fn column(conn: &Connection, id: &str, col: &str) -> serde_json::Value {
        let q = Stmt::new(
            format!("SELECT {col} FROM ai_tasks WHERE id = ?1"),
            vec![id.into()],
        );
        rows(conn, &q).remove(0)[col].clone()
    }

    fn id(raw: &str) -> TaskId {
        TaskId::parse(raw).unwrap()
    }

    #[test]
    fn a_task_is_claimed_once_and_unclaimed_only_without_a_provider_id() {
        let conn = db();
        let u = user(&conn);
        let t = task(&conn, &u, "pending", 0, "{\"prompt\":\"p\"}");
        conn.execute("UPDATE ai_tasks SET deadline_at = 99 WHERE id = ?1", [&t])
            .unwrap();
        let claimed = rows(&conn, &claim(&id(&t), 5));
        assert_eq!(claimed.len(), 1);
        let claimed: Claimed = serde_json::from_value(claimed[0].clone()).unwrap();
        assert_eq!(
            (claimed.input_params.as_str(), claimed.deadline_at),
            ("{\"prompt\":\"p\"}", Some(99))
        );
        assert_eq!(column(&conn, &t, "status"), "submitted");
        assert_eq!(column(&conn, &t, "provider_submissions"), 1);
        assert!(
            rows(&conn, &claim(&id(&t), 6)).is_empty(),
            "a second claim gets nothing"
        );

        assert_eq!(exec(&conn, &unclaim(&id(&t), 7)), 1);
        assert_eq!(column(&conn, &t, "status"), "pending");
        assert_eq!(column(&conn, &t, "provider_submissions"), 0);
        assert_eq!(
            exec(&conn, &unclaim(&id(&t), 8)),
            0,
            "only a submitted task"
        );

        rows(&conn, &claim(&id(&t), 9));
        conn.execute(
            "UPDATE ai_tasks SET external_task_id = 'x' WHERE id = ?1",
            [&t],
        )
        .unwrap();
        assert_eq!(exec(&conn, &unclaim(&id(&t), 10)), 0, "the provider has it");
        assert_eq!(column(&conn, &t, "status"), "submitted");
    }

    #[test]
    fn accepted_then_succeeded_once_with_the_lease_renewed_in_between() {
        let conn = db();
        let u = user(&conn);
        let t = task(&conn, &u, "pending", 0, "{}");
        assert_eq!(exec(&conn, &accept(&id(&t), "ext_1", 5)), 0, "not claimed");
        assert_eq!(exec(&conn, &renew_lease(&id(&t), 5)), 0, "not processing");
        rows(&conn, &claim(&id(&t), 5));
        assert_eq!(exec(&conn, &accept(&id(&t), "ext_1", 6)), 1);
        assert_eq!(column(&conn, &t, "status"), "processing");
        assert_eq!(column(&conn, &t, "submitted_at"), 6);
        assert_eq!(exec(&conn, &renew_lease(&id(&t), 8)), 1);
        assert_eq!(column(&conn, &t, "updated_at"), 8);

        let urls = ["https://p/1.png".to_owned()];
        let keys = ["result/kie_4o/t/result_0.png".to_owned()];
        assert!(
            rows(&conn, &succeed(&id(&t), "ext_other", &urls, &keys, 9)).is_empty(),
            "an answer about another provider task completes nothing"
        );
        assert_eq!(column(&conn, &t, "status"), "processing");
        let owner = rows(&conn, &succeed(&id(&t), "ext_1", &urls, &keys, 9));
        assert_eq!(owner, vec![serde_json::json!({"user_id": u.to_string()})]);
        assert_eq!(column(&conn, &t, "status"), "completed");
        assert_eq!(column(&conn, &t, "external_task_id"), "ext_1");
        assert_eq!(
            column(&conn, &t, "result_keys"),
            r#"["result/kie_4o/t/result_0.png"]"#
        );
        assert_eq!(column(&conn, &t, "completed_at"), 9);
        assert!(rows(&conn, &succeed(&id(&t), "ext_1", &urls, &keys, 10)).is_empty());
        assert_eq!(exec(&conn, &renew_lease(&id(&t), 11)), 0);

        // a callback completes a task whose id was never written
        let s = task(&conn, &u, "submitted", 0, "{}");
        assert_eq!(
            rows(&conn, &succeed(&id(&s), "ext_2", &urls, &keys, 12)).len(),
            1
        );
        assert_eq!(column(&conn, &s, "external_task_id"), "ext_2");
        assert_eq!(column(&conn, &s, "submitted_at"), 12);
    }

    #[test]
    fn a_failure_the_provider_reports_ends_only_the_task_it_is_about() {
        let conn = db();
        let u = user(&conn);
        let known = task(&conn, &u, "processing", 0, "{}");
        conn.execute(
            "UPDATE ai_tasks SET external_task_id = 'ext_1' WHERE id = ?1",
            [&known],
        )
        .unwrap();
        let fail = |t: &str, ext: &str| {
            let [update, _] = crate::ledger::fail_on_answer(&id(t), ext, "GENERATE_FAILED", 5);
            rows(&conn, &update).len()
        };
        assert_eq!(fail(&known, "ext_other"), 0, "an answer about another task");
        assert_eq!(column(&conn, &known, "status"), "processing");
        assert_eq!(fail(&known, "ext_1"), 1);
        assert_eq!(column(&conn, &known, "status"), "failed");
        // D1 does not know the id yet (the first poll carries it): the answer applies
        let unknown = task(&conn, &u, "submitted", 0, "{}");
        assert_eq!(fail(&unknown, "ext_2"), 1);
        assert_eq!(column(&conn, &unknown, "status"), "failed");
        assert_eq!(column(&conn, &unknown, "external_task_id"), "ext_2");
        assert_eq!(column(&conn, &known, "external_task_id"), "ext_1");
    }

    #[test]
    fn the_reconciler_reads_overdue_and_stalled_tasks_and_marks_each_once_per_lease() {
        let conn = db();
        let u = user(&conn);
        let set = |t: &str, deadline: i64, reconciled: Option<i64>| {
            conn.execute(
                "UPDATE ai_tasks SET deadline_at = ?2, reconciled_at = ?3 WHERE id = ?1",
                rusqlite::params![t, deadline, reconciled],
            )
            .unwrap();
        };
        let late = task(&conn, &u, "processing", 10, "{}");
        set(&late, 50, None);
        let late_dead = task(&conn, &u, "pending", 10, "{}");
        set(&late_dead, 50, None);
        conn.execute(
            "INSERT INTO dead_letters (id, source_queue, message_id, body, first_failed_at, last_failed_at)
             VALUES ('dl', 'q', 'm', ?1, 0, 0)",
            [format!("{{\"task_id\":\"{late_dead}\"}}")],
        )
        .unwrap();
        let ended = task(&conn, &u, "failed", 10, "{}");
        set(&ended, 50, None);
        let stale = task(&conn, &u, "submitted", 10, "{}");
        set(&stale, 500, None);
        let seen = task(&conn, &u, "pending", 10, "{}");
        set(&seen, 500, Some(95));
        let fresh = task(&conn, &u, "processing", 99, "{}");
        set(&fresh, 500, None);

        let now = 100;
        let read = |s: &Stmt| -> Vec<LiveTask> {
            let mut v: Vec<LiveTask> = rows(&conn, s)
                .into_iter()
                .map(|r| serde_json::from_value(r).unwrap())
                .collect();
            v.sort_by(|a, b| a.id.cmp(&b.id));
            v
        };
        let over = read(&overdue(now, 10));
        let mut expected = vec![
            (late.clone(), "deadline_exceeded"),
            (late_dead, "dead_lettered"),
        ];
        expected.sort();
        assert_eq!(
            over.iter()
                .map(|t| (t.id.clone(), t.failure_reason()))
                .collect::<Vec<_>>(),
            expected
        );
        assert_eq!(read(&overdue(now, 1)).len(), 1, "bounded");

        let stale_before = now - 5; // a 5 s lease
        let stuck = read(&stalled(now, stale_before, 10));
        assert_eq!(
            stuck.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            vec![stale.as_str()],
            "within the deadline, idle past the lease, not yet reconciled in it"
        );
        assert_eq!(stuck[0].status, "submitted");
        assert_eq!(exec(&conn, &mark_reconciled(&stale, now, stale_before)), 1);
        assert_eq!(
            exec(&conn, &mark_reconciled(&stale, now, stale_before)),
            0,
            "once per lease"
        );
        assert_eq!(
            exec(&conn, &mark_reconciled(&ended, now, stale_before)),
            0,
            "not live"
        );
        assert!(read(&stalled(now, stale_before, 10)).is_empty());
        assert_eq!(LIVE, Fail.from_sql());
    }
}
