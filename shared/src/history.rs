//! A user's task history: deleting it and syncing it across devices.
//!
//! **Deleting.** A deleted task keeps its `ai_tasks` row with `deleted_at` set: its ledger rows
//! name it (money history is never deleted) and other devices learn of the deletion from it (a
//! tombstone). Every user-facing read hides it. Only an ended task (`completed`/`failed`) can be
//! deleted: a live one still holds credits that the consumer will settle or release, and deleting
//! it under the consumer would either charge for a result nobody can see or lose track of the
//! hold, so its delete is refused (409) until it ends. Deleting one task or a hundred is one D1
//! batch ([`delete_tasks`]): mark the ended ones deleted, revoke their shares, and report what
//! became of every id. Their R2 objects (results, and uploaded inputs no other live task of the
//! user still names; an operator's retry reuses its original's inputs) are removed by the
//! request, and the retention job purges whatever a request could not ([`purge_candidates`]).
//!
//! **Syncing.** `GET /api/tasks?updated_since=` walks a user's tasks in `(updated_at, id)` order,
//! deleted ones included as tombstones. `updated_at` is a writer's clock in seconds, so two
//! things could slip behind a cursor that simply followed the rows: a change made later in the
//! same second to a task whose id sorts before the cursor's, and a change whose batch committed a
//! moment after its `updated_at` was taken. So a cursor never passes the *settled horizon*,
//! `now -` [`SYNC_SETTLE_SECS`]: pages walk the settled changes (`updated_at` before the horizon)
//! `limit` at a time, and the last page also carries every change since the horizon (at most
//! [`MAX_RECENT`]; more wait until they settle) while its cursor stays at the horizon. Recent
//! changes are therefore sent again next time; a client upserts by id, so a repeat is harmless
//! and nothing is skipped ([`sync_queries`], [`assemble`]).

use crate::ids::UserId;
use crate::page::CursorFormat;
use crate::sql::{Param, Stmt};
use crate::submit::{ImageRef, TaskInput};
use serde::Deserialize;
use std::collections::BTreeSet;

/// How late a task change may commit after the `updated_at` it carries (and how far the
/// workers' clocks may disagree): a sync cursor never passes `now -` this.
pub const SYNC_SETTLE_SECS: i64 = 30;

/// The largest sync page of settled changes.
pub const MAX_SYNC_PAGE: i64 = 500;

/// The most changes since the horizon that one page carries.
pub const MAX_RECENT: i64 = 500;

/// The most ids one bulk delete takes.
pub const MAX_DELETE_IDS: usize = 100;

/// How the sync feed writes its cursors.
const SYNC_CURSOR: CursorFormat = CursorFormat::Tagged("s1");

/// A place in a user's change feed: everything strictly after `(at, id)` is still to come.
/// An empty `id` sorts before every id, so `(t, "")` means "from second `t` on".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SyncPos {
    pub at: i64,
    pub id: String,
}

impl SyncPos {
    /// The start of a sync: changes at `updated_since` or later.
    pub fn since(updated_since: i64) -> Self {
        SyncPos {
            at: updated_since,
            id: String::new(),
        }
    }

    /// The opaque cursor clients send back: `s1.{at}.{id}`.
    pub fn encode(&self) -> String {
        SYNC_CURSOR.encode(self.at, &self.id)
    }

    /// A cursor we issued, or `None`.
    pub fn decode(cursor: &str) -> Option<Self> {
        let (at, id) = SYNC_CURSOR.decode(cursor)?;
        if at < 0 {
            return None;
        }
        if !id.is_empty() && crate::ids::TaskId::parse(&id).is_err() {
            return None;
        }
        Some(SyncPos { at, id })
    }

    /// Whether a string is a sync cursor (as opposed to a list cursor).
    pub fn is_sync_cursor(cursor: &str) -> bool {
        Self::decode(cursor).is_some()
    }
}

/// The settled horizon at `now`: changes before it are all committed.
pub fn horizon(now: i64) -> SyncPos {
    SyncPos::since(now - SYNC_SETTLE_SECS)
}

/// One page of the feed after `from`, as two statements for one batch, both in
/// `(updated_at, id)` order, deleted tasks included (`deleted_at` is selected after `columns`):
/// the settled changes (`limit + 1` of them, to learn if there are more) and every change since
/// the horizon (at most [`MAX_RECENT`]).
pub fn sync_queries(
    columns: &str,
    user: &UserId,
    from: &SyncPos,
    limit: i64,
    now: i64,
) -> [Stmt; 2] {
    let h = horizon(now).at;
    let q = |range: &str, n: i64| {
        Stmt::new(
            format!(
                "SELECT {columns}, deleted_at FROM ai_tasks
                 WHERE user_id = ?1 AND updated_at >= ?2 AND (updated_at > ?2 OR id > ?3) AND {range}
                 ORDER BY updated_at, id LIMIT ?5"
            ),
            vec![
                user.to_string().into(),
                from.at.into(),
                from.id.clone().into(),
                h.into(),
                n.into(),
            ],
        )
    };
    [
        q("updated_at < ?4", limit + 1),
        q("updated_at >= ?4", MAX_RECENT),
    ]
}

/// A page from the rows of [`sync_queries`]: the rows to send, where the next request continues,
/// and whether more settled changes wait beyond this page. While settled changes fill the page,
/// the cursor follows them; the page that drains them also carries the recent ones and leaves the
/// cursor at the horizon (never behind `from`).
pub fn assemble<T>(
    from: &SyncPos,
    mut settled: Vec<T>,
    recent: Vec<T>,
    limit: usize,
    now: i64,
    pos: impl Fn(&T) -> SyncPos,
) -> (Vec<T>, SyncPos, bool) {
    if settled.len() > limit {
        settled.truncate(limit);
        let next = settled.last().map_or_else(|| from.clone(), &pos);
        return (settled, next, true);
    }
    let next = from.clone().max(horizon(now));
    settled.extend(recent);
    (settled, next, false)
}

// ---------------------------------------------------------------------------------------------
// Deleting
// ---------------------------------------------------------------------------------------------

/// What became of one id of a delete request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Deleted by this request.
    Deleted,
    /// Still pending, submitted or processing: refused until it ends.
    Running,
    /// No such task of this user, or deleted before.
    NotFound,
}

/// The ids of a bulk delete: 1 to [`MAX_DELETE_IDS`] task ids, each once (order kept).
pub fn parse_ids(body: &serde_json::Value) -> Result<Vec<String>, String> {
    let obj = body.as_object().ok_or("body must be a JSON object")?;
    if let Some(other) = obj.keys().find(|k| k.as_str() != "ids") {
        return Err(format!("unknown field `{other}`"));
    }
    let ids = obj
        .get("ids")
        .and_then(serde_json::Value::as_array)
        .ok_or("`ids` must be an array of task ids")?;
    if ids.is_empty() || ids.len() > MAX_DELETE_IDS {
        return Err(format!("`ids` must hold 1 to {MAX_DELETE_IDS} task ids"));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, v) in ids.iter().enumerate() {
        let id = v
            .as_str()
            .and_then(|s| crate::ids::TaskId::parse(s).ok())
            .ok_or_else(|| format!("ids[{i}] is not a task id"))?
            .to_string();
        if seen.insert(id.clone()) {
            out.push(id);
        }
    }
    Ok(out)
}

/// The batch that deletes `ids` (a JSON array of task ids) for `user` at `now`, in one round trip:
///
/// 0. marks the user's ended, not yet deleted tasks among them deleted (and changed, for sync),
///    returning each one's `id, result_keys, input_params`;
/// 1. revokes the live shares of the user's deleted tasks among them, returning the share ids
///    (their KV copies go next);
/// 2. reads back every id of the user among them with its status and `deleted_at`, so each id's
///    outcome is known ([`outcome`]);
/// 3. the inputs of the user's tasks that are still live and were submitted with the same inputs
///    as one of them (an operator's retry reuses its original's uploads): those uploads stay.
pub fn delete_tasks(user: &UserId, ids_json: &str, now: i64) -> [Stmt; 4] {
    let p = || -> Vec<Param> { vec![user.to_string().into(), ids_json.into(), now.into()] };
    let p2 = || -> Vec<Param> { vec![user.to_string().into(), ids_json.into()] };
    let ids = "SELECT value FROM json_each(?2)";
    [
        Stmt::new(
            format!(
                "UPDATE ai_tasks SET deleted_at = ?3, updated_at = MAX(updated_at, ?3)
                 WHERE user_id = ?1 AND id IN ({ids}) AND deleted_at IS NULL
                   AND status IN ('completed','failed')
                 RETURNING id, result_keys, input_params"
            ),
            p(),
        ),
        Stmt::new(
            format!(
                "UPDATE shares SET revoked_at = ?3
                 WHERE user_id = ?1 AND revoked_at IS NULL
                   AND task_id IN (SELECT id FROM ai_tasks WHERE user_id = ?1 AND id IN ({ids}) AND deleted_at IS NOT NULL)
                 RETURNING id"
            ),
            p(),
        ),
        Stmt::new(
            format!(
                "SELECT id, status, deleted_at FROM ai_tasks WHERE user_id = ?1 AND id IN ({ids})"
            ),
            p2(),
        ),
        Stmt::new(
            format!(
                "SELECT DISTINCT input_params FROM ai_tasks
                 WHERE user_id = ?1 AND deleted_at IS NULL
                   AND input_params IN (SELECT input_params FROM ai_tasks WHERE user_id = ?1 AND id IN ({ids}))"
            ),
            p2(),
        ),
    ]
}

/// A row of statement 0 of [`delete_tasks`] (and of [`purge_candidates`]).
#[derive(Debug, Clone, Deserialize)]
pub struct DeletedTask {
    pub id: String,
    pub result_keys: Option<String>,
    pub input_params: String,
}

/// A row of statement 2 of [`delete_tasks`].
#[derive(Debug, Clone, Deserialize)]
pub struct TaskState {
    pub id: String,
    pub status: String,
    pub deleted_at: Option<i64>,
}

/// The outcome of one requested id, from the rows the batch returned.
pub fn outcome(id: &str, deleted_now: &[DeletedTask], states: &[TaskState]) -> DeleteOutcome {
    if deleted_now.iter().any(|d| d.id == id) {
        return DeleteOutcome::Deleted;
    }
    match states.iter().find(|s| s.id == id) {
        Some(s)
            if s.deleted_at.is_none()
                && crate::task::TaskStatus::parse(&s.status)
                    .is_some_and(|st| !st.is_terminal()) =>
        {
            DeleteOutcome::Running
        }
        _ => DeleteOutcome::NotFound,
    }
}

/// The R2 keys of a task's uploaded inputs.
pub fn upload_keys(input_params: &str) -> Vec<String> {
    serde_json::from_str::<TaskInput>(input_params)
        .map(|i| {
            i.images
                .into_iter()
                .filter_map(|r| match r {
                    ImageRef::Upload(k) => Some(k),
                    ImageRef::Url(_) => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The R2 keys to remove for deleted tasks: every result, and every uploaded input that no
/// still-live task's inputs (`kept_inputs`, statement 3 of [`delete_tasks`]) name.
pub fn objects_to_remove(deleted: &[DeletedTask], kept_inputs: &[String]) -> Vec<String> {
    let kept: BTreeSet<String> = kept_inputs.iter().flat_map(|p| upload_keys(p)).collect();
    let mut keys = BTreeSet::new();
    for d in deleted {
        let results: Vec<String> = d
            .result_keys
            .as_deref()
            .and_then(|k| serde_json::from_str(k).ok())
            .unwrap_or_default();
        keys.extend(results);
        keys.extend(
            upload_keys(&d.input_params)
                .into_iter()
                .filter(|k| !kept.contains(k)),
        );
    }
    keys.into_iter().collect()
}

/// Deleted tasks whose objects the retention job has not confirmed gone, oldest first, with
/// whether their inputs are free to remove (no live task of the user names the same inputs).
pub fn purge_candidates(limit: i64) -> Stmt {
    Stmt::new(
        "SELECT t.id, t.result_keys,
                CASE WHEN EXISTS (SELECT 1 FROM ai_tasks o WHERE o.user_id = t.user_id AND o.deleted_at IS NULL
                                  AND o.input_params = t.input_params) THEN '{}' ELSE t.input_params END AS input_params
         FROM ai_tasks t
         WHERE t.deleted_at IS NOT NULL AND t.purged_at IS NULL
         ORDER BY t.deleted_at LIMIT ?1",
        vec![limit.into()],
    )
}

/// Records that the objects of these tasks (a JSON array of ids) are gone.
pub fn mark_purged(ids_json: &str, now: i64) -> Stmt {
    Stmt::new(
        "UPDATE ai_tasks SET purged_at = ?2
         WHERE id IN (SELECT value FROM json_each(?1)) AND deleted_at IS NOT NULL AND purged_at IS NULL",
        vec![ids_json.into(), now.into()],
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::audit::tests::{db, exec, value};
    use crate::ids::TaskId;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use rusqlite::{params_from_iter, Connection};

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let p = SyncPos {
            at: 1_700_000_000,
            id: TaskId::new().to_string(),
        };
        assert_eq!(SyncPos::decode(&p.encode()), Some(p.clone()));
        // clients keep cursors: these bytes may never change
        assert_eq!(
            p.encode(),
            URL_SAFE_NO_PAD.encode(format!("s1.1700000000.{}", p.id))
        );
        assert_eq!(SyncPos::since(5).encode(), URL_SAFE_NO_PAD.encode("s1.5."));
        let start = SyncPos::since(5);
        assert_eq!(SyncPos::decode(&start.encode()), Some(start));
        for bad in [
            "",
            "x",
            &URL_SAFE_NO_PAD.encode("s1.-1."),
            &URL_SAFE_NO_PAD.encode("s1.5.nope"),
        ] {
            assert_eq!(SyncPos::decode(bad), None, "{bad}");
        }
        // a list cursor (created_at:id) is not a sync cursor
        let list = URL_SAFE_NO_PAD.encode(format!("5:{}", TaskId::new()));
        assert!(!SyncPos::is_sync_cursor(&list));
        assert!(
            SyncPos::since(0)
                < SyncPos {
                    at: 0,
                    id: "0".into()
                }
        );
    }

    #[test]
    fn the_cursor_follows_settled_rows_and_stops_at_the_horizon() {
        let now = 1000;
        let h = horizon(now);
        let p = |at: i64, id: &str| SyncPos { at, id: id.into() };
        let from = SyncPos::since(0);
        let id = |x: &SyncPos| x.clone();
        // more settled rows than a page: follow them, recent ones wait
        let (rows, next, more) = assemble(
            &from,
            vec![p(1, "a"), p(2, "b"), p(3, "c")],
            vec![p(now, "z")],
            2,
            now,
            id,
        );
        assert_eq!(
            (rows, next, more),
            (vec![p(1, "a"), p(2, "b")], p(2, "b"), true)
        );
        // the page that drains them carries the recent ones and stops at the horizon
        let (rows, next, more) = assemble(
            &p(2, "b"),
            vec![p(3, "c")],
            vec![p(now - 1, "y"), p(now, "z")],
            2,
            now,
            id,
        );
        assert_eq!((rows.len(), next.clone(), more), (3, h.clone(), false));
        // nothing new: the horizon, never backwards
        assert_eq!(assemble(&from, vec![], vec![], 2, now, id).1, h);
        let ahead = p(now + 5, "z");
        assert_eq!(assemble(&ahead, vec![], vec![], 2, now, id).1, ahead);
    }

    /// Writers change tasks at random, each change committing up to `SYNC_SETTLE_SECS - 1`
    /// seconds after the `updated_at` it carries; a device syncs at random times with small pages.
    /// After the last change, one more sync past the horizon leaves it equal to the server.
    #[test]
    fn a_device_that_syncs_converges_whatever_the_interleaving() {
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for round in 0..40 {
            let ids: Vec<String> = (0..12).map(|i| format!("{i:02}")).collect();
            // (commit time in ms, id, updated_at, version)
            let mut writes: Vec<(u64, String, i64, u32)> = Vec::new();
            for v in 0..60u32 {
                let at = i64::try_from(next(120)).unwrap_or(0);
                let delay_ms = next(u64::try_from(SYNC_SETTLE_SECS).unwrap_or(1) * 1000 - 1);
                let id = ids[usize::try_from(next(12)).unwrap_or(0)].clone();
                let commit = u64::try_from(at).unwrap_or(0) * 1000 + delay_ms;
                writes.push((commit, id, at, v));
            }
            writes.sort();
            // server state at time t (ms): the latest committed write per id, by commit order
            let state = |t_ms: u64| {
                let mut rows: std::collections::BTreeMap<String, (i64, u32)> = Default::default();
                for (c, id, at, v) in &writes {
                    if *c <= t_ms {
                        rows.insert(id.clone(), (*at, *v));
                    }
                }
                rows
            };
            let mut device: std::collections::BTreeMap<String, (i64, u32)> = Default::default();
            let mut cursor = SyncPos::since(0);
            let mut t_ms = 0;
            let end_ms = 200_000;
            while t_ms < end_ms + u64::try_from(SYNC_SETTLE_SECS).unwrap_or(0) * 1000 + 2000 {
                t_ms += 1 + next(4000);
                let now = i64::try_from(t_ms / 1000).unwrap_or(0);
                let limit = 1 + usize::try_from(next(4)).unwrap_or(0);
                let recent_cap = 1 + usize::try_from(next(3)).unwrap_or(0);
                loop {
                    let rows = state(t_ms);
                    let h = horizon(now);
                    let mut after: Vec<(SyncPos, u32)> = rows
                        .iter()
                        .map(|(id, (at, v))| {
                            (
                                SyncPos {
                                    at: *at,
                                    id: id.clone(),
                                },
                                *v,
                            )
                        })
                        .filter(|(p, _)| *p > cursor)
                        .collect();
                    after.sort();
                    let (mut settled, mut recent): (Vec<_>, Vec<_>) =
                        after.into_iter().partition(|(p, _)| p.at < h.at);
                    settled.truncate(limit + 1);
                    recent.truncate(recent_cap);
                    let (page, next_cursor, more) =
                        assemble(&cursor, settled, recent, limit, now, |(p, _)| p.clone());
                    for (p, v) in &page {
                        device.insert(p.id.clone(), (p.at, *v));
                    }
                    assert!(next_cursor >= cursor, "round {round}: never backwards");
                    cursor = next_cursor;
                    if !more {
                        break;
                    }
                }
            }
            assert_eq!(
                device,
                state(u64::MAX),
                "round {round}: the device converged"
            );
        }
    }

    /// Rows of a statement as D1 returns them: one JSON object per row (every module's tests).
    pub(crate) fn rows(conn: &Connection, s: &Stmt) -> Vec<serde_json::Value> {
        let mut st = conn
            .prepare(&s.sql)
            .unwrap_or_else(|e| panic!("{e}: {}", s.sql));
        let names: Vec<String> = st.column_names().map(str::to_owned).collect();
        let mut out = Vec::new();
        let mut q = st
            .query(params_from_iter(s.params.iter().map(value)))
            .unwrap();
        while let Some(r) = q.next().unwrap() {
            let mut obj = serde_json::Map::new();
            for (i, n) in names.iter().enumerate() {
                let v = match r.get::<_, rusqlite::types::Value>(i).unwrap() {
                    rusqlite::types::Value::Integer(n) => serde_json::json!(n),
                    rusqlite::types::Value::Text(t) => serde_json::json!(t),
                    _ => serde_json::Value::Null,
                };
                obj.insert(n.clone(), v);
            }
            out.push(serde_json::Value::Object(obj));
        }
        out
    }

    pub(crate) fn user(conn: &Connection) -> UserId {
        let u = UserId::new();
        conn.execute(
            "INSERT INTO users (id, email, name) VALUES (?1, ?2, 'u')",
            [u.to_string(), format!("{u}@t")],
        )
        .unwrap();
        u
    }

    pub(crate) fn task(
        conn: &Connection,
        u: &UserId,
        status: &str,
        updated_at: i64,
        input: &str,
    ) -> String {
        let t = TaskId::new().to_string();
        conn.execute(
            "INSERT INTO ai_tasks (id, task_no, user_id, status, input_params, external_provider, cost, result_keys, created_at, updated_at)
             VALUES (?1, ?1, ?2, ?3, ?4, 'kie_4o', 2, ?5, ?6, ?6)",
            rusqlite::params![t, u.to_string(), status, input, format!("[\"result/kie_4o/{t}/result_0.png\"]"), updated_at],
        )
        .unwrap();
        t
    }

    fn input(upload: &str) -> String {
        format!(
            r#"{{"prompt":"p","model":"kie_kontext","size":"1:1","images":[{{"upload":"{upload}"}},{{"url":"https://x/y.png"}}]}}"#
        )
    }

    #[test]
    fn the_feed_query_orders_by_updated_at_then_id_and_includes_tombstones() {
        let conn = db();
        let u = user(&conn);
        let other = user(&conn);
        let a = task(&conn, &u, "completed", 10, "{}");
        let b = task(&conn, &u, "failed", 10, "{}");
        let c = task(&conn, &u, "pending", 20, "{}");
        task(&conn, &other, "completed", 15, "{}");
        conn.execute(
            "UPDATE ai_tasks SET deleted_at = 20, updated_at = 20 WHERE id = ?1",
            [&b],
        )
        .unwrap();
        let [settled, recent] = sync_queries(
            "id, updated_at",
            &u,
            &SyncPos::since(10),
            10,
            20 + SYNC_SETTLE_SECS,
        );
        let page: Vec<serde_json::Value> = rows(&conn, &settled)
            .into_iter()
            .chain(rows(&conn, &recent))
            .collect();
        let mut want = vec![(10, a.clone()), (20, b.clone()), (20, c.clone())];
        want.sort();
        let got: Vec<(i64, String)> = page
            .iter()
            .map(|r| {
                (
                    r["updated_at"].as_i64().unwrap(),
                    r["id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(got, want, "the user's rows only, in order");
        let tomb = page.iter().find(|r| r["id"] == b.as_str()).unwrap();
        assert_eq!(tomb["deleted_at"], 20);
        // at time 45 the horizon is 15: the rows at 20 are recent, the one at 10 settled
        let [settled, recent] = sync_queries("id, updated_at", &u, &SyncPos::since(0), 10, 45);
        assert_eq!(rows(&conn, &settled).len(), 1);
        assert_eq!(rows(&conn, &recent).len(), 2);
        // strictly after a position; limit + 1 settled rows asked
        let from = SyncPos {
            at: want[0].0,
            id: want[0].1.clone(),
        };
        let [settled, _] = sync_queries("id, updated_at", &u, &from, 1, 100);
        let after = rows(&conn, &settled);
        assert_eq!(after.len(), 2);
        assert_eq!(after[0]["id"], want[1].1.as_str());
        let [s, r] = sync_queries("id", &u, &SyncPos::since(21), 10, 100);
        assert!(rows(&conn, &s).is_empty() && rows(&conn, &r).is_empty());
    }

    #[test]
    fn deleting_marks_ended_tasks_revokes_their_shares_and_keeps_shared_inputs() {
        let conn = db();
        let u = user(&conn);
        let other = user(&conn);
        let done = task(&conn, &u, "completed", 5, &input("cache/u/one.png"));
        let retried = task(&conn, &u, "failed", 5, &input("cache/u/two.png"));
        let _retry = task(&conn, &u, "completed", 6, &input("cache/u/two.png"));
        let running = task(&conn, &u, "processing", 5, "{}");
        let theirs = task(&conn, &other, "completed", 5, "{}");
        for (s, t) in [("s1", &done), ("s2", &done), ("s3", &retried)] {
            conn.execute(
                "INSERT INTO shares (id, user_id, task_id, created_at) VALUES (?1, ?2, ?3, 1)",
                [s, &u.to_string(), t],
            )
            .unwrap();
        }
        conn.execute("UPDATE shares SET revoked_at = 2 WHERE id = 's2'", [])
            .unwrap();
        let missing = TaskId::new().to_string();
        let ids = serde_json::json!([done, retried, running, theirs, missing]).to_string();
        let stmts = delete_tasks(&u, &ids, 100);
        let deleted: Vec<DeletedTask> = rows(&conn, &stmts[0])
            .into_iter()
            .map(|r| serde_json::from_value(r).unwrap())
            .collect();
        let revoked = rows(&conn, &stmts[1]);
        let states: Vec<TaskState> = rows(&conn, &stmts[2])
            .into_iter()
            .map(|r| serde_json::from_value(r).unwrap())
            .collect();
        let kept: Vec<String> = rows(&conn, &stmts[3])
            .into_iter()
            .map(|r| r["input_params"].as_str().unwrap().to_owned())
            .collect();
        let mut got: Vec<&str> = deleted.iter().map(|d| d.id.as_str()).collect();
        got.sort_unstable();
        let mut want = vec![done.as_str(), retried.as_str()];
        want.sort_unstable();
        assert_eq!(got, want, "the ended tasks of the user");
        let mut revoked: Vec<&str> = revoked.iter().map(|r| r["id"].as_str().unwrap()).collect();
        revoked.sort_unstable();
        assert_eq!(revoked, vec!["s1", "s3"], "their live shares");
        assert_eq!(outcome(&done, &deleted, &states), DeleteOutcome::Deleted);
        assert_eq!(outcome(&running, &deleted, &states), DeleteOutcome::Running);
        assert_eq!(outcome(&theirs, &deleted, &states), DeleteOutcome::NotFound);
        assert_eq!(
            outcome(&missing, &deleted, &states),
            DeleteOutcome::NotFound
        );
        let objects = objects_to_remove(&deleted, &kept);
        assert!(objects.contains(&format!("result/kie_4o/{done}/result_0.png")));
        assert!(objects.contains(&format!("result/kie_4o/{retried}/result_0.png")));
        assert!(objects.contains(&"cache/u/one.png".to_owned()));
        assert!(
            !objects.contains(&"cache/u/two.png".to_owned()),
            "the live retry still uses it"
        );
        assert_eq!(objects.len(), 3);
        let (deleted_at, updated_at): (i64, i64) = conn
            .query_row(
                "SELECT deleted_at, updated_at FROM ai_tasks WHERE id = ?1",
                [&done],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (deleted_at, updated_at),
            (100, 100),
            "a tombstone moves forward in the feed"
        );
        // a second delete finds nothing to do, and a deleted task's outcome is not found
        let again = delete_tasks(&u, &ids, 200);
        assert_eq!(exec(&conn, &again[0]), 0);
        let states: Vec<TaskState> = rows(&conn, &again[2])
            .into_iter()
            .map(|r| serde_json::from_value(r).unwrap())
            .collect();
        assert_eq!(outcome(&done, &[], &states), DeleteOutcome::NotFound);
        // the ledger is untouched: nothing here deletes a row
        for s in &stmts {
            assert!(!s.sql.contains("DELETE"), "{}", s.sql);
        }

        // the retention job's purge finds both until they are marked
        let found = rows(&conn, &purge_candidates(10));
        assert_eq!(found.len(), 2);
        let two = found.iter().find(|r| r["id"] == retried.as_str()).unwrap();
        assert_eq!(
            two["input_params"], "{}",
            "inputs a live task still names are not freed"
        );
        exec(
            &conn,
            &mark_purged(&serde_json::json!([done, retried]).to_string(), 300),
        );
        assert!(rows(&conn, &purge_candidates(10)).is_empty());
    }

    #[test]
    fn bulk_ids_are_checked() {
        let t = TaskId::new().to_string();
        assert_eq!(
            parse_ids(&serde_json::json!({"ids": [t, t]})),
            Ok(vec![t.clone()])
        );
        assert!(parse_ids(&serde_json::json!({"ids": []})).is_err());
        assert!(parse_ids(&serde_json::json!({"ids": ["x"]})).is_err());
        assert!(parse_ids(&serde_json::json!({"ids": [t], "all": true})).is_err());
        assert!(parse_ids(&serde_json::json!({})).is_err());
        let many: Vec<String> = (0..=MAX_DELETE_IDS)
            .map(|_| TaskId::new().to_string())
            .collect();
        assert!(parse_ids(&serde_json::json!({ "ids": many })).is_err());
        assert_eq!(
            upload_keys(&input("cache/a.png")),
            vec!["cache/a.png".to_owned()]
        );
        assert!(upload_keys("not json").is_empty());
    }
}
