//! Bodies of every queue message. Each carries `v` (the schema version) and `type`; a body that
//! does not parse, or has a version we do not know, is a [`MessageError`] and goes straight to
//! the dead-letter path instead of being retried.

use crate::ids::TaskId;
use crate::model::Model;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub const VERSION: u32 = 1;

/// Messages on the `tasks` queue. `attempt` counts deliveries of this step (workers-rs does not
/// expose the platform's count), so backoff and give-up decisions survive re-sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum TaskMessage {
    /// Submit a pending task to its provider.
    #[serde(rename = "task.submit")]
    Submit {
        v: u32,
        task_id: TaskId,
        attempt: u32,
    },
    /// Ask the provider how the task is doing. Carries what the poll needs so that a poll where
    /// nothing changed reads and writes nothing in D1. It carries no amount and no user: who
    /// pays and how much are read from the task row when the task ends.
    #[serde(rename = "task.poll")]
    Poll {
        v: u32,
        task_id: TaskId,
        model: Model,
        external_id: String,
        deadline_at: i64,
        /// Polls so far: drives the poll backoff.
        attempt: u32,
        /// Consecutive transient failures (provider errors, failed downloads): drives the
        /// retry backoff and the give-up decision. Reset by a poll that gets an answer.
        #[serde(default)]
        failures: u32,
        /// Whether a "still generating" answer schedules the next poll. A poll prompted by a
        /// provider callback does not, so callbacks never start a second chain of polls.
        #[serde(default = "yes")]
        follow_up: bool,
        /// D1 may not know `external_id` yet (the write after create failed; a callback names
        /// it): the poll records it with the task's end, or as `submitted -> processing` when
        /// the task goes on.
        #[serde(default)]
        record: bool,
        /// When this chain last told D1 it is alive (unix seconds). A poll that finds the task
        /// still generating renews the task's lease (`updated_at`) once half a lease has passed,
        /// so the reconciler never starts a second chain for a long generation.
        #[serde(default)]
        lease_at: i64,
    },
    /// Download a finished task's results and settle it. Sent when the provider reported success
    /// but a download failed: it retries the downloads alone, never the generation.
    #[serde(rename = "task.store")]
    Store {
        v: u32,
        task_id: TaskId,
        model: Model,
        external_id: String,
        deadline_at: i64,
        urls: Vec<String>,
        /// Consecutive failed attempts to store.
        attempt: u32,
    },
}

fn yes() -> bool {
    true
}

/// Messages on the `events` queue: a stored webhook event to apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum EventMessage {
    /// `event_row` is the id of the stored event in `webhook_events`.
    #[serde(rename = "webhook.apply")]
    Apply {
        v: u32,
        event_row: String,
        attempt: u32,
    },
}

impl EventMessage {
    pub fn apply(event_row: &str) -> Self {
        EventMessage::Apply {
            v: VERSION,
            event_row: event_row.to_owned(),
            attempt: 0,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("unknown message version {0:?}")]
    UnknownVersion(Option<u64>),
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl MessageError {
    pub fn class(&self) -> &'static str {
        match self {
            MessageError::NotAnObject | MessageError::Malformed(_) => "parse_error",
            MessageError::UnknownVersion(_) => "unknown_version",
        }
    }
}

/// Parses a message body, checking the version before the shape.
pub fn parse<T: for<'de> Deserialize<'de>>(body: &serde_json::Value) -> Result<T, MessageError> {
    let obj = body.as_object().ok_or(MessageError::NotAnObject)?;
    match obj.get("v").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(VERSION) => {}
        other => return Err(MessageError::UnknownVersion(other)),
    }
    serde_json::from_value(body.clone()).map_err(|e| MessageError::Malformed(e.to_string()))
}

/// A dead message made ready to send again: its retry counters start over (the body is
/// otherwise unchanged), so the first transient failure after a replay is not its last.
pub fn fresh_for_replay(body: &mut serde_json::Value) {
    if let Some(obj) = body.as_object_mut() {
        for counter in ["attempt", "failures"] {
            if obj.get(counter).is_some_and(serde_json::Value::is_u64)
                && !(counter == "attempt"
                    && obj.get("type").and_then(|t| t.as_str()) == Some("task.poll"))
            {
                obj.insert(counter.into(), 0.into());
            }
        }
    }
}

/// The `type` field of any body, for logs and the dead-letter archive.
pub fn type_of(body: &serde_json::Value) -> Option<&str> {
    body.get("type").and_then(serde_json::Value::as_str)
}

impl TaskMessage {
    pub fn submit(task_id: TaskId) -> Self {
        TaskMessage::Submit {
            v: VERSION,
            task_id,
            attempt: 0,
        }
    }

    pub fn task_id(&self) -> TaskId {
        match self {
            TaskMessage::Submit { task_id, .. }
            | TaskMessage::Poll { task_id, .. }
            | TaskMessage::Store { task_id, .. } => *task_id,
        }
    }

    pub fn attempt(&self) -> u32 {
        match self {
            TaskMessage::Submit { attempt, .. }
            | TaskMessage::Poll { attempt, .. }
            | TaskMessage::Store { attempt, .. } => *attempt,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            TaskMessage::Submit { .. } => "task.submit",
            TaskMessage::Poll { .. } => "task.poll",
            TaskMessage::Store { .. } => "task.store",
        }
    }

    /// The store step for a poll that found the results ready.
    pub fn store(&self, urls: Vec<String>) -> Option<Self> {
        match self {
            TaskMessage::Poll {
                task_id,
                model,
                external_id,
                deadline_at,
                ..
            } => Some(TaskMessage::Store {
                v: VERSION,
                task_id: *task_id,
                model: *model,
                external_id: external_id.clone(),
                deadline_at: *deadline_at,
                urls,
                attempt: 0,
            }),
            _ => None,
        }
    }

    /// How many times this step has failed transiently in a row.
    pub fn failures(&self) -> u32 {
        match self {
            TaskMessage::Submit { attempt, .. } | TaskMessage::Store { attempt, .. } => *attempt,
            TaskMessage::Poll { failures, .. } => *failures,
        }
    }

    /// The same step again after a transient failure.
    pub fn after_failure(&self) -> Self {
        let mut next = self.clone();
        match &mut next {
            TaskMessage::Submit { attempt, .. } | TaskMessage::Store { attempt, .. } => {
                *attempt += 1
            }
            TaskMessage::Poll { failures, .. } => *failures += 1,
        }
        next
    }

    /// The first poll of a task the provider accepted as `external_id`; `record` when D1 does
    /// not know the id yet (the write after the create failed).
    pub fn first_poll(
        task_id: TaskId,
        model: Model,
        external_id: String,
        deadline_at: i64,
        record: bool,
        now: i64,
    ) -> Self {
        TaskMessage::Poll {
            v: VERSION,
            task_id,
            model,
            external_id,
            deadline_at,
            attempt: 0,
            failures: 0,
            follow_up: true,
            record,
            lease_at: now,
        }
    }

    /// The next poll after an answer that says "still generating"; `renewed_at` is set when
    /// this poll renewed the task's lease.
    pub fn next_poll(&self, renewed_at: Option<i64>) -> Self {
        let mut next = self.clone();
        if let TaskMessage::Poll {
            attempt,
            failures,
            record,
            lease_at,
            ..
        } = &mut next
        {
            *attempt += 1;
            *failures = 0;
            *record = false;
            if let Some(at) = renewed_at {
                *lease_at = at;
            }
        }
        next
    }

    /// Whether a poll at `now` should renew the task's lease (half of `lease_secs` has passed
    /// since the chain last did).
    pub fn lease_due(&self, now: i64, lease_secs: i64) -> bool {
        matches!(self, TaskMessage::Poll { lease_at, .. } if now - *lease_at >= lease_secs / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn task_messages_round_trip() {
        let poll = TaskMessage::Poll {
            v: VERSION,
            task_id: TaskId::new(),
            model: Model::KieKontext,
            external_id: "ext-1".into(),
            deadline_at: 1000,
            attempt: 2,
            failures: 0,
            follow_up: true,
            record: false,
            lease_at: 5,
        };
        for m in [TaskMessage::submit(TaskId::new()), poll] {
            let body = serde_json::to_value(&m).unwrap();
            assert_eq!(body["v"], 1);
            assert_eq!(parse::<TaskMessage>(&body).unwrap(), m);
            assert_eq!(type_of(&body), Some(m.kind()));
        }
    }

    #[test]
    fn failures_and_polls_count_separately() {
        let m = TaskMessage::submit(TaskId::new());
        let n = m.after_failure();
        assert_eq!((n.attempt(), n.failures()), (1, 1));
        assert_eq!(n.task_id(), m.task_id());
        let poll = TaskMessage::Poll {
            v: VERSION,
            task_id: TaskId::new(),
            model: Model::Kie4o,
            external_id: "e".into(),
            deadline_at: 0,
            attempt: 4,
            failures: 0,
            follow_up: true,
            record: false,
            lease_at: 0,
        };
        let failed = poll.after_failure().after_failure();
        assert_eq!((failed.attempt(), failed.failures()), (4, 2));
        let next = failed.next_poll(None);
        assert_eq!((next.attempt(), next.failures()), (5, 0));
        assert!(next.lease_due(150, 300) && !next.lease_due(149, 300));
        assert!(!failed.next_poll(Some(149)).lease_due(200, 300), "renewed");
        let store = failed.store(vec!["u".into()]).unwrap();
        assert_eq!((store.kind(), store.failures()), ("task.store", 0));
        assert_eq!(store.after_failure().failures(), 1);
        assert_eq!(
            parse::<TaskMessage>(&serde_json::to_value(&store).unwrap()).unwrap(),
            store
        );
        // a poll written before `failures` existed still parses
        let mut body = serde_json::to_value(&poll).unwrap();
        body.as_object_mut().unwrap().remove("failures");
        body.as_object_mut().unwrap().remove("follow_up");
        body.as_object_mut().unwrap().remove("record");
        body.as_object_mut().unwrap().remove("lease_at");
        assert_eq!(parse::<TaskMessage>(&body).unwrap(), poll);
        // money never rides in a message: a body that carries a cost is refused
        let mut with_cost = serde_json::to_value(&poll).unwrap();
        with_cost["cost"] = 1_000_000.into();
        assert!(parse::<TaskMessage>(&with_cost).is_err());
    }

    #[test]
    fn replay_resets_retry_counters_only() {
        let mut submit = json!({"v": 1, "type": "task.submit", "task_id": "x", "attempt": 7});
        fresh_for_replay(&mut submit);
        assert_eq!(submit["attempt"], 0);
        let mut poll =
            json!({"v": 1, "type": "task.poll", "attempt": 12, "failures": 5, "external_id": "e"});
        fresh_for_replay(&mut poll);
        assert_eq!(
            (
                poll["attempt"].clone(),
                poll["failures"].clone(),
                poll["external_id"].clone()
            ),
            (json!(12), json!(0), json!("e"))
        );
        let mut garbage = json!("not an object");
        fresh_for_replay(&mut garbage);
        assert_eq!(garbage, json!("not an object"));
    }

    #[test]
    fn garbage_and_unknown_versions_are_rejected_with_a_class() {
        assert_eq!(
            parse::<TaskMessage>(&json!("hello")).unwrap_err().class(),
            "parse_error"
        );
        assert_eq!(
            parse::<TaskMessage>(&json!({"v": 2, "type": "task.submit"})).unwrap_err(),
            MessageError::UnknownVersion(Some(2))
        );
        assert_eq!(
            parse::<TaskMessage>(&json!({"type": "task.submit"}))
                .unwrap_err()
                .class(),
            "unknown_version"
        );
        let bad = parse::<TaskMessage>(
            &json!({"v": 1, "type": "task.submit", "task_id": "nope", "attempt": 0}),
        );
        assert_eq!(bad.unwrap_err().class(), "parse_error");
        let unknown_field =
            json!({"v": 1, "type": "task.submit", "task_id": TaskId::new(), "attempt": 0, "x": 1});
        assert!(parse::<TaskMessage>(&unknown_field).is_err());
    }
}
