//! The plans the local D1 (workerd's SQLite) picks for the statements that read the ledger and
//! the live tasks, once `ANALYZE` has run on a ledger of a realistic shape
//! (`e2e/fixtures/d1_plans.mjs`). SQLite weighs indexes by those statistics, and a small partial
//! index can draw it away from the one a read should use: a balance that walked every user's
//! expiring grants is what this caught (migration 0012). The native plan tests in
//! `shared/src/sql.rs` run on the SQLite rusqlite bundles, without statistics.

#![allow(clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use shared::sql::{Param, Stmt};
use std::io::Write;
use std::process::{Command, Stdio};

/// `{name: [plan lines]}` for `statements`, from the local D1.
fn plans(statements: &[(&str, Stmt)]) -> Value {
    let input: Vec<Value> = statements
        .iter()
        .map(|(name, s)| {
            let params: Vec<Value> = s
                .params
                .iter()
                .map(|p| match p {
                    Param::Text(t) => json!(t),
                    Param::Int(n) => json!(n),
                    Param::Null => Value::Null,
                })
                .collect();
            json!({"name": name, "sql": s.sql, "params": params})
        })
        .collect();
    let root = e2e::stack::root();
    let mut child = Command::new("node")
        .current_dir(&root)
        .arg(root.join("e2e/fixtures/d1_plans.mjs"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(Value::Array(input).to_string().as_bytes())
        .expect("plans written");
    let out = child.wait_with_output().expect("node ran");
    assert!(
        out.status.success(),
        "d1_plans.mjs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("plans as JSON")
}

fn lines(plans: &Value, name: &str) -> Vec<String> {
    plans[name]
        .as_array()
        .unwrap_or_else(|| panic!("no plan for {name}: {plans}"))
        .iter()
        .filter_map(|l| l.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_ledger_and_live_task_reads_use_their_indexes_with_statistics() {
    let audit = |name: &str| {
        shared::audit::CHECKS
            .iter()
            .find(|c| c.name == name)
            .expect("a check")
            .stmt(1_000, 60)
    };
    let p = plans(&[
        (
            "balance",
            Stmt::new(
                format!("SELECT {} AS balance", shared::ledger::BALANCE_SQL),
                vec!["u1".into(), 1_000.into()],
            ),
        ),
        (
            "allocation",
            Stmt::new(
                shared::ledger::ALLOCATION_SQL,
                vec![Param::Null, Param::Null, 1_000.into(), "t100".into()],
            ),
        ),
        ("overdue", shared::task::overdue(1_000, 50)),
        ("stalled", shared::task::stalled(1_000, 900, 50)),
        ("ended", shared::admin_views::ended_per_bucket(1_000, 60)),
        ("grants", audit("grants_not_overdrawn")),
        ("clawbacks", audit("clawbacks_match_grants")),
        ("failed", audit("failed_tasks_released")),
    ]);
    // the balance (also inside every submit's reservation) and the allocation read one user's
    // ledger rows and one entity's clawbacks, whatever the other users hold
    for name in ["balance", "allocation"] {
        let plan = lines(&p, name);
        for line in &plan {
            let reads_ledger = [" credit_records ", " g ", " cb "]
                .iter()
                .any(|t| format!("{line} ").contains(t));
            assert!(
                !reads_ledger
                    || line.starts_with("SEARCH")
                        && (line.contains("user_id=?") || line.contains("entity_type=?")),
                "{name}: {line}\n{}",
                plan.join("\n")
            );
        }
    }
    for (name, index) in [
        ("overdue", "idx_ai_tasks_live"),
        ("stalled", "idx_ai_tasks_live"),
        ("ended", "idx_ai_tasks_ended"),
        ("grants", "idx_credit_records_grants"),
        ("clawbacks", "idx_credit_records_clawbacks"),
        ("failed", "idx_ai_tasks_failed"),
    ] {
        let plan = lines(&p, name);
        assert!(
            plan.iter().any(|l| l.contains(index)),
            "{name} does not use {index}:\n{}",
            plan.join("\n")
        );
    }
}
