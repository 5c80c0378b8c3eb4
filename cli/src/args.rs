//! The command line: every verb, its flags, its help and its examples.

use crate::config::Secret;
use crate::time;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const TOP_HELP: &str = "\
Where and as whom:
  URL    --url, else EDGELINE_URL, else `url` in the config file, else the local stack
         (http://127.0.0.1:8787).
  token  --token, else EDGELINE_ADMIN_TOKEN, else `token` in the config file (sent only to that
         file's url), else ADMIN_TOKEN from .dev.vars (local stack only). Never printed.
  actor  --actor, else EDGELINE_ACTOR, else `actor` in the config file, else $USER; sent as
         X-Actor and written to the audit log with every change.
  Config file: $XDG_CONFIG_HOME/edgeline/config.toml (else the platform's config directory),
  or --config / EDGELINE_CONFIG:
      url = \"https://edgeline.example.com\"
      token = \"...\"
      actor = \"alice\"

Output: tables for people; --json prints the API's answer as one JSON document on stdout.

Exit codes:
  0    done
  1    a check found problems (audit with violations)
  2    usage or configuration error (bad flag or value, no token, unreadable file)
  3    the API answered with an error (4xx/5xx: wrong token, no such id, conflict, ...)
  4    the API could not be reached (connection refused, DNS, timeout, TLS)
  130  interrupted by Ctrl-C during a bulk replay/discard (the page in flight was finished)

Examples:
  edgeline dlq list --type task.submit
  edgeline dlq replay --filter --error-class server_error --dry-run
  edgeline --url https://edgeline.example.com tasks list --status failed
  edgeline audit --json | jq .violations
  edgeline completions bash > ~/.local/share/bash-completion/completions/edgeline";

/// The operators' command line for an edgeline: dead letters, tasks, webhook events, orders,
/// storage, users and grants, cron, the ledger audit, the audit log, the catalogue and queues.
#[derive(Parser)]
#[command(name = "edgeline", version, after_help = TOP_HELP, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every verb takes (before or after the verb).
#[derive(Args, Clone)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// The edgeline to talk to [default: the config file's url, else http://127.0.0.1:8787]
    #[arg(
        long,
        global = true,
        env = "EDGELINE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub url: Option<String>,
    /// The admin token (ADMIN_TOKEN) [default: the config file's, else .dev.vars for a local URL]
    #[arg(
        long,
        global = true,
        env = "EDGELINE_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = Secret::parse
    )]
    pub token: Option<Secret>,
    /// Who is acting, sent as X-Actor and recorded in the audit log [default: $USER]
    #[arg(
        long,
        global = true,
        env = "EDGELINE_ACTOR",
        hide_env_values = true,
        value_name = "NAME"
    )]
    pub actor: Option<String>,
    /// A config file other than $XDG_CONFIG_HOME/edgeline/config.toml
    #[arg(
        long,
        global = true,
        env = "EDGELINE_CONFIG",
        hide_env_values = true,
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Print the API's answer as JSON (for scripts) instead of tables
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for each answer
    #[arg(long, global = true, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// Log every request (method, URL, status, time) to stderr; the token is never shown
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Dead letters: messages the queues gave up on (list, show, replay, discard)
    #[command(
        subcommand,
        after_help = "Examples:\n  edgeline dlq list --status dead\n  edgeline dlq replay --filter --type task.submit --dry-run"
    )]
    Dlq(Dlq),
    /// Tasks as operators see them (list, show, timeline, retry)
    #[command(
        subcommand,
        after_help = "Examples:\n  edgeline tasks list --status failed\n  edgeline tasks timeline 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d\n  edgeline tasks retry 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    )]
    Tasks(Tasks),
    /// Webhook events: what payment providers told us and what became of it
    #[command(
        subcommand,
        visible_alias = "webhook-events",
        after_help = "Examples:\n  edgeline events list --status rejected"
    )]
    Events(Events),
    /// Orders (list, stats)
    #[command(
        subcommand,
        after_help = "Examples:\n  edgeline orders list --status pending\n  edgeline orders stats"
    )]
    Orders(Orders),
    /// The dashboard's figures: tasks by status, throughput, dead letters by class, webhook events
    #[command(
        after_help = "Examples:\n  edgeline stats\n  edgeline stats --json | jq .throughput.hour"
    )]
    Stats,
    /// Stored objects in R2 (stats)
    #[command(
        subcommand,
        after_help = "Examples:\n  edgeline storage stats --prefix cache/"
    )]
    Storage(Storage),
    /// Users: list, show, sign-ins, create, grant credits (a session: `edgeline token USER_ID`)
    #[command(
        subcommand,
        after_help = "Examples:\n  edgeline users list --search ada@\n  edgeline users show 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d\n  edgeline users create --email ada@example.com --name Ada --credits 20\n  edgeline users grant USER_ID --credits 50 --reference ticket-4711"
    )]
    Users(Users),
    /// Open a session for a user and print its token (what the app's login does)
    #[command(
        after_help = "Examples:\n  edgeline token 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d\n  TOKEN=$(edgeline token USER_ID --ttl 600)"
    )]
    Token(TokenArgs),
    /// Scheduled jobs: recent runs, or run one now
    #[command(
        subcommand,
        after_help = "Examples:\n  edgeline cron runs --job retention\n  edgeline cron run expire_orders"
    )]
    Cron(Cron),
    /// Run the ledger audit now; exits 1 when it finds violations
    #[command(
        after_help = "Exits 1 (after printing them) when the ledger has violations, 0 when it is clean.\n\nExamples:\n  edgeline audit\n  edgeline audit --stuck-secs 600 --json"
    )]
    Audit(AuditArgs),
    /// The audit log: who changed what, newest first
    #[command(
        after_help = "Examples:\n  edgeline audit-log --action dead_letter.replay\n  edgeline audit-log --by alice --limit 200"
    )]
    AuditLog(AuditLogArgs),
    /// The catalogue of packs and plans: show it, or replace it
    #[command(
        subcommand,
        after_help = "Examples:\n  edgeline catalog show\n  edgeline catalog show --json | jq .catalog > catalog.json\n  edgeline catalog set --file catalog.json --expected-version 3"
    )]
    Catalog(Catalog),
    /// Send messages to a queue by hand
    #[command(
        subcommand,
        after_help = "Examples:\n  edgeline queue send --queue tasks --file messages.json"
    )]
    Queue(Queue),
    /// Print a shell completion script
    #[command(
        after_help = "Examples:\n  edgeline completions bash > ~/.local/share/bash-completion/completions/edgeline\n  edgeline completions zsh > \"${fpath[1]}/_edgeline\"\n  edgeline completions fish > ~/.config/fish/completions/edgeline.fish"
    )]
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

// ---------------------------------------------------------------------------------------------
// Dead letters
// ---------------------------------------------------------------------------------------------

#[derive(Subcommand)]
pub enum Dlq {
    /// List dead letters, newest first
    #[command(
        after_help = "Times are unix seconds, a UTC date (2026-11-21, 2026-11-21T10:00:00Z) or an age (90m, 2h, 7d).\n\nExamples:\n  edgeline dlq list\n  edgeline dlq list --type task.submit --error-class server_error --since 2h\n  edgeline dlq list --status dead --all --json"
    )]
    List(DlqList),
    /// Show one dead letter: its body and what operators did to it
    #[command(after_help = "Examples:\n  edgeline dlq show dl_0123456789abcdef")]
    Show {
        /// The dead letter's id
        id: String,
    },
    /// Send dead letters back to their queue: one (--id) or every one matching a filter
    #[command(
        after_help = "By filter, every page (up to 500 letters each) is replayed in turn, with a progress bar;\nCtrl-C stops after the page in flight (exit 130), and running it again continues.\n\nExamples:\n  edgeline dlq replay --id dl_0123456789abcdef\n  edgeline dlq replay --filter --type task.submit --error-class server_error --dry-run\n  edgeline dlq replay --filter --type task.submit --error-class server_error\n  edgeline dlq replay --filter --status replayed --since 1h --force"
    )]
    Replay(Replay),
    /// Mark dead letters discarded (never replayed): one (--id) or every one matching a filter
    #[command(
        after_help = "By filter, every page (up to 500 letters each) is discarded in turn, with a progress bar;\nCtrl-C stops after the page in flight (exit 130).\n\nExamples:\n  edgeline dlq discard --id dl_0123456789abcdef\n  edgeline dlq discard --filter --error-class parse_error --dry-run\n  edgeline dlq discard --filter --error-class parse_error"
    )]
    Discard(Discard),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DlqStatus {
    Dead,
    Replayed,
    Discarded,
}

impl DlqStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DlqStatus::Dead => "dead",
            DlqStatus::Replayed => "replayed",
            DlqStatus::Discarded => "discarded",
        }
    }
}

/// Which dead letters.
#[derive(Args, Clone, Default)]
pub struct DlqFilter {
    /// The queue they came from (edgeline-tasks, edgeline-events)
    #[arg(long, value_name = "QUEUE")]
    pub queue: Option<String>,
    /// Message type (task.submit, task.poll, event.apply, ...)
    #[arg(long = "type", value_name = "TYPE")]
    pub message_type: Option<String>,
    /// Error class (server_error, parse_error, unknown_version, ...)
    #[arg(long, value_name = "CLASS")]
    pub error_class: Option<String>,
    /// Status [listing: any; replay and discard: dead]
    #[arg(long, value_enum)]
    pub status: Option<DlqStatus>,
    /// Last failed at or after (unix seconds, UTC date, or an age like 2h)
    #[arg(long, value_name = "TIME", value_parser = time::parse_past)]
    pub since: Option<i64>,
    /// Last failed at or before (unix seconds, UTC date, or an age like 30m)
    #[arg(long, value_name = "TIME", value_parser = time::parse_past)]
    pub until: Option<i64>,
}

impl DlqFilter {
    pub fn is_empty(&self) -> bool {
        self.queue.is_none()
            && self.message_type.is_none()
            && self.error_class.is_none()
            && self.status.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }
}

#[derive(Args)]
pub struct Page {
    /// How many per page (1 to 200)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=200))]
    pub limit: Option<u32>,
    /// Continue from the `next_cursor` of an earlier page
    #[arg(long, value_name = "CURSOR", conflicts_with = "all")]
    pub cursor: Option<String>,
    /// Follow every page and print them all
    #[arg(long)]
    pub all: bool,
}

#[derive(Args)]
pub struct DlqList {
    #[command(flatten)]
    pub filter: DlqFilter,
    #[command(flatten)]
    pub page: Page,
}

/// One letter or a filter.
#[derive(Args)]
#[group(id = "which", required = true, multiple = false)]
pub struct Which {
    /// One dead letter, by id
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Every dead letter matching the filter flags (all dead ones if none is given)
    #[arg(long)]
    pub filter: bool,
}

#[derive(Args)]
pub struct Replay {
    #[command(flatten)]
    pub which: Which,
    #[command(flatten)]
    pub filter: DlqFilter,
    /// Print what would be replayed, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Replay letters that were replayed already (with --id, or --filter --status replayed)
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct Discard {
    #[command(flatten)]
    pub which: Which,
    #[command(flatten)]
    pub filter: DlqFilter,
    /// Print what would be discarded, change nothing
    #[arg(long)]
    pub dry_run: bool,
}

// ---------------------------------------------------------------------------------------------
// Tasks, events, orders, storage
// ---------------------------------------------------------------------------------------------

#[derive(Subcommand)]
pub enum Tasks {
    /// List tasks, newest first
    #[command(
        after_help = "Examples:\n  edgeline tasks list --status failed\n  edgeline tasks list --status processing --older-than 1h --all"
    )]
    List(TasksList),
    /// Show one task with its ledger rows and stored results
    #[command(
        after_help = "Examples:\n  edgeline tasks show 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    )]
    Show {
        /// The task's id
        id: String,
    },
    /// What happened to one task, in order: created, submitted, ledger, dead letters, operators
    #[command(
        after_help = "Examples:\n  edgeline tasks timeline 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d\n  edgeline tasks timeline 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d --json"
    )]
    Timeline {
        /// The task's id
        id: String,
    },
    /// Run a failed task again as a new task (a new hold; retrying twice gives the same task)
    #[command(
        after_help = "Examples:\n  edgeline tasks retry 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    )]
    Retry {
        /// The failed task's id
        id: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TaskStatus {
    Pending,
    Submitted,
    Processing,
    Completed,
    Failed,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Submitted => "submitted",
            TaskStatus::Processing => "processing",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
        }
    }
}

#[derive(Args)]
pub struct TasksList {
    /// Only tasks in this status
    #[arg(long, value_enum)]
    pub status: Option<TaskStatus>,
    /// Only tasks created at least this long ago (seconds, or 90m, 2h, 7d)
    #[arg(long, value_name = "AGE", value_parser = time::parse_duration)]
    pub older_than: Option<i64>,
    #[command(flatten)]
    pub page: Page,
}

#[derive(Subcommand)]
pub enum Events {
    /// List webhook events, newest first
    #[command(
        after_help = "Examples:\n  edgeline events list\n  edgeline events list --status rejected --type checkout.completed --limit 200"
    )]
    List {
        /// Only events in this status (received, applied, rejected, ...)
        #[arg(long, value_name = "STATUS")]
        status: Option<String>,
        /// Only events of this type (checkout.completed, subscription.paid, ...)
        #[arg(long = "type", value_name = "TYPE")]
        event_type: Option<String>,
        /// How many (1 to 200)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=200))]
        limit: Option<u32>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OrderStatus {
    Pending,
    Paid,
    Processing,
    Completed,
    Refunding,
    Refunded,
    Cancelled,
    Expired,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Paid => "paid",
            OrderStatus::Processing => "processing",
            OrderStatus::Completed => "completed",
            OrderStatus::Refunding => "refunding",
            OrderStatus::Refunded => "refunded",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
        }
    }
}

#[derive(Subcommand)]
pub enum Orders {
    /// List orders, newest first, with the terms they were made with
    #[command(
        after_help = "Examples:\n  edgeline orders list --status pending\n  edgeline orders list --user 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d --all --json"
    )]
    List {
        /// Only orders in this status
        #[arg(long, value_enum)]
        status: Option<OrderStatus>,
        /// Only this user's orders
        #[arg(long, value_name = "USER_ID")]
        user: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// How many orders are in each status
    #[command(after_help = "Examples:\n  edgeline orders stats\n  edgeline orders stats --json")]
    Stats,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Prefix {
    #[value(name = "cache/")]
    Cache,
    #[value(name = "result/")]
    Result,
    #[value(name = "dead-letters/")]
    DeadLetters,
}

impl Prefix {
    pub fn as_str(self) -> &'static str {
        match self {
            Prefix::Cache => "cache/",
            Prefix::Result => "result/",
            Prefix::DeadLetters => "dead-letters/",
        }
    }
}

#[derive(Subcommand)]
pub enum Storage {
    /// Objects and bytes stored, in all or under one prefix (up to 20,000 objects counted)
    #[command(
        after_help = "Examples:\n  edgeline storage stats\n  edgeline storage stats --prefix result/"
    )]
    Stats {
        /// Only under this prefix
        #[arg(long, value_enum)]
        prefix: Option<Prefix>,
    },
}

// ---------------------------------------------------------------------------------------------
// Users, sessions
// ---------------------------------------------------------------------------------------------

#[derive(Subcommand)]
pub enum Users {
    /// List users, newest first
    #[command(
        after_help = "Examples:\n  edgeline users list\n  edgeline users list --search ada@example\n  edgeline users list --all --json"
    )]
    List {
        /// An email prefix or a user id
        #[arg(long, value_name = "TEXT")]
        search: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// One user: balance, newest ledger rows, subscriptions, tasks and orders by status
    #[command(
        after_help = "Examples:\n  edgeline users show 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d\n  edgeline users show 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d --json | jq .ledger"
    )]
    Show {
        /// The user's id
        user_id: String,
    },
    /// A user's sign-ins, newest first
    #[command(
        after_help = "Examples:\n  edgeline users signins 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d --limit 20"
    )]
    Signins {
        /// The user's id
        user_id: String,
        /// How many (1 to 200)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=200))]
        limit: Option<u32>,
    },
    /// Create a user, with optional starting credits
    #[command(
        after_help = "Examples:\n  edgeline users create --email ada@example.com --name Ada\n  edgeline users create --email ada@example.com --name Ada --credits 20 --json"
    )]
    Create {
        /// Their email address (unique)
        #[arg(long)]
        email: String,
        /// Their name
        #[arg(long)]
        name: String,
        /// Starting credits (a gift)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..=1_000_000_000))]
        credits: Option<i64>,
    },
    /// Grant a user credits, once per reference
    #[command(
        after_help = "Examples:\n  edgeline users grant USER_ID --credits 50 --reference ticket-4711\n  edgeline users grant USER_ID --credits 100 --reference promo-2026 --note \"spring promo\" --expires-at 30d"
    )]
    Grant {
        /// The user's id
        user_id: String,
        /// How many credits
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..=1_000_000_000))]
        credits: i64,
        /// What the grant is for; granting twice with one reference grants once
        #[arg(long, value_name = "REF")]
        reference: String,
        /// A note for the ledger
        #[arg(long)]
        note: Option<String>,
        /// When the credits expire (unix seconds, UTC date, or from now: 30d, 12h)
        #[arg(long, value_name = "TIME", value_parser = time::parse_future)]
        expires_at: Option<i64>,
    },
}

#[derive(Args)]
pub struct TokenArgs {
    /// The user's id
    pub user_id: String,
    /// How long the session lasts (seconds, or 10m, 12h, 30d; 60 s to 365 d)
    #[arg(long, value_name = "SECS", value_parser = time::parse_duration)]
    pub ttl: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// Cron, audit, audit log, catalogue, queues
// ---------------------------------------------------------------------------------------------

#[derive(Subcommand)]
pub enum Cron {
    /// Recent runs, newest first
    #[command(
        after_help = "Examples:\n  edgeline cron runs\n  edgeline cron runs --job retention --limit 10"
    )]
    Runs {
        /// Only this job's runs
        #[arg(long, value_name = "JOB")]
        job: Option<String>,
        /// How many (1 to 200)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=200))]
        limit: Option<u32>,
    },
    /// Run a job now, with its schedule's budget
    #[command(
        after_help = "Jobs: expire_orders, expire_subscriptions, reconcile_tasks, reconcile_events,\naudit_ledger, retention, clean_r2_cache.\n\nExamples:\n  edgeline cron run expire_orders\n  edgeline cron run retention --json"
    )]
    Run {
        /// The job's name
        job: String,
    },
}

#[derive(Args)]
pub struct AuditArgs {
    /// How long a live task may be past its deadline, or an event stay received, before it is a
    /// violation (60 to 604800) [default: 3600]
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(i64).range(60..=604_800))]
    pub stuck_secs: Option<i64>,
}

#[derive(Args)]
pub struct AuditLogArgs {
    /// Only changes to this target (a dead letter, task or user id, a queue, settings:catalog)
    #[arg(long, value_name = "ID")]
    pub target: Option<String>,
    /// Only this action (dead_letter.replay, task.retry, grant.create, catalog.update, ...)
    #[arg(long, value_name = "ACTION")]
    pub action: Option<String>,
    /// Only changes by this actor
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
    /// How many (1 to 200)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=200))]
    pub limit: Option<u32>,
}

#[derive(Subcommand)]
pub enum Catalog {
    /// The stored catalogue: its products, version and who changed it last
    #[command(
        after_help = "Examples:\n  edgeline catalog show\n  edgeline catalog show --json | jq .catalog > catalog.json"
    )]
    Show,
    /// Replace the catalogue, if it is still at the version you read (else exit 3, 409)
    #[command(
        after_help = "The file holds the catalogue ({\"packs\": [...], \"plans\": [...]}) or what `catalog show --json`\nprinted (its `catalog` is used); `-` reads stdin.\n\nExamples:\n  edgeline catalog set --file catalog.json --expected-version 3\n  edgeline catalog show --json | jq '.catalog.packs[0].price = 599' | edgeline catalog set --file - --expected-version 3"
    )]
    Set {
        /// The catalogue as JSON (`-` for stdin)
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// The version you read with `catalog show`
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..))]
        expected_version: i64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum QueueName {
    Tasks,
    Events,
}

impl QueueName {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::Tasks => "tasks",
            QueueName::Events => "events",
        }
    }
}

#[derive(Subcommand)]
pub enum Queue {
    /// Send messages (a JSON array, any length; sent 100 at a time) as they are
    #[command(
        after_help = "The file holds a JSON array of messages, or {\"messages\": [...]}; `-` reads stdin.\n\nExamples:\n  edgeline queue send --queue tasks --file messages.json\n  echo '[{\"v\":1,\"type\":\"task.submit\",\"task_id\":\"...\",\"attempt\":0}]' | edgeline queue send --queue tasks --file -"
    )]
    Send {
        /// Which queue
        #[arg(long, value_enum)]
        queue: QueueName,
        /// The messages (`-` for stdin)
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Deliver after this many seconds (0 to 43200)
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u32).range(0..=43_200))]
        delay: Option<u32>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn every_verb_has_an_example() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let name = format!("{path} {}", cmd.get_name());
            let help = cmd
                .get_after_help()
                .map(ToString::to_string)
                .unwrap_or_default();
            if !help.contains("Examples:") && cmd.get_name() != "help" {
                missing.push(name.clone());
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &name, missing);
            }
        }
        let mut missing = vec![];
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no examples: {missing:?}");
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        use clap::{CommandFactory, FromArgMatches};
        Cli::command()
            .try_get_matches_from(std::iter::once("edgeline").chain(args.iter().copied()))
            .and_then(|m| Cli::from_arg_matches(&m))
    }

    #[test]
    fn globals_go_anywhere_and_errors_name_the_argument() {
        let cli = parse(&[
            "dlq",
            "list",
            "--type",
            "task.submit",
            "--json",
            "--url",
            "http://x",
        ])
        .unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.url.as_deref(), Some("http://x"));
        let e = parse(&["dlq", "list", "--bogus"]).err().unwrap();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--bogus"), "{e}");
        let e = parse(&["dlq", "replay", "--id", "a", "--filter"])
            .err()
            .unwrap();
        assert!(e.to_string().contains("--filter"), "{e}");
        let e = parse(&["dlq", "replay"]).err().unwrap();
        assert_eq!(e.exit_code(), 2);
        let e = parse(&["dlq", "list", "--limit", "500"]).err().unwrap();
        assert!(e.to_string().contains("--limit"), "{e}");
    }

    #[test]
    fn the_token_stays_out_of_help_and_errors() {
        let e = parse(&["--token", "sekrit-token-value", "dlq", "lst"])
            .err()
            .unwrap();
        assert!(!e.to_string().contains("sekrit"), "{e}");
        let cli = parse(&["--token", "sekrit-token-value", "audit"]).unwrap();
        let shown = format!("{:?}", cli.global.token);
        assert!(!shown.contains("sekrit"), "{shown}");
    }
}
