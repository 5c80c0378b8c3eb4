//! The user's own view of their account (`GET /api/me`): who they are, what they have, what
//! they did, and where every credit went.
//!
//! The statement ([`statement_query`]) is the ledger as a user reads it: grants (`purchase`,
//! `gift`, `subscription`), `consumption`s, `clawback`s, `hold`s of tasks still running, and
//! `expiry` entries for what expired grants left unspent (derived, like the balance: a grant
//! lapses by time, not by a row). A hold that ended is left out with its release: together they
//! move nothing. So the entries add up to exactly the balance of [`crate::ledger::balance_query`].

use crate::ids::UserId;
use crate::page::CursorFormat;
use crate::sql::{Param, Stmt};
use serde::{Deserialize, Serialize};

/// The user with their task counts and credits spent.
pub fn profile_query(user: &UserId) -> Stmt {
    Stmt::new(
        "SELECT u.id, u.email, u.name, u.picture, u.created_at,
                (SELECT COUNT(*) FROM ai_tasks WHERE user_id = ?1 AND deleted_at IS NULL) AS tasks_total,
                (SELECT COUNT(*) FROM ai_tasks WHERE user_id = ?1 AND deleted_at IS NULL AND status = 'completed') AS tasks_completed,
                (SELECT COUNT(*) FROM ai_tasks WHERE user_id = ?1 AND deleted_at IS NULL AND status = 'failed') AS tasks_failed,
                (SELECT COUNT(*) FROM ai_tasks WHERE user_id = ?1 AND deleted_at IS NULL
                   AND status IN ('pending','submitted','processing')) AS tasks_running,
                (SELECT COUNT(*) FROM ai_tasks WHERE user_id = ?1 AND deleted_at IS NOT NULL) AS tasks_deleted,
                (SELECT COALESCE(-SUM(amount), 0) FROM credit_records WHERE user_id = ?1 AND type = 'consumption') AS credits_spent
         FROM users u WHERE u.id = ?1",
        vec![user.to_string().into()],
    )
}

/// The row of [`profile_query`].
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Profile {
    pub id: String,
    pub email: String,
    pub name: String,
    pub picture: Option<String>,
    pub created_at: Option<i64>,
    pub tasks_total: i64,
    pub tasks_completed: i64,
    pub tasks_failed: i64,
    pub tasks_running: i64,
    pub tasks_deleted: i64,
    pub credits_spent: i64,
}

/// The user's current subscription, ranked as `GET /api/subscription` ranks them: live ones
/// first, then cancelled ones still in their period, then the latest to end.
pub fn subscription_query(user: &UserId, now: i64) -> Stmt {
    Stmt::new(
        "SELECT id, plan_type AS plan, status, billing_cycle, current_period_start,
                expires_at AS current_period_end, cancelled_at, credits_per_period,
                CASE WHEN status IN ('active','trialing','past_due','cancelled') AND expires_at > ?2 THEN 1 ELSE 0 END AS access
         FROM subscriptions WHERE user_id = ?1
         ORDER BY CASE WHEN status IN ('active','trialing','past_due') THEN 0 WHEN status = 'cancelled' AND expires_at > ?2 THEN 1 ELSE 2 END,
                  expires_at DESC
         LIMIT 1",
        vec![user.to_string().into(), now.into()],
    )
}

/// One line of the statement.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Entry {
    pub id: String,
    /// `purchase`, `gift`, `subscription`, `consumption`, `clawback`, `hold` or `expiry`.
    pub kind: String,
    pub amount: i64,
    pub at: i64,
    pub expires_at: Option<i64>,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    pub note: Option<String>,
}

/// A page of the statement, newest first, after `before` (`(at, id)` of the last entry seen);
/// `limit + 1` rows to learn whether there are more.
pub fn statement_query(
    user: &UserId,
    now: i64,
    before: Option<&(i64, String)>,
    limit: i64,
) -> Stmt {
    let (at, id) = before.cloned().unwrap_or((0, String::new()));
    Stmt::new(
        "SELECT id, kind, amount, at, expires_at, entity_type, entity_id, note FROM (
           SELECT r.id AS id, CASE WHEN r.type = 'reserve' THEN 'hold' ELSE r.type END AS kind,
                  r.amount AS amount, r.created_at AS at, r.expires_at AS expires_at,
                  r.entity_type AS entity_type, r.entity_id AS entity_id, r.note AS note
           FROM credit_records r
           WHERE r.user_id = ?1 AND r.type != 'release'
             AND NOT (r.type = 'reserve' AND EXISTS (SELECT 1 FROM credit_records rel WHERE rel.type = 'release'
                      AND rel.entity_type = r.entity_type AND rel.entity_id = r.entity_id))
           UNION ALL
           SELECT 'expiry:' || g.id, 'expiry',
                  -(g.amount - COALESCE((SELECT SUM(c.amount) FROM credit_consumptions c WHERE c.from_record_id = g.id), 0)),
                  g.expires_at, g.expires_at, g.entity_type, g.entity_id, 'expired unspent'
           FROM credit_records g
           WHERE g.user_id = ?1 AND g.amount > 0 AND g.type IN ('purchase','gift','subscription')
             AND g.expires_at IS NOT NULL AND g.expires_at <= ?2
             AND NOT EXISTS (SELECT 1 FROM credit_records cb WHERE cb.type = 'clawback'
                             AND cb.entity_type = g.entity_type AND cb.entity_id = g.entity_id)
             AND g.amount > COALESCE((SELECT SUM(c.amount) FROM credit_consumptions c WHERE c.from_record_id = g.id), 0))
         WHERE ?5 = 1 OR at < ?3 OR (at = ?3 AND id < ?4)
         ORDER BY at DESC, id DESC LIMIT ?6",
        vec![
            user.to_string().into(),
            now.into(),
            at.into(),
            id.clone().into(),
            Param::Int(i64::from(before.is_none())),
            (limit + 1).into(),
        ],
    )
}

/// How the statement writes its cursors: `l1.{at}.{id}`.
const CURSOR: CursorFormat = CursorFormat::Tagged("l1");

/// The cursor after an entry.
pub fn encode_cursor(e: &Entry) -> String {
    CURSOR.encode(e.at, &e.id)
}

/// A statement cursor we issued, or `None`.
pub fn decode_cursor(cursor: &str) -> Option<(i64, String)> {
    CURSOR
        .decode(cursor)
        .filter(|(_, id)| !id.is_empty() && id.len() <= 200)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{db, exec, value};
    use crate::history::tests::user;
    use crate::ids::{Credits, TaskId};
    use crate::ledger::{self, EntryKind, NewGrant, NewTaskHold};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use rusqlite::{params_from_iter, Connection};

    fn entries(conn: &Connection, s: &Stmt) -> Vec<Entry> {
        let mut st = conn
            .prepare(&s.sql)
            .unwrap_or_else(|e| panic!("{e}: {}", s.sql));
        assert_eq!(st.parameter_count(), s.params.len());
        st.query_map(params_from_iter(s.params.iter().map(value)), |r| {
            Ok(Entry {
                id: r.get(0)?,
                kind: r.get(1)?,
                amount: r.get(2)?,
                at: r.get(3)?,
                expires_at: r.get(4)?,
                entity_type: r.get(5)?,
                entity_id: r.get(6)?,
                note: r.get(7)?,
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    fn grant(
        conn: &Connection,
        u: &UserId,
        reference: &str,
        amount: i64,
        expires_at: Option<i64>,
        at: i64,
    ) {
        let uid = u.to_string();
        exec(
            conn,
            &ledger::grant(NewGrant {
                id: format!("gift:{reference}"),
                user: &uid,
                kind: EntryKind::Gift,
                amount: Credits(amount),
                entity: ("admin", reference),
                expires_at,
                note: "test",
                now: at,
            }),
        );
    }

    fn submit(conn: &Connection, u: &UserId, cost: i64, at: i64) -> TaskId {
        let t = TaskId::new();
        let no = t.task_no(at);
        for s in ledger::reserve_task(NewTaskHold {
            task: &t,
            task_no: &no,
            user: u,
            model: "kie_4o",
            input_params: "{}",
            idempotency_key: None,
            cost: Credits(cost),
            deadline_at: at + 900,
            retry_of: None,
            now: at,
        }) {
            exec(conn, &s);
        }
        t
    }

    fn complete(conn: &Connection, t: &TaskId, at: i64) {
        conn.execute(
            "UPDATE ai_tasks SET status = 'completed' WHERE id = ?1",
            [t.to_string()],
        )
        .unwrap();
        for s in ledger::settle(t, at) {
            exec(conn, &s);
        }
    }

    /// Every page, following cursors.
    fn all_pages(conn: &Connection, u: &UserId, now: i64, limit: i64) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut before: Option<(i64, String)> = None;
        loop {
            let mut page = entries(conn, &statement_query(u, now, before.as_ref(), limit));
            let more = page.len() > usize::try_from(limit).unwrap();
            page.truncate(usize::try_from(limit).unwrap());
            let Some(last) = page.last().cloned() else {
                break;
            };
            before = decode_cursor(&encode_cursor(&last));
            out.extend(page);
            if !more {
                break;
            }
        }
        out
    }

    fn balance(conn: &Connection, u: &UserId, now: i64) -> i64 {
        let s = ledger::balance_query(u, now);
        conn.query_row(&s.sql, params_from_iter(s.params.iter().map(value)), |r| {
            r.get(0)
        })
        .unwrap()
    }

    #[test]
    fn the_statement_adds_up_to_the_balance_at_any_time() {
        let conn = db();
        let u = user(&conn);
        grant(&conn, &u, "forever", 10, None, 100);
        grant(&conn, &u, "promo", 5, Some(500), 110);
        grant(&conn, &u, "lapsing", 4, Some(300), 120);
        let done = submit(&conn, &u, 3, 200);
        complete(&conn, &done, 210);
        let failed = submit(&conn, &u, 2, 220);
        for s in ledger::fail_task(&failed, "x", 230) {
            exec(&conn, &s);
        }
        let running = submit(&conn, &u, 2, 240);
        // a refund of the promo after part of it was spent
        conn.execute(
            "INSERT INTO credit_records (id, user_id, amount, type, entity_type, entity_id, created_at)
             VALUES ('clawback:promo', ?1, -5, 'clawback', 'admin', 'promo', 250)",
            [u.to_string()],
        )
        .unwrap();
        for now in [250, 400, 600] {
            let all = all_pages(&conn, &u, now, 2);
            let sum: i64 = all.iter().map(|e| e.amount).sum();
            assert_eq!(sum, balance(&conn, &u, now), "at {now}: {all:#?}");
            let ids: std::collections::BTreeSet<&str> = all.iter().map(|e| e.id.as_str()).collect();
            assert_eq!(ids.len(), all.len(), "no entry twice across pages");
            assert!(
                all.windows(2)
                    .all(|w| (w[0].at, &w[0].id) > (w[1].at, &w[1].id)),
                "newest first"
            );
            let kinds: Vec<&str> = all.iter().map(|e| e.kind.as_str()).collect();
            assert!(!kinds.contains(&"release"));
            assert_eq!(
                kinds.iter().filter(|k| **k == "hold").count(),
                1,
                "only the running task's hold"
            );
            assert!(all
                .iter()
                .any(|e| e.kind == "hold" && e.entity_id.as_deref() == Some(&running.to_string())));
            assert!(all
                .iter()
                .any(|e| e.kind == "consumption" && e.amount == -3));
            assert!(all.iter().any(|e| e.kind == "clawback"));
            let expired: Vec<&Entry> = all.iter().filter(|e| e.kind == "expiry").collect();
            if now < 300 {
                assert!(expired.is_empty());
            } else {
                // the lapsing grant expired; what the task drew from it stays spent (the promo,
                // clawed back, does not lapse a second time)
                assert_eq!(expired.len(), 1, "{expired:?}");
                assert_eq!(expired[0].id, "expiry:gift:lapsing");
                assert_eq!(expired[0].at, 300);
            }
        }
        assert_eq!(decode_cursor("nope"), None);
        assert_eq!(decode_cursor(&URL_SAFE_NO_PAD.encode("l1.5.")), None);
        // clients keep cursors: these bytes may never change
        let e = &Entry {
            id: "gift:promo".into(),
            kind: "gift".into(),
            amount: 5,
            at: 110,
            expires_at: None,
            entity_type: None,
            entity_id: None,
            note: None,
        };
        assert_eq!(decode_cursor(&encode_cursor(e)), Some((110, e.id.clone())));
        assert_eq!(
            encode_cursor(e),
            URL_SAFE_NO_PAD.encode(format!("l1.{}.{}", e.at, e.id))
        );
        let long = "x".repeat(201);
        assert_eq!(
            decode_cursor(&URL_SAFE_NO_PAD.encode(format!("l1.5.{long}"))),
            None
        );
        assert_eq!(
            decode_cursor(&URL_SAFE_NO_PAD.encode("l1.5.a.b")),
            Some((5, "a.b".to_owned()))
        );
    }

    #[test]
    fn the_profile_counts_live_tasks_and_spending() {
        let conn = db();
        let u = user(&conn);
        grant(&conn, &u, "g", 20, None, 1);
        let a = submit(&conn, &u, 3, 10);
        complete(&conn, &a, 11);
        let b = submit(&conn, &u, 3, 12);
        complete(&conn, &b, 13);
        let c = submit(&conn, &u, 2, 14);
        for s in ledger::fail_task(&c, "x", 15) {
            exec(&conn, &s);
        }
        submit(&conn, &u, 2, 16);
        conn.execute(
            "UPDATE ai_tasks SET deleted_at = 20 WHERE id = ?1",
            [b.to_string()],
        )
        .unwrap();
        let s = profile_query(&u);
        let row: (i64, i64, i64, i64, i64, i64) = conn
            .query_row(&s.sql, params_from_iter(s.params.iter().map(value)), |r| {
                Ok((
                    r.get("tasks_total")?,
                    r.get("tasks_completed")?,
                    r.get("tasks_failed")?,
                    r.get("tasks_running")?,
                    r.get("tasks_deleted")?,
                    r.get("credits_spent")?,
                ))
            })
            .unwrap();
        assert_eq!(
            row,
            (3, 1, 1, 1, 1, 6),
            "a deleted task's spending is still spending"
        );
        let sub = subscription_query(&u, 0);
        let mut st = conn.prepare(&sub.sql).unwrap();
        assert_eq!(st.parameter_count(), 2);
        assert!(st
            .query(params_from_iter(sub.params.iter().map(value)))
            .unwrap()
            .next()
            .unwrap()
            .is_none());
    }
}
