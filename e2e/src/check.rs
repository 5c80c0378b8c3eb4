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
