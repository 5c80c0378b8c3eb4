//! The benchmark's floor worker (`bench/floor-worker`) in a `wrangler dev` of its own, on the
//! same workerd as the stack: what the runtime costs before edgeline does any work.

use crate::stack::{free_port, quiet, root, stop_process, wrangler};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Floor {
    pub url: String,
    pub state_dir: PathBuf,
    /// From spawning `wrangler dev` to the first `200`.
    pub started_in: Duration,
    child: Option<Child>,
}

impl Floor {
    pub fn start() -> Result<Floor, String> {
        let dir = root().join("bench/floor-worker");
        if !dir.join("build/index.js").exists() {
            return Err("the floor worker is not built; run `cargo xtask bench`".into());
        }
        let (port, inspector) = (free_port()?, free_port()?);
        let state_dir =
            std::env::temp_dir().join(format!("edgeline-floor-{}-{port}", std::process::id()));
        fs::create_dir_all(&state_dir)
            .map_err(|e| format!("creating {}: {e}", state_dir.display()))?;
        let log = fs::File::create(state_dir.join("wrangler.log")).map_err(|e| e.to_string())?;
        let spawned = Instant::now();
        let child = quiet(&mut Command::new(wrangler()))
            .current_dir(&dir)
            .args([
                "dev",
                "-c",
                "wrangler.toml",
                "--ip",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--inspector-port",
                &inspector.to_string(),
            ])
            .arg("--persist-to")
            .arg(state_dir.join("wrangler"))
            .args(["--show-interactive-dev-session=false", "--log-level", "log"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(log))
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting wrangler dev: {e}"))?;
        let mut floor = Floor {
            url: format!("http://127.0.0.1:{port}"),
            state_dir,
            started_in: Duration::ZERO,
            child: Some(child),
        };
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(5))
            .build();
        while spawned.elapsed() < Duration::from_secs(90) {
            if let Some(Ok(Some(status))) = floor.child.as_mut().map(Child::try_wait) {
                return Err(format!(
                    "the floor's wrangler dev exited ({status}):\n{}",
                    floor.log()
                ));
            }
            if agent
                .get(&floor.url)
                .call()
                .is_ok_and(|r| r.status() == 200)
            {
                floor.started_in = spawned.elapsed();
                return Ok(floor);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!("the floor did not answer in 90s:\n{}", floor.log()))
    }

    /// wrangler's process id, which is also its process group's.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.state_dir.join("wrangler.log")).unwrap_or_default()
    }

    /// Sends `n` messages to the floor's queue and waits until its consumer has acked them all.
    /// Returns the milliseconds from the first send to the last ack (the workers' clock).
    pub fn drain(&self, n: usize, limit: Duration) -> Result<u64, String> {
        let before = self.acked().len();
        let sent_at = crate::now_ms();
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(120))
            .build();
        agent
            .post(&format!("{}/enqueue?n={n}", self.url))
            .call()
            .map_err(|e| format!("enqueue: {e}"))?;
        let started = Instant::now();
        loop {
            let batches = self.acked();
            let done: u64 = batches[before.min(batches.len())..]
                .iter()
                .map(|(count, _)| count)
                .sum();
            if done >= n as u64 {
                let last = batches.iter().map(|(_, at)| *at).max().unwrap_or(sent_at);
                return Ok(last.saturating_sub(sent_at));
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "the floor consumer acked {done} of {n} in {}s",
                    limit.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// (messages acked, at ms) per batch the floor consumer logged.
    fn acked(&self) -> Vec<(u64, u64)> {
        self.log()
            .lines()
            .filter_map(|l| l.find("{\"").map(|i| &l[i..]))
            .filter_map(|j| serde_json::from_str::<serde_json::Value>(j).ok())
            .filter(|v| v["event"] == "floor_batch")
            .map(|v| {
                (
                    v["n"].as_u64().unwrap_or(0),
                    v["at_ms"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_process(child, true);
        }
        let _ = fs::remove_dir_all(&self.state_dir);
    }
}
