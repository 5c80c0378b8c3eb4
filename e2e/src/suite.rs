//! Runs a list of end-to-end cases against one stack: start it, run the cases in parallel
//! (they isolate themselves by user), print the workers' log tail if any failed, stop it.

use crate::stack::{Stack, StackOptions};
use libtest_mimic::{Arguments, Failed, Trial};
use std::sync::Arc;

pub type Case = fn(&Stack) -> Result<(), Failed>;

/// A list of cases, each named by its function: `cases![golden_path, idempotent_submit]` is
/// `vec![("golden_path", golden_path), ("idempotent_submit", idempotent_submit)]`.
#[macro_export]
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        vec![$((stringify!($case), $case)),*]
    };
}

pub fn run(options: StackOptions, setup: fn(&Stack), cases: Vec<(&'static str, Case)>) -> ! {
    let args = Arguments::from_args();
    let stack = start(options);
    if std::env::var_os("E2E_KEEP_STATE").is_some() {
        stack.keep_state();
        eprintln!("state kept in {}", stack.state_dir.display());
    }
    setup(&stack);
    let conclusion = libtest_mimic::run(&args, trials(&stack, cases));
    if conclusion.has_failed() {
        stack.keep_state();
        eprintln!(
            "--- wrangler log (last 120 lines) ---\n{}",
            stack.log_tail(120)
        );
        eprintln!(
            "--- the whole log and state are kept in {} ---",
            stack.state_dir.display()
        );
    }
    drop(stack);
    conclusion.exit()
}

/// The stack the cases share; the process exits with a message when it does not start.
pub fn start(options: StackOptions) -> Arc<Stack> {
    match Stack::start(options) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("could not start the local stack: {e}");
            std::process::exit(1);
        }
    }
}

/// One trial per case, each against the shared stack.
pub fn trials(stack: &Arc<Stack>, cases: Vec<(&'static str, Case)>) -> Vec<Trial> {
    cases
        .into_iter()
        .map(|(name, case)| {
            let stack = stack.clone();
            Trial::test(name, move || case(&stack))
        })
        .collect()
}
