//! The schemathesis property-based fuzzer (from PyPI), installed once into a virtualenv under
//! `target/` and run against a stack's OpenAPI document.

use crate::stack::root;
use std::path::PathBuf;
use std::process::Command;

pub const VERSION: &str = "4.32.5";

/// The `schemathesis` executable, installed if missing (about 10 s the first time).
pub fn schemathesis() -> Result<PathBuf, String> {
    let venv = root()
        .join("target/tools")
        .join(format!("schemathesis-{VERSION}"));
    let bin = venv.join("bin/schemathesis");
    if bin.exists() {
        return Ok(bin);
    }
    let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
    if !ok(Command::new("python3").arg("-m").arg("venv").arg(&venv)) {
        return Err("python3 -m venv failed; install Python 3 with venv".into());
    }
    if !ok(Command::new(venv.join("bin/pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        &format!("schemathesis=={VERSION}"),
    ])) {
        let _ = std::fs::remove_dir_all(&venv);
        return Err(format!("pip install schemathesis=={VERSION} failed"));
    }
    Ok(bin)
}
