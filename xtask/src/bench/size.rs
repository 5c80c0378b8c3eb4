//! `cargo xtask bench size`: what takes the bytes of each worker's wasm, so that a change meant to
//! shrink one is checked against a profile rather than guessed. twiggy reads each worker's
//! packaged wasm with its names kept ([`NAMED_WASM`]: the shipped bytes plus the name section that
//! `toolchain::strip_names` takes out), and every item it lists goes in a bucket: its crate, its
//! module when it is the worker's own code or `shared`'s, and its kind of code (async bodies,
//! serde, formatting, drop glue). Writes [`FILE`], headed by the commit it describes, and prints
//! it. Not part of `cargo xtask test`; twiggy is installed the first time it is needed.

use super::summary::{bundle_sizes, versions};
use crate::toolchain::{self, FLOOR, NAMED_WASM, WORKERS};
use crate::{root, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::process::Command;

const FILE: &str = "bench/SIZE.md";
/// Rows of a crate or module table before "the rest".
const TOP: usize = 15;

/// Where twiggy's item goes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Item {
    /// The name section and other custom sections: stripped before shipping.
    NotShipped,
    /// Data segments: strings (SQL, messages, the OpenAPI document) and constant tables.
    Data,
    /// A function, or the module's tables, imports and exports.
    Code {
        krate: String,
        /// `module` or `admin::module`, for the worker's own crate and `shared`.
        module: Option<String>,
        kind: Kind,
    },
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
pub(super) enum Kind {
    Serde,
    DropGlue,
    /// `async fn` state machines and closures: with handlers, most of a worker's own code.
    AsyncBodies,
    Formatting,
    Other,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Serde => "serde (derived and generic (de)serializers)",
            Kind::DropGlue => "drop glue",
            Kind::AsyncBodies => "async bodies and closures",
            Kind::Formatting => "formatting (`fmt`)",
            Kind::Other => "other functions, tables, imports and exports",
        }
    }
}

const PRIMITIVES: [&str; 17] = [
    "bool", "char", "str", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64",
    "i128", "isize", "f32", "f64",
];

/// The bucket of one of twiggy's item names. `own` is the worker's own crate (`api_worker`).
pub(super) fn classify(name: &str, own: &str) -> Item {
    if name.starts_with('"') || name.starts_with("custom section") {
        return Item::NotShipped;
    }
    if name.starts_with("data segment") {
        return Item::Data;
    }
    let structural = |krate: &str| Item::Code {
        krate: krate.to_owned(),
        module: None,
        kind: Kind::Other,
    };
    if name.starts_with("import ") {
        return structural("(imports from JavaScript)");
    }
    if name.starts_with("export ") {
        return structural("(exports)");
    }
    if ["elem[", "table[", "type[", "global[", "memory["]
        .iter()
        .any(|p| name.starts_with(p))
    {
        return structural("(wasm tables and types)");
    }
    if name.starts_with("code[") {
        return structural("(unnamed functions)");
    }

    // `<a::B as c::D>::f`, `&mut a::B`, `dyn a::B`: the first path names the crate
    let mut rest = name;
    loop {
        let trimmed = rest.trim_start_matches(['<', '&', '(', '*', ' ']);
        let trimmed = ["mut ", "dyn ", "const "]
            .iter()
            .find_map(|p| trimmed.strip_prefix(p))
            .unwrap_or(trimmed);
        if trimmed.len() == rest.len() {
            break;
        }
        rest = trimmed;
    }
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let first = &rest[..end];
    let krate = if PRIMITIVES.contains(&first) {
        "core".to_owned()
    } else if first.len() == 1 && first.chars().all(|c| c.is_ascii_uppercase()) {
        "(generic impls)".to_owned()
    } else if first.is_empty() {
        "(other)".to_owned()
    } else {
        first.to_owned()
    };
    let module = (krate == own || krate == "shared")
        .then(|| {
            // the segments after the crate, up to the first that is not a module's name
            let path = rest[end..].strip_prefix("::")?;
            let mut segments = path.split("::").map(|s| {
                let end = s
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(s.len());
                &s[..end]
            });
            let first = segments.next().filter(|s| !s.is_empty())?;
            Some(match (first, segments.next()) {
                ("admin", Some(sub)) if !sub.is_empty() => format!("{krate}::admin::{sub}"),
                _ => format!("{krate}::{first}"),
            })
        })
        .flatten();
    let kind = if ["serde", "Deserializ", "Serializ", "Visitor"]
        .iter()
        .any(|s| name.contains(s))
    {
        Kind::Serde
    } else if name.contains("drop_in_place") {
        Kind::DropGlue
    } else if name.contains("{{closure}}") {
        Kind::AsyncBodies
    } else if name.contains("fmt") {
        Kind::Formatting
    } else {
        Kind::Other
    };
    Item::Code {
        krate,
        module,
        kind,
    }
}

/// One worker's bytes, by bucket.
#[derive(Debug, Default)]
pub(super) struct Profile {
    pub not_shipped: u64,
    pub data: u64,
    pub code: u64,
    pub by_crate: BTreeMap<String, u64>,
    pub by_module: BTreeMap<String, u64>,
    pub by_kind: BTreeMap<Kind, u64>,
}

/// A profile from twiggy's `top -f json` output: `[{"name", "shallow_size", ...}]`.
pub(super) fn profile(items: &Value, own: &str) -> Result<Profile> {
    let items = items
        .as_array()
        .ok_or("twiggy's output is not a list of items")?;
    let mut p = Profile::default();
    for item in items {
        let name = item["name"].as_str().unwrap_or_default();
        let bytes = item["shallow_size"]
            .as_u64()
            .ok_or_else(|| format!("twiggy's item {name:?} has no shallow_size"))?;
        match classify(name, own) {
            Item::NotShipped => p.not_shipped += bytes,
            Item::Data => p.data += bytes,
            Item::Code {
                krate,
                module,
                kind,
            } => {
                p.code += bytes;
                *p.by_crate.entry(krate).or_default() += bytes;
                if let Some(m) = module {
                    *p.by_module.entry(m).or_default() += bytes;
                }
                *p.by_kind.entry(kind).or_default() += bytes;
            }
        }
    }
    if p.code == 0 {
        return Err("twiggy listed no code".into());
    }
    Ok(p)
}

fn share(part: u64, whole: u64) -> String {
    format!("{:.1}%", 100.0 * part as f64 / whole.max(1) as f64)
}

/// The largest entries first, then one row for the rest.
fn largest(map: &BTreeMap<String, u64>, top: usize) -> Vec<(String, u64)> {
    let mut rows: Vec<(String, u64)> = map.iter().map(|(k, v)| (k.clone(), *v)).collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    if rows.len() > top {
        let rest: u64 = rows[top..].iter().map(|r| r.1).sum();
        let n = rows.len() - top;
        rows.truncate(top);
        rows.push((format!("the other {n}"), rest));
    }
    rows
}

/// The markdown of [`FILE`]. `workers` are (directory, profile) with the floor last;
/// `bundle` is [`bundle_sizes`] (the shipped wasm).
pub(super) fn render(workers: &[(&str, Profile)], bundle: &Value, version: &Value) -> String {
    let mut md = String::new();
    let floor = workers.last().map(|(_, p)| p);
    let floor_gz = bundle["floor-worker"]["gzip"].as_u64().unwrap_or(0);
    let _ = writeln!(
        md,
        "# What takes the bytes of each worker's wasm\n\n`cargo xtask bench size` at edgeline {}: \
         twiggy over each worker's packaged wasm with its names kept (`{NAMED_WASM}`). Shipped \
         sizes are of `build/index_bg.wasm`, the same bytes without the name section. Sizes of \
         code and data are before compression.\n",
        version["edgeline"].as_str().unwrap_or("?")
    );
    md.push_str("| worker | shipped bytes | gzipped | gzipped vs the floor's | code bytes | data bytes |\n|---|---|---|---|---|---|\n");
    for (dir, p) in workers {
        let name = dir.rsplit('/').next().unwrap_or(dir);
        let b = &bundle[name];
        let gz = b["gzip"].as_u64().unwrap_or(0);
        let _ = writeln!(
            md,
            "| {name} | {} | {gz} | {:.2}x | {} | {} |",
            b["raw"],
            gz as f64 / floor_gz.max(1) as f64,
            p.code,
            p.data
        );
    }
    for (dir, p) in workers.iter().take(workers.len().saturating_sub(1)) {
        let name = dir.rsplit('/').next().unwrap_or(dir);
        let _ = writeln!(
            md,
            "\n## {name}\n\n| kind of code | bytes | share of code |\n|---|---|---|"
        );
        for (kind, bytes) in &p.by_kind {
            let _ = writeln!(
                md,
                "| {} | {bytes} | {} |",
                kind.label(),
                share(*bytes, p.code)
            );
        }
        let _ = writeln!(
            md,
            "\n| crate | bytes | share of code | the floor's bytes of it |\n|---|---|---|---|"
        );
        for (krate, bytes) in largest(&p.by_crate, TOP) {
            let in_floor = floor
                .and_then(|f| f.by_crate.get(&krate))
                .map_or("–".to_owned(), u64::to_string);
            let _ = writeln!(
                md,
                "| {krate} | {bytes} | {} | {in_floor} |",
                share(bytes, p.code)
            );
        }
        let _ = writeln!(
            md,
            "\n| module (the worker's own and `shared`) | bytes | share of code |\n|---|---|---|"
        );
        for (module, bytes) in largest(&p.by_module, 2 * TOP) {
            let _ = writeln!(md, "| {module} | {bytes} | {} |", share(bytes, p.code));
        }
        let admin: u64 = p
            .by_module
            .iter()
            .filter(|(m, _)| m.contains("::admin::"))
            .map(|(_, b)| b)
            .sum();
        if admin > 0 {
            let _ = writeln!(
                md,
                "\nOf which the operators' API (`admin::*`): {admin} bytes, {} of the code.",
                share(admin, p.code)
            );
        }
    }
    md
}

/// Builds the workers and the floor, profiles each and writes [`FILE`].
pub fn run() -> Result<()> {
    let t = toolchain::ensure()?;
    let twiggy = toolchain::twiggy()?;
    let dirs: Vec<&str> = WORKERS.iter().copied().chain([FLOOR]).collect();
    toolchain::build(&t, &dirs)?;
    let version = versions();
    let root = root();
    let mut workers = Vec::new();
    for dir in &dirs {
        let wasm = root.join(dir).join(NAMED_WASM);
        let out = Command::new(&twiggy)
            .args(["top", "-n", "1000000", "-f", "json"])
            .arg(&wasm)
            .output()
            .map_err(|e| format!("could not start twiggy: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "twiggy top {} failed: {}",
                wasm.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let items: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("twiggy's output for {dir}: {e}"))?;
        let own = dir.rsplit('/').next().unwrap_or(dir).replace('-', "_");
        workers.push((*dir, profile(&items, &own)?));
    }
    let md = render(&workers, &bundle_sizes(), &version);
    fs::write(root.join(FILE), &md).map_err(|e| format!("writing {FILE}: {e}"))?;
    print!("{md}");
    eprintln!("xtask: wrote {FILE}");
    Ok(())
}
