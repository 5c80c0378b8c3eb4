//! A worker with invalid configuration answers every request with one JSON 503 `misconfigured`
//! and logs what is wrong once per request; it never panics or serves with a bad catalogue.

use e2e::check::{ensure, eq};
use e2e::stack::{Stack, StackOptions};
use libtest_mimic::Failed;

fn misconfiguration_is_a_503_with_a_clear_log_line(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    for path in ["/api/balance", "/api/tasks/anything", "/admin/users"] {
        let r = c.get(path, Some("whatever"));
        eq(
            (r.status, r.code()),
            (503, "misconfigured".to_owned()),
            path,
        )?;
        ensure(
            !r.text().contains("CATALOG"),
            "the cause is not shown to clients",
        )?;
    }
    let lines = stack.events(Some("api.misconfigured"));
    ensure(
        lines
            .iter()
            .any(|l| l["cause"].as_str().is_some_and(|c| c.contains("CATALOG"))),
        format!("the log names the problem: {lines:?}"),
    )?;
    Ok(())
}

fn main() {
    let mut options = StackOptions {
        expect_healthy: false,
        ..StackOptions::default()
    };
    options.vars.insert(
        "CATALOG".into(),
        r#"{"packs": [{"id": "broken"}], "plans": []}"#.into(),
    );
    e2e::suite::run(
        options,
        |_| {},
        vec![(
            "misconfiguration_is_a_503_with_a_clear_log_line",
            misconfiguration_is_a_503_with_a_clear_log_line,
        )],
    )
}
