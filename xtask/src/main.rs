//! `cargo xtask <command>`: the project's commands.
//!
//! - `dev [--port N] [--sim-port N] [--state DIR] [--no-cron]`: install what is missing, build,
//!   migrate, start the whole stack and the provider simulator on local state in `.state/`, fire
//!   the crons on their schedule, print a demo token and a curl; any stop signal stops it all
//!   (see `e2e/src/dev.rs`).
//! - `test`: install what is missing, build, check the Creem contract fixtures against the
//!   official SDK (`e2e/fixtures/creem/check.mjs`), run every test (unit and end-to-end).
//! - `build`: install what is missing and build the three workers (skipped when up to date).
//! - `toolchain`: only install what is missing.
//! - `deploy [--dry-run]`: build, find or create the account's resources, migrate remotely and
//!   deploy the three workers in dependency order; print what is left to do (see `deploy.rs`).
//! - `bench`: build with the benchmark's floor worker and its Workflows peer and write
//!   `bench/results.json`, `bench/RESULTS.md` and the generated block of `docs/BENCHMARK.md` (see
//!   `bench/mod.rs`; not part of `test`). `bench render` rewrites RESULTS.md and that block from
//!   `bench/results.json`; `bench peer-sql` regenerates the peer's SQL from `shared::ledger`;
//!   `bench peer-smoke` runs one task through the peer (see `peer.rs`); `bench size` writes
//!   `bench/SIZE.md`, what takes the bytes of each worker's wasm (see `bench/size.rs`).
//! - `admin …`: the operators' CLI over the admin API: the `edgeline` crate (`cli/`), the same
//!   code as the installed `edgeline` binary (`cargo xtask admin --help`).

mod bench;
mod deploy;
mod load;
mod peer;
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
        Some("dev") => e2e::dev::parse_args(&args[1..]).and_then(|_| {
            let t = toolchain::ensure()?;
            toolchain::build_workers(&t)?;
            e2e::dev::run(&args[1..]).map_err(|e| e.to_string())
        }),
        Some("deploy") => deploy::run(&args[1..]),
        Some("admin") => {
            let argv = std::iter::once("cargo xtask admin".to_owned()).chain(args[1..].to_vec());
            return ExitCode::from(edgeline::run(argv, "cargo xtask admin"));
        }
        Some("bench") if args.get(1).is_some_and(|a| a == "peer-sql") => peer::write_sql(),
        Some("bench") if args.get(1).is_some_and(|a| a == "render") => bench::render(),
        Some("bench") if args.get(1).is_some_and(|a| a == "size") => bench::size::run(),
        Some("bench") if args.get(1).is_some_and(|a| a == "peer-smoke") => {
            toolchain::ensure().and_then(|_| peer::smoke()).map(|took| {
                eprintln!(
                    "peer smoke: one task completed in {:.1}s",
                    took.as_secs_f64()
                )
            })
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
            eprintln!("usage: cargo xtask <dev|test|bench|build|deploy|toolchain|admin>");
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

/// The Creem contract: every fixture in `e2e/fixtures/creem` is read by the official `creem`
/// SDK's webhook schemas exactly as written (the SDK is pinned in package-lock.json).
fn creem_contract() -> Result<()> {
    let root = root();
    run(Command::new("node")
        .current_dir(&root)
        .arg(root.join("e2e/fixtures/creem/check.mjs")))
}

/// The Creem contract check, unit tests natively, then the end-to-end suite against the real
/// local stack.
fn test(extra: &[String]) -> Result<()> {
    creem_contract()?;
    let root = root();
    // the api's and the consumer's own unit tests, natively: among them, that the OpenAPI
    // document the api serves as a static file (api-worker/openapi.json) is the one its code
    // describes
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args(["test", "-p", "api-worker", "-p", "consumer-worker", "--lib"]),
    )?;
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
