//! KV deletes KV refused, kept in D1 until a later try succeeds.
//!
//! KV takes one write per second per key, so deleting a key just after putting it (a session
//! revoked while its copy was being put back, a sign-out right after a sign-in) is refused. A
//! worker never waits in its isolate for that second: it lists the key here ([`defer`]), and the
//! cron's `clear_kv_keys` job deletes what is listed ([`due`]) and takes each key off once KV has
//! deleted it ([`done`]), or counts the refusal ([`refused`]). Deleting a key twice is harmless,
//! so a key listed twice, or deleted by someone else meanwhile, changes nothing.

use crate::sql::Stmt;
use serde::Deserialize;

/// Keys one run of the job deletes at most: each delete is a subrequest.
pub const MAX_PER_RUN: i64 = 40;

/// Lists `key` for the job; a key already listed keeps its first time.
pub fn defer(key: &str, now: i64) -> Stmt {
    Stmt::new(
        "INSERT INTO kv_deletes (key, since) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
        vec![key.into(), now.into()],
    )
}

/// A listed key ([`due`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Pending {
    pub key: String,
}

/// The oldest `limit` listed keys.
pub fn due(limit: i64) -> Stmt {
    Stmt::new(
        "SELECT key FROM kv_deletes ORDER BY since, key LIMIT ?1",
        vec![limit.into()],
    )
}

/// KV deleted `key`: off the list.
pub fn done(key: &str) -> Stmt {
    Stmt::new("DELETE FROM kv_deletes WHERE key = ?1", vec![key.into()])
}

/// KV refused `key` again: the next run tries it again.
pub fn refused(key: &str) -> Stmt {
    Stmt::new(
        "UPDATE kv_deletes SET attempts = attempts + 1 WHERE key = ?1",
        vec![key.into()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{db, exec};
    use crate::history::tests::rows;

    #[test]
    fn a_key_is_listed_once_taken_oldest_first_and_off_once_deleted() {
        let conn = db();
        exec(&conn, &defer("session:b", 20));
        exec(&conn, &defer("session:a", 10));
        exec(&conn, &defer("session:a", 30));
        let keys = |limit| -> Vec<String> {
            rows(&conn, &due(limit))
                .into_iter()
                .map(|r| serde_json::from_value::<Pending>(r).unwrap().key)
                .collect()
        };
        assert_eq!(keys(10), ["session:a", "session:b"], "oldest first, once");
        assert_eq!(keys(1), ["session:a"]);
        exec(&conn, &refused("session:a"));
        let attempts = rows(
            &conn,
            &Stmt::new(
                "SELECT attempts, since FROM kv_deletes WHERE key = 'session:a'",
                vec![],
            ),
        );
        assert_eq!(attempts[0]["attempts"], 1);
        assert_eq!(attempts[0]["since"], 10, "the first refusal's time stays");
        exec(&conn, &done("session:a"));
        assert_eq!(keys(10), ["session:b"]);
    }
}
