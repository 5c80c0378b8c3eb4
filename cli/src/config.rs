//! Where the CLI talks to, with which token, as whom.
//!
//! - URL: `--url`, `EDGELINE_URL`, the config file's `url`, the local stack.
//! - Token: `--token`, `EDGELINE_ADMIN_TOKEN`, the config file's `token` (only when talking to
//!   the config file's own `url`, so a production token is never sent to another host), then
//!   `ADMIN_TOKEN` from `.dev.vars` (only for a local URL).
//! - Actor: `--actor`, `EDGELINE_ACTOR`, the config file's `actor`, `$USER`, `cli`.
//!
//! The token is a [`Secret`]: it has no `Display`, its `Debug` prints `Secret(…)`, and the
//! config file's parse errors are reported without the file's text.

use crate::args::Global;
use crate::Error;
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const LOCAL_URL: &str = "http://127.0.0.1:8787";

/// A value that must never be printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// For clap: any non-empty string.
    pub fn parse(s: &str) -> Result<Secret, String> {
        let s = s.trim();
        if s.is_empty() {
            Err("the token is empty".into())
        } else {
            Ok(Secret(s.to_owned()))
        }
    }

    /// The value itself, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// The config file: `url`, `token`, `actor`, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub url: Option<String>,
    pub token: Option<Secret>,
    pub actor: Option<String>,
}

/// Where, with what, as whom.
#[derive(Debug)]
pub struct Target {
    pub url: String,
    pub token: Secret,
    pub actor: String,
    /// Where the token came from, for error messages ("--token", "the config file …").
    pub token_from: String,
}

/// `$XDG_CONFIG_HOME/edgeline/config.toml`, else the platform's config directory's.
pub fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(dirs::config_dir)?;
    Some(base.join("edgeline").join("config.toml"))
}

/// Reads a config file; a missing file is `None` unless it was asked for by name.
fn load(path: &Path, named: bool) -> Result<Option<FileConfig>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => return Ok(None),
        Err(e) => {
            return Err(Error::Usage(format!(
                "cannot read the config file {}: {e}",
                path.display()
            )))
        }
    };
    let parsed: FileConfig = toml::from_str(&text).map_err(|e| {
        // the message only, never the snippet: the bad line may be the token's
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
            .map(|l| format!(" (line {l})"))
            .unwrap_or_default();
        Error::Usage(format!(
            "the config file {}{line} is not valid: {}",
            path.display(),
            e.message().lines().next().unwrap_or("")
        ))
    })?;
    if parsed.token.is_some() {
        warn_if_readable_by_others(path);
    }
    Ok(Some(parsed))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "warning: {} holds a token and others can read it (chmod 600 it)",
                path.display()
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

pub fn normalize_url(url: &str) -> Result<String, Error> {
    let u = url.trim().trim_end_matches('/');
    if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() <= "https://".len() {
        return Err(Error::Usage(format!(
            "--url {u:?} must start with http:// or https://"
        )));
    }
    Ok(u.to_owned())
}

/// The host of an http(s) URL, without port or user info.
fn host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    authority.split(':').next().unwrap_or("")
}

/// A URL on this machine.
pub fn is_local(url: &str) -> bool {
    let h = host(url);
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `ADMIN_TOKEN` from the nearest `.dev.vars`: this directory or a parent, else the checkout
/// this binary was built from.
fn dev_vars_token() -> Option<(Secret, PathBuf)> {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf);
    let cwd = std::env::current_dir().ok();
    let candidates = cwd
        .iter()
        .flat_map(|d| d.ancestors().map(Path::to_path_buf).collect::<Vec<_>>())
        .chain(built_from);
    for dir in candidates {
        let file = dir.join(".dev.vars");
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        if let Some(t) = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("ADMIN_TOKEN="))
            .map(|v| v.trim().trim_matches('"').to_owned())
            .find(|v| !v.is_empty())
        {
            return Some((Secret(t), file));
        }
    }
    None
}

fn valid_actor(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 64
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
}

/// Works out the target from the flags, the environment (clap has read `EDGELINE_*` into the
/// flags), the config file and `.dev.vars`.
pub fn resolve(g: &Global) -> Result<Target, Error> {
    let (path, named) = match &g.config {
        Some(p) => (Some(p.clone()), true),
        None => (default_config_path(), false),
    };
    let file = match &path {
        Some(p) => load(p, named)?,
        None => None,
    }
    .unwrap_or_default();
    let file_url = file.url.as_deref().map(normalize_url).transpose()?;
    let url = match (&g.url, &file_url) {
        (Some(u), _) => normalize_url(u)?,
        (None, Some(u)) => u.clone(),
        (None, None) => LOCAL_URL.to_owned(),
    };
    let shown_path = path
        .as_ref()
        .map_or_else(|| "the config file".to_owned(), |p| p.display().to_string());
    let (token, token_from) = if let Some(t) = &g.token {
        (t.clone(), "--token or EDGELINE_ADMIN_TOKEN".to_owned())
    } else if let Some(t) = file
        .token
        .clone()
        .filter(|_| file_url.as_deref().is_none_or(|u| u == url))
    {
        (t, shown_path.clone())
    } else if let Some((t, f)) = is_local(&url).then(dev_vars_token).flatten() {
        (t, f.display().to_string())
    } else {
        return Err(Error::Usage(format!(
            "no admin token for {url}: pass --token, set EDGELINE_ADMIN_TOKEN, or put `url` and `token` in {shown_path}"
        )));
    };
    if url.starts_with("http://") && !is_local(&url) {
        eprintln!("warning: sending the admin token to {url} over plain http; use https");
    }
    let actor = match g.actor.clone().or(file.actor) {
        Some(a) if valid_actor(&a) => a,
        Some(_) => {
            return Err(Error::Usage(
                "--actor must be 1-64 characters of [A-Za-z0-9._@-]".into(),
            ))
        }
        None => std::env::var("USER")
            .ok()
            .filter(|u| valid_actor(u))
            .unwrap_or_else(|| "cli".into()),
    };
    Ok(Target {
        url,
        token,
        actor,
        token_from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global() -> Global {
        Global {
            url: None,
            token: None,
            actor: None,
            config: None,
            json: false,
            timeout: 60,
            verbose: false,
        }
    }

    fn temp(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("edgeline-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn hosts_and_local_urls() {
        assert!(is_local("http://127.0.0.1:8787"));
        assert!(is_local("http://localhost"));
        assert!(is_local("http://[::1]:8787/x"));
        assert!(!is_local("https://edgeline.example.com"));
        assert!(!is_local("https://user@127.0.0.1.evil.example"));
        assert_eq!(host("https://a:b@example.com:8443/x"), "example.com");
        assert!(normalize_url("ftp://x").is_err());
        assert_eq!(normalize_url("https://x.dev/").unwrap(), "https://x.dev");
    }

    #[test]
    fn flags_win_and_the_file_token_goes_only_to_the_file_url() {
        let cfg = temp(
            "a.toml",
            "url = \"https://prod.example.com/\"\ntoken = \"prod-token-123456\"\nactor = \"alice\"\n",
        );
        let mut g = global();
        g.config = Some(cfg.clone());
        let t = resolve(&g).unwrap();
        assert_eq!(t.url, "https://prod.example.com");
        assert_eq!(t.token.expose(), "prod-token-123456");
        assert_eq!(t.actor, "alice");
        // another URL: the file's token is not sent there
        g.url = Some("https://elsewhere.example.com".into());
        let e = resolve(&g).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(!e.to_string().contains("prod-token"), "{e}");
        g.token = Some(Secret::new("flag-token-123456"));
        g.actor = Some("bob".into());
        let t = resolve(&g).unwrap();
        assert_eq!(t.token.expose(), "flag-token-123456");
        assert_eq!(t.actor, "bob");
        assert!(!format!("{t:?}").contains("flag-token"));
        g.actor = Some("not ok!".into());
        assert!(resolve(&g).is_err());
    }

    #[test]
    fn a_broken_config_file_is_named_but_not_shown() {
        let cfg = temp(
            "b.toml",
            "url = \"https://x.example\"\ntoken = sekrit-unquoted\n",
        );
        let mut g = global();
        g.config = Some(cfg);
        let e = resolve(&g).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(!e.to_string().contains("sekrit"), "{e}");
        let mut g = global();
        g.config = Some(PathBuf::from("/nonexistent/edgeline.toml"));
        assert_eq!(resolve(&g).unwrap_err().exit_code(), 2);
    }
}
