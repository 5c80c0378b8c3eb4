//! consumer-worker: drives tasks through the provider, stores results, settles credits, and
//! archives dead letters. Every message gets its own decision (ack, retry later, dead-letter);
//! the batch handler always returns `Ok(())`.

mod batch;
mod config;
mod dead_letters;
mod ended;
mod events;
mod group;
mod provider;
mod store;
mod tasks;
mod turns;

use worker::{event, Context, Env, MessageBatch, Result};

#[event(queue)]
async fn queue(batch: MessageBatch<serde_json::Value>, env: Env, _ctx: Context) -> Result<()> {
    console_error_panic_hook::set_once();
    batch::handle(batch, env).await;
    Ok(())
}
