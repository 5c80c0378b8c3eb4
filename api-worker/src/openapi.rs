//! The API contract: an OpenAPI 3.1 document built beside the router and served at
//! `/api/openapi.json`. The contract test holds the router and this document to each other.

use serde_json::{json, Map, Value};

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn object() -> Value {
    json!({"type": "object"})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

fn query_param(name: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": schema})
}

/// One operation. `security`: "user", "admin", "signed" or "none".
fn op(
    summary: &str,
    security: &str,
    params: Vec<Value>,
    body: Option<Value>,
    success: (&str, Value),
) -> Value {
    let mut responses = Map::new();
    responses.insert(success.0.to_owned(), success.1);
    // Every route answers errors in one shape; these are the codes any of them may use.
    for (code, text) in [
        (
            "400",
            "The request cannot be read (JSON, query, header, id)",
        ),
        (
            "401",
            "Missing, invalid, expired or revoked credentials or signature",
        ),
        ("402", "The balance does not cover the cost"),
        (
            "403",
            "Not allowed (a user's token on /admin/, a bad file signature)",
        ),
        ("404", "Not found, or not the caller's"),
        ("409", "Conflicts with existing state"),
        ("413", "Body or file too large"),
        ("415", "Unsupported body or file type"),
        ("422", "A field is invalid; the error names it"),
        ("429", "Rate limited; see Retry-After"),
        (
            "503",
            "A backing service failed, or the service is misconfigured",
        ),
    ] {
        responses.insert(code.into(), error_response(text));
    }
    if security == "signed" || summary.contains("Range") {
        responses.insert(
            "206".into(),
            json!({"description": "The requested byte range"}),
        );
        responses.insert(
            "304".into(),
            json!({"description": "Not modified (If-None-Match)"}),
        );
        responses.insert(
            "416".into(),
            error_response("The range lies outside the object"),
        );
    }
    let mut o = json!({"summary": summary, "parameters": params, "responses": responses});
    match security {
        "user" => o["security"] = json!([{"user": []}]),
        "admin" => o["security"] = json!([{"admin": []}]),
        _ => o["security"] = json!([]),
    }
    if let Some(b) = body {
        o["requestBody"] = b;
    }
    o
}

fn json_body(schema: Value) -> Option<Value> {
    Some(json!({"required": true, "content": {"application/json": {"schema": schema}}}))
}

/// Every route the api worker serves, as `(method, path, operation)`; paths in OpenAPI form.
pub fn operations() -> Vec<(&'static str, &'static str, Value)> {
    let task_id = || path_param("id", "Task id (UUID)");
    let page = || {
        vec![
            query_param(
                "limit",
                json!({"type": "integer", "minimum": 1, "maximum": 100}),
            ),
            query_param("cursor", json!({"type": "string"})),
        ]
    };
    let task = json!({"$ref": "#/components/schemas/Task"});
    vec![
        (
            "get",
            "/api/health",
            op(
                "Reachability of D1, R2, KV and the queue",
                "none",
                vec![],
                None,
                ("200", ok("All reachable", object())),
            ),
        ),
        (
            "get",
            "/api/openapi.json",
            op(
                "This document",
                "none",
                vec![],
                None,
                ("200", ok("The OpenAPI document", object())),
            ),
        ),
        (
            "post",
            "/api/tasks",
            op(
                "Submit a generation task (JSON, or multipart with `file` uploads); holds its cost",
                "user",
                vec![
                    json!({"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string", "maxLength": 255}}),
                ],
                Some(json!({"required": true, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/NewTask"}},
                    "multipart/form-data": {"schema": {"type": "object", "properties": {
                        "prompt": {"type": "string"}, "model": {"type": "string"}, "size": {"type": "string"},
                        "images": {"type": "array", "items": {"type": "string"}},
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}})),
                (
                    "202",
                    ok(
                        "Accepted (or the task an Idempotency-Key already made)",
                        task.clone(),
                    ),
                ),
            ),
        ),
        (
            "get",
            "/api/tasks",
            op(
                "The caller's tasks, newest first",
                "user",
                page(),
                None,
                ("200", ok("A page of tasks", object())),
            ),
        ),
        (
            "get",
            "/api/tasks/{id}",
            op(
                "One of the caller's tasks",
                "user",
                vec![task_id()],
                None,
                ("200", ok("The task", task)),
            ),
        ),
        (
            "get",
            "/api/tasks/{id}/results/{n}",
            op(
                "A stored result (supports Range and If-None-Match)",
                "user",
                vec![task_id(), path_param("n", "Result index")],
                None,
                ("200", json!({"description": "The image bytes"})),
            ),
        ),
        (
            "get",
            "/api/balance",
            op(
                "The derived credit balance and the cost table",
                "user",
                vec![],
                None,
                ("200", ok("Balance", object())),
            ),
        ),
        (
            "post",
            "/api/auth/signout",
            op(
                "End this session",
                "user",
                vec![],
                None,
                ("200", ok("Sessions ended", object())),
            ),
        ),
        (
            "post",
            "/api/auth/signout-all",
            op(
                "End every session of the caller",
                "user",
                vec![],
                None,
                ("200", ok("Sessions ended", object())),
            ),
        ),
        (
            "post",
            "/api/orders",
            op(
                "Order a catalogue product; returns the payment provider's checkout URL",
                "user",
                vec![],
                json_body(
                    json!({"type": "object", "required": ["product_id"], "additionalProperties": false, "properties": {"product_id": {"type": "string"}}}),
                ),
                ("201", ok("The order and its checkout", object())),
            ),
        ),
        (
            "get",
            "/api/orders",
            op(
                "The caller's orders, newest first",
                "user",
                vec![query_param("limit", json!({"type": "integer"}))],
                None,
                ("200", ok("Orders", object())),
            ),
        ),
        (
            "get",
            "/api/orders/{id}",
            op(
                "One of the caller's orders",
                "user",
                vec![path_param("id", "Order id")],
                None,
                ("200", ok("The order", object())),
            ),
        ),
        (
            "get",
            "/api/subscription",
            op(
                "The caller's current subscription",
                "user",
                vec![],
                None,
                ("200", ok("Subscription or null", object())),
            ),
        ),
        (
            "get",
            "/files/{key}",
            op(
                "An R2 object through a signed, expiring URL (supports Range)",
                "signed",
                vec![
                    path_param("key", "Object key"),
                    query_param("exp", json!({"type": "integer"})),
                    query_param("sig", json!({"type": "string"})),
                ],
                None,
                ("200", json!({"description": "The object's bytes"})),
            ),
        ),
        (
            "post",
            "/webhooks/creem",
            op(
                "Creem payment events (creem-signature or Standard Webhooks headers)",
                "none",
                vec![],
                json_body(object()),
                ("200", ok("Received", object())),
            ),
        ),
        (
            "post",
            "/webhooks/ai/{provider}",
            op(
                "kie.ai task callbacks; prompt a poll",
                "none",
                vec![
                    path_param("provider", "kie_4o or kie_kontext"),
                    query_param("task", json!({"type": "string"})),
                    query_param("token", json!({"type": "string"})),
                ],
                json_body(object()),
                ("200", ok("Received", object())),
            ),
        ),
        (
            "post",
            "/admin/users",
            op(
                "Create a user with starting credits",
                "admin",
                vec![],
                json_body(object()),
                ("201", ok("The user", object())),
            ),
        ),
        (
            "post",
            "/admin/users/{id}/sessions",
            op(
                "Open a session for a user; returns its JWT",
                "admin",
                vec![path_param("id", "User id")],
                None,
                ("201", ok("Token", object())),
            ),
        ),
        (
            "post",
            "/admin/users/{id}/grants",
            op(
                "Grant credits once per reference",
                "admin",
                vec![path_param("id", "User id")],
                json_body(object()),
                ("201", ok("The grant", object())),
            ),
        ),
        (
            "get",
            "/admin/dead-letters",
            op(
                "Dead letters by queue, type, error class, status and time",
                "admin",
                vec![
                    query_param("queue", json!({"type": "string"})),
                    query_param("type", json!({"type": "string"})),
                    query_param("error_class", json!({"type": "string"})),
                    query_param(
                        "status",
                        json!({"type": "string", "enum": ["dead", "replayed", "discarded"]}),
                    ),
                ],
                None,
                ("200", ok("A page", object())),
            ),
        ),
        (
            "post",
            "/admin/dead-letters/replay",
            op(
                "Replay dead letters matching a filter (dry_run first)",
                "admin",
                vec![],
                json_body(object()),
                ("200", ok("What was (or would be) replayed", object())),
            ),
        ),
        (
            "post",
            "/admin/dead-letters/discard",
            op(
                "Discard dead letters matching a filter",
                "admin",
                vec![],
                json_body(object()),
                ("200", ok("What was discarded", object())),
            ),
        ),
        (
            "get",
            "/admin/dead-letters/{id}",
            op(
                "A dead letter with its body and history",
                "admin",
                vec![path_param("id", "Dead letter id")],
                None,
                ("200", ok("The dead letter", object())),
            ),
        ),
        (
            "post",
            "/admin/dead-letters/{id}/replay",
            op(
                "Replay one dead letter (once unless force=true)",
                "admin",
                vec![
                    path_param("id", "Dead letter id"),
                    query_param("force", json!({"type": "boolean"})),
                ],
                None,
                ("200", ok("Replay outcome", object())),
            ),
        ),
        (
            "post",
            "/admin/dead-letters/{id}/discard",
            op(
                "Discard one dead letter",
                "admin",
                vec![path_param("id", "Dead letter id")],
                None,
                ("200", ok("Discard outcome", object())),
            ),
        ),
        (
            "get",
            "/admin/tasks",
            op(
                "Tasks by status and age",
                "admin",
                vec![
                    query_param("status", json!({"type": "string"})),
                    query_param("older_than_secs", json!({"type": "integer"})),
                ],
                None,
                ("200", ok("A page", object())),
            ),
        ),
        (
            "get",
            "/admin/tasks/{id}",
            op(
                "A task with its ledger and objects",
                "admin",
                vec![task_id()],
                None,
                ("200", ok("The task", object())),
            ),
        ),
        (
            "post",
            "/admin/tasks/{id}/retry",
            op(
                "Run a failed task again as a new task",
                "admin",
                vec![task_id()],
                None,
                ("202", ok("The new task", object())),
            ),
        ),
        (
            "post",
            "/admin/queues/{queue}/messages",
            op(
                "Send bodies to a queue by hand",
                "admin",
                vec![path_param("queue", "tasks or events")],
                json_body(object()),
                ("202", ok("Sent", object())),
            ),
        ),
        (
            "get",
            "/admin/cron/runs",
            op(
                "Recorded runs of the scheduled jobs",
                "admin",
                vec![query_param("job", json!({"type": "string"}))],
                None,
                ("200", ok("Runs", object())),
            ),
        ),
        (
            "post",
            "/admin/cron/{job}",
            op(
                "Run a scheduled job now",
                "admin",
                vec![path_param("job", "Job name")],
                None,
                ("200", ok("The run's summary", object())),
            ),
        ),
        (
            "get",
            "/admin/orders/stats",
            op(
                "Orders by status",
                "admin",
                vec![],
                None,
                ("200", ok("Counts", object())),
            ),
        ),
        (
            "get",
            "/admin/storage",
            op(
                "Objects and bytes under a prefix",
                "admin",
                vec![query_param("prefix", json!({"type": "string"}))],
                None,
                ("200", ok("Counts", object())),
            ),
        ),
        (
            "get",
            "/admin/webhook-events",
            op(
                "Stored provider events",
                "admin",
                vec![
                    query_param("status", json!({"type": "string"})),
                    query_param("type", json!({"type": "string"})),
                ],
                None,
                ("200", ok("Events", object())),
            ),
        ),
    ]
}

pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, operation) in operations() {
        let entry = paths.entry(path.to_owned()).or_insert_with(|| json!({}));
        entry[method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "edgeline", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Generation tasks, credits, payments and operations on Cloudflare Workers."},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "user": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "admin": {"type": "http", "scheme": "bearer", "description": "The operators' ADMIN_TOKEN"}
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}}},
                "NewTask": {"type": "object", "required": ["prompt", "model"], "additionalProperties": false, "properties": {
                    "prompt": {"type": "string", "minLength": 1, "maxLength": shared::submit::MAX_PROMPT_CHARS},
                    "model": {"type": "string", "enum": ["kie_4o", "kie_kontext"]},
                    "size": {"type": "string", "enum": shared::submit::SIZES},
                    "images": {"type": "array", "maxItems": 5, "items": {"type": "string", "format": "uri", "maxLength": shared::submit::MAX_URL_LEN}}}},
                "Task": {"type": "object", "required": ["id", "task_no", "status"], "properties": {
                    "id": {"type": "string"}, "task_no": {"type": "string"},
                    "status": {"type": "string", "enum": ["pending", "submitted", "processing", "completed", "failed"]},
                    "model": {"type": ["string", "null"]}, "cost": {"type": "integer"}, "failure_reason": {"type": ["string", "null"]},
                    "results": {"type": "array", "items": {"type": "object"}}}}
            }
        }
    })
}
