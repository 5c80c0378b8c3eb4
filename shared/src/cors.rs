//! Calls from browsers (CORS): which origins may call the API with credentials, and the headers
//! each answer carries. Pure, so the rule is tested natively; `api-worker/src/cors.rs` applies it
//! to every request and response.
//!
//! - Allowed origins are exact (`scheme://host[:port]`, from `CORS_ALLOWED_ORIGINS`), never a
//!   wildcard: credentialed requests need the exact origin echoed back.
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an allowed
//!   origin is granted (204 with the allowed methods, headers and max age); from any other origin
//!   it is refused with no CORS headers.
//! - Any other answer to an allowed origin carries `Access-Control-Allow-Origin`,
//!   `-Allow-Credentials: true` and `-Expose-Headers`; to other origins, no CORS headers at all.
//!   Every answer says `Vary: Origin` when origins are configured, so a cache never hands one
//!   origin's answer to another.

/// Methods a browser may send after a preflight.
pub const ALLOW_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
/// Request headers a browser may send (beyond the CORS-safelisted ones).
pub const ALLOW_HEADERS: &str =
    "authorization, content-type, idempotency-key, x-actor, range, if-none-match, if-match";
/// Response headers scripts may read (beyond the CORS-safelisted ones): rate limits, caching,
/// ranges, sizes and the renewed session token.
pub const EXPOSE_HEADERS: &str =
    "retry-after, etag, content-range, accept-ranges, content-length, x-session-token";
/// How long a browser may cache a granted preflight (Chromium caps it at 7,200 s).
pub const MAX_AGE_SECS: u32 = 7200;

/// Reads one configured origin into the form browsers send in `Origin`: lower case, no trailing
/// slash, no default port. Anything else (a path, a wildcard, credentials, another scheme) is
/// refused, so a typo never silently allows nothing or everything.
pub fn parse_origin(entry: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("{entry:?} is not an origin ({why})"));
    let lower = entry.trim().to_ascii_lowercase();
    let Some((scheme, rest)) = lower.split_once("://") else {
        return bad("expected scheme://host[:port]");
    };
    let default_port = match scheme {
        "https" => "443",
        "http" => "80",
        _ => return bad("scheme must be http or https"),
    };
    if rest.is_empty() {
        return bad("no host");
    }
    if let Some(c) = rest
        .chars()
        .find(|c| matches!(c, '/' | '?' | '#' | '@' | '*' | '\\') || c.is_whitespace())
    {
        return bad(&format!(
            "an origin has no {c:?}: no path, wildcard or user"
        ));
    }
    // host, or [ipv6], then an optional :port
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return bad("unclosed [");
        };
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => return bad("junk after ]"),
            },
        };
        (format!("[{addr}]"), port)
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (rest.to_owned(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return bad("no host");
    }
    match port {
        None => Ok(format!("{scheme}://{host}")),
        Some(p) if p == default_port => Ok(format!("{scheme}://{host}")),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && !p.starts_with('0') => Ok(format!("{scheme}://{host}:{n}")),
            _ => bad("bad port"),
        },
    }
}

/// The origins allowed to call the API from a browser, from a comma-separated list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins(Vec<String>);

impl Origins {
    /// Parses `CORS_ALLOWED_ORIGINS`; empty entries are skipped, an invalid one is an error.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut origins = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let origin = parse_origin(entry)?;
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        Ok(Origins(origins))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// Whether a request's `Origin` header is allowed: byte for byte one of ours (browsers send
    /// it serialized, lower case, without a default port). `null` never is.
    pub fn allows(&self, origin: &str) -> bool {
        self.0.iter().any(|o| o == origin)
    }

    /// What to do with a request, from its method and CORS request headers.
    pub fn decide(&self, method: &str, origin: Option<&str>, request_method: Option<&str>) -> Cors {
        let allowed = origin.filter(|o| self.allows(o));
        let vary = !self.is_empty();
        if method.eq_ignore_ascii_case("OPTIONS") && origin.is_some() && request_method.is_some() {
            return match allowed {
                Some(o) => Cors::Preflight(preflight_headers(o)),
                None => Cors::Refuse { vary },
            };
        }
        Cors::Pass {
            headers: allowed.map(response_headers).unwrap_or_default(),
            vary,
        }
    }
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// A preflight from an allowed origin: answer 204 with these headers, route nothing.
    Preflight(Vec<(&'static str, String)>),
    /// A preflight from another origin: refuse it, with no CORS headers.
    Refuse { vary: bool },
    /// Any other request: route it, then add these headers (none for other origins) and
    /// `Vary: Origin` when `vary`.
    Pass {
        headers: Vec<(&'static str, String)>,
        vary: bool,
    },
}

/// The headers of a granted preflight (with `Vary: Origin`).
pub fn preflight_headers(origin: &str) -> Vec<(&'static str, String)> {
    vec![
        ("access-control-allow-origin", origin.to_owned()),
        ("access-control-allow-credentials", "true".into()),
        ("access-control-allow-methods", ALLOW_METHODS.into()),
        ("access-control-allow-headers", ALLOW_HEADERS.into()),
        ("access-control-max-age", MAX_AGE_SECS.to_string()),
        ("vary", "Origin".into()),
    ]
}

/// The headers an actual answer to an allowed origin carries (`Vary` is added separately).
pub fn response_headers(origin: &str) -> Vec<(&'static str, String)> {
    vec![
        ("access-control-allow-origin", origin.to_owned()),
        ("access-control-allow-credentials", "true".into()),
        ("access-control-expose-headers", EXPOSE_HEADERS.into()),
    ]
}

/// A `Vary` value with `Origin` in it, keeping what was there (`None`: nothing to change).
pub fn vary_with_origin(existing: Option<&str>) -> Option<String> {
    match existing.map(str::trim).filter(|v| !v.is_empty()) {
        None => Some("Origin".into()),
        Some(v)
            if v.split(',')
                .map(str::trim)
                .any(|p| p == "*" || p.eq_ignore_ascii_case("origin")) =>
        {
            None
        }
        Some(v) => Some(format!("{v}, Origin")),
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    fn header<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn origins_are_normalised_like_browsers_send_them() {
        for (entry, want) in [
            ("https://app.example.com", "https://app.example.com"),
            (" HTTPS://App.Example.COM ", "https://app.example.com"),
            ("https://app.example.com:443", "https://app.example.com"),
            ("http://127.0.0.1:80", "http://127.0.0.1"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            (
                "https://app.example.com:8443",
                "https://app.example.com:8443",
            ),
            ("http://[::1]:3000", "http://[::1]:3000"),
            ("http://localhost", "http://localhost"),
        ] {
            assert_eq!(parse_origin(entry).as_deref(), Ok(want), "{entry}");
        }
    }

    #[test]
    fn anything_but_an_exact_origin_is_refused() {
        for entry in [
            "*",
            "https://*.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://user@app.example.com",
            "app.example.com",
            "ftp://app.example.com",
            "null",
            "https://",
            "https://app.example.com:0",
            "https://app.example.com:99999",
            "https://app.example.com:x",
            "https://app.example.com:",
            "https://app.example.com?x",
            "http://[::1",
        ] {
            assert!(parse_origin(entry).is_err(), "{entry} should be refused");
        }
    }

    #[test]
    fn lists_skip_empty_entries_and_fail_on_a_bad_one() {
        let o = Origins::parse(" https://a.example, ,http://127.0.0.1:5000,https://a.example")
            .unwrap_or_default();
        assert_eq!(
            o.as_slice(),
            ["https://a.example", "http://127.0.0.1:5000"].as_slice()
        );
        assert!(Origins::parse("").unwrap_or_default().is_empty());
        assert!(Origins::parse("https://a.example,*").is_err());
    }

    #[test]
    fn matching_is_exact() {
        let o = Origins::parse("https://app.example.com,http://127.0.0.1:5000").unwrap_or_default();
        assert!(o.allows("https://app.example.com"));
        assert!(o.allows("http://127.0.0.1:5000"));
        for other in [
            "https://app.example.com.evil.test",
            "https://evil-app.example.com",
            "http://app.example.com",
            "https://app.example.com:8443",
            "http://127.0.0.1:5001",
            "http://localhost:5000",
            "null",
            "",
            "HTTPS://APP.EXAMPLE.COM",
        ] {
            assert!(!o.allows(other), "{other} must not be allowed");
        }
    }

    #[test]
    fn preflights_from_allowed_origins_are_granted_with_the_exact_origin() {
        let o = Origins::parse("https://app.example.com").unwrap_or_default();
        let Cors::Preflight(h) = o.decide("OPTIONS", Some("https://app.example.com"), Some("POST"))
        else {
            panic!("a preflight from an allowed origin is granted");
        };
        assert_eq!(
            header(&h, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(header(&h, "access-control-max-age"), Some("7200"));
        assert_eq!(header(&h, "vary"), Some("Origin"));
        let methods = header(&h, "access-control-allow-methods").unwrap_or_default();
        for m in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            assert!(methods.contains(m), "{m}");
        }
        let allowed = header(&h, "access-control-allow-headers").unwrap_or_default();
        for name in [
            "authorization",
            "content-type",
            "idempotency-key",
            "x-actor",
        ] {
            assert!(allowed.split(", ").any(|a| a == name), "{name}");
        }
        assert!(!h.iter().any(|(_, v)| v == "*"), "never a wildcard");
    }

    #[test]
    fn other_origins_get_no_cors_headers() {
        let o = Origins::parse("https://app.example.com").unwrap_or_default();
        assert_eq!(
            o.decide("OPTIONS", Some("https://evil.test"), Some("POST")),
            Cors::Refuse { vary: true }
        );
        assert_eq!(
            o.decide("GET", Some("https://evil.test"), None),
            Cors::Pass {
                headers: vec![],
                vary: true
            }
        );
        assert_eq!(
            o.decide("GET", None, None),
            Cors::Pass {
                headers: vec![],
                vary: true
            }
        );
        // nothing configured: nothing is allowed and nothing varies
        assert_eq!(
            Origins::default().decide("OPTIONS", Some("https://app.example.com"), Some("GET")),
            Cors::Refuse { vary: false }
        );
    }

    #[test]
    fn actual_requests_from_allowed_origins_carry_credentials_and_exposed_headers() {
        let o = Origins::parse("https://app.example.com").unwrap_or_default();
        // an OPTIONS without Access-Control-Request-Method is not a preflight: it is routed
        for (method, acrm) in [("GET", None), ("POST", None), ("OPTIONS", None)] {
            let Cors::Pass { headers, vary } =
                o.decide(method, Some("https://app.example.com"), acrm)
            else {
                panic!("{method} is routed");
            };
            assert!(vary);
            assert_eq!(
                header(&headers, "access-control-allow-origin"),
                Some("https://app.example.com")
            );
            assert_eq!(
                header(&headers, "access-control-allow-credentials"),
                Some("true")
            );
            let exposed = header(&headers, "access-control-expose-headers").unwrap_or_default();
            for name in [
                "retry-after",
                "etag",
                "content-range",
                "accept-ranges",
                "content-length",
                "x-session-token",
            ] {
                assert!(exposed.split(", ").any(|e| e == name), "{name}");
            }
        }
    }

    #[test]
    fn vary_keeps_what_is_there() {
        assert_eq!(vary_with_origin(None).as_deref(), Some("Origin"));
        assert_eq!(vary_with_origin(Some("")).as_deref(), Some("Origin"));
        assert_eq!(
            vary_with_origin(Some("Accept-Encoding")).as_deref(),
            Some("Accept-Encoding, Origin")
        );
        assert_eq!(vary_with_origin(Some("accept-encoding, origin")), None);
        assert_eq!(vary_with_origin(Some("*")), None);
    }
}
