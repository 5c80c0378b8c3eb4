//! The API contract: an OpenAPI 3.1 document built beside the router (and, by the test at the
//! end, into `api-worker/openapi.json`, which the worker serves as is) at
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
        "user" => {
            o["security"] = json!([{"user": []}]);
            // sliding renewal (auth.rs): a token past its refresh time gets its successor here
            if let Some(r) = o["responses"][success.0].as_object_mut() {
                r.insert("headers".into(), json!({"X-Session-Token": {
                    "description": "A renewed token for this session, sent when the presented one is past its refresh time; use it from now on (the old one stays valid until it expires)",
                    "schema": {"type": "string"}}}));
            }
        }
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
                        "prompt": {"type": "string"}, "model": {"type": "string"},
                        "size": {"type": "string", "description": "One of the sizes the model accepts, as in NewTask"},
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
                "The caller's tasks, newest first (deleted ones hidden); with updated_since (or a sync cursor), the sync feed instead: what changed since, oldest change first, deleted tasks as tombstones {id, deleted: true, updated_at}; follow next_cursor while more, and keep the last next_cursor for the next sync",
                "user",
                {
                    let mut p = page();
                    p[0] = query_param("limit", json!({"type": "integer", "minimum": 1, "maximum": shared::history::MAX_SYNC_PAGE,
                        "description": "Up to 100 for the list; up to 500 for the sync feed"}));
                    p.push(json!({"name": "updated_since", "in": "query", "required": false,
                        "description": "Unix seconds: the sync feed of changes at or after this time",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 1_099_511_627_776_i64}}));
                    p
                },
                None,
                ("200", ok("A page of tasks (list), or of changes with next_cursor and more (sync feed)", object())),
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
            "get",
            "/api/auth/sessions",
            op(
                "The caller's live sessions, newest first; the one making the request is current",
                "user",
                vec![],
                None,
                (
                    "200",
                    ok(
                        "Sessions",
                        json!({"type": "object", "required": ["sessions"], "properties": {
                            "sessions": {"type": "array", "items": {"$ref": "#/components/schemas/Session"}}}}),
                    ),
                ),
            ),
        ),
        (
            "delete",
            "/api/auth/sessions/{id}",
            op(
                "End one of the caller's sessions (another user's is a 404); its tokens are refused from then on",
                "user",
                vec![path_param("id", "Session id (32 hex digits)")],
                None,
                (
                    "200",
                    ok(
                        "The session is ended (signed_out is 0 if it already was)",
                        json!({"type": "object", "required": ["id", "signed_out", "current"], "properties": {
                            "id": {"type": "string"}, "signed_out": {"type": "integer", "minimum": 0, "maximum": 1},
                            "current": {"type": "boolean", "description": "It was the session making the request"}}}),
                    ),
                ),
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
                vec![query_param("limit", json!({"type": "integer", "minimum": 1, "maximum": 100}))],
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
            "/api/catalog",
            op(
                "The products users can buy now (no provider ids) and the catalogue's version",
                "none",
                vec![],
                None,
                (
                    "200",
                    ok(
                        "The catalogue",
                        json!({"$ref": "#/components/schemas/Catalogue"}),
                    ),
                ),
            ),
        ),
        (
            "get",
            "/admin/catalog",
            op(
                "The stored catalogue with its version and who changed it last",
                "admin",
                vec![],
                None,
                ("200", ok("The stored catalogue", object())),
            ),
        ),
        (
            "put",
            "/admin/catalog",
            op(
                "Replace the catalogue if it is still at expected_version (else 409 version_conflict); audited",
                "admin",
                vec![
                    json!({"name": "X-Actor", "in": "header", "required": false, "description": "The operator making the change (audited)",
                           "schema": {"type": "string", "pattern": "^[A-Za-z0-9._@-]{1,64}$"}}),
                ],
                json_body(
                    json!({"type": "object", "required": ["catalog", "expected_version"], "additionalProperties": false, "properties": {
                        "catalog": {"type": "object", "required": ["packs", "plans"], "properties": {
                            "packs": {"type": "array", "items": {"type": "object"}},
                            "plans": {"type": "array", "items": {"type": "object"}}}},
                        "expected_version": {"type": "integer", "minimum": 1}}}),
                ),
                ("200", ok("The stored catalogue and its new version", object())),
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
                    query_param("deadline", json!({"type": "integer"})),
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
                "Open a session for a user (what the app's login calls); logs the sign-in; returns its JWT",
                "admin",
                vec![path_param("id", "User id")],
                Some(json!({"required": false, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": false, "properties": {
                        "ttl_secs": {"type": "integer", "minimum": 60, "maximum": 31_536_000, "description": "Each token's lifetime; renewal extends the session by it"},
                        "ip": {"type": "string", "description": "The end user's ip, when the login calls on their behalf (else cf-connecting-ip)"},
                        "user_agent": {"type": "string", "description": "The end user's user agent (else this request's User-Agent)"}}}}}})),
                (
                    "201",
                    ok(
                        "Token",
                        json!({"type": "object", "required": ["token", "user_id", "session_id", "created_at", "expires_at"], "properties": {
                            "token": {"type": "string"}, "user_id": {"type": "string"}, "session_id": {"type": "string"},
                            "created_at": {"type": "integer"}, "expires_at": {"type": "integer"}}}),
                    ),
                ),
            ),
        ),
        (
            "get",
            "/admin/users/{id}/signins",
            op(
                "A user's sign-ins (signin_logs), newest first",
                "admin",
                vec![
                    path_param("id", "User id"),
                    query_param("limit", json!({"type": "integer", "minimum": 1, "maximum": 200})),
                ],
                None,
                (
                    "200",
                    ok(
                        "Sign-ins",
                        json!({"type": "object", "required": ["user_id", "signins"], "properties": {
                            "user_id": {"type": "string"},
                            "signins": {"type": "array", "items": {"type": "object", "required": ["id", "created_at"], "properties": {
                                "id": {"type": "string"}, "ip": {"type": ["string", "null"]},
                                "user_agent": {"type": ["string", "null"]}, "created_at": {"type": "integer"}}}}}}),
                    ),
                ),
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
            "/admin/users",
            op(
                "Users newest first, found by email prefix or id (q)",
                "admin",
                [
                    vec![query_param("q", json!({"type": "string", "maxLength": 320}))],
                    page(),
                ]
                .concat(),
                None,
                ("200", ok("A page of users", json!({"type": "object", "required": ["users", "next_cursor"], "properties": {
                    "users": {"type": "array", "items": {"type": "object"}}, "next_cursor": {"type": ["string", "null"]}}}))),
            ),
        ),
        (
            "get",
            "/admin/users/{id}",
            op(
                "A user with the derived balance, the newest ledger rows (and what each grant has been drawn), subscriptions, tasks and orders by status",
                "admin",
                vec![path_param("id", "User id (UUID)")],
                None,
                ("200", ok("The user", json!({"type": "object", "required": ["id", "email", "balance", "ledger", "ledger_more", "subscriptions"], "properties": {
                    "id": {"type": "string"}, "email": {"type": "string"}, "name": {"type": "string"},
                    "balance": {"type": "integer"}, "ledger": {"type": "array", "items": {"type": "object"}},
                    "ledger_more": {"type": "boolean", "description": "There are older ledger rows than the 200 shown"},
                    "subscriptions": {"type": "array", "items": {"type": "object"}},
                    "tasks_by_status": {"type": "object"}, "orders_by_status": {"type": "object"}}}))),
            ),
        ),
        (
            "get",
            "/admin/orders",
            op(
                "Orders newest first, by status and user, with the terms they were created with",
                "admin",
                [
                    vec![
                        query_param("status", json!({"type": "string", "enum": shared::orders::STATUSES})),
                        query_param("user_id", json!({"type": "string", "format": "uuid"})),
                    ],
                    page(),
                ]
                .concat(),
                None,
                ("200", ok("A page of orders", json!({"type": "object", "required": ["orders", "next_cursor"], "properties": {
                    "orders": {"type": "array", "items": {"type": "object"}}, "next_cursor": {"type": ["string", "null"]}}}))),
            ),
        ),
        (
            "get",
            "/admin/stats",
            op(
                "The operator console's overview: tasks by status, created/completed/failed per bucket over the last hour and day, dead letters by error class, webhook events by status; queue backlog is null (the platform does not report it to workers)",
                "admin",
                vec![],
                None,
                ("200", ok("The numbers", stats_schema())),
            ),
        ),
        (
            "get",
            "/admin/tasks/{id}/timeline",
            op(
                "A task's history in time order: transitions, provider id and create calls, reconciler re-sends, ledger rows, dead letters with their attempts, retries and operators' actions",
                "admin",
                vec![path_param("id", "Task id (UUID)")],
                None,
                ("200", ok("The timeline", json!({"type": "object", "required": ["task_id", "status", "events", "dead_letters"], "properties": {
                    "task_id": {"type": "string"}, "status": {"type": "string"},
                    "external_task_id": {"type": ["string", "null"]}, "provider_submissions": {"type": ["integer", "null"]},
                    "deadline_at": {"type": ["integer", "null"]}, "dead_letter_attempts": {"type": "integer"},
                    "dead_letters": {"type": "array", "items": {"type": "object"}},
                    "events": {"type": "array", "items": {"type": "object", "required": ["at", "kind", "text"], "properties": {
                        "at": {"type": "integer"}, "kind": {"type": "string", "enum": ["created", "accepted", "reconciled", "ledger", "dead_letter", "retried", "operator", "ended"]},
                        "text": {"type": "string"}, "detail": {}}}}}}))),
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
                    query_param("since", json!({"type": "integer", "description": "Unix seconds"})),
                    query_param("until", json!({"type": "integer", "description": "Unix seconds"})),
                    query_param("limit", json!({"type": "integer", "minimum": 1, "maximum": 200})),
                    query_param("cursor", json!({"type": "string"})),
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
                    query_param("limit", json!({"type": "integer", "minimum": 1, "maximum": 200})),
                    query_param("cursor", json!({"type": "string"})),
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
                    query_param("limit", json!({"type": "integer", "minimum": 1, "maximum": 200})),
                ],
                None,
                ("200", ok("Events", object())),
            ),
        ),
        (
            "get",
            "/admin/audit-log",
            op(
                "Who changed what: operators' changes, newest first",
                "admin",
                vec![
                    query_param("target", json!({"type": "string"})),
                    query_param("action", json!({"type": "string"})),
                    query_param("actor", json!({"type": "string"})),
                    query_param("limit", json!({"type": "integer", "minimum": 1, "maximum": 200})),
                ],
                None,
                ("200", ok("Audit entries", object())),
            ),
        ),
        (
            "get",
            "/admin/audit",
            op(
                "Check the ledger's money invariants now; each violation with the rows involved",
                "admin",
                vec![json!({"name": "stuck_secs", "in": "query", "required": false,
                    "description": "How long a live task may be past its deadline, or an event stay received, before it is a violation",
                    "schema": {"type": "integer", "minimum": 60, "maximum": 604_800, "default": 3600}})],
                None,
                (
                    "200",
                    ok(
                        "The report (ok is false when violations were found)",
                        json!({"$ref": "#/components/schemas/AuditReport"}),
                    ),
                ),
            ),
        ),
    ]
}

/// `GET /admin/stats`'s answer.
fn stats_schema() -> Value {
    let counts = |keys: &[&str]| {
        let props: Map<String, Value> = keys
            .iter()
            .map(|k| ((*k).to_owned(), json!({"type": "integer", "minimum": 0})))
            .collect();
        json!({"type": "object", "required": keys, "properties": props})
    };
    let window = json!({"type": "object", "required": ["bucket_secs", "start", "end", "created", "completed", "failed", "buckets"], "properties": {
        "bucket_secs": {"type": "integer"}, "start": {"type": "integer"}, "end": {"type": "integer"},
        "created": {"type": "integer"}, "completed": {"type": "integer"}, "failed": {"type": "integer"},
        "buckets": {"type": "array", "items": {"type": "object", "required": ["start", "created", "completed", "failed"], "properties": {
            "start": {"type": "integer"}, "created": {"type": "integer"}, "completed": {"type": "integer"}, "failed": {"type": "integer"}}}}}});
    json!({"type": "object", "required": ["at", "tasks", "throughput", "dead_letters", "webhook_events", "queue_backlog", "queue_backlog_note"], "properties": {
        "at": {"type": "integer"},
        "tasks": {"type": "object", "required": ["by_status", "total"], "properties": {
            "by_status": counts(&crate::admin::stats::TASK_STATUSES), "total": {"type": "integer"}}},
        "throughput": {"type": "object", "required": ["hour", "day"], "properties": {"hour": window.clone(), "day": window}},
        "dead_letters": {"type": "object", "required": ["by_class", "dead"], "properties": {
            "by_class": {"type": "array", "items": {"type": "object", "required": ["error_class", "total", "dead", "replayed", "discarded"]}},
            "dead": {"type": "integer"}}},
        "webhook_events": {"type": "object", "required": ["by_status"], "properties": {"by_status": {"type": "object"}}},
        "queue_backlog": {"type": "null"},
        "queue_backlog_note": {"type": "string"}}})
}

/// A submission, one schema per model: each lists the sizes that model accepts
/// (`shared::kie::sizes`), its default size, and how many input images it takes.
fn new_task() -> Value {
    use shared::model::Model;
    let per_model: Vec<Value> = Model::ALL
        .iter()
        .map(|&m| {
            let sizes = shared::kie::sizes(m);
            json!({"type": "object", "title": m.as_str(), "required": ["prompt", "model"], "additionalProperties": false, "properties": {
                "prompt": {"type": "string", "minLength": 1, "maxLength": shared::submit::MAX_PROMPT_CHARS},
                "model": {"type": "string", "const": m.as_str()},
                "size": {"type": "string", "enum": sizes, "default": shared::kie::default_size(m),
                         "description": format!("The aspect ratios {m} accepts: {}. Any other is a 422 naming `size`.", sizes.join(", "))},
                "images": {"type": "array", "maxItems": m.max_input_images(),
                           "items": {"type": "string", "format": "uri", "maxLength": shared::submit::MAX_URL_LEN}}}})
        })
        .collect();
    json!({"oneOf": per_model, "description": "A generation task. Each model accepts its own sizes."})
}

/// What the document says of itself, with how browsers may call (CORS, `shared::cors`): the
/// preflight is answered before routing on any path, so it is described here, not listed as an
/// operation (the contract test holds the operations to the routes).
fn description() -> String {
    use shared::cors::{ALLOW_HEADERS, ALLOW_METHODS, EXPOSE_HEADERS, MAX_AGE_SECS};
    format!(
        "Generation tasks, credits, payments and operations on Cloudflare Workers.\n\n\
         Browsers (CORS): origins listed in `CORS_ALLOWED_ORIGINS` may call every operation with \
         credentials. A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) on \
         any path is answered before routing: for an allowed origin 204 with \
         `Access-Control-Allow-Origin` (the exact origin), `Access-Control-Allow-Credentials: true`, \
         `Access-Control-Allow-Methods: {ALLOW_METHODS}`, `Access-Control-Allow-Headers: {ALLOW_HEADERS}`, \
         `Access-Control-Max-Age: {MAX_AGE_SECS}` and `Vary: Origin`; for any other origin 403 \
         without CORS headers. Every other answer to an allowed origin, errors included, carries \
         `Access-Control-Allow-Origin`, `Access-Control-Allow-Credentials: true` and \
         `Access-Control-Expose-Headers: {EXPOSE_HEADERS}`; other origins get no CORS headers."
    )
}

/// The user's side of results (issue 13): deleting and syncing history, shares, lasting image
/// links, and the user's own view.
fn history_operations() -> Vec<(&'static str, &'static str, Value)> {
    let task_id = || path_param("id", "Task id (UUID)");
    let share_id = || path_param("id", "Share id (UUID)");
    let index = || path_param("n", "Result index (0 to 63)");
    let nullable_int = || json!({"type": ["integer", "null"]});
    let nullable_str = || json!({"type": ["string", "null"]});
    let images = json!({"type": "array", "items": {"type": "object", "required": ["index", "url"], "properties": {
        "index": {"type": "integer", "minimum": 0}, "url": {"type": "string"}}}});
    let public_share = json!({"type": "object", "required": ["id", "created_at", "shared_at", "images"], "properties": {
        "id": {"type": "string"}, "prompt": nullable_str(), "model": nullable_str(), "size": nullable_str(),
        "created_at": {"type": "integer", "description": "When the result was generated"},
        "shared_at": {"type": "integer"}, "images": images.clone()}});
    let owned_share = json!({"type": "object", "required": ["id", "url", "task_id", "created_at", "shared_at", "images", "view_count"], "properties": {
        "id": {"type": "string"}, "url": {"type": "string", "description": "The public share (GET, no token)"},
        "task_id": {"type": "string"}, "prompt": nullable_str(), "model": nullable_str(), "size": nullable_str(),
        "created_at": {"type": "integer"}, "shared_at": {"type": "integer"}, "images": images,
        "view_count": {"type": "integer", "minimum": 0, "description": "Reads of the share, written in batches"},
        "last_viewed_at": nullable_int()}});
    let ids =
        |what: &str| json!({"type": "array", "items": {"type": "string"}, "description": what});
    let entry = json!({"type": "object", "required": ["id", "type", "amount", "at"], "properties": {
        "id": {"type": "string"},
        "type": {"type": "string", "enum": ["purchase", "gift", "subscription", "consumption", "clawback", "hold", "expiry"]},
        "amount": {"type": "integer", "description": "Credits in (+) or out (-)"},
        "at": {"type": "integer"}, "expires_at": nullable_int(),
        "entity_type": nullable_str(), "entity_id": nullable_str(), "note": nullable_str()}});
    let ledger_page = json!({"type": "object", "required": ["entries", "next_cursor"], "properties": {
        "entries": {"type": "array", "items": entry},
        "next_cursor": {"type": ["string", "null"]}}});
    let image = || json!({"description": "The image bytes (ETag, Cache-Control, Accept-Ranges); the provider's copy, proxied, when the stored object is missing"});
    vec![
        (
            "delete",
            "/api/tasks/{id}",
            op(
                "Delete one of the caller's ended tasks: its stored results and uploads go, its shares and links stop working, it disappears from lists and reads (a tombstone in the sync feed); its ledger rows stay. A running task is a 409 task_running until it ends",
                "user",
                vec![task_id()],
                None,
                ("200", ok("Deleted", json!({"type": "object", "required": ["id", "deleted", "shares_revoked", "objects_removed", "objects_pending"], "properties": {
                    "id": {"type": "string"}, "deleted": {"type": "boolean"},
                    "shares_revoked": {"type": "integer", "minimum": 0}, "objects_removed": {"type": "integer", "minimum": 0},
                    "objects_pending": {"type": "boolean", "description": "Some objects could not be removed now; the retention job removes them"}}}))),
            ),
        ),
        (
            "post",
            "/api/tasks/delete",
            op(
                "Delete up to 100 of the caller's ended tasks at once (as DELETE /api/tasks/{id} each); says which were deleted, which are still running, which were not found",
                "user",
                vec![],
                json_body(json!({"type": "object", "required": ["ids"], "additionalProperties": false, "properties": {
                    "ids": {"type": "array", "minItems": 1, "maxItems": shared::history::MAX_DELETE_IDS,
                            "items": {"type": "string", "format": "uuid"}}}})),
                ("200", ok("What became of each id", json!({"type": "object", "required": ["deleted", "running", "not_found", "shares_revoked", "objects_removed", "objects_pending"], "properties": {
                    "deleted": ids("Deleted now"), "running": ids("Still running: not deleted"),
                    "not_found": ids("Not the caller's, missing, or deleted before"),
                    "shares_revoked": {"type": "integer", "minimum": 0}, "objects_removed": {"type": "integer", "minimum": 0},
                    "objects_pending": {"type": "boolean"}}}))),
            ),
        ),
        (
            "post",
            "/api/tasks/{id}/shares",
            op(
                "Share one of the caller's completed tasks: a public link that shows its prompt, model, times and images, never the user. A failed or unfinished task is a 409; another user's or a deleted one a 404",
                "user",
                vec![task_id()],
                None,
                ("201", ok("The share", owned_share.clone())),
            ),
        ),
        (
            "get",
            "/api/shares",
            op(
                "The caller's live shares, newest first, with their view counts",
                "user",
                vec![
                    query_param("limit", json!({"type": "integer", "minimum": 1, "maximum": 100})),
                    query_param("cursor", json!({"type": "string"})),
                ],
                None,
                ("200", ok("A page of shares", json!({"type": "object", "required": ["shares", "next_cursor"], "properties": {
                    "shares": {"type": "array", "items": owned_share}, "next_cursor": {"type": ["string", "null"]}}}))),
            ),
        ),
        (
            "get",
            "/api/shares/{id}",
            op(
                "A share, for anyone (no token); counts a view. A revoked share, or one whose task was deleted, is a 404",
                "none",
                vec![share_id()],
                None,
                ("200", ok("The share", public_share)),
            ),
        ),
        (
            "delete",
            "/api/shares/{id}",
            op(
                "Revoke one of the caller's shares: refused to readers at once where this lands, everywhere within KV's propagation (about 60 s)",
                "user",
                vec![share_id()],
                None,
                ("200", ok("Revoked", json!({"type": "object", "required": ["id", "revoked"], "properties": {
                    "id": {"type": "string"}, "revoked": {"type": "boolean"}}}))),
            ),
        ),
        (
            "get",
            "/api/shares/{id}/images/{n}",
            op(
                "Image n of a share, for anyone, while the share lives (supports Range and If-None-Match; revalidated on every display)",
                "none",
                vec![share_id(), index()],
                None,
                ("200", image()),
            ),
        ),
        (
            "get",
            "/api/images/{id}/{n}",
            op(
                "Result n of a task through its lasting link (the `link` of a task's results): no token, no expiry, as long as the result exists and the task is not deleted (supports Range and If-None-Match)",
                "none",
                vec![
                    task_id(),
                    index(),
                    json!({"name": "sig", "in": "query", "required": true, "description": "The link's signature",
                           "schema": {"type": "string"}}),
                ],
                None,
                ("200", image()),
            ),
        ),
        (
            "get",
            "/api/me",
            op(
                "The caller's own view: profile, balance, task counts, credits spent, current subscription, and the first page of their ledger (entries add up to the balance)",
                "user",
                vec![
                    query_param("ledger_limit", json!({"type": "integer", "minimum": 1, "maximum": 100})),
                    query_param("ledger_cursor", json!({"type": "string"})),
                ],
                None,
                ("200", ok("The caller's account", json!({"type": "object",
                    "required": ["user", "balance", "tasks", "credits_spent", "subscription", "ledger"], "properties": {
                    "user": {"type": "object", "required": ["id", "email", "name"], "properties": {
                        "id": {"type": "string"}, "email": {"type": "string"}, "name": {"type": "string"},
                        "picture": nullable_str(), "created_at": nullable_int()}},
                    "balance": {"type": "integer"},
                    "tasks": {"type": "object", "required": ["total", "completed", "failed", "running", "deleted"], "properties": {
                        "total": {"type": "integer"}, "completed": {"type": "integer"}, "failed": {"type": "integer"},
                        "running": {"type": "integer"}, "deleted": {"type": "integer"}}},
                    "credits_spent": {"type": "integer"},
                    "subscription": {"type": ["object", "null"], "properties": {"access": {"type": "boolean"}}},
                    "ledger": ledger_page.clone()}}))),
            ),
        ),
        (
            "get",
            "/api/me/ledger",
            op(
                "The caller's ledger as a statement, newest first: grants, consumptions, clawbacks, holds of running tasks, expiries",
                "user",
                vec![
                    query_param("limit", json!({"type": "integer", "minimum": 1, "maximum": 100})),
                    query_param("cursor", json!({"type": "string"})),
                ],
                None,
                ("200", ok("A page of the statement", ledger_page)),
            ),
        ),
    ]
}

pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, operation) in operations().into_iter().chain(history_operations()) {
        let entry = paths.entry(path.to_owned()).or_insert_with(|| json!({}));
        entry[method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "edgeline", "version": env!("CARGO_PKG_VERSION"),
                 "description": description()},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "user": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "admin": {"type": "http", "scheme": "bearer", "description": "The operators' ADMIN_TOKEN"}
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}}},
                "NewTask": new_task(),
                "Session": {"type": "object", "required": ["id", "created_at", "last_used_at", "expires_at", "current"], "properties": {
                    "id": {"type": "string"}, "created_at": {"type": "integer"},
                    "last_used_at": {"type": "integer", "description": "Written at sign-in and with each renewal (at most once per SESSION_REFRESH_SECS), not per request"},
                    "expires_at": {"type": "integer"},
                    "user_agent": {"type": ["string", "null"]}, "ip": {"type": ["string", "null"]},
                    "current": {"type": "boolean", "description": "The session making this request"}}},
                "Catalogue": {"type": "object", "required": ["version", "products"], "properties": {
                    "version": {"type": "integer"},
                    "products": {"type": "array", "items": {"type": "object", "required": ["id", "kind", "price", "currency"], "properties": {
                        "id": {"type": "string"}, "kind": {"type": "string", "enum": ["pack", "plan"]},
                        "price": {"type": "integer", "description": "Minor units (cents)"}, "currency": {"type": "string"},
                        "credits": {"type": "integer", "description": "Packs: credits granted"},
                        "expires_in_days": {"type": ["integer", "null"], "description": "Packs: days the credits last; null: they do not expire"},
                        "credits_per_period": {"type": "integer", "description": "Plans: credits granted each billing period"},
                        "plan": {"type": "string", "enum": ["basic", "pro", "premium"]},
                        "cycle": {"type": "string", "enum": ["monthly", "yearly"]}}}}}},
                "AuditReport": {"type": "object", "required": ["ok", "checks", "violations", "ledger_rows", "ms"], "properties": {
                    "ok": {"type": "boolean"},
                    "checks": {"type": "array", "items": {"type": "object", "required": ["name", "description", "violations", "capped"], "properties": {
                        "name": {"type": "string"}, "description": {"type": "string"},
                        "violations": {"type": "integer", "minimum": 0, "maximum": shared::audit::MAX_VIOLATIONS_PER_CHECK},
                        "capped": {"type": "boolean", "description": "The check stopped at its limit: there may be more"}}}},
                    "violations": {"type": "array", "items": {"type": "object", "required": ["check", "subject", "detail"], "properties": {
                        "check": {"type": "string"}, "subject": {"type": "string"},
                        "detail": {"description": "The rows and amounts involved"}}}},
                    "ledger_rows": {"type": "integer"}, "ms": {"type": "integer"}}},
                "Task": {"type": "object", "required": ["id", "task_no", "status"], "properties": {
                    "id": {"type": "string"}, "task_no": {"type": "string"},
                    "status": {"type": "string", "enum": ["pending", "submitted", "processing", "completed", "failed"]},
                    "model": {"type": ["string", "null"]}, "cost": {"type": "integer"}, "failure_reason": {"type": ["string", "null"]},
                    "results": {"type": "array", "items": {"type": "object"}}}}
            }
        }
    })
}

/// The worker serves `api-worker/openapi.json` as committed (`app::OPENAPI_JSON`): no code that
/// builds the document ships in the wasm. This keeps the file equal to [`document`]; after
/// changing a route, regenerate it with
/// `EDGELINE_WRITE_OPENAPI=1 cargo test -p api-worker --lib openapi` (`cargo xtask test` runs
/// this test).
#[test]
fn the_served_document_is_the_codes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    // compact: it is served as is (pretty, it would be twice the bytes in the wasm)
    let want = serde_json::to_string(&document()).unwrap_or_default() + "\n";
    if std::env::var_os("EDGELINE_WRITE_OPENAPI").is_some() {
        std::fs::write(path, &want).unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "api-worker/openapi.json is not what openapi::document() builds: run \
         `EDGELINE_WRITE_OPENAPI=1 cargo test -p api-worker --lib openapi`"
    );
}

/// The route table of `docs/API.md`, rendered from [`document`]: every route with its query
/// parameters, who may call it and what it does. The doc keeps it between markers, and
/// [`the_docs_route_table_is_the_documents`] keeps it equal.
#[cfg(test)]
fn route_table() -> String {
    let doc = document();
    let mut rows = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            let query: Vec<String> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query")
                .filter_map(|p| p["name"].as_str().map(|n| format!("{n}=")))
                .collect();
            let route = if query.is_empty() {
                format!("{} {path}", method.to_uppercase())
            } else {
                format!("{} {path}?{}", method.to_uppercase(), query.join("&"))
            };
            let who = match op["security"].pointer("/0").and_then(Value::as_object) {
                Some(s) if s.contains_key("admin") => "operator",
                Some(s) if s.contains_key("user") => "user",
                _ => "anyone",
            };
            let what = op["summary"]
                .as_str()
                .unwrap_or_default()
                .replace('|', "\\|");
            rows.push((
                path.clone(),
                method.clone(),
                format!("| `{route}` | {who} | {what} |"),
            ));
        }
    }
    rows.sort();
    let mut out = String::from("| route | who | what |\n|---|---|---|\n");
    for (_, _, row) in rows {
        out.push_str(&row);
        out.push('\n');
    }
    out
}

#[cfg(test)]
const ROUTES_BEGIN: &str =
    "<!-- routes:begin (generated from api-worker/src/openapi.rs; do not edit) -->";
#[cfg(test)]
const ROUTES_END: &str = "<!-- routes:end -->";

/// `docs/API.md`'s route table is the document's; regenerate it with the document
/// (`EDGELINE_WRITE_OPENAPI=1 cargo test -p api-worker --lib openapi`).
#[test]
fn the_docs_route_table_is_the_documents() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/API.md");
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    let (Some(begin), Some(end)) = (doc.find(ROUTES_BEGIN), doc.find(ROUTES_END)) else {
        panic!("docs/API.md has no {ROUTES_BEGIN} … {ROUTES_END} block");
    };
    let start = begin + ROUTES_BEGIN.len();
    let want = format!("\n{}", route_table());
    if std::env::var_os("EDGELINE_WRITE_OPENAPI").is_some() {
        let written = format!("{}{want}{}", &doc[..start], &doc[end..]);
        std::fs::write(path, written).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        return;
    }
    assert!(
        doc[start..end] == want,
        "docs/API.md's route table is not what openapi::document() renders: run \
         `EDGELINE_WRITE_OPENAPI=1 cargo test -p api-worker --lib openapi`"
    );
}
