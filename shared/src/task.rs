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
//! callback's token proves it is for this task), or its deadline fails it.
//! `completed` and `failed` are terminal: the hold has been settled or released exactly once.
//!
//! Every transition is a row of [`TRANSITIONS`]; the workers apply one with a conditional UPDATE
//! whose `WHERE status IN (...)` is [`Transition::from_sql`], so a transition that is no longer
//! allowed changes no row. Recovery ([`recovery`]) decides what to re-send for a stalled task and
//! never changes its status by hand.

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
}
