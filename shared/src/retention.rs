//! How long what the system writes about itself is kept: the cron's `retention` job deletes, in
//! bounded chunks, each table's rows past their rule ([`RULES`], in that order). Every cutoff is
//! a number of days (a setting, with a default) before now. Money history (ledger, orders, tasks)
//! is never deleted; what a user deletes is `history`'s.
//!
//! - handled payment events ([`WEBHOOK_EVENTS`]): never one still `received`, which the event
//!   reconciler and the operators may still need;
//! - dead letters an operator replayed or discarded ([`DEAD_LETTERS`]): with their R2 bodies, so
//!   they go through `dead_letters::expired` and `dead_letters::delete_expired`, not [`delete`];
//! - sign-in logs ([`SIGNIN_LOGS`]);
//! - cron runs ([`CRON_RUNS`]; `started_at` is in milliseconds).

use crate::sql::Stmt;

/// One table's retention: its rows matching `condition` (`?1` is the cutoff, in unix seconds)
/// are deleted once the cutoff is `setting` days (default `default_days`) before now.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub table: &'static str,
    pub condition: &'static str,
    pub setting: &'static str,
    pub default_days: i64,
}

pub const WEBHOOK_EVENTS: Rule = Rule {
    table: "webhook_events",
    condition: "received_at < ?1 AND status != 'received'",
    setting: "WEBHOOK_RETENTION_DAYS",
    default_days: 90,
};

pub const DEAD_LETTERS: Rule = Rule {
    table: "dead_letters",
    condition: crate::dead_letters::EXPIRED,
    setting: "DEAD_LETTER_RETENTION_DAYS",
    default_days: 30,
};

pub const SIGNIN_LOGS: Rule = Rule {
    table: "signin_logs",
    condition: "created_at < ?1",
    setting: "SIGNIN_LOG_RETENTION_DAYS",
    default_days: 180,
};

pub const CRON_RUNS: Rule = Rule {
    table: "cron_runs",
    condition: "started_at < ?1 * 1000",
    setting: "CRON_RUN_RETENTION_DAYS",
    default_days: 30,
};

/// Every rule, in the order the job applies them.
pub const RULES: [Rule; 4] = [WEBHOOK_EVENTS, DEAD_LETTERS, SIGNIN_LOGS, CRON_RUNS];

/// The cutoff `days` days before `now`.
pub fn cutoff(now: i64, days: i64) -> i64 {
    now - days * 86_400
}

/// Deletes up to `limit` of the rule's rows past `cutoff`; `changes` is how many it deleted.
pub fn delete(rule: &Rule, cutoff: i64, limit: i64) -> Stmt {
    let Rule {
        table, condition, ..
    } = rule;
    Stmt::new(
        format!("DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {condition} LIMIT ?2)"),
        vec![cutoff.into(), limit.into()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{db, event, exec, user};
    use rusqlite::params;

    fn ids(conn: &rusqlite::Connection, table: &str) -> Vec<String> {
        let mut st = conn
            .prepare(&format!("SELECT id FROM {table} ORDER BY id"))
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn each_rule_deletes_only_its_old_rows_in_chunks() {
        let conn = db();
        let day = 86_400;
        let now = 400 * day;
        event(&conn, "whe_old", "x", "applied", "{}", 10);
        event(&conn, "whe_old2", "x", "ignored", "{}", 10);
        event(&conn, "whe_waiting", "x", "received", "{}", 10);
        event(&conn, "whe_new", "x", "applied", "{}", now - day);
        user(&conn, "u");
        for (id, at) in [("sl_old", 10), ("sl_new", now - day)] {
            conn.execute(
                "INSERT INTO signin_logs (id, user_id, created_at) VALUES (?1, 'u', ?2)",
                params![id, at],
            )
            .unwrap();
        }
        for (id, at_ms) in [("run_old", 10_000), ("run_new", (now - day) * 1000)] {
            conn.execute(
                "INSERT INTO cron_runs (id, job, schedule, started_at) VALUES (?1, 'j', 's', ?2)",
                params![id, at_ms],
            )
            .unwrap();
        }

        let cutoff = |r: &Rule| cutoff(now, r.default_days);
        assert_eq!(super::cutoff(now, 90), now - 90 * day);
        let w = cutoff(&WEBHOOK_EVENTS);
        assert_eq!(exec(&conn, &delete(&WEBHOOK_EVENTS, w, 1)), 1, "bounded");
        assert_eq!(exec(&conn, &delete(&WEBHOOK_EVENTS, w, 10)), 1);
        assert_eq!(ids(&conn, "webhook_events"), ["whe_new", "whe_waiting"]);
        assert_eq!(
            exec(&conn, &delete(&SIGNIN_LOGS, cutoff(&SIGNIN_LOGS), 10)),
            1
        );
        assert_eq!(ids(&conn, "signin_logs"), ["sl_new"]);
        assert_eq!(exec(&conn, &delete(&CRON_RUNS, cutoff(&CRON_RUNS), 10)), 1);
        assert_eq!(ids(&conn, "cron_runs"), ["run_new"]);
        // every rule's statement prepares on the schema
        for r in RULES {
            exec(&conn, &delete(&r, cutoff(&r), 10));
        }
    }
}
