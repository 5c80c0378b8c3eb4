//! The admin API over HTTP, and what its failures mean: an answer with an error status is
//! [`Error::Api`] (exit 3), no answer at all is [`Error::Unreachable`] (exit 4).

use crate::config::{Secret, Target};
use crate::Error;
use serde_json::Value;
use std::time::{Duration, Instant};

pub struct Api {
    base: String,
    token: Secret,
    actor: String,
    agent: ureq::Agent,
    verbose: bool,
}

impl Api {
    pub fn new(target: Target, timeout_secs: u64, verbose: bool) -> Api {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(timeout_secs.min(10)))
            .timeout(Duration::from_secs(timeout_secs))
            // the admin API does not redirect; following one could carry the token elsewhere
            .redirects(0)
            .user_agent(concat!("edgeline-cli/", env!("CARGO_PKG_VERSION")))
            .build();
        Api {
            base: target.url,
            token: target.token,
            actor: target.actor,
            agent,
            verbose,
        }
    }

    /// The token itself, only so output can be checked for it before it is printed.
    pub fn token(&self) -> &Secret {
        &self.token
    }

    pub fn get(&self, path: &str) -> Result<Value, Error> {
        self.call("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, Error> {
        self.call("POST", path, Some(body))
    }

    pub fn put(&self, path: &str, body: &Value) -> Result<Value, Error> {
        self.call("PUT", path, Some(body))
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Error> {
        let url = format!("{}{path}", self.base);
        let started = Instant::now();
        let req = self
            .agent
            .request(method, &url)
            .set("authorization", &format!("Bearer {}", self.token.expose()))
            .set("x-actor", &self.actor)
            .set("accept", "application/json");
        let result = match body {
            Some(b) => req
                .set("content-type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        let (status, text, location) = match result {
            Ok(resp) | Err(ureq::Error::Status(_, resp)) => {
                let status = resp.status();
                let location = resp.header("location").map(str::to_owned);
                (status, resp.into_string().unwrap_or_default(), location)
            }
            Err(ureq::Error::Transport(t)) => {
                if self.verbose {
                    eprintln!(
                        "{method} {url} -> no answer after {} ms",
                        started.elapsed().as_millis()
                    );
                }
                return Err(transport_error(&self.base, &t));
            }
        };
        if self.verbose {
            eprintln!(
                "{method} {url} -> {status} in {} ms",
                started.elapsed().as_millis()
            );
        }
        answer(status, &text, location.as_deref())
    }
}

fn transport_error(base: &str, t: &ureq::Transport) -> Error {
    use ureq::ErrorKind;
    // kind, ureq's message, then the cause (e.g. "Connection refused (os error 111)")
    let mut parts = vec![t.kind().to_string()];
    parts.extend(t.message().map(str::to_owned));
    parts.extend(std::error::Error::source(t).map(ToString::to_string));
    parts.dedup();
    let detail = parts.join(": ");
    match t.kind() {
        ErrorKind::InvalidUrl | ErrorKind::UnknownScheme => {
            Error::Usage(format!("--url {base} is not a usable URL: {detail}"))
        }
        _ => Error::Unreachable(format!("cannot reach {base}: {detail}")),
    }
}

/// An answer as a value, or as the error it reports.
fn answer(status: u16, text: &str, location: Option<&str>) -> Result<Value, Error> {
    let body: Option<Value> = serde_json::from_str(text).ok();
    if (200..300).contains(&status) {
        return body.ok_or_else(|| Error::Api {
            status,
            code: "not_json".into(),
            message: format!(
                "the answer is not JSON (is --url an edgeline?): {}",
                snippet(text)
            ),
        });
    }
    if (300..400).contains(&status) {
        return Err(Error::Api {
            status,
            code: "redirect".into(),
            message: format!(
                "redirected to {}; use that as --url",
                location.unwrap_or("(no location)")
            ),
        });
    }
    let body = body.unwrap_or(Value::Null);
    let code = body
        .pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or("error")
        .to_owned();
    let mut message = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map_or_else(|| snippet(text), str::to_owned);
    if let Some(field) = body.pointer("/error/field").and_then(Value::as_str) {
        message = format!("{field}: {message}");
    }
    if status == 401 {
        message.push_str(" (check the admin token for this URL)");
    }
    Err(Error::Api {
        status,
        code,
        message,
    })
}

fn snippet(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 200 {
        format!("{}…", one_line.chars().take(200).collect::<String>())
    } else if one_line.is_empty() {
        "(empty body)".into()
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_and_their_errors() {
        assert_eq!(answer(200, r#"{"a":1}"#, None), Ok(json!({"a": 1})));
        let e = answer(
            404,
            r#"{"error":{"code":"not_found","message":"dead letter not found"}}"#,
            None,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "404 not_found: dead letter not found");
        assert_eq!(e.exit_code(), 3);
        let e = answer(200, "<html>", None).unwrap_err();
        assert_eq!(e.exit_code(), 3);
        let e = answer(301, "", Some("https://x")).unwrap_err();
        assert!(e.to_string().contains("https://x"));
        let e = answer(502, "Bad gateway", None).unwrap_err();
        assert_eq!(e.to_string(), "502 error: Bad gateway");
    }

    #[test]
    fn no_answer_is_unreachable() {
        let api = Api::new(
            Target {
                url: "http://127.0.0.1:9".into(),
                token: Secret::new("t0ken-never-shown"),
                actor: "test".into(),
                token_from: "test".into(),
            },
            5,
            false,
        );
        let e = api.get("/admin/audit").unwrap_err();
        assert_eq!(e.exit_code(), 4, "{e}");
        assert!(!e.to_string().contains("t0ken"), "{e}");
    }
}
