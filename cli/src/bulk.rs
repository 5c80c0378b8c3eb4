//! Replaying or discarding dead letters by filter, over every page.
//!
//! The API acts on up to 500 matching letters per call (`POST /admin/dead-letters/replay` or
//! `/discard`) and says whether more match (`more`); each call is one unit of work on the
//! server (claim, send, audit), so the walk only ever stops between calls. Ctrl-C sets a flag
//! that the walk reads after the page in flight has finished: the pages done stay done, the
//! rest is left for the next run, and nothing is half done.

use crate::api::Api;
use crate::args::DlqFilter;
use crate::output::id_list;
use crate::verbs::{query, Done, Ui};
use crate::Error;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Most letters one call acts on (the API's `MAX_BULK`).
pub const PAGE: usize = 500;

static STOP: AtomicBool = AtomicBool::new(false);
static HANDLER: Once = Once::new();

/// From here on, Ctrl-C asks the walk to stop after the page in flight instead of killing the
/// process.
fn catch_interrupts() {
    HANDLER.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if STOP.swap(true, Ordering::SeqCst) {
                eprintln!("\nstill finishing the page in flight: a page is never cut in half");
            } else {
                eprintln!("\ninterrupted: finishing the page in flight, then stopping");
            }
        });
    });
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Action {
    Replay,
    Discard,
}

impl Action {
    pub fn verb(self) -> &'static str {
        match self {
            Action::Replay => "replay",
            Action::Discard => "discard",
        }
    }
    pub fn past(self) -> &'static str {
        match self {
            Action::Replay => "replayed",
            Action::Discard => "discarded",
        }
    }
}

/// What a walk did.
#[derive(Debug, Default)]
pub struct Walk {
    /// Every letter acted on, once each.
    pub ids: Vec<String>,
    pub pages: u32,
    /// The last page said more letters match.
    pub more: bool,
    /// Stopped by Ctrl-C between two pages.
    pub interrupted: bool,
    /// Stopped because a page changed nothing new while more still matched (a filter over
    /// letters the action does not change, like `--force --status replayed`).
    pub stuck: bool,
    /// The call that failed, after `pages` pages were done.
    pub error: Option<Error>,
}

/// Calls `page` until the API says no more match, `stop` is set, or a page makes no progress.
/// `on_page(pages, acted_on_this_page, more)` follows each page.
pub fn walk(
    mut page: impl FnMut() -> Result<Value, Error>,
    stop: &AtomicBool,
    mut on_page: impl FnMut(u32, usize, bool),
) -> Walk {
    let mut w = Walk::default();
    let mut seen = HashSet::new();
    loop {
        let v = match page() {
            Ok(v) => v,
            Err(e) => {
                w.error = Some(e);
                return w;
            }
        };
        w.pages += 1;
        let ids: Vec<String> = v["ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let n = ids.len();
        let fresh: Vec<String> = ids.into_iter().filter(|i| seen.insert(i.clone())).collect();
        let repeated = fresh.len() < n;
        on_page(w.pages, fresh.len(), v["more"] == json!(true));
        w.ids.extend(fresh);
        w.more = v["more"] == json!(true);
        if !w.more {
            return w;
        }
        if n == 0 || repeated {
            w.stuck = true;
            return w;
        }
        if stop.load(Ordering::SeqCst) {
            w.interrupted = true;
            return w;
        }
    }
}

/// The body of a filter call.
fn body(f: &DlqFilter, dry_run: bool, force: bool) -> Value {
    let mut m = Map::new();
    let text = [
        ("queue", &f.queue),
        ("type", &f.message_type),
        ("error_class", &f.error_class),
    ];
    for (key, v) in text {
        if let Some(v) = v {
            m.insert(key.into(), json!(v));
        }
    }
    if let Some(s) = f.status {
        m.insert("status".into(), json!(s.as_str()));
    }
    for (key, v) in [("since", f.since), ("until", f.until)] {
        if let Some(v) = v {
            m.insert(key.into(), json!(v));
        }
    }
    m.insert("dry_run".into(), json!(dry_run));
    m.insert("force".into(), json!(force));
    Value::Object(m)
}

/// Every letter a filter call would act on, through the list route (the same filter, with the
/// bulk routes' default status, `dead`), 200 a page.
fn matching_ids(api: &Api, f: &DlqFilter) -> Result<Vec<String>, Error> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = query(&[
            ("queue", f.queue.clone()),
            ("type", f.message_type.clone()),
            ("error_class", f.error_class.clone()),
            (
                "status",
                Some(f.status.map_or("dead", |s| s.as_str()).to_owned()),
            ),
            ("since", f.since.map(|v| v.to_string())),
            ("until", f.until.map(|v| v.to_string())),
            ("limit", Some("200".into())),
            ("cursor", cursor.take()),
        ]);
        let v = api.get(&format!("/admin/dead-letters{q}"))?;
        ids.extend(
            v["dead_letters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["id"].as_str().map(str::to_owned)),
        );
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(ids),
        }
    }
}

fn pages_for(n: usize) -> usize {
    n.div_ceil(PAGE).max(1)
}

/// `--dry-run`: what a filter would act on. The API's own dry run answers for the first page;
/// when more match, the list route counts them all.
pub fn dry_run(api: &Api, action: Action, f: &DlqFilter, force: bool) -> Result<Done, Error> {
    let first = api.post(
        &format!("/admin/dead-letters/{}", action.verb()),
        &body(f, true, force),
    )?;
    let ids: Vec<String> = if first["more"] == json!(true) {
        matching_ids(api, f)?
    } else {
        first["ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let pages = pages_for(ids.len());
    let text = if ids.is_empty() {
        format!("would {} no dead letters: none match", action.verb())
    } else {
        format!(
            "would {} {} dead letter(s), in {pages} page(s) of up to {PAGE}:\n{}\nrun it again without --dry-run to {} them",
            action.verb(),
            ids.len(),
            id_list(&ids, 20),
            action.verb()
        )
    };
    Ok(Done::new(
        json!({"dry_run": true, "count": ids.len(), "ids": ids, "more": false, "pages": pages}),
        text,
    ))
}

fn bar(ui: &Ui, api: &Api, action: Action, f: &DlqFilter) -> ProgressBar {
    if !ui.progress {
        return ProgressBar::hidden();
    }
    let counting = ProgressBar::new_spinner().with_message("counting the matching dead letters…");
    counting.enable_steady_tick(Duration::from_millis(120));
    let total = matching_ids(api, f).map(|ids| ids.len()).ok();
    counting.finish_and_clear();
    let pb = match total {
        Some(n) => ProgressBar::new(u64::try_from(n).unwrap_or(0)),
        None => ProgressBar::no_length(),
    };
    let template = format!(
        "{{spinner}} {} [{{bar:24}}] {{pos}}/{{len}} · {{msg}} · {{elapsed}}",
        action.past()
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message("page 1");
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Acts on every letter the filter matches, page after page.
pub fn run(ui: &Ui, api: &Api, action: Action, f: &DlqFilter, force: bool) -> Result<Done, Error> {
    catch_interrupts();
    let pb = bar(ui, api, action, f);
    let started = Instant::now();
    let path = format!("/admin/dead-letters/{}", action.verb());
    let request = body(f, false, force);
    let verbose = ui.verbose;
    let w = walk(
        || api.post(&path, &request),
        &STOP,
        |page, n, more| {
            pb.inc(u64::try_from(n).unwrap_or(0));
            if pb.length().is_some_and(|l| pb.position() > l) {
                pb.set_length(pb.position());
            }
            if more {
                pb.set_message(format!("page {}", page + 1));
            }
            if verbose {
                pb.suspend(|| {
                    eprintln!(
                        "page {page}: {} {n} dead letter(s){}",
                        action.past(),
                        if more { ", more match" } else { "" }
                    );
                });
            }
        },
    );
    pb.finish_and_clear();
    if let (Some(e), 0) = (&w.error, w.pages) {
        // nothing was done: just the failure
        return Err(e.clone());
    }
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut text = format!(
        "{} {} dead letter(s) in {} page(s), {:.1} s",
        action.past(),
        w.ids.len(),
        w.pages,
        started.elapsed().as_secs_f64()
    );
    if !w.ids.is_empty() {
        text.push_str(&format!(":\n{}", id_list(&w.ids, 20)));
    }
    if w.stuck {
        text.push_str(&format!(
            "\nstopped: more letters match, but a page {} nothing new (the filter matches letters this does not change, e.g. --force over already replayed ones)",
            action.past()
        ));
    }
    let done = Done::new(
        json!({
            "dry_run": false, "count": w.ids.len(), "ids": w.ids, "more": w.more,
            "pages": w.pages, "interrupted": w.interrupted, "ms": ms,
        }),
        text,
    );
    if let Some(e) = w.error {
        let done_so_far = w.pages;
        return Ok(done.then(Error::from_partial(e, done_so_far)));
    }
    if w.interrupted {
        return Ok(done.then(Error::Interrupted(format!(
            "interrupted after page {}: the pages done stay done, more letters match; run the same command again to continue",
            w.pages
        ))));
    }
    Ok(done)
}

impl Error {
    /// A failure after some pages were done: the same kind of error, saying so.
    fn from_partial(e: Error, pages: u32) -> Error {
        let note = format!(" (after {pages} page(s) were done; running it again continues)");
        match e {
            Error::Api {
                status,
                code,
                message,
            } => Error::Api {
                status,
                code,
                message: format!("{message}{note}"),
            },
            Error::Unreachable(m) => Error::Unreachable(format!("{m}{note}")),
            Error::Usage(m) => Error::Usage(format!("{m}{note}")),
            Error::Problems(m) => Error::Problems(format!("{m}{note}")),
            Error::Interrupted(m) => Error::Interrupted(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(ids: std::ops::Range<usize>, more: bool) -> Value {
        let ids: Vec<String> = ids.map(|i| format!("dl{i}")).collect();
        json!({"ids": ids, "count": ids.len(), "more": more})
    }

    #[test]
    fn walks_every_page() {
        let mut pages = vec![
            page(0..500, true),
            page(500..1000, true),
            page(1000..1500, true),
            page(1500..2000, false),
        ]
        .into_iter();
        let mut seen = vec![];
        let stop = AtomicBool::new(false);
        let w = walk(
            || Ok(pages.next().unwrap_or_else(|| page(0..0, false))),
            &stop,
            |p, n, _| seen.push((p, n)),
        );
        assert_eq!(w.ids.len(), 2000);
        assert_eq!(w.pages, 4);
        assert!(!w.more && !w.interrupted && !w.stuck && w.error.is_none());
        assert_eq!(seen, vec![(1, 500), (2, 500), (3, 500), (4, 500)]);
    }

    #[test]
    fn ctrl_c_stops_between_pages() {
        let stop = AtomicBool::new(false);
        let mut calls = 0;
        let w = walk(
            || {
                calls += 1;
                // Ctrl-C arrives while the second page is in flight
                if calls == 2 {
                    stop.store(true, Ordering::SeqCst);
                }
                Ok(page((calls - 1) * 500..calls * 500, true))
            },
            &stop,
            |_, _, _| {},
        );
        assert_eq!(calls, 2, "the page in flight finished, no other started");
        assert_eq!((w.pages, w.ids.len()), (2, 1000));
        assert!(w.interrupted && w.more);
    }

    #[test]
    fn a_page_that_changes_nothing_new_stops_the_walk() {
        let stop = AtomicBool::new(false);
        let w = walk(|| Ok(page(0..500, true)), &stop, |_, _, _| {});
        assert_eq!((w.pages, w.ids.len()), (2, 500));
        assert!(w.stuck);
        let w = walk(|| Ok(page(0..0, true)), &stop, |_, _, _| {});
        assert_eq!(w.pages, 1);
        assert!(w.stuck);
    }

    #[test]
    fn an_error_keeps_what_was_done() {
        let stop = AtomicBool::new(false);
        let mut calls = 0;
        let w = walk(
            || {
                calls += 1;
                if calls == 3 {
                    Err(Error::Unreachable("gone".into()))
                } else {
                    Ok(page((calls - 1) * 500..calls * 500, true))
                }
            },
            &stop,
            |_, _, _| {},
        );
        assert_eq!((w.pages, w.ids.len()), (2, 1000));
        assert_eq!(w.error.map(|e| e.exit_code()), Some(4));
    }

    #[test]
    fn filter_bodies() {
        let f = DlqFilter {
            message_type: Some("task.submit".into()),
            since: Some(5),
            ..DlqFilter::default()
        };
        assert_eq!(
            body(&f, true, false),
            json!({"type": "task.submit", "since": 5, "dry_run": true, "force": false})
        );
        assert_eq!(pages_for(2000), 4);
        assert_eq!(pages_for(2001), 5);
        assert_eq!(pages_for(0), 1);
    }
}
