//! The benchmark's floor. `GET /` (or any request) answers `hello`; `POST /enqueue?n=N` sends N
//! small JSON messages to its own queue, whose consumer acks each one and logs one line per
//! batch (`{"event":"floor_batch","n":..,"at_ms":..}`) so the bench can time the drain.

use worker::js_sys::JSON;
use worker::{
    event, BatchMessageBuilder, Context, Env, MessageBatch, MessageExt, QueueContentType,
    RawMessageBuilder, Request, Response, Result,
};

const SEND_BATCH: usize = 100;

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    if req.path() != "/enqueue" {
        return Response::ok("hello");
    }
    let n: usize = req
        .url()?
        .query_pairs()
        .find(|(k, _)| k == "n")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
        .min(100_000);
    let queue = env.queue("FLOOR")?;
    let mut sent = 0;
    while sent < n {
        let count = SEND_BATCH.min(n - sent);
        let messages = (sent..sent + count)
            .map(|i| {
                let body = JSON::parse(&format!("{{\"v\":1,\"n\":{i}}}")).unwrap_or_default();
                RawMessageBuilder::new(body).build_with_content_type(QueueContentType::Json)
            })
            .collect::<Vec<_>>();
        queue
            .send_raw_batch(BatchMessageBuilder::new().messages(messages).build())
            .await?;
        sent += count;
    }
    Response::ok(sent.to_string())
}

#[event(queue)]
async fn queue(batch: MessageBatch<serde_json::Value>, _env: Env, _ctx: Context) -> Result<()> {
    let mut n = 0u32;
    for message in batch.raw_iter() {
        message.ack();
        n += 1;
    }
    worker::console_log!(
        "{}",
        serde_json::json!({"event": "floor_batch", "n": n, "at_ms": worker::Date::now().as_millis()})
    );
    Ok(())
}
