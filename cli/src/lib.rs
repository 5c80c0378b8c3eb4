//! `edgeline`: the operators' command line over the admin API (`/admin/…`).
//!
//! One implementation, two ways in: the `edgeline` binary (`cargo install --path cli`, for any
//! edgeline, local or deployed) and `cargo xtask admin …` (local work in a checkout), which calls
//! [`run`] with its own name.
//!
//! - `args`: the command line (clap derive), with every verb's help and examples.
//! - `config`: where to talk to and with which token (`--url`, `EDGELINE_URL`, the config file,
//!   `.dev.vars`); the token is a [`config::Secret`] that never prints.
//! - `api`: the HTTP calls, and what a failure means (exit codes 3 and 4).
//! - `verbs`: one function per verb: a JSON value for `--json` and a text for people.
//! - `bulk`: replay or discard by filter over every page, with a progress bar and Ctrl-C.
//! - `output`: tables and dates.

mod api;
pub mod args;
mod bulk;
pub mod config;
mod output;
mod time;
mod verbs;

use clap::{CommandFactory, FromArgMatches};
use std::ffi::OsString;

pub use args::Cli;

/// What the process exits with; `--help` and docs/OPERATIONS.md list them.
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// A check ran and found problems (`audit` with violations).
    pub const PROBLEMS: u8 = 1;
    /// The command line or the configuration is wrong (clap's own code for usage errors).
    pub const USAGE: u8 = 2;
    /// The API answered with an error (4xx or 5xx).
    pub const API: u8 = 3;
    /// The API could not be reached (connection refused, DNS, timeout, TLS).
    pub const UNREACHABLE: u8 = 4;
    /// Interrupted (Ctrl-C) during a bulk operation, after finishing the page in flight.
    pub const INTERRUPTED: u8 = 130;
}

/// Why a command did not do (all of) what it was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Bad arguments, configuration or input file (exit 2).
    Usage(String),
    /// The API answered with an error status (exit 3).
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// No answer from the API (exit 4).
    Unreachable(String),
    /// The command ran and found problems (exit 1).
    Problems(String),
    /// Stopped by Ctrl-C between two pages (exit 130).
    Interrupted(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Api { .. } => exit::API,
            Error::Unreachable(_) => exit::UNREACHABLE,
            Error::Problems(_) => exit::PROBLEMS,
            Error::Interrupted(_) => exit::INTERRUPTED,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Usage(m)
            | Error::Unreachable(m)
            | Error::Problems(m)
            | Error::Interrupted(m) => f.write_str(m),
            Error::Api {
                status,
                code,
                message,
            } => write!(f, "{status} {code}: {message}"),
        }
    }
}

/// Runs the command line `args` (the first item is the program's name, as in
/// `std::env::args_os`) and returns the exit code. `bin_name` is what usage and help call the
/// program: `edgeline`, or `cargo xtask admin`.
pub fn run<I, T>(args: I, bin_name: &str) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let command = Cli::command().bin_name(bin_name.to_owned());
    let cli = match command
        .try_get_matches_from(args)
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => {
            // help and --version print to stdout and exit 0; usage errors name the argument
            // and exit 2
            let _ = e.print();
            return u8::try_from(e.exit_code()).unwrap_or(exit::USAGE);
        }
    };
    let prefix = bin_name.rsplit(' ').next().unwrap_or(bin_name).to_owned();
    verbs::main(cli, &prefix)
}
