//! Named jobs and the schedules that run them.

use shared::edge::{now, number, Db, IoError};
use shared::ledger::Stmt;
use worker::Env;

/// Which jobs a cron expression runs. Keep the expressions few (5 per account on the free plan)
/// and in step with `triggers.crons` in cron-worker/wrangler.toml.
pub fn for_schedule(cron: &str) -> Vec<&'static str> {
    match cron {
        "*/5 * * * *" => vec!["expire_orders"],
        _ => vec![],
    }
}

pub async fn run(name: &str, env: &Env, db: &Db) -> Result<serde_json::Value, IoError> {
    match name {
        "expire_orders" => expire_orders(env, db).await,
        other => Err(IoError { step: "dispatch".into(), cause: format!("no job named {other}") }),
    }
}

/// Pending orders older than `ORDER_TTL_SECS` (default 30 minutes) become expired. The update
/// is conditional on `pending`, so a payment that lands first wins.
async fn expire_orders(env: &Env, db: &Db) -> Result<serde_json::Value, IoError> {
    let ttl = number(env, "ORDER_TTL_SECS", 30 * 60).map_err(|e| IoError { step: "config".into(), cause: e.0 })?;
    let at = now();
    let changed = db
        .run(
            "expire stale orders",
            &Stmt::new(
                "UPDATE orders SET status = 'expired', updated_at = ?1 WHERE status = 'pending' AND created_at < ?2",
                vec![at.into(), (at - ttl).into()],
            ),
        )
        .await?;
    Ok(serde_json::json!({ "expired": changed }))
}
