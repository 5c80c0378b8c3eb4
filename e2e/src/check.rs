//! Assertions that return errors instead of panicking, so a suite reports every failure.

pub type Check = Result<(), String>;

pub fn ensure(cond: bool, what: impl Into<String>) -> Check {
    if cond {
        Ok(())
    } else {
        Err(what.into())
    }
}

pub fn eq<T: PartialEq + std::fmt::Debug>(got: T, want: T, what: &str) -> Check {
    ensure(got == want, format!("{what}: got {got:?}, want {want:?}"))
}

/// Waits until `done()` holds, checking every 200 ms, for at most `limit`; the caller then
/// asserts on what it finds (a wait that ran out is not itself a failure).
pub fn wait_until(limit: std::time::Duration, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() && started.elapsed() < limit {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
