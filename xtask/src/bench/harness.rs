//! The systems under test as the bench sees them: their stacks, the log lines they wrote, and
//! small readers of both.

use super::*;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum System {
    Edgeline,
    Peer,
}

pub(super) struct Bench<'a> {
    pub(super) stack: &'a Stack,
    pub(super) peer: &'a Peer,
    pub(super) tokens: Vec<String>,
    pub(super) peer_tokens: Vec<String>,
    /// Each system's log, read incrementally (every line parsed once, so the bench's own reading
    /// stays small beside what it measures).
    pub(super) logs: [std::sync::Mutex<Tail>; 2],
}

/// A wrangler log read from where the last read stopped.
pub(super) struct Tail {
    path: std::path::PathBuf,
    offset: u64,
    /// Bytes after the last complete line: a read can end inside a line, even inside a character.
    partial: Vec<u8>,
    events: Vec<Value>,
}

impl Tail {
    pub(super) fn new(path: std::path::PathBuf) -> Self {
        Tail {
            path,
            offset: 0,
            partial: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Parses what was appended since the last call: the workers' JSON lines, bare (`{...}`) or
    /// after wrangler's `[worker-name]` prefix.
    pub(super) fn refresh(&mut self) {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = f.read_to_end(&mut buf) else {
            return;
        };
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        // decoded only once whole: a character split between two reads would otherwise turn
        // into two replacement characters
        let complete = self
            .partial
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let bytes: Vec<u8> = self.partial.drain(..complete).collect();
        let text = String::from_utf8_lossy(&bytes);
        for l in text.lines() {
            let json = if l.starts_with('{') {
                Some(l.to_owned())
            } else {
                l.split_once("] {").map(|(_, rest)| format!("{{{rest}"))
            };
            if let Some(v) = json.and_then(|j| serde_json::from_str::<Value>(&j).ok()) {
                self.events.push(v);
            }
        }
    }
}

impl Bench<'_> {
    pub(super) fn events(&self, s: System, event: Option<&str>) -> Vec<Value> {
        let i = usize::from(s == System::Peer);
        let mut tail = self.logs[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tail.refresh();
        tail.events
            .iter()
            .filter(|v| event.is_none_or(|e| v["event"] == e))
            .cloned()
            .collect()
    }

    pub(super) fn log_tail(&self, s: System) -> String {
        match s {
            System::Edgeline => self.stack.log_tail(30),
            System::Peer => self.peer.log_tail(30),
        }
    }

    /// What a failed wait leaves behind: the system's whole log copied to `bench/tmp` (its
    /// stack's state goes with the run), and the last lines that name each missing task.
    fn evidence(&self, s: System, missing: &[&String]) -> String {
        let i = usize::from(s == System::Peer);
        let log = self.logs[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .path
            .clone();
        let dir = root().join("bench/tmp");
        let kept = dir.join(format!("failed-{}.log", ["edgeline", "peer"][i]));
        let copied = match fs::create_dir_all(&dir).and_then(|()| fs::copy(&log, &kept)) {
            Ok(_) => format!("the log is kept in {}", kept.display()),
            Err(e) => format!("the log could not be kept: {e}"),
        };
        let events = self.events(s, None);
        let mut out = format!("{copied}; the missing tasks' last lines:");
        for id in missing.iter().take(5) {
            let lines: Vec<&Value> = events
                .iter()
                .filter(|e| e["task_id"].as_str() == Some(id.as_str()))
                .collect();
            out.push_str(&format!("\n  {id}: {} lines", lines.len()));
            for l in lines.iter().rev().take(3).rev() {
                out.push_str(&format!("\n    {l}"));
            }
        }
        out
    }

    pub(super) fn pid(&self, s: System) -> Option<u32> {
        match s {
            System::Edgeline => self.stack.pid(),
            System::Peer => self.peer.pid(),
        }
    }

    /// The i-th submission, from the users in turn.
    pub(super) fn submit(&self, s: System, i: usize, prompt: &str) -> Request {
        let (base, tokens) = match s {
            System::Edgeline => (&self.stack.api, &self.tokens),
            System::Peer => (&self.peer.url, &self.peer_tokens),
        };
        Request {
            method: "POST",
            url: format!("{base}/api/tasks"),
            headers: vec![
                (
                    "authorization".into(),
                    format!("Bearer {}", tokens[i % tokens.len()]),
                ),
                ("content-type".into(), "application/json".into()),
            ],
            body: Some(
                json!({"prompt": prompt, "model": "kie_4o"})
                    .to_string()
                    .into_bytes(),
            ),
        }
    }

    /// Waits until every task in `ids` has ended: its final status cached, or the cache write
    /// failed after D1 ended it (both lines are logged only by the call that ended the task).
    /// Returns when each ended and how.
    pub(super) fn wait_ended(
        &self,
        s: System,
        ids: &HashSet<String>,
        limit: Duration,
    ) -> Result<HashMap<String, (u64, String)>> {
        let started = Instant::now();
        loop {
            // only the two lines that end a task are copied: this runs every second beside
            // what the bench measures, over a log of tens of thousands of lines
            let seen: HashMap<String, (u64, String)> = ENDED_EVENTS
                .iter()
                .flat_map(|event| self.events(s, Some(event)))
                .filter_map(|e| ended(&e))
                .collect();
            let missing: Vec<&String> = ids.iter().filter(|t| !seen.contains_key(*t)).collect();
            if missing.is_empty() {
                return Ok(seen);
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "{} tasks did not end in {}s; {}\n{}",
                    missing.len(),
                    limit.as_secs(),
                    self.evidence(s, &missing),
                    self.log_tail(s)
                ));
            }
            // a system whose `wrangler dev` died ends nothing more: say so now, not at the limit
            if !running(self.pid(s)) {
                return Err(format!(
                    "wrangler dev exited with {} tasks not ended:\n{}",
                    missing.len(),
                    self.log_tail(s)
                ));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// The lines the call that ended a task logs: its final status cached in KV, or not.
const ENDED_EVENTS: [&str; 2] = ["task.final_status_cached", "status_cache_failed"];

/// The task a log line says ended, with when and how: the line of the call that ended it,
/// whether its final status reached KV or not.
pub(super) fn ended(e: &Value) -> Option<(String, (u64, String))> {
    if !ENDED_EVENTS.iter().any(|name| e["event"] == *name) {
        return None;
    }
    Some((
        e["task_id"].as_str()?.to_owned(),
        (e["at_ms"].as_u64()?, e["status"].as_str()?.to_owned()),
    ))
}

/// Whether process `pid` still runs: it exists and is not a zombie that exited and waits to be
/// reaped (Linux's `/proc/{pid}/stat`, whose state follows the command's closing parenthesis).
pub(super) fn running(pid: Option<u32>) -> bool {
    pid.and_then(|p| fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .and_then(|stat| {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.trim_start().chars().next())
        })
        .is_some_and(|state| state != 'Z')
}

pub(super) fn task_ids(l: &Load) -> HashSet<String> {
    l.samples
        .iter()
        .filter(|s| (200..300).contains(&s.status))
        .filter_map(|s| {
            serde_json::from_str::<Value>(s.body.as_deref()?).ok()?["id"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// `sum / n`, refusing to divide by no samples.
pub(super) fn per(sum: f64, n: usize, what: &str) -> Result<f64> {
    if n == 0 {
        return Err(format!("{what}: no samples"));
    }
    Ok(sum / n as f64)
}

pub(super) fn latency(l: &Load, what: &str) -> Result<Value> {
    let p = |q| l.percentile(q).map_err(|e| format!("{what}: {e}"));
    Ok(json!({
        "p50_ms": p(0.5)?, "p99_ms": p(0.99)?, "per_second": l.per_second(),
        "samples": l.latencies_ms.len(), "errors": l.error_count(),
        "error_statuses": l.errors.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<Map<_, _>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A task whose final status could not be cached has ended all the same.
    #[test]
    fn a_task_ended_whether_or_not_its_status_was_cached() {
        let cached = json!({"event": "task.final_status_cached", "task_id": "a", "at_ms": 5, "status": "completed"});
        let uncached = json!({"event": "status_cache_failed", "task_id": "b", "at_ms": 6, "status": "failed", "cause": "kv"});
        let other = json!({"event": "message", "task_id": "c", "at_ms": 7, "status": "completed"});
        assert_eq!(ended(&cached), Some(("a".into(), (5, "completed".into()))));
        assert_eq!(ended(&uncached), Some(("b".into(), (6, "failed".into()))));
        assert_eq!(ended(&other), None);
    }

    /// A line read in two parts, split inside a character, is still one event.
    #[test]
    fn a_line_split_inside_a_character_is_read_whole() {
        let path = std::env::temp_dir().join(format!("bench-tail-{}.log", std::process::id()));
        let line = "[edgeline-api] {\"event\":\"http\",\"note\":\"caf\u{e9}\"}\n".as_bytes();
        let cut = line.iter().position(|b| *b == 0xC3).unwrap() + 1;
        fs::write(&path, &line[..cut]).unwrap();
        let mut tail = Tail::new(path.clone());
        tail.refresh();
        assert!(tail.events.is_empty(), "half a line is no event yet");
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&line[cut..]).unwrap();
        tail.refresh();
        let _ = fs::remove_file(&path);
        assert_eq!(tail.events.len(), 1);
        assert_eq!(tail.events[0]["note"], "caf\u{e9}");
    }
}
