//! Shared results and lasting image links.
//!
//! **Shares.** A user shares one of their completed tasks: a row in D1 `shares` (the truth) and
//! its public record in KV `share:{id}` for [`SHARE_KV_TTL_SECS`] (30 days, as the seed keeps
//! shares), which is what a reader's request reads. A share lasts until its owner revokes it or
//! deletes the task; the KV copy is a cache, refilled from D1 when it lapses. Revoking marks the
//! row and deletes the KV key: readers where the request landed are refused at once, and, since
//! a KV miss is checked against D1, everywhere else once KV's edge caches let go of the old value
//! (about 60 s). A share id is a random UUID (122 bits from the platform's CSPRNG): never
//! guessable, and it names nothing but the share. Readers see the prompt, model, times and image
//! links, never who shared it.
//!
//! **Views.** Counting a view with a D1 write per read would make every public read a write to
//! the primary. Reads are counted in the isolate instead ([`ViewBuffer`]) and written as one
//! batch of `view_count = view_count + n` when the oldest count is [`VIEW_FLUSH_AFTER_MS`] old or
//! [`VIEW_FLUSH_AT`] reads are waiting, and before the owner's list is read. The price: an
//! isolate that is evicted loses what it had not written yet (at most that many reads).
//!
//! **Lasting links.** The owner's link to a result, `/api/images/{task}/{n}?sig=`, carries an
//! HMAC of the task id and the index ([`link_signature`]) under the server's files key: it does
//! not expire, cannot be guessed or moved to another task or index, and is checked without a
//! round trip. It serves while the result is stored and the task is not deleted (a deleted
//! task's objects are removed, and a missing object is checked against D1). A share's images are
//! served under the share (`/api/shares/{id}/images/{n}`), so they die with the share.

use crate::ids::{TaskId, UserId};
use crate::signing::{ct_eq, hmac_hex};
use crate::sql::Stmt;
use crate::submit::TaskInput;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt;
use uuid::Uuid;

/// How long a share's KV record lives (refilled from D1 when it lapses).
pub const SHARE_KV_TTL_SECS: u64 = 30 * 86_400;

/// A share (`shares.id`): a random UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShareId(Uuid);

impl ShareId {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }
    pub fn parse(raw: &str) -> Option<Self> {
        Uuid::parse_str(raw).ok().map(Self)
    }
}

impl fmt::Display for ShareId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// KV: a share's public record (`share` a [`ShareId`], or its text as D1 gives it back).
pub fn share_key(share: impl fmt::Display) -> String {
    format!("share:{share}")
}

/// A share joined with its task, as D1 gives it ([`share_query`], [`list_shares`]).
#[derive(Debug, Clone, Deserialize)]
pub struct ShareRow {
    pub id: String,
    pub task_id: String,
    pub shared_at: i64,
    pub input_params: String,
    pub external_provider: Option<String>,
    pub task_created_at: i64,
    pub result_keys: Option<String>,
    pub result_urls: Option<String>,
    #[serde(default)]
    pub view_count: i64,
    #[serde(default)]
    pub last_viewed_at: Option<i64>,
}

const SHARE_COLUMNS: &str = "s.id, s.task_id, s.created_at AS shared_at, s.view_count, s.last_viewed_at,
    t.input_params, t.external_provider, t.created_at AS task_created_at, t.result_keys, t.result_urls";

/// What a share shows readers, as cached in KV. The task id stays inside: readers never see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareRecord {
    pub id: String,
    pub task_id: String,
    pub prompt: Option<String>,
    pub model: Option<String>,
    pub size: Option<String>,
    pub created_at: i64,
    pub shared_at: i64,
    pub result_keys: Vec<String>,
}

impl ShareRecord {
    pub fn from_row(row: &ShareRow) -> Self {
        let input: Option<TaskInput> = serde_json::from_str(&row.input_params).ok();
        ShareRecord {
            id: row.id.clone(),
            task_id: row.task_id.clone(),
            prompt: input.as_ref().map(|i| i.prompt.clone()),
            model: row.external_provider.clone(),
            size: input.as_ref().map(|i| i.size.clone()),
            created_at: row.task_created_at,
            shared_at: row.shared_at,
            result_keys: json_list(row.result_keys.as_deref()),
        }
    }

    /// The public JSON of a share: no user, no task id, no storage keys.
    pub fn public_view(&self, base: &str) -> Value {
        json!({
            "id": self.id,
            "prompt": self.prompt,
            "model": self.model,
            "size": self.size,
            "created_at": self.created_at,
            "shared_at": self.shared_at,
            "images": (0..self.result_keys.len())
                .map(|n| json!({"index": n, "url": share_image_link(base, &self.id, n)}))
                .collect::<Vec<_>>(),
        })
    }
}

/// A JSON array of strings from a nullable column; anything else is empty.
pub fn json_list(raw: Option<&str>) -> Vec<String> {
    raw.and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_default()
}

/// Creating a share, in one batch: the insert (only for the user's completed, not deleted task),
/// the task's state (to say why not), and the new share with its task.
pub fn create_share(share: &ShareId, user: &UserId, task: &TaskId, now: i64) -> [Stmt; 3] {
    [
        Stmt::new(
            "INSERT INTO shares (id, user_id, task_id, created_at)
             SELECT ?1, user_id, id, ?4 FROM ai_tasks
             WHERE id = ?3 AND user_id = ?2 AND deleted_at IS NULL AND status = 'completed'",
            vec![
                share.to_string().into(),
                user.to_string().into(),
                task.to_string().into(),
                now.into(),
            ],
        ),
        Stmt::new(
            "SELECT status FROM ai_tasks WHERE id = ?1 AND user_id = ?2 AND deleted_at IS NULL",
            vec![task.to_string().into(), user.to_string().into()],
        ),
        share_query(share),
    ]
}

/// A live share with its task: not revoked, and its task not deleted.
pub fn share_query(share: &ShareId) -> Stmt {
    Stmt::new(
        format!(
            "SELECT {SHARE_COLUMNS} FROM shares s JOIN ai_tasks t ON t.id = s.task_id
             WHERE s.id = ?1 AND s.revoked_at IS NULL AND t.deleted_at IS NULL"
        ),
        vec![share.to_string().into()],
    )
}

/// Revokes the user's live share; returns its id when this call revoked it.
pub fn revoke_share(share: &ShareId, user: &UserId, now: i64) -> Stmt {
    Stmt::new(
        "UPDATE shares SET revoked_at = ?3 WHERE id = ?1 AND user_id = ?2 AND revoked_at IS NULL RETURNING id",
        vec![share.to_string().into(), user.to_string().into(), now.into()],
    )
}

/// The user's live shares, newest first, after `(created_at, id)` when given; `limit + 1` rows.
pub fn list_shares(user: &UserId, before: Option<(i64, String)>, limit: i64) -> Stmt {
    let (at, id) = before.unwrap_or((i64::MAX >> 11, String::new()));
    let first = i64::from(id.is_empty());
    Stmt::new(
        format!(
            "SELECT {SHARE_COLUMNS} FROM shares s JOIN ai_tasks t ON t.id = s.task_id
             WHERE s.user_id = ?1 AND s.revoked_at IS NULL AND t.deleted_at IS NULL
               AND (?4 = 1 OR s.created_at < ?2 OR (s.created_at = ?2 AND s.id < ?3))
             ORDER BY s.created_at DESC, s.id DESC LIMIT ?5"
        ),
        vec![
            user.to_string().into(),
            at.into(),
            id.into(),
            first.into(),
            (limit + 1).into(),
        ],
    )
}

/// Adds counted views to their shares in one statement (however many shares: one query).
pub fn add_views(counts: &[(String, u64)], now: i64) -> Stmt {
    let pairs: Vec<serde_json::Value> = counts.iter().map(|(id, n)| json!([id, n])).collect();
    Stmt::new(
        "UPDATE shares SET view_count = view_count + v.n, last_viewed_at = ?2
         FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS n FROM json_each(?1)) AS v
         WHERE shares.id = v.id",
        vec![serde_json::Value::Array(pairs).to_string().into(), now.into()],
    )
}

/// Flush counted views once the oldest is this old...
pub const VIEW_FLUSH_AFTER_MS: u64 = 10_000;
/// ...or this many are waiting.
pub const VIEW_FLUSH_AT: u64 = 100;
/// The most shares one flush writes (the rest wait for the next).
pub const VIEW_FLUSH_MAX_SHARES: usize = 500;

/// Views counted in this isolate and not yet written to D1.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ViewBuffer {
    counts: BTreeMap<String, u64>,
    oldest_ms: Option<u64>,
    total: u64,
}

impl ViewBuffer {
    pub fn add(&mut self, share: &str, now_ms: u64) {
        *self.counts.entry(share.to_owned()).or_default() += 1;
        self.total += 1;
        self.oldest_ms.get_or_insert(now_ms);
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn pending(&self, share: &str) -> u64 {
        self.counts.get(share).copied().unwrap_or(0)
    }

    /// Whether the next read should write the counts.
    pub fn due(&self, now_ms: u64) -> bool {
        self.total >= VIEW_FLUSH_AT
            || self
                .oldest_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= VIEW_FLUSH_AFTER_MS)
    }

    /// Takes up to [`VIEW_FLUSH_MAX_SHARES`] shares' counts out to be written.
    pub fn take(&mut self) -> Vec<(String, u64)> {
        let ids: Vec<String> = self
            .counts
            .keys()
            .take(VIEW_FLUSH_MAX_SHARES)
            .cloned()
            .collect();
        let taken: Vec<(String, u64)> = ids
            .into_iter()
            .filter_map(|id| self.counts.remove(&id).map(|n| (id, n)))
            .collect();
        self.total -= taken.iter().map(|(_, n)| n).sum::<u64>();
        if self.counts.is_empty() {
            self.oldest_ms = None;
        }
        taken
    }

    /// Puts counts back after a failed write, to be tried again.
    pub fn restore(&mut self, taken: Vec<(String, u64)>, now_ms: u64) {
        for (id, n) in taken {
            *self.counts.entry(id).or_default() += n;
            self.total += n;
            self.oldest_ms.get_or_insert(now_ms);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Links
// ---------------------------------------------------------------------------------------------

/// Hex characters of a link signature (128 bits).
const LINK_SIG_LEN: usize = 32;

/// The signature of the lasting link to result `n` of `task`.
pub fn link_signature(secret: &[u8], task: &str, n: usize) -> String {
    let mut sig = hmac_hex(secret, format!("lasting-link\n{task}\n{n}").as_bytes());
    sig.truncate(LINK_SIG_LEN);
    sig
}

/// Checks a lasting link's signature in constant time.
pub fn verify_link_signature(secret: &[u8], task: &str, n: usize, sig: &str) -> bool {
    sig.len() == LINK_SIG_LEN && ct_eq(&link_signature(secret, task, n), sig)
}

/// The owner's lasting link to result `n` of `task`: no token, no expiry.
pub fn lasting_link(base: &str, secret: &[u8], task: &str, n: usize) -> String {
    format!(
        "{base}/api/images/{task}/{n}?sig={}",
        link_signature(secret, task, n)
    )
}

/// A share's link to its image `n`.
pub fn share_image_link(base: &str, share: &str, n: usize) -> String {
    format!("{base}/api/shares/{share}/images/{n}")
}

/// A task's stored results (R2 keys) and the provider's URLs of them, as JSON lists.
#[derive(Debug, Deserialize)]
pub struct StoredResults {
    pub result_keys: Option<String>,
    pub result_urls: Option<String>,
}

/// The task's results ([`StoredResults`]) if a link may still serve them: the task is completed
/// and not deleted.
pub fn link_results(task: &TaskId) -> Stmt {
    Stmt::new(
        "SELECT result_keys, result_urls FROM ai_tasks
         WHERE id = ?1 AND deleted_at IS NULL AND status = 'completed'",
        vec![task.to_string().into()],
    )
}

/// The provider's own URL of result `n` (`ai_tasks.result_urls`), if it is an http(s) URL.
pub fn provider_url(result_urls: Option<&str>, n: usize) -> Option<String> {
    json_list(result_urls)
        .into_iter()
        .nth(n)
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{db, exec};
    use crate::history::tests::{task, user};

    #[test]
    fn a_link_serves_only_a_completed_task_that_is_not_deleted() {
        let conn = db();
        let u = user(&conn);
        let done = task(&conn, &u, "completed", 0, "{}");
        let running = task(&conn, &u, "processing", 0, "{}");
        let deleted = task(&conn, &u, "completed", 0, "{}");
        conn.execute(
            "UPDATE ai_tasks SET deleted_at = 5 WHERE id = ?1",
            [&deleted],
        )
        .unwrap();
        conn.execute(
            "UPDATE ai_tasks SET result_urls = '[\"https://p/1.png\"]' WHERE id = ?1",
            [&done],
        )
        .unwrap();
        let read = |t: &str| -> Vec<StoredResults> {
            crate::history::tests::rows(&conn, &link_results(&TaskId::parse(t).unwrap()))
                .into_iter()
                .map(|r| serde_json::from_value(r).unwrap())
                .collect()
        };
        let found = read(&done);
        assert_eq!(
            json_list(found[0].result_keys.as_deref()),
            [format!("result/kie_4o/{done}/result_0.png")]
        );
        assert_eq!(
            provider_url(found[0].result_urls.as_deref(), 0).as_deref(),
            Some("https://p/1.png")
        );
        assert!(read(&running).is_empty() && read(&deleted).is_empty());
    }

    #[test]
    fn link_signatures_bind_task_and_index() {
        let t = TaskId::new().to_string();
        let sig = link_signature(b"k", &t, 0);
        assert_eq!(sig.len(), 32);
        assert!(verify_link_signature(b"k", &t, 0, &sig));
        assert!(!verify_link_signature(b"k", &t, 1, &sig), "another index");
        assert!(
            !verify_link_signature(b"k", &TaskId::new().to_string(), 0, &sig),
            "another task"
        );
        assert!(!verify_link_signature(b"other", &t, 0, &sig), "another key");
        assert!(!verify_link_signature(b"k", &t, 0, &sig[..31]), "truncated");
        assert!(!verify_link_signature(b"k", &t, 0, ""), "empty");
        let link = lasting_link("https://api.example", b"k", &t, 0);
        assert_eq!(
            link,
            format!("https://api.example/api/images/{t}/0?sig={sig}")
        );
        assert_ne!(
            link_signature(b"k", &t, 0),
            crate::signing::file_signature(b"k", &t, 0)[..32],
            "not interchangeable with a file signature"
        );
    }

    #[test]
    fn the_view_buffer_flushes_by_age_or_count_and_keeps_failed_writes() {
        let mut b = ViewBuffer::default();
        assert!(!b.due(0) && b.is_empty());
        b.add("a", 1000);
        b.add("a", 1500);
        b.add("b", 2000);
        assert_eq!(b.pending("a"), 2);
        assert!(!b.due(1000 + VIEW_FLUSH_AFTER_MS - 1));
        assert!(
            b.due(1000 + VIEW_FLUSH_AFTER_MS),
            "the oldest is old enough"
        );
        let taken = b.take();
        assert_eq!(taken, vec![("a".into(), 2), ("b".into(), 1)]);
        assert!(b.is_empty() && !b.due(u64::MAX));
        b.restore(taken, 50_000);
        assert_eq!((b.pending("a"), b.pending("b")), (2, 1));
        assert!(b.due(50_000 + VIEW_FLUSH_AFTER_MS));
        let mut c = ViewBuffer::default();
        for _ in 0..VIEW_FLUSH_AT {
            c.add("x", 0);
        }
        assert!(c.due(0), "enough waiting");
        let mut many = ViewBuffer::default();
        for i in 0..(VIEW_FLUSH_MAX_SHARES + 3) {
            many.add(&format!("s{i:03}"), 0);
        }
        assert_eq!(many.take().len(), VIEW_FLUSH_MAX_SHARES);
        assert_eq!(many.take().len(), 3);
        assert!(many.is_empty());
    }

    #[test]
    fn the_public_view_names_no_user_task_or_key() {
        let u = UserId::new().to_string();
        let row = ShareRow {
            id: ShareId::new().to_string(),
            task_id: TaskId::new().to_string(),
            shared_at: 20,
            input_params: r#"{"prompt":"a fox","model":"kie_4o","size":"1:1","images":[]}"#.into(),
            external_provider: Some("kie_4o".into()),
            task_created_at: 10,
            result_keys: Some(
                r#"["result/kie_4o/x/result_0.png","result/kie_4o/x/result_1.png"]"#.into(),
            ),
            result_urls: None,
            view_count: 0,
            last_viewed_at: None,
        };
        let rec = ShareRecord::from_row(&row);
        let view = rec.public_view("https://api");
        assert_eq!(view["prompt"], "a fox");
        assert_eq!(view["model"], "kie_4o");
        assert_eq!(view["created_at"], 10);
        assert_eq!(
            view["images"][1]["url"],
            format!("https://api/api/shares/{}/images/1", row.id)
        );
        let text = view.to_string();
        assert!(!text.contains(&row.task_id) && !text.contains(&u) && !text.contains("result/"));
        // the KV record round-trips
        let back: ShareRecord =
            serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
        assert_eq!(back, rec);
        assert_eq!(
            provider_url(Some(r#"["https://p/0.png"]"#), 0).as_deref(),
            Some("https://p/0.png")
        );
        assert_eq!(provider_url(Some(r#"["ftp://p/0.png"]"#), 0), None);
        assert_eq!(provider_url(Some(r#"["https://p/0.png"]"#), 1), None);
        assert_eq!(provider_url(None, 0), None);
    }

    fn first(conn: &rusqlite::Connection, s: &Stmt) -> Option<ShareRow> {
        let mut st = conn.prepare(&s.sql).unwrap();
        let names: Vec<String> = st.column_names().map(str::to_owned).collect();
        let mut q = st
            .query(rusqlite::params_from_iter(
                s.params.iter().map(crate::audit::tests::value),
            ))
            .unwrap();
        let r = q.next().unwrap()?;
        let mut obj = serde_json::Map::new();
        for (i, n) in names.iter().enumerate() {
            let v = match r.get::<_, rusqlite::types::Value>(i).unwrap() {
                rusqlite::types::Value::Integer(n) => json!(n),
                rusqlite::types::Value::Text(t) => json!(t),
                _ => Value::Null,
            };
            obj.insert(n.clone(), v);
        }
        Some(serde_json::from_value(Value::Object(obj)).unwrap())
    }

    #[test]
    fn only_the_owners_completed_live_tasks_are_shared_and_revoking_is_the_owners() {
        let conn = db();
        let u = user(&conn);
        let other = user(&conn);
        let done = task(&conn, &u, "completed", 5, "{}");
        let failed = task(&conn, &u, "failed", 5, "{}");
        let running = task(&conn, &u, "processing", 5, "{}");
        let deleted = task(&conn, &u, "completed", 5, "{}");
        conn.execute(
            "UPDATE ai_tasks SET deleted_at = 6 WHERE id = ?1",
            [&deleted],
        )
        .unwrap();
        let theirs = task(&conn, &other, "completed", 5, "{}");
        let tid = |s: &str| TaskId::parse(s).unwrap();
        let mut made = None;
        for (t, want) in [
            (&done, 1),
            (&failed, 0),
            (&running, 0),
            (&deleted, 0),
            (&theirs, 0),
        ] {
            let s = ShareId::new();
            let [insert, _, read] = create_share(&s, &u, &tid(t), 7);
            assert_eq!(exec(&conn, &insert), want, "{t}");
            assert_eq!(first(&conn, &read).is_some(), want == 1);
            if want == 1 {
                made = Some(s);
            }
        }
        let s = made.unwrap();
        let row = first(&conn, &share_query(&s)).unwrap();
        assert_eq!((row.task_id.as_str(), row.shared_at), (done.as_str(), 7));
        // views add up
        assert_eq!(
            exec(
                &conn,
                &add_views(&[(s.to_string(), 3), ("nope".into(), 1)], 8)
            ),
            1
        );
        let listed = first(&conn, &list_shares(&u, None, 10)).unwrap();
        assert_eq!((listed.view_count, listed.last_viewed_at), (3, Some(8)));
        assert!(first(&conn, &list_shares(&other, None, 10)).is_none());
        // another user cannot revoke it; the owner can, once
        assert_eq!(exec(&conn, &revoke_share(&s, &other, 9)), 0);
        assert_eq!(exec(&conn, &revoke_share(&s, &u, 9)), 1);
        assert_eq!(exec(&conn, &revoke_share(&s, &u, 10)), 0);
        assert!(first(&conn, &share_query(&s)).is_none(), "gone for readers");
        assert!(first(&conn, &list_shares(&u, None, 10)).is_none());
    }
}
