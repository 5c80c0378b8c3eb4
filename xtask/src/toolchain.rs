//! Installs what the build needs, only where it is missing, and builds the workers.
//! See ../shared/TOOLCHAIN.md for why each piece installs the way it does here (no downloads
//! outside the package registries).

use crate::{root, run, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

const WORKER_BUILD_VERSION: &str = "0.8.7";
const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// The workers, by directory (the package is the directory's last part).
pub const WORKERS: [&str; 3] = ["api-worker", "consumer-worker", "cron-worker"];
/// The benchmark's floor worker, built only by `cargo xtask bench`.
pub const FLOOR: &str = "bench/floor-worker";

/// The packaged wasm before its names are stripped, beside the shipped `build/index_bg.wasm`:
/// the same bytes with the function names a size profiler needs (`cargo xtask bench size`).
pub const NAMED_WASM: &str = "build/index_bg.named.wasm";

/// Paths of the installed tools worker-build and wrangler need.
pub struct Toolchain {
    pub wasm_bindgen: PathBuf,
    pub worker_build: PathBuf,
    pub esbuild: PathBuf,
    pub wasm_opt: PathBuf,
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    home.join("bin").join(name)
}

/// The version Cargo.lock pins for a package (the wasm-bindgen CLI must match its crate exactly).
pub fn locked_version(name: &str) -> Result<String> {
    let lock = fs::read_to_string(root().join("Cargo.lock"))
        .map_err(|e| format!("reading Cargo.lock: {e}"))?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{name}\"") {
            if let Some(v) = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = \""))
            {
                return Ok(v.trim_end_matches('"').to_owned());
            }
        }
    }
    Err(format!("Cargo.lock has no {name} entry"))
}

/// twiggy, the wasm size profiler, from crates.io when it is missing (a minute or two, once);
/// only `cargo xtask bench size` needs it.
pub fn twiggy() -> Result<PathBuf> {
    const VERSION: &str = "0.8.0";
    let twiggy = cargo_bin("twiggy");
    let have = output(Command::new(&twiggy).arg("--version")).unwrap_or_default();
    if have.split_whitespace().nth(1) != Some(VERSION) {
        eprintln!("xtask: installing twiggy {VERSION} (a minute or two, once)");
        run(Command::new("cargo").args(["install", "twiggy", "--version", VERSION, "--locked"]))?;
    }
    Ok(twiggy)
}

pub fn ensure() -> Result<Toolchain> {
    let root = root();

    let targets =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !targets.lines().any(|l| l.trim() == WASM_TARGET) {
        eprintln!("xtask: installing the {WASM_TARGET} target");
        run(Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
    }

    let wanted = locked_version("wasm-bindgen")?;
    let wasm_bindgen = cargo_bin("wasm-bindgen");
    let have = output(Command::new(&wasm_bindgen).arg("--version")).unwrap_or_default();
    if have.split_whitespace().nth(1) != Some(wanted.as_str()) {
        eprintln!("xtask: installing wasm-bindgen-cli {wanted} (a few minutes, once)");
        // no --locked: the CLI's lock pins a yanked webpki-roots (TOOLCHAIN.md)
        run(Command::new("cargo").args(["install", "wasm-bindgen-cli", "--version", &wanted]))?;
    }

    let worker_build = cargo_bin("worker-build");
    let have = output(Command::new(&worker_build).arg("--version")).unwrap_or_default();
    if have.trim() != WORKER_BUILD_VERSION {
        eprintln!("xtask: installing worker-build {WORKER_BUILD_VERSION} (a few minutes, once)");
        run(Command::new("cargo").args([
            "install",
            "worker-build",
            "--version",
            WORKER_BUILD_VERSION,
            "--locked",
        ]))?;
    }

    let node = output(Command::new("node").arg("--version"))
        .ok_or("node is not installed; install Node.js 20.3 or newer")?;
    let major: u32 = node
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 20 {
        return Err(format!(
            "Node.js {} is too old; wrangler needs 20.3 or newer",
            node.trim()
        ));
    }

    // npm packages, pinned by package-lock.json; reinstalled only when the lock changes.
    let lock = fs::read(root.join("package-lock.json"))
        .map_err(|e| format!("reading package-lock.json: {e}"))?;
    let stamp = root.join("node_modules/.edgeline-package-lock.json");
    let bins = ["wrangler", "esbuild", "wasm-opt"];
    // packages without a binary: playwright-core (drives Chromium in e2e/tests/browser.rs),
    // creem (the official SDK whose webhook schemas check e2e/fixtures/creem)
    let libraries = ["playwright-core", "creem"];
    let complete = bins
        .iter()
        .all(|b| root.join("node_modules/.bin").join(b).exists())
        && libraries.iter().all(|p| {
            root.join("node_modules")
                .join(p)
                .join("package.json")
                .exists()
        });
    if !complete || fs::read(&stamp).ok().as_deref() != Some(lock.as_slice()) {
        eprintln!(
            "xtask: installing npm packages (wrangler, esbuild, binaryen, playwright-core, creem)"
        );
        run(Command::new("npm").current_dir(&root).args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ]))?;
        fs::write(&stamp, &lock).map_err(|e| format!("writing {}: {e}", stamp.display()))?;
    }

    chromium();

    Ok(Toolchain {
        wasm_bindgen,
        worker_build,
        esbuild: root.join("node_modules/.bin/esbuild"),
        wasm_opt: root.join("node_modules/.bin/wasm-opt"),
    })
}

/// The browser the browser suite drives through playwright-core: Debian's `chromium` package
/// (playwright's own browser downloads are not reachable here, the package registries are).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Installs Chromium with apt-get when it is missing (a file check once it is there). A machine
/// without apt-get, or where the install fails, gets a warning and goes on: only the browser
/// suite needs it, and it says what is missing.
fn chromium() {
    if Path::new(CHROMIUM).exists() {
        return;
    }
    eprintln!("xtask: installing chromium from Debian's packages (a minute or two, once)");
    let root_user = output(Command::new("id").arg("-u")).is_some_and(|u| u.trim() == "0");
    let apt = |args: &[&str]| {
        let mut cmd = if root_user {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "apt-get"]);
            sudo
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut cmd)
    };
    let installed = apt(&["update", "-q"]).and_then(|()| apt(&["install", "-y", "-q", "chromium"]));
    match installed {
        Ok(()) if Path::new(CHROMIUM).exists() => {}
        Ok(()) => eprintln!("xtask: warning: chromium installed, but {CHROMIUM} is missing"),
        Err(e) => eprintln!(
            "xtask: warning: could not install chromium ({e}); the browser suite (e2e/tests/browser.rs) will fail"
        ),
    }
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Builds the three workers in release once (see [`build`]).
pub fn build_workers(t: &Toolchain) -> Result<()> {
    build(t, &WORKERS)
}

fn package(dir: &str) -> &str {
    dir.rsplit('/').next().unwrap_or(dir)
}

/// Builds workers in release: one cargo build for all (so their final link steps share the
/// cores), then worker-build for each whose wasm changed.
pub fn build(t: &Toolchain, workers: &[&str]) -> Result<()> {
    let root = root();
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(&root)
        .args(["build", "--lib", "--release", "--target", WASM_TARGET]);
    for w in workers {
        cargo.args(["-p", package(w)]);
    }
    // worker-build sets this for its own cargo run; setting it here too keeps both builds identical
    cargo.env("WASM_BINDGEN_USE_JS_SYS", "1");
    run(&mut cargo)?;

    for w in workers {
        let compiled = root
            .join("target")
            .join(WASM_TARGET)
            .join("release")
            .join(format!("{}.wasm", package(w).replace('-', "_")));
        let built = root.join(w).join("build/index_bg.wasm");
        let named = root.join(w).join(NAMED_WASM);
        let fresh = root.join(w).join("build/index.js").exists()
            && named.exists()
            && matches!((modified(&built), modified(&compiled)), (Some(b), Some(c)) if b >= c);
        if fresh {
            continue;
        }
        eprintln!("xtask: packaging {w}");
        run(Command::new(&t.worker_build)
            .current_dir(root.join(w))
            .arg("--release")
            .env("WASM_BINDGEN_BIN", &t.wasm_bindgen)
            .env("ESBUILD_BIN", &t.esbuild)
            .env("WASM_OPT_BIN", &t.wasm_opt))?;
        fs::copy(&built, &named).map_err(|e| format!("copying {}: {e}", built.display()))?;
        strip_names(t, &built)?;
    }
    Ok(())
}

/// Takes the name section (and any debug info) out of a packaged worker: worker-build always
/// keeps it (`wasm-opt --debuginfo`), and twiggy measured it at 15% of the api-worker's wasm.
/// Panics then show function indices instead of names. Producers and target features stay.
fn strip_names(t: &Toolchain, wasm: &std::path::Path) -> Result<()> {
    let mut cmd = Command::new(&t.wasm_opt);
    cmd.arg(wasm).arg("-o").arg(wasm).arg("--strip-debug");
    // the features worker-build enables, so nothing newer than workerd supports is emitted
    for feature in [
        "mutable-globals",
        "sign-ext",
        "nontrapping-float-to-int",
        "bulk-memory",
        "multivalue",
        "reference-types",
        "exception-handling",
    ] {
        cmd.arg(format!("--enable-{feature}"));
    }
    run(&mut cmd)
}
