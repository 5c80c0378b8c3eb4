//! `cargo xtask <command>`: the project's commands.
//!
//! - `dev`: install what is missing, build, migrate, start the whole stack and the provider
//!   simulator on local state in `.state/`, print a demo token and a curl.
//! - `test`: install what is missing, build, run every test (unit and end-to-end).
//! - `build`: install what is missing and build the three workers (skipped when up to date).
//! - `toolchain`: only install what is missing.
//! - `bench`: build with the benchmark's floor worker and write `bench/results.json` and
//!   `bench/RESULTS.md` (see `bench.rs`; not part of `test`).
//! - `admin …`: the operators' CLI over the admin API (see `admin.rs`).

mod admin;
mod bench;
mod load;
mod toolchain;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

pub type Result<T> = std::result::Result<T, String>;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs a command, failing with its name if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("could not start {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed with {status}"))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let started = Instant::now();
    let result = match args.first().map(String::as_str) {
        Some("toolchain") => toolchain::ensure().map(|_| ()),
        Some("build") => toolchain::ensure().and_then(|t| toolchain::build_workers(&t)),
        Some("dev") => toolchain::ensure().and_then(|t| {
            toolchain::build_workers(&t)?;
            e2e::dev::run(&args[1..]).map_err(|e| e.to_string())
        }),
        Some("admin") => {
            return match admin::run(&args[1..]) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("admin: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("bench") => toolchain::ensure().and_then(|t| {
            toolchain::build(
                &t,
                &[toolchain::WORKERS.as_slice(), &[toolchain::FLOOR]].concat(),
            )?;
            bench::run(&args[1..])
        }),
        Some("test") => toolchain::ensure().and_then(|t| {
            toolchain::build_workers(&t)?;
            e2e::fuzz::schemathesis()?;
            test(&args[1..])
        }),
        _ => {
            eprintln!("usage: cargo xtask <dev|test|bench|build|toolchain|admin>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => {
            eprintln!("xtask: done in {:.1}s", started.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Unit tests natively, then the end-to-end suite against the real local stack.
fn test(extra: &[String]) -> Result<()> {
    let root = root();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root).args([
        "test",
        "--workspace",
        "--exclude",
        "api-worker",
        "--exclude",
        "consumer-worker",
        "--exclude",
        "cron-worker",
        "--exclude",
        "floor-worker",
    ]);
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    run(&mut cmd)
}
