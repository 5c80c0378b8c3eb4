//! cron-worker: the jobs that keep the system consistent and small. One scheduled handler,
//! dispatched on `event.cron()` to named jobs; every run is logged with its summary, and a job
//! that fails logs its cause (the runtime drops whatever a scheduled handler returns).

mod jobs;

use shared::edge::{log, now_ms, Db, IoCounts};
use std::rc::Rc;
use worker::{event, Env, ScheduleContext, ScheduledEvent};

#[event(scheduled)]
async fn scheduled(event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    console_error_panic_hook::set_once();
    let cron = event.cron();
    let names = jobs::for_schedule(&cron);
    if names.is_empty() {
        log(serde_json::json!({"level": "warn", "event": "cron.unknown_schedule", "cron": cron}));
        return;
    }
    for name in names {
        let started = now_ms();
        let io = Rc::new(IoCounts::default());
        let result = match Db::new(&env, "DB", io.clone()) {
            Ok(db) => jobs::run(name, &env, &db).await,
            Err(e) => Err(e),
        };
        let mut line = serde_json::json!({
            "event": "cron.run",
            "cron": cron,
            "job": name,
            "ms": now_ms().saturating_sub(started),
            "io": io.to_json(),
        });
        match result {
            Ok(summary) => line["summary"] = summary,
            Err(e) => {
                line["level"] = "error".into();
                line["error"] = e.to_string().into();
            }
        }
        log(line);
    }
}
