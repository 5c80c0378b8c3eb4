/// A process that exited but was not reaped yet counts as gone, as does one that never was.
#[test]
fn a_process_that_exited_is_not_running() {
    assert!(super::running(Some(std::process::id())));
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    let waited = std::time::Instant::now();
    while super::running(Some(pid)) && waited.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        !super::running(Some(pid)),
        "an exited child is a zombie, not running"
    );
    child.wait().unwrap();
    assert!(!super::running(None));
}

use super::*;

/// The peer is billed an invocation per workflow instance: one per task however many steps
/// it ran.
#[test]
fn the_peer_s_instances_are_its_tasks() {
    let steps = [
        json!({"task_id": "a", "step": "create"}),
        json!({"task_id": "a", "step": "poll"}),
        json!({"task_id": "b", "step": "create"}),
    ];
    assert_eq!(instances(&steps.iter().collect::<Vec<_>>()), 2);
}

#[test]
fn the_benchmark_block_is_what_the_results_render() {
    let results: Value = serde_json::from_str(
        &fs::read_to_string(root().join("bench/results.json")).unwrap_or_default(),
    )
    .unwrap_or(Value::Null);
    let doc = fs::read_to_string(root().join(BLOCK_FILE)).unwrap_or_default();
    let rendered = with_block(&doc, &block(&results));
    assert!(
        rendered.as_deref() == Ok(doc.as_str()),
        "{BLOCK_FILE}'s benchmark block is not what bench/results.json renders: it is written \
         by `cargo xtask bench`, never by hand"
    );
    // one place for the figures: no stale copy of the block left in the README
    let readme = fs::read_to_string(root().join("README.md")).unwrap_or_default();
    assert!(
        !readme.contains(BLOCK_BEGIN) && !readme.contains(BLOCK_END),
        "README.md carries a benchmark block; the generated one lives in {BLOCK_FILE} only"
    );
}

#[test]
fn a_hand_edit_of_the_block_is_caught() {
    let results = json!({});
    let doc = format!("# t\n\nbefore\n\n{}\nafter\n", block(&results));
    assert_eq!(
        with_block(&doc, &block(&results)).as_deref(),
        Ok(doc.as_str())
    );
    let edited = doc.replacen("| budget |", "| budget (edited) |", 1);
    assert_ne!(edited, doc);
    assert_ne!(
        with_block(&edited, &block(&results)).as_deref(),
        Ok(edited.as_str())
    );
    assert!(with_block("no markers here", &block(&results)).is_err());
}

#[test]
fn budgets_hold_at_equality() {
    assert!(within(3.0, 3.0));
    assert!(within(2.0, 2.0));
    assert!(!within(3.01, 3.0));
    assert!(!within(f64::NAN, 3.0));
}

#[test]
fn no_figure_from_no_samples() {
    assert!(per(0.0, 0, "x").is_err());
    assert_eq!(per(6.0, 2, "x"), Ok(3.0));
}

#[test]
fn spreads_are_taken_per_figure_over_runs() {
    let runs = [
        json!({"a": {"x": 1.0}, "b": [{"y": 2}]}),
        json!({"a": {"x": 3.0}, "b": [{"y": 4}]}),
    ];
    let s = spread_tree(&runs, "");
    assert_eq!(s["a"]["x"]["median"], 2.0);
    assert_eq!(s["b"][0]["y"]["min"], 2.0);
    assert_eq!(s["b"][0]["y"]["max"], 4.0);
}

/// A figure only some runs have (computed only over samples) spreads over those runs.
#[test]
fn a_figure_missing_from_a_run_spreads_over_the_others() {
    let runs = [json!({"a": {"n": 0}}), json!({"a": {"n": 60, "per": 0.0}})];
    let s = spread_tree(&runs, "");
    assert_eq!(s["a"]["per"]["median"], 0.0);
    assert_eq!(s["a"]["per"]["n"], 1);
    assert_eq!(s["a"]["n"]["max"], 60.0);
}

#[test]
fn overlapping_batches() {
    let b = |end: u64, ms: u64| json!({"at_ms": end, "ms": ms});
    assert_eq!(max_overlap(&[b(10, 10), b(20, 10), b(30, 10)]), 1);
    assert_eq!(max_overlap(&[b(10, 10), b(15, 10)]), 2);
}

/// twiggy's names go to the crate that wrote the code, with the worker's own and `shared`'s
/// code by module; what is not shipped (the name section) counts apart.
#[test]
fn size_buckets_follow_the_crate_and_module_that_wrote_the_code() {
    use size::{classify, Item, Kind};
    let code = |krate: &str, module: Option<&str>, kind| Item::Code {
        krate: krate.into(),
        module: module.map(Into::into),
        kind,
    };
    let own = "api_worker";
    assert_eq!(
        classify("\"function names\" subsection", own),
        Item::NotShipped
    );
    assert_eq!(
        classify("custom section 'producers'", own),
        Item::NotShipped
    );
    assert_eq!(classify("data segment \".rodata.1\"", own), Item::Data);
    assert_eq!(
        classify(
            "api_worker::admin::users::routes::{{closure}}::{{closure}}::h6d7d8c695c2fbd5a",
            own
        ),
        code(
            "api_worker",
            Some("api_worker::admin::users"),
            Kind::AsyncBodies
        )
    );
    assert_eq!(
        classify(
            "api_worker::tasks::hold_and_insert::{{closure}}::h5d4a",
            own
        ),
        code("api_worker", Some("api_worker::tasks"), Kind::AsyncBodies)
    );
    assert_eq!(
        classify("shared::session::verify_token::h06ce1ccf1b2dd189", own),
        code("shared", Some("shared::session"), Kind::Other)
    );
    assert_eq!(
        classify(
            "<&mut serde_json::de::Deserializer<R> as serde_core::de::Deserializer>::deserialize_seq::hbc82",
            own
        ),
        code("serde_json", None, Kind::Serde)
    );
    assert_eq!(
        classify("<f64 as core[c5930c85a12de822]::fmt::Display>::fmt", own),
        code("core", None, Kind::Formatting)
    );
    assert_eq!(
        classify(
            "core::ptr::drop_in_place<worker::request::Request>::h12",
            own
        ),
        code("core", None, Kind::DropGlue)
    );
    assert_eq!(
        classify("import wbg::__wbg_get_value_9454480da7066d61", own),
        code("(imports from JavaScript)", None, Kind::Other)
    );
    assert_eq!(
        classify("elem[0]", own),
        code("(wasm tables and types)", None, Kind::Other)
    );
    // another worker's crate is not this one's module
    assert_eq!(
        classify("consumer_worker::batch::run::h1", own),
        code("consumer_worker", None, Kind::Other)
    );
}

/// A profile adds every item to exactly one bucket, and the report shows each worker's share.
#[test]
fn a_size_profile_accounts_for_every_byte() {
    let items = serde_json::json!([
        {"name": "\"function names\" subsection", "shallow_size": 100},
        {"name": "data segment \".rodata\"", "shallow_size": 40},
        {"name": "api_worker::tasks::routes::{{closure}}::h1", "shallow_size": 30},
        {"name": "api_worker::admin::stats::routes::{{closure}}::h2", "shallow_size": 20},
        {"name": "serde_json::de::from_str::h3", "shallow_size": 10},
    ]);
    let p = size::profile(&items, "api_worker").unwrap();
    assert_eq!((p.not_shipped, p.data, p.code), (100, 40, 60));
    assert_eq!(p.by_crate["api_worker"], 50);
    assert_eq!(p.by_module["api_worker::admin::stats"], 20);
    assert_eq!(p.by_kind.values().sum::<u64>(), p.code);
    let floor = size::profile(
        &serde_json::json!([{"name": "serde_json::de::from_str::h3", "shallow_size": 8}]),
        "floor_worker",
    )
    .unwrap();
    let bundle = serde_json::json!({
        "api-worker": {"raw": 500, "gzip": 200},
        "floor-worker": {"raw": 200, "gzip": 100},
    });
    let md = size::render(
        &[("api-worker", p), ("bench/floor-worker", floor)],
        &bundle,
        &serde_json::json!({"edgeline": "abc1234"}),
    );
    assert!(md.contains("at edgeline abc1234"), "{md}");
    assert!(
        md.contains("| api-worker | 500 | 200 | 2.00x | 60 | 40 |"),
        "{md}"
    );
    assert!(md.contains("| serde_json | 10 | 16.7% | 8 |"), "{md}");
    assert!(
        md.contains("| api_worker::admin::stats | 20 | 33.3% |"),
        "{md}"
    );
    assert!(
        md.contains("operators' API (`admin::*`): 20 bytes, 33.3% of the code"),
        "{md}"
    );
    assert!(
        !md.contains("## floor-worker"),
        "the floor is the baseline, not profiled apart: {md}"
    );
    // no code at all is an error, not a profile of zeros
    assert!(size::profile(&serde_json::json!([]), "api_worker").is_err());
}
