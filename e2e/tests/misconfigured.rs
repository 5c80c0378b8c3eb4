//! A worker with invalid configuration answers every request with one JSON 503 `misconfigured`
//! and logs what is wrong once per request; it never panics or serves with a bad configuration.
//! The broken setting here is a `JWT_SECRET` too short to sign sessions safely (the catalogue is
//! no longer configuration: it lives in D1).

use e2e::check::{ensure, eq};
use e2e::stack::{Stack, StackOptions};
use libtest_mimic::Failed;

fn misconfiguration_is_a_503_with_a_clear_log_line(stack: &Stack) -> Result<(), Failed> {
    let c = stack.client();
    for path in [
        "/api/balance",
        "/api/tasks/anything",
        "/admin/users",
        "/api/catalog",
    ] {
        let r = c.get(path, Some("whatever"));
        eq(
            (r.status, r.code()),
            (503, "misconfigured".to_owned()),
            path,
        )?;
        ensure(
            !r.text().contains("JWT_SECRET"),
            "the cause is not shown to clients",
        )?;
    }
    let lines = stack.events(Some("api.misconfigured"));
    ensure(
        lines.iter().any(|l| {
            l["cause"]
                .as_str()
                .is_some_and(|c| c.contains("JWT_SECRET"))
        }),
        format!("the log names the problem: {lines:?}"),
    )?;
    Ok(())
}

fn main() {
    let mut options = StackOptions {
        expect_healthy: false,
        ..StackOptions::default()
    };
    // shorter than the 32 characters the api requires
    options
        .vars
        .insert("JWT_SECRET".into(), "too-short-secret".into());
    e2e::suite::run(
        options,
        |_| {},
        e2e::cases![misconfiguration_is_a_503_with_a_clear_log_line],
    )
}
