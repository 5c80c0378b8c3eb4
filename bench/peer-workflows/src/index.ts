// The benchmark's peer: edgeline's job written as a Cloudflare Workflow, the way Cloudflare's
// Workflows documentation writes one. `POST /api/tasks` authenticates the user (the same HS256
// token and KV session list as edgeline), holds the credits and inserts the task in one D1 batch
// (edgeline's own SQL, generated into sql.ts), then creates a workflow instance. The instance makes
// one `step.do` per provider call with the platform's retries, waits for the provider's callback
// (`step.waitForEvent`) and polls with `step.sleep` between polls, stores the results in R2,
// settles the hold in one D1 batch (or releases it on failure), and caches the final status in KV.
//
// Every request and every step execution logs one JSON line with its I/O, in the shape edgeline's
// workers use (`event`, `io`), so the benchmark counts both the same way.

import { WorkflowEntrypoint, WorkflowStep, WorkflowEvent } from "cloudflare:workers";
import { NonRetryableError } from "cloudflare:workflows";
import * as SQL from "./sql";

export interface Env {
  DB: D1Database;
  BUCKET: R2Bucket;
  KV: KVNamespace;
  TASK_WORKFLOW: Workflow<TaskParams>;
  SUBMIT_LIMIT: RateLimit;
  KIE_BASE_URL: string;
  KIE_API_KEY: string;
  PUBLIC_BASE_URL: string;
  JWT_SECRET: string;
  JWT_ISSUER: string;
  FILES_SIGNING_KEY: string;
  ADMIN_TOKEN: string;
  TASK_DEADLINE_SECS: string;
  FIRST_POLL_SECS: string;
  POLL_SECS: string;
  MAX_POLLS: string;
}

type Model = "kie_4o" | "kie_kontext";

type TaskParams = { taskId: string; model: Model; prompt: string; size: string };

const COST: Record<Model, number> = { kie_4o: 2, kie_kontext: 3 };
const SIZES: Record<Model, string[]> = {
  kie_4o: ["1:1", "3:2", "2:3"],
  kie_kontext: ["1:1", "16:9", "21:9", "4:3", "3:4", "9:16"],
};
const STATUS_TTL_SECS = 7 * 24 * 3600;

// ---------------------------------------------------------------------------------------------
// I/O counts, logged per request and per step execution.

class Io {
  d1_round_trips = 0;
  d1_statements = 0;
  d1_rows_read = 0;
  d1_rows_written = 0;
  kv_reads = 0;
  kv_writes = 0;
  r2_class_a = 0;
  r2_class_b = 0;
  fetch = 0;
  workflow_calls = 0;

  count(results: D1Result[] | D1Result, statements: number) {
    this.d1_round_trips += 1;
    this.d1_statements += statements;
    for (const r of Array.isArray(results) ? results : [results]) {
      this.d1_rows_read += r.meta?.rows_read ?? 0;
      this.d1_rows_written += r.meta?.rows_written ?? 0;
    }
  }

  async batch(db: D1Database, stmts: D1PreparedStatement[]): Promise<D1Result[]> {
    try {
      const results = await db.batch(stmts);
      this.count(results, stmts.length);
      return results;
    } catch (e) {
      this.d1_round_trips += 1;
      this.d1_statements += stmts.length;
      throw e;
    }
  }

  async first<T>(stmt: D1PreparedStatement): Promise<T | null> {
    const r = await stmt.all<T>();
    this.count(r, 1);
    return r.results[0] ?? null;
  }

  async run(stmt: D1PreparedStatement): Promise<D1Result> {
    const r = await stmt.run();
    this.count(r, 1);
    return r;
  }
}

function log(line: Record<string, unknown>) {
  console.log(JSON.stringify({ ...line, at_ms: Date.now() }));
}

const now = () => Math.floor(Date.now() / 1000);

// ---------------------------------------------------------------------------------------------
// Tokens and signatures (WebCrypto).

const encoder = new TextEncoder();

function b64urlDecode(s: string): Uint8Array {
  const b = atob(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4));
  return Uint8Array.from(b, (c) => c.charCodeAt(0));
}

function hex(buf: ArrayBuffer): string {
  return [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function hmacKey(secret: string, usage: "sign" | "verify"): Promise<CryptoKey> {
  return crypto.subtle.importKey("raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, [usage]);
}

/** The user and session a bearer token names, if its signature, algorithm, issuer and expiry hold. */
async function verifyToken(token: string, env: Env): Promise<{ user: string; sid: string } | null> {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const header = JSON.parse(new TextDecoder().decode(b64urlDecode(parts[0])));
    if (header.alg !== "HS256") return null;
    const key = await hmacKey(env.JWT_SECRET, "verify");
    const ok = await crypto.subtle.verify("HMAC", key, b64urlDecode(parts[2]), encoder.encode(`${parts[0]}.${parts[1]}`));
    if (!ok) return null;
    const claims = JSON.parse(new TextDecoder().decode(b64urlDecode(parts[1])));
    if (typeof claims.exp !== "number" || claims.exp <= now() || claims.iss !== env.JWT_ISSUER) return null;
    if (typeof claims.sub !== "string" || typeof claims.sid !== "string") return null;
    return { user: claims.sub, sid: claims.sid };
  } catch {
    return null;
  }
}

/** The callback token for a task: hex HMAC-SHA256 of `callback:{task}`. */
async function callbackToken(task: string, env: Env): Promise<string> {
  const key = await hmacKey(env.FILES_SIGNING_KEY, "sign");
  return hex(await crypto.subtle.sign("HMAC", key, encoder.encode(`callback:${task}`)));
}

// ---------------------------------------------------------------------------------------------
// HTTP

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

function error(status: number, code: string, message: string): Response {
  return json({ error: { code, message } }, status);
}

export default {
  async fetch(req: Request, env: Env, ctx: ExecutionContext): Promise<Response> {
    const started = Date.now();
    const io = new Io();
    const url = new URL(req.url);
    let res: Response;
    try {
      res = await route(req, url, env, io);
    } catch (e) {
      log({ level: "error", event: "unhandled", path: url.pathname, cause: String(e) });
      res = error(503, "unavailable", String(e));
    }
    log({ event: "http", method: req.method, path: url.pathname, status: res.status, ms: Date.now() - started, io });
    return res;
  },
};

async function route(req: Request, url: URL, env: Env, io: Io): Promise<Response> {
  const path = url.pathname;
  if (req.method === "POST" && path === "/api/tasks") return submit(req, env, io);
  if (req.method === "GET" && path.startsWith("/api/tasks/")) return status(path.slice("/api/tasks/".length), env, io);
  if (req.method === "POST" && path === "/webhooks/ai/kie") return callback(req, url, env, io);
  if (req.method === "POST" && path === "/_bench/users") return seedUsers(req, env, io);
  if (req.method === "GET" && path === "/") return new Response("ok");
  return error(404, "not_found", "no such route");
}

/** `POST /api/tasks`: authenticate, validate, hold the cost and insert the task, start its workflow. */
async function submit(req: Request, env: Env, io: Io): Promise<Response> {
  const auth = req.headers.get("authorization") ?? "";
  const token = auth.startsWith("Bearer ") ? auth.slice(7).trim() : "";
  const who = await verifyToken(token, env);
  if (!who) return error(401, "unauthorized", "missing or invalid token");
  io.kv_reads += 1;
  const [sessions, limited] = await Promise.all([
    env.KV.get<{ sessions: { sid: string; expires_at: number }[] }>(`auth-uid:${who.user}`, "json"),
    env.SUBMIT_LIMIT.limit({ key: who.user }),
  ]);
  if (!sessions?.sessions.some((s) => s.sid === who.sid && s.expires_at > now())) {
    return error(401, "unauthorized", "the session has been signed out");
  }
  if (!limited.success) return error(429, "rate_limited", "too many submissions");

  let body: { prompt?: unknown; model?: unknown; size?: unknown };
  try {
    body = await req.json();
  } catch {
    return error(400, "invalid_json", "the body is not JSON");
  }
  if (typeof body.prompt !== "string" || !body.prompt.trim() || body.prompt.length > 4000) {
    return error(422, "invalid_field", "prompt: a non-empty string of at most 4000 characters");
  }
  if (body.model !== "kie_4o" && body.model !== "kie_kontext") return error(422, "invalid_field", "model: kie_4o or kie_kontext");
  const model: Model = body.model;
  const size = body.size === undefined ? "1:1" : body.size;
  if (typeof size !== "string" || !SIZES[model].includes(size)) return error(422, "invalid_field", `size: one of ${SIZES[model]}`);
  const prompt = body.prompt.trim();

  const id = crypto.randomUUID();
  const at = now();
  const taskNo = `P${at}-${id.slice(0, 8)}`;
  const input = JSON.stringify({ prompt, model, size, images: [] });
  const cost = COST[model];
  const results = await io.batch(env.DB, [
    env.DB.prepare(SQL.RESERVE_TASK).bind(who.user, at, id, taskNo, input, model, null, cost, at + Number(env.TASK_DEADLINE_SECS), null),
    env.DB.prepare(SQL.HOLD).bind(`reserve:${id}`, id, at),
  ]);
  if (results[0].meta.changes !== 1) return error(402, "insufficient_credits", `${model} costs ${cost} credits`);

  io.workflow_calls += 1;
  try {
    await env.TASK_WORKFLOW.create({ id, params: { taskId: id, model, prompt, size } });
  } catch (e) {
    // the task never started: give the hold back
    await io.batch(env.DB, [
      env.DB.prepare(SQL.FAIL_TASK).bind(id, `workflow not created: ${e}`.slice(0, 500), at),
      env.DB.prepare(SQL.RELEASE_FAILED).bind(`release:${id}`, null, null, id, at),
    ]);
    return error(503, "unavailable", "the task could not be started");
  }
  return json({ id, task_no: taskNo, status: "pending", model, prompt, size, cost, created_at: at }, 202);
}

/** `GET /api/tasks/{id}`: the final status from KV, else the row's status. */
async function status(id: string, env: Env, io: Io): Promise<Response> {
  io.kv_reads += 1;
  const cached = await env.KV.get(`task-status:${id}`, "json");
  if (cached) return json({ id, ...(cached as object) });
  const row = await io.first<{ status: string }>(env.DB.prepare("SELECT status FROM ai_tasks WHERE id = ?1").bind(id));
  return row ? json({ id, status: row.status }) : error(404, "not_found", "no such task");
}

/** `POST /webhooks/ai/kie?task=&token=`: the provider's callback wakes the task's workflow. */
async function callback(req: Request, url: URL, env: Env, io: Io): Promise<Response> {
  const task = url.searchParams.get("task") ?? "";
  const token = url.searchParams.get("token") ?? "";
  if (!task || token !== (await callbackToken(task, env))) return error(401, "unauthorized", "bad callback token");
  const body = await req.json<{ code?: number }>().catch(() => ({ code: undefined }));
  io.workflow_calls += 2;
  const instance = await env.TASK_WORKFLOW.get(task);
  await instance.sendEvent({ type: "provider-callback", payload: { code: body.code ?? null } });
  return json({ ok: true });
}

/** `POST /_bench/users` (admin): users with a gift grant and one live session each, for the bench. */
async function seedUsers(req: Request, env: Env, io: Io): Promise<Response> {
  if (req.headers.get("authorization") !== `Bearer ${env.ADMIN_TOKEN}`) return error(401, "unauthorized", "admin only");
  const { users } = await req.json<{ users: { id: string; credits: number; sid: string; expires_at: number }[] }>();
  const at = now();
  const stmts = users.flatMap((u) => [
    env.DB.prepare("INSERT INTO users (id, email, name, credits, created_at, updated_at) VALUES (?1, ?2, 'Bench', 0, ?3, ?3)").bind(u.id, `${u.id}@peer.test`, at),
    env.DB.prepare(
      "INSERT INTO credit_records (id, user_id, amount, type, entity_type, entity_id, note, created_at) VALUES (?1, ?2, ?3, 'gift', 'user', ?2, 'bench', ?4)",
    ).bind(`gift:${u.id}`, u.id, u.credits, at),
  ]);
  await io.batch(env.DB, stmts);
  for (const u of users) {
    io.kv_writes += 1;
    await env.KV.put(`auth-uid:${u.id}`, JSON.stringify({ sessions: [{ sid: u.sid, expires_at: u.expires_at }] }), { expiration: u.expires_at });
  }
  return json({ created: users.length }, 201);
}

// ---------------------------------------------------------------------------------------------
// The workflow

type Poll = { state: "generating" } | { state: "success"; urls: string[] } | { state: "failed"; reason: string };

/** Transient: the platform retries the step. Permanent: NonRetryableError ends the task. */
const PROVIDER_RETRIES = { retries: { limit: 8, delay: "1 second" as const, backoff: "exponential" as const }, timeout: "30 seconds" as const };
const TRANSIENT_CODES = [429, 455, 500, 503, 505];

function endpoints(env: Env, model: Model) {
  const base = env.KIE_BASE_URL.replace(/\/$/, "");
  return model === "kie_4o"
    ? { create: `${base}/api/v1/gpt4o-image/generate`, info: `${base}/api/v1/gpt4o-image/record-info` }
    : { create: `${base}/api/v1/flux/kontext/generate`, info: `${base}/api/v1/flux/kontext/record-info` };
}

/** Runs one step's body with its own I/O counts and logs the execution. */
async function counted<T>(task: string, name: string, body: (io: Io) => Promise<T>): Promise<T> {
  const io = new Io();
  const started = Date.now();
  try {
    const out = await body(io);
    log({ event: "peer.step", task_id: task, step: name, ok: true, ms: Date.now() - started, io });
    return out;
  } catch (e) {
    log({ event: "peer.step", task_id: task, step: name, ok: false, ms: Date.now() - started, cause: String(e), io });
    throw e;
  }
}

export class TaskWorkflow extends WorkflowEntrypoint<Env, TaskParams> {
  async run(event: WorkflowEvent<TaskParams>, step: WorkflowStep) {
    const { taskId, model, prompt, size } = event.payload;
    const env = this.env;
    const api = endpoints(env, model);
    try {
      const externalId = await step.do("create at the provider", PROVIDER_RETRIES, () =>
        counted(taskId, "create", async (io) => {
          const token = await callbackToken(taskId, env);
          const callBackUrl = `${env.PUBLIC_BASE_URL}/webhooks/ai/kie?task=${taskId}&token=${token}`;
          const body =
            model === "kie_4o"
              ? { prompt, size, callBackUrl }
              : { prompt, aspectRatio: size, model: "flux-kontext-pro", outputFormat: "png", callBackUrl };
          io.fetch += 1;
          const res = await fetch(api.create, {
            method: "POST",
            headers: { authorization: `Bearer ${env.KIE_API_KEY}`, "content-type": "application/json" },
            body: JSON.stringify(body),
          });
          if (res.status >= 500 || res.status === 429) throw new Error(`create: HTTP ${res.status}`);
          const reply = await res.json<{ code: number; msg?: string; data?: { taskId?: string } }>();
          if (reply.code === 200 && reply.data?.taskId) return reply.data.taskId;
          if (TRANSIENT_CODES.includes(reply.code)) throw new Error(`create: code ${reply.code} ${reply.msg}`);
          throw new NonRetryableError(`the provider refused the task: ${reply.code} ${reply.msg}`);
        }),
      );

      await step.do("record the provider's id", () =>
        counted(taskId, "accept", async (io) => {
          const at = now();
          await io.run(env.DB.prepare(SQL.ACCEPT).bind(taskId, externalId, at));
        }),
      );

      // Callbacks make polling a fallback: wait for the callback as long as a generation
      // typically takes, then poll until the provider says it is done.
      try {
        await step.waitForEvent("wait for the provider's callback", {
          type: "provider-callback",
          timeout: `${Number(env.FIRST_POLL_SECS)} seconds`,
        });
      } catch {
        // no callback in time: poll
      }
      let outcome: Poll = { state: "generating" };
      for (let i = 0; i < Number(env.MAX_POLLS); i++) {
        outcome = await step.do(`poll ${i}`, PROVIDER_RETRIES, () =>
          counted(taskId, "poll", async (io): Promise<Poll> => {
            io.fetch += 1;
            const res = await fetch(`${api.info}?taskId=${encodeURIComponent(externalId)}`, {
              headers: { authorization: `Bearer ${env.KIE_API_KEY}` },
            });
            if (res.status >= 500 || res.status === 429) throw new Error(`record-info: HTTP ${res.status}`);
            const reply = await res.json<{ code: number; msg?: string; data?: Record<string, any> }>();
            if (reply.code !== 200 || !reply.data) {
              if (TRANSIENT_CODES.includes(reply.code)) throw new Error(`record-info: code ${reply.code}`);
              throw new NonRetryableError(`record-info: ${reply.code} ${reply.msg}`);
            }
            const d = reply.data;
            if (model === "kie_4o") {
              if (d.status === "SUCCESS") return { state: "success", urls: d.response?.resultUrls ?? [] };
              if (d.status === "GENERATE_FAILED" || d.status === "CREATE_TASK_FAILED") return { state: "failed", reason: d.errorMessage ?? d.status };
            } else {
              if (d.successFlag === 1) return { state: "success", urls: [d.response?.resultImageUrl].filter(Boolean) };
              if (d.successFlag === 2 || d.successFlag === 3) return { state: "failed", reason: d.errorMessage ?? "generation failed" };
            }
            return { state: "generating" };
          }),
        );
        if (outcome.state !== "generating") break;
        await step.sleep(`wait ${i}`, `${Number(env.POLL_SECS)} seconds`);
      }
      if (outcome.state === "generating") throw new NonRetryableError("the provider did not finish in time");
      if (outcome.state === "failed") throw new NonRetryableError(`generation failed: ${outcome.reason}`);
      if (outcome.urls.length === 0) throw new NonRetryableError("the provider returned no result");

      const keys: string[] = [];
      for (const [n, url] of outcome.urls.entries()) {
        keys.push(
          await step.do(`store result ${n}`, PROVIDER_RETRIES, () =>
            counted(taskId, "store", async (io) => {
              io.fetch += 1;
              const res = await fetch(url);
              if (!res.ok || !res.body) throw new Error(`download: HTTP ${res.status}`);
              const type = res.headers.get("content-type") ?? "image/png";
              const key = `result/${model}/${taskId}/result_${n}.${type.includes("jpeg") ? "jpg" : "png"}`;
              io.r2_class_a += 1;
              await env.BUCKET.put(key, res.body, { httpMetadata: { contentType: type } });
              return key;
            }),
          ),
        );
      }
      const urls = outcome.urls;

      const owner = await step.do("settle", () =>
        counted(taskId, "settle", async (io) => {
          const at = now();
          try {
            const results = await io.batch(env.DB, [
              env.DB.prepare(SQL.COMPLETE).bind(taskId, JSON.stringify(urls), JSON.stringify(keys), externalId, at),
              env.DB.prepare(SQL.RELEASE_COMPLETED).bind(`release:${taskId}`, null, null, taskId, at),
              env.DB.prepare(SQL.CONSUMPTION).bind(`consumption:${taskId}`, null, null, taskId, at),
              env.DB.prepare(SQL.ALLOCATION).bind(null, null, at, taskId),
            ]);
            return { user: (results[0].results[0] as { user_id?: string } | undefined)?.user_id ?? null, at };
          } catch (e) {
            // settled by an earlier execution of this step: the unique index refused a second one
            if (String(e).includes("UNIQUE constraint failed")) return { user: null, at };
            throw e;
          }
        }),
      );
      await step.do("cache the final status", () =>
        counted(taskId, "cache", async (io) => {
          io.kv_writes += 1;
          await env.KV.put(
            `task-status:${taskId}`,
            JSON.stringify({ user_id: owner.user, status: "completed", failure_reason: null, result_keys: keys, completed_at: owner.at }),
            { expirationTtl: STATUS_TTL_SECS },
          );
          log({ event: "task.final_status_cached", task_id: taskId, status: "completed" });
        }),
      );
    } catch (e) {
      const reason = e instanceof Error ? e.message : String(e);
      const owner = await step.do("fail and release the hold", () =>
        counted(taskId, "fail", async (io) => {
          const at = now();
          const results = await io.batch(env.DB, [
            env.DB.prepare(SQL.FAIL_TASK).bind(taskId, reason.slice(0, 500), at),
            env.DB.prepare(SQL.RELEASE_FAILED).bind(`release:${taskId}`, null, null, taskId, at),
          ]);
          return { user: (results[0].results[0] as { user_id?: string } | undefined)?.user_id ?? null, at };
        }),
      );
      await step.do("cache the final status", () =>
        counted(taskId, "cache", async (io) => {
          io.kv_writes += 1;
          await env.KV.put(
            `task-status:${taskId}`,
            JSON.stringify({ user_id: owner.user, status: "failed", failure_reason: reason, result_keys: [], completed_at: owner.at }),
            { expirationTtl: STATUS_TTL_SECS },
          );
          log({ event: "task.final_status_cached", task_id: taskId, status: "failed" });
        }),
      );
    }
  }
}
