//! A small blocking HTTP client for the API, with the calls tests make again and again.

use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub struct Client {
    pub base: String,
    agent: ureq::Agent,
}

/// A response, whatever its status.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The error code of a JSON error body.
    pub fn code(&self) -> String {
        self.json()
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn read(resp: ureq::Response) -> Reply {
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .filter_map(|n| resp.header(&n).map(|v| (n.clone(), v.to_owned())))
        .collect();
    let mut body = Vec::new();
    let _ = std::io::Read::read_to_end(&mut resp.into_reader(), &mut body);
    Reply {
        status,
        headers,
        body,
    }
}

/// The claims of a JWT the API issued (unverified: the server verified it); `Null` when it has
/// none to read.
pub fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// A multipart/form-data body: text fields and files (field name, file name, content type, bytes).
pub fn multipart(
    fields: &[(&str, &str)],
    files: &[(&str, &str, &str, &[u8])],
) -> (String, Vec<u8>) {
    let boundary = "edgeline-e2e-boundary-7f3a9c";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes());
    }
    for (name, filename, ct, bytes) in files {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {ct}\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

impl Client {
    pub fn new(base: &str) -> Self {
        Client {
            base: base.trim_end_matches('/').to_owned(),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
        }
    }

    /// Any request. `path` may be a full URL.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> Reply {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let mut req = self.agent.request(method, &url);
        if let Some(t) = token {
            req = req.set("authorization", &format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let result = match body {
            Some((ct, bytes)) => req.set("content-type", ct).send_bytes(bytes),
            None => req.call(),
        };
        match result {
            Ok(resp) | Err(ureq::Error::Status(_, resp)) => read(resp),
            Err(e) => Reply {
                status: 0,
                headers: vec![],
                body: e.to_string().into_bytes(),
            },
        }
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.send("GET", path, token, &[], None)
    }

    pub fn delete(&self, path: &str, token: Option<&str>) -> Reply {
        self.send("DELETE", path, token, &[], None)
    }

    pub fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        self.send(
            "POST",
            path,
            token,
            &[],
            Some(("application/json", body.to_string().as_bytes())),
        )
    }

    /// A new user with `credits` starting credits and a session token for them.
    pub fn new_user(&self, admin_token: &str, credits: i64) -> (String, String) {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let email = format!("user{n}-{}@e2e.test", std::process::id());
        let created = self.post_json(
            "/admin/users",
            Some(admin_token),
            &json!({"email": email, "name": "E2E", "credits": credits}),
        );
        assert_eq!(created.status, 201, "create user: {}", created.text());
        let id = created.json()["id"].as_str().unwrap_or_default().to_owned();
        (id.clone(), self.session(admin_token, &id))
    }

    pub fn session(&self, admin_token: &str, user_id: &str) -> String {
        let s = self.post_json(
            &format!("/admin/users/{user_id}/sessions"),
            Some(admin_token),
            &json!({}),
        );
        assert_eq!(s.status, 201, "create session: {}", s.text());
        s.json()["token"].as_str().unwrap_or_default().to_owned()
    }

    pub fn balance(&self, token: &str) -> i64 {
        let r = self.get("/api/balance", Some(token));
        assert_eq!(r.status, 200, "balance: {}", r.text());
        r.json()["balance"].as_i64().unwrap_or(i64::MIN)
    }

    /// Every item (`key`) of a paginated list, 200 a page, following `next_cursor`.
    pub fn all(&self, path: &str, token: &str, key: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = match &cursor {
                Some(cur) => format!("{path}{sep}limit=200&cursor={cur}"),
                None => format!("{path}{sep}limit=200"),
            };
            let page = self.get(&url, Some(token)).json();
            out.extend(page[key].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return out,
            }
        }
    }

    /// Runs a scheduled job now, as an operator does (`POST /admin/cron/{job}`); its recorded run.
    pub fn run_cron_job(&self, admin_token: &str, job: &str) -> Result<Value, String> {
        let r = self.post_json(&format!("/admin/cron/{job}"), Some(admin_token), &json!({}));
        if r.status != 200 {
            return Err(format!("run {job}: {} {}", r.status, r.text()));
        }
        Ok(r.json())
    }

    /// Polls a task until it is completed or failed.
    pub fn wait_task(&self, token: &str, id: &str, limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            let r = self.get(&format!("/api/tasks/{id}"), Some(token));
            let task = r.json();
            match task["status"].as_str() {
                Some("completed") | Some("failed") => return task,
                _ if started.elapsed() > limit => panic!(
                    "task {id} did not finish in {}s: {}",
                    limit.as_secs(),
                    r.text()
                ),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}
