//! The dead-letter archive (`dead_letters`): every queue message we gave up on, for operators to
//! inspect, replay or discard. Its rules and statements:
//!
//! - one row per (source queue, message id) ([`Dead::id`]): a redelivery of the same message
//!   updates its row ([`archive`]): the latest failure and error, and the most attempts seen;
//! - a body above [`INLINE_BODY_BYTES`] goes to R2 (`keys::dead_letter_body_key`) and the row
//!   keeps its key; the consumer writes it before the row;
//! - a letter stays `dead` until an operator replays or discards it; once it has been one of
//!   those for longer than retention keeps it (`retention::DEAD_LETTERS`), it goes with its R2
//!   body ([`expired`], then [`delete_expired`]).
//!
//! Operators list letters by a [`Filter`] ([`list`]), read one ([`load`]) and act on them, one
//! at a time or up to a bound matching a filter ([`matching`]). Acting on a letter first claims
//! it with a conditional update, one per letter, and only the letters a call claimed are acted
//! on: a replay claims letters still `dead` (or any, forced) ([`claim_for_replay`]) and gives
//! its claims back if it could not send them ([`undo_replay_claim`]); a discard claims letters
//! still `dead` ([`discard`]).

use crate::ids::TaskId;
use crate::messages;
use crate::page::Page;
use crate::signing::token_digest;
use crate::sql::{Param, Stmt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Bodies above this go to R2 and the row keeps the key.
pub const INLINE_BODY_BYTES: usize = 32 * 1024;

/// Most characters of the reason a row keeps.
const MAX_REASON_CHARS: usize = 2000;

/// A message given up on, as the consumer archives it.
pub struct Dead<'a> {
    /// The queue it came from.
    pub queue: &'a str,
    pub message_id: &'a str,
    /// Its body, parsed, and as the text that is stored.
    pub body: &'a Value,
    pub text: &'a str,
    /// Why it was given up on: the error class and its detail.
    pub class: &'a str,
    pub reason: &'a str,
}

impl Dead<'_> {
    /// The row's id: the same for every delivery of the same message from the same queue.
    pub fn id(&self) -> String {
        format!(
            "dl_{}",
            &token_digest(&format!("{}\n{}", self.queue, self.message_id))[..32]
        )
    }

    /// Whether the body is too large for the row and goes to R2.
    pub fn body_goes_to_r2(&self) -> bool {
        self.text.len() > INLINE_BODY_BYTES
    }

    /// How many times the message was tried: its `attempt` (counted from 0) plus this one.
    fn attempts(&self) -> i64 {
        self.body
            .get("attempt")
            .and_then(Value::as_i64)
            .map_or(1, |a| a + 1)
    }
}

/// Archives `dead` at `at`, its body inline unless it was put in R2 under `body_r2_key`. A
/// redelivery updates the same row: last failure, error, and the most attempts seen.
pub fn archive(dead: &Dead<'_>, body_r2_key: Option<&str>, at: i64) -> Stmt {
    let inline = body_r2_key.is_none().then(|| dead.text.to_owned());
    Stmt::new(
        "INSERT INTO dead_letters (id, source_queue, message_id, message_type, body, body_r2_key, attempts,
                                           error_class, error_text, first_failed_at, last_failed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)
                 ON CONFLICT (source_queue, message_id) DO UPDATE SET
                   last_failed_at = excluded.last_failed_at,
                   attempts = MAX(dead_letters.attempts, excluded.attempts),
                   error_class = excluded.error_class,
                   error_text = excluded.error_text",
        vec![
            dead.id().into(),
            dead.queue.into(),
            dead.message_id.into(),
            messages::type_of(dead.body).map(str::to_owned).into(),
            inline.into(),
            body_r2_key.map(str::to_owned).into(),
            dead.attempts().into(),
            dead.class.into(),
            dead
                .reason
                .chars()
                .take(MAX_REASON_CHARS)
                .collect::<String>()
                .into(),
            at.into(),
        ],
    )
}

/// Which letters retention removes (`?1` is the cutoff): replayed or discarded, and last failed
/// before it. A `dead` one waits for an operator however old it is.
pub const EXPIRED: &str = "last_failed_at < ?1 AND status IN ('replayed','discarded')";

/// A letter past retention, with the R2 body to delete first.
#[derive(Debug, Deserialize)]
pub struct Expired {
    pub id: String,
    pub body_r2_key: Option<String>,
}

/// Up to `limit` letters past retention at `cutoff` ([`Expired`]).
pub fn expired(cutoff: i64, limit: i64) -> Stmt {
    Stmt::new(
        format!("SELECT id, body_r2_key FROM dead_letters WHERE {EXPIRED} LIMIT ?2"),
        vec![cutoff.into(), limit.into()],
    )
}

/// Deletes the `found` letters (their R2 bodies deleted first), if they are still past
/// retention: one whose message failed again meanwhile stays.
pub fn delete_expired(found: &[Expired], cutoff: i64) -> Stmt {
    let ids = serde_json::json!(found.iter().map(|d| d.id.as_str()).collect::<Vec<_>>());
    Stmt::new(
        format!(
            "DELETE FROM dead_letters WHERE id IN (SELECT value FROM json_each(?2)) AND {EXPIRED}"
        ),
        vec![cutoff.into(), ids.to_string().into()],
    )
}

// -------------------------------------------------------------------------------------------------
// The operators' statements
// -------------------------------------------------------------------------------------------------

/// Every status a letter can be in (the schema's CHECK).
pub const STATUSES: [&str; 3] = ["dead", "replayed", "discarded"];

/// What operators read of a letter ([`DeadLetter`]).
const COLUMNS: &str = "id, source_queue, message_id, message_type, body, body_r2_key, attempts, error_class, error_text,
    first_failed_at, last_failed_at, status, replayed_at, replayed_by, replay_count, discarded_at, discarded_by";

/// A letter as operators read it.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: String,
    pub source_queue: String,
    pub message_id: String,
    pub message_type: Option<String>,
    pub body: Option<String>,
    pub body_r2_key: Option<String>,
    pub attempts: i64,
    pub error_class: Option<String>,
    pub error_text: Option<String>,
    pub first_failed_at: i64,
    pub last_failed_at: i64,
    pub status: String,
    pub replayed_at: Option<i64>,
    pub replayed_by: Option<String>,
    pub replay_count: i64,
    pub discarded_at: Option<i64>,
    pub discarded_by: Option<String>,
}

impl DeadLetter {
    /// The letter without its body.
    pub fn summary(&self) -> Value {
        json!({
            "id": self.id, "source_queue": self.source_queue, "message_id": self.message_id,
            "message_type": self.message_type, "attempts": self.attempts, "error_class": self.error_class,
            "error_text": self.error_text, "first_failed_at": self.first_failed_at, "last_failed_at": self.last_failed_at,
            "status": self.status, "replayed_at": self.replayed_at, "replayed_by": self.replayed_by,
            "replay_count": self.replay_count, "discarded_at": self.discarded_at, "discarded_by": self.discarded_by,
        })
    }
}

/// Which letters an operation is about. Every field is optional; `status` defaults per
/// operation (anything for listing, `dead` for replay and discard). `dry_run` and `force` are
/// the bulk operations' own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub queue: Option<String>,
    #[serde(rename = "type")]
    pub message_type: Option<String>,
    pub error_class: Option<String>,
    pub status: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub force: bool,
}

impl Filter {
    /// Refuses a status no letter can be in, with the message for the caller.
    pub fn check(&self) -> Result<(), &'static str> {
        match &self.status {
            Some(s) if !STATUSES.contains(&s.as_str()) => {
                Err("status must be dead, replayed or discarded")
            }
            _ => Ok(()),
        }
    }

    /// `WHERE` for this filter: params ?1..?6, the caller's own params start at ?7.
    fn clause(&self) -> (&'static str, Vec<Param>) {
        (
            "(?1 IS NULL OR source_queue = ?1) AND (?2 IS NULL OR message_type = ?2) AND (?3 IS NULL OR error_class = ?3)
             AND (?4 IS NULL OR status = ?4) AND (?5 IS NULL OR last_failed_at >= ?5) AND (?6 IS NULL OR last_failed_at <= ?6)",
            vec![
                self.queue.clone().into(),
                self.message_type.clone().into(),
                self.error_class.clone().into(),
                self.status.clone().into(),
                self.since.into(),
                self.until.into(),
            ],
        )
    }
}

/// The operators' page of letters matching `filter`, latest failure first ([`DeadLetter`]):
/// after the page's position, `page.limit + 1` rows to learn whether another page follows.
pub fn list(filter: &Filter, page: &Page) -> Stmt {
    let (clause, mut params) = filter.clause();
    params.extend(page.keyset());
    params.push(Param::Int(page.limit + 1));
    Stmt::new(
        format!(
            "SELECT {COLUMNS} FROM dead_letters WHERE {clause}
             AND (?9 = 1 OR last_failed_at < ?7 OR (last_failed_at = ?7 AND id < ?8))
             ORDER BY last_failed_at DESC, id DESC LIMIT ?10"
        ),
        params,
    )
}

/// The letter `id` ([`DeadLetter`]).
pub fn load(id: &str) -> Stmt {
    Stmt::new(
        format!("SELECT {COLUMNS} FROM dead_letters WHERE id = ?1"),
        vec![id.into()],
    )
}

/// Up to `limit` letters matching `filter`, earliest failure first ([`DeadLetter`]): what a bulk
/// operation acts on.
pub fn matching(filter: &Filter, limit: i64) -> Stmt {
    let (clause, mut params) = filter.clause();
    params.push(Param::Int(limit));
    Stmt::new(
        format!("SELECT {COLUMNS} FROM dead_letters WHERE {clause} ORDER BY last_failed_at, id LIMIT ?7"),
        params,
    )
}

/// Claims letter `id` for a replay by `actor` at `at`: it changes the row only if the letter is
/// still `dead`, or with `force` whatever its status, and counts the replay.
pub fn claim_for_replay(id: &str, at: i64, actor: &str, force: bool) -> Stmt {
    Stmt::new(
        "UPDATE dead_letters SET status = 'replayed', replayed_at = ?2, replayed_by = ?3, replay_count = replay_count + 1
         WHERE id = ?1 AND (status = 'dead' OR ?4 = 1)",
        vec![id.into(), at.into(), actor.into(), Param::Int(i64::from(force))],
    )
}

/// Gives back a replay claim whose message could not be sent: the letter returns to `status`,
/// the one it had before the claim, and the replay is no longer counted.
pub fn undo_replay_claim(id: &str, status: &str) -> Stmt {
    Stmt::new(
        "UPDATE dead_letters SET status = ?2, replay_count = replay_count - 1 WHERE id = ?1",
        vec![id.into(), status.into()],
    )
}

/// Discards letter `id` for `actor` at `at`: it changes the row only if the letter is still
/// `dead`.
pub fn discard(id: &str, at: i64, actor: &str) -> Stmt {
    Stmt::new(
        "UPDATE dead_letters SET status = 'discarded', discarded_at = ?2, discarded_by = ?3 WHERE id = ?1 AND status = 'dead'",
        vec![id.into(), at.into(), actor.into()],
    )
}

/// Up to `limit` letters whose stored body names `task`, earliest failure first, without their
/// bodies (a task's timeline). Bodies in R2 are not searched.
pub fn of_task(task: &TaskId, limit: i64) -> Stmt {
    Stmt::new(
        "SELECT id, source_queue, message_type, attempts, error_class, error_text, first_failed_at, last_failed_at,
                status, replayed_at, replayed_by, replay_count, discarded_at, discarded_by
         FROM dead_letters WHERE body LIKE '%' || ?1 || '%' ORDER BY first_failed_at, id LIMIT ?2",
        vec![task.to_string().into(), Param::Int(limit)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{db, exec};
    use crate::history::tests::rows;
    use serde_json::json;

    fn dead<'a>(body: &'a Value, text: &'a str, reason: &'a str) -> Dead<'a> {
        Dead {
            queue: "edgeline-tasks",
            message_id: "m1",
            body,
            text,
            class: "timeout",
            reason,
        }
    }

    fn letters(conn: &rusqlite::Connection) -> Vec<Value> {
        rows(
            conn,
            &Stmt::new(
                "SELECT id, source_queue, message_id, message_type, body, body_r2_key, attempts, error_class,
                        error_text, first_failed_at, last_failed_at, status FROM dead_letters ORDER BY id",
                vec![],
            ),
        )
    }

    #[test]
    fn a_message_is_archived_once_and_a_redelivery_updates_its_row() {
        let conn = db();
        let body = json!({"v": 1, "type": "task.poll", "attempt": 4});
        let text = body.to_string();
        let long = "x".repeat(3000);
        let first = dead(&body, &text, &long);
        assert!(first.id().starts_with("dl_") && first.id().len() == 35);
        assert_eq!(exec(&conn, &archive(&first, None, 10)), 1);
        let row = letters(&conn).remove(0);
        assert_eq!(row["id"], first.id());
        assert_eq!(row["message_type"], "task.poll");
        assert_eq!(row["body"], text.as_str());
        assert_eq!(row["body_r2_key"], Value::Null);
        assert_eq!(row["attempts"], 5);
        assert_eq!(row["error_text"].as_str().unwrap().len(), 2000);
        assert_eq!(
            (row["first_failed_at"].clone(), row["status"].clone()),
            (json!(10), json!("dead"))
        );

        // the same message again, with fewer attempts and another error: one row, updated
        let again = json!({"v": 1, "type": "task.poll"});
        let again_text = again.to_string();
        let mut second = dead(&again, &again_text, "gone");
        second.class = "permanent";
        assert_eq!(second.id(), first.id());
        exec(&conn, &archive(&second, None, 20));
        let rows = letters(&conn);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(
            (
                row["first_failed_at"].clone(),
                row["last_failed_at"].clone()
            ),
            (json!(10), json!(20))
        );
        assert_eq!(
            (row["attempts"].clone(), row["error_class"].clone()),
            (json!(5), json!("permanent"))
        );
        assert_eq!(row["error_text"], "gone");

        // another queue's message of the same id is another letter; a large body stays in R2
        let big = "y".repeat(INLINE_BODY_BYTES + 1);
        let mut other = dead(&Value::Null, &big, "r");
        other.queue = "edgeline-events";
        assert!(other.body_goes_to_r2() && !first.body_goes_to_r2());
        exec(&conn, &archive(&other, Some("dead-letters/k.json"), 30));
        let rows = letters(&conn);
        assert_eq!(rows.len(), 2);
        let row = rows.iter().find(|r| r["id"] == other.id()).unwrap();
        assert_eq!(
            (row["body"].clone(), row["body_r2_key"].clone()),
            (Value::Null, json!("dead-letters/k.json"))
        );
        assert_eq!(
            (row["message_type"].clone(), row["attempts"].clone()),
            (Value::Null, json!(1))
        );
    }

    #[test]
    fn operators_find_letters_by_filter_and_each_is_claimed_once() {
        let conn = db();
        let task = TaskId::new();
        for (id, queue, kind, class, status, last_failed_at, body) in [
            (
                "dl_a",
                "q1",
                "task.poll",
                "timeout",
                "dead",
                10,
                format!("{{\"task_id\":\"{task}\"}}"),
            ),
            (
                "dl_b",
                "q1",
                "task.submit",
                "permanent",
                "dead",
                20,
                "{}".to_owned(),
            ),
            (
                "dl_c",
                "q2",
                "webhook.apply",
                "timeout",
                "replayed",
                20,
                "{}".to_owned(),
            ),
        ] {
            conn.execute(
                "INSERT INTO dead_letters (id, source_queue, message_id, message_type, error_class, status, body,
                                           first_failed_at, last_failed_at)
                 VALUES (?1, ?2, ?1, ?3, ?4, ?5, ?6, ?7, ?7)",
                rusqlite::params![id, queue, kind, class, status, body, last_failed_at],
            )
            .unwrap();
        }
        let ids = |s: &Stmt| -> Vec<String> {
            rows(&conn, s)
                .into_iter()
                .map(|r| serde_json::from_value::<DeadLetter>(r).unwrap().id)
                .collect()
        };
        let first = Page {
            limit: 2,
            before: None,
        };
        let all = Filter::default();
        assert_eq!(ids(&list(&all, &first)), ["dl_c", "dl_b", "dl_a"]);
        let later = Page {
            limit: 2,
            before: Some((20, "dl_c".into())),
        };
        assert_eq!(ids(&list(&all, &later)), ["dl_b", "dl_a"]);
        let filter: Filter = serde_json::from_value(
            json!({"queue": "q1", "type": "task.submit", "since": 15, "until": 20}),
        )
        .unwrap();
        assert_eq!(ids(&list(&filter, &first)), ["dl_b"]);
        let dead = Filter {
            status: Some("dead".into()),
            ..Filter::default()
        };
        assert_eq!(ids(&matching(&dead, 10)), ["dl_a", "dl_b"], "oldest first");
        assert_eq!(ids(&matching(&dead, 1)), ["dl_a"], "bounded");
        assert!(serde_json::from_value::<Filter>(json!({"sort": "x"})).is_err());
        assert_eq!(dead.check(), Ok(()));
        let gone = Filter {
            status: Some("gone".into()),
            ..Filter::default()
        };
        assert_eq!(
            gone.check(),
            Err("status must be dead, replayed or discarded")
        );

        let letter: DeadLetter =
            serde_json::from_value(rows(&conn, &load("dl_a")).remove(0)).unwrap();
        assert_eq!((letter.attempts, letter.status.as_str()), (0, "dead"));
        assert!(letter.summary().get("body").is_none());
        assert!(rows(&conn, &load("dl_none")).is_empty());

        // a replay claims a dead letter once, a forced one whatever its status; an undo gives it back
        assert_eq!(exec(&conn, &claim_for_replay("dl_a", 30, "op", false)), 1);
        assert_eq!(exec(&conn, &claim_for_replay("dl_a", 31, "op", false)), 0);
        assert_eq!(exec(&conn, &claim_for_replay("dl_a", 32, "op", true)), 1);
        assert_eq!(exec(&conn, &undo_replay_claim("dl_a", "replayed")), 1);
        let a = rows(&conn, &load("dl_a")).remove(0);
        assert_eq!(
            (
                &a["status"],
                &a["replay_count"],
                &a["replayed_at"],
                &a["replayed_by"]
            ),
            (&json!("replayed"), &json!(1), &json!(32), &json!("op"))
        );
        // a discard claims only a dead letter
        assert_eq!(exec(&conn, &discard("dl_c", 33, "op")), 0);
        assert_eq!(exec(&conn, &discard("dl_b", 33, "op")), 1);
        assert_eq!(exec(&conn, &discard("dl_b", 34, "op")), 0);
        let b = rows(&conn, &load("dl_b")).remove(0);
        assert_eq!(
            (&b["status"], &b["discarded_at"], &b["discarded_by"]),
            (&json!("discarded"), &json!(33), &json!("op"))
        );

        let of = rows(&conn, &of_task(&task, 10));
        assert_eq!(of.len(), 1);
        assert_eq!((&of[0]["id"], of[0].get("body")), (&json!("dl_a"), None));
    }

    #[test]
    fn only_handled_letters_past_retention_expire_and_a_new_failure_meanwhile_keeps_one() {
        let conn = db();
        for (id, status, last_failed_at, key) in [
            ("dl_old", "discarded", 10, Some("dead-letters/old.json")),
            ("dl_replayed", "replayed", 10, None),
            ("dl_dead", "dead", 10, None),
            ("dl_recent", "discarded", 500, None),
        ] {
            conn.execute(
                "INSERT INTO dead_letters (id, source_queue, message_id, first_failed_at, last_failed_at, status, body_r2_key)
                 VALUES (?1, 'q', ?1, 0, ?2, ?3, ?4)",
                rusqlite::params![id, last_failed_at, status, key],
            )
            .unwrap();
        }
        let found: Vec<Expired> = rows(&conn, &expired(100, 10))
            .into_iter()
            .map(|r| serde_json::from_value(r).unwrap())
            .collect();
        let mut ids: Vec<(&str, Option<&str>)> = found
            .iter()
            .map(|d| (d.id.as_str(), d.body_r2_key.as_deref()))
            .collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            [
                ("dl_old", Some("dead-letters/old.json")),
                ("dl_replayed", None)
            ]
        );
        assert_eq!(rows(&conn, &expired(100, 1)).len(), 1, "bounded");
        // between the read and the delete, a replayed message failed again: its letter stays
        conn.execute(
            "UPDATE dead_letters SET last_failed_at = 200 WHERE id = 'dl_replayed'",
            [],
        )
        .unwrap();
        assert_eq!(exec(&conn, &delete_expired(&found, 100)), 1);
        let left: Vec<Value> = letters(&conn)
            .into_iter()
            .map(|r| r["id"].clone())
            .collect();
        assert_eq!(
            left,
            [json!("dl_dead"), json!("dl_recent"), json!("dl_replayed")]
        );
    }
}
