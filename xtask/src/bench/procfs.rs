//! What the machine saw: batches overlapping in time, the busiest thread's CPU, workerd's memory
//! (Linux `/proc`).

use super::*;

/// The most batches whose handling overlapped in time (a batch line is logged at its end, with
/// how long it was held).
pub(super) fn max_overlap(batches: &[Value]) -> usize {
    let mut edges: Vec<(u64, i32)> = Vec::new();
    for b in batches {
        if let (Some(end), Some(held)) = (b["at_ms"].as_u64(), b["ms"].as_u64()) {
            edges.push((end.saturating_sub(held), 1));
            edges.push((end, -1));
        }
    }
    // ends before starts at the same instant: touching batches do not overlap
    edges.sort_by_key(|(t, d)| (*t, *d));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

/// CPU ticks (user + system) of every workerd thread in a process group, by thread id.
pub(super) fn thread_cpu(group: Option<u32>) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let Some(group) = group else { return out };
    for pid in workerd_pids(group) {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let stat = fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().collect())
                .unwrap_or_default();
            // after the command: state(0) ... utime(11) stime(12)
            let ticks = fields
                .get(11)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                + fields
                    .get(12)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            out.insert(format!("{pid}/{}", t.file_name().to_string_lossy()), ticks);
        }
    }
    out
}

/// The busiest thread's CPU time over the wall time (clock ticks are 1/100 s on Linux).
pub(super) fn busiest_share(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
    wall_ms: u64,
) -> f64 {
    let busiest = after
        .iter()
        .map(|(k, v)| v.saturating_sub(before.get(k).copied().unwrap_or(0)))
        .max()
        .unwrap_or(0);
    busiest as f64 * 10.0 / wall_ms.max(1) as f64
}

pub(super) fn workerd_pids(group: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let pgrp = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .and_then(|p| p.parse::<u32>().ok());
        let cmd = fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default();
        if pgrp == Some(group) && cmd.contains("workerd") {
            if let Ok(pid) = entry.file_name().to_string_lossy().parse() {
                out.push(pid);
            }
        }
    }
    out
}

/// Peak resident memory (VmHWM) summed over the workerd processes of a process group.
pub(super) fn peak_rss_kib(group: Option<u32>) -> Option<u64> {
    let pids = workerd_pids(group?);
    Some(
        pids.iter()
            .map(|pid| {
                fs::read_to_string(format!("/proc/{pid}/status"))
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum(),
    )
}
