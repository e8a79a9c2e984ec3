//! `smtp-server queue ...`: the operator's queue tool, as Postfix's `mailq`, `postqueue -f`
//! and `postsuper -d|-h|-H`.
//!
//! It works on the queue directory of a running daemon, safely: every change is made under
//! the entry's claim (the `flock` the daemon's runner takes to deliver it, see
//! `mailstore::queue`), so an entry being delivered is never changed, moved or removed; the
//! tool says so (exit 75, EX_TEMPFAIL: "being delivered now, try again") and changes
//! nothing. While the tool holds a claim, the runner skips the entry and looks again a
//! second later. So a `delete` or `hold` racing a delivery either happens before it (no
//! delivery) or is refused (the delivery goes on): mail is neither lost nor sent twice.
//!
//! - `list`: every entry, active and held (`--json`: one document, see DAEMON.md);
//! - `show ID`: the envelope and the message's header section (not the body);
//! - `flush [ID...|--domain D]`: due now, and the running daemon told to look (the queue's
//!   `wake` file, polled every second); held entries are left alone;
//! - `delete ID...|--all`, `hold ID...|--all`, `release ID...|--all`;
//! - `bounce ID...`: every pending recipient marked failed ("returned to the sender by the
//!   mail administrator"), the entry made due: the daemon's runner then sends one RFC 3464
//!   bounce with its own bounce code (never to the null sender) and removes the entry, as
//!   Postfix's `postsuper -e`.
//!
//! Exit status: 0 done; 1 an unknown id (or one in the wrong state, such as `release` of an
//! entry not on hold); 2 an error (no queue there, a file that cannot be changed, a bad
//! option); 75 an entry being delivered now. With several ids, every one is tried, each
//! failure gets one line on stderr, and the status is the worst: 2, then 1, then 75.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use mailstore::queue::{Place, Queue, QueueEntry, QueueId, RcptState, Recipient, TryClaim};
use serde_json::{json, Value};
use smtp_proto::address::{ForwardPath, ReversePath};

use crate::config::parse_duration;

/// The daemon's `--spool-dir` default (a unit test keeps the two equal).
const DEFAULT_SPOOL_DIR: &str = "/var/spool/mail/";
/// The daemon's `--queue-lifetime` default (likewise).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(5 * 86_400);
/// The most of a message `show` reads for its header section.
const HEAD_MAX: usize = 64 * 1024;

/// Exit status: done.
const EX_OK: u8 = 0;
/// Exit status: an unknown id, or an entry in the wrong state for the action.
const EX_UNKNOWN: u8 = 1;
/// Exit status: an error (no queue, I/O), as the daemon's configuration errors.
const EX_ERROR: u8 = 2;
/// Exit status: the entry is being delivered now; try again (sysexits' EX_TEMPFAIL).
const EX_TEMPFAIL: u8 = 75;

const QUEUE_HELP: &str = "\
The queue is found as the daemon finds it: --queue-dir, else <spool-dir>/.queue (give the \
same -d/--spool-dir or -q/--queue-dir as the daemon). Options go before or after the action.\n\n\
Examples:\n  \
smtp-server queue -d /var/spool/mail list\n  \
smtp-server queue list --json | jq -r '.entries[] | select(.sender == \"\") | .id'\n  \
smtp-server queue flush --domain example.net\n  \
smtp-server queue hold 1715000000.000000001.42.7\n\n\
An entry being delivered right now is never changed: the action says so and exits 75 \
(EX_TEMPFAIL); try again. Exit status: 0 done, 1 unknown id (or wrong state, e.g. release of \
an entry not on hold), 2 error, 75 being delivered.";

/// `smtp-server queue`.
#[derive(Debug, Clone, Args)]
#[command(after_help = QUEUE_HELP)]
pub struct QueueArgs {
    /// Where the queue is.
    #[command(flatten)]
    pub location: Location,
    /// Write one JSON document to standard output instead of text (see DAEMON.md).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// The options that find the queue: the daemon's own. Each is optional here so that the
/// daemon's configuration file fills what the command line leaves out ([`Location::resolve`]).
#[derive(Debug, Clone, Args)]
pub struct Location {
    /// The daemon's --config file: its spool-dir, queue-dir and queue-lifetime are used where
    /// the command line gives none.
    // Ids of their own: the daemon's options of the same names (with their defaults) live in
    // the parent command, and clap would otherwise fill these from them.
    #[arg(
        id = "queue_config",
        long = "config",
        value_name = "FILE",
        global = true
    )]
    pub config: Option<PathBuf>,
    /// The daemon's --spool-dir: the queue is <spool-dir>/.queue [default: /var/spool/mail/].
    #[arg(
        id = "queue_spool_dir",
        short = 'd',
        long = "spool-dir",
        value_name = "DIR",
        global = true
    )]
    pub spool_dir: Option<PathBuf>,
    /// The daemon's --queue-dir, if it was given one.
    #[arg(
        id = "queue_queue_dir",
        short = 'q',
        long = "queue-dir",
        value_name = "DIR",
        global = true
    )]
    pub queue_dir: Option<PathBuf>,
    /// The daemon's --queue-lifetime, to tell when entries expire [default: 5d].
    #[arg(id = "queue_queue_lifetime", long = "queue-lifetime", value_name = "DURATION",
          value_parser = parse_duration, global = true)]
    pub queue_lifetime: Option<Duration>,
}

/// The options, with the daemon's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The queue directory.
    pub queue_dir: PathBuf,
    /// The daemon's queue lifetime.
    pub lifetime: Duration,
}

impl Location {
    /// The command line's values, then the `--config` file's, then the daemon's defaults.
    pub fn resolve(&self) -> Result<Resolved, String> {
        let mut loc = self.clone();
        if let Some(path) = &self.config {
            // The daemon's own checks of the file (every key, kind and value), then its three
            // entries that find the queue.
            let entries = crate::config_file::load(path)?;
            let get = |k: &str| {
                entries
                    .iter()
                    .find(|e| e.key == k && e.given)
                    .and_then(|e| e.values.first().cloned())
            };
            if loc.spool_dir.is_none() {
                loc.spool_dir = get("spool-dir").map(PathBuf::from);
            }
            if loc.queue_dir.is_none() {
                loc.queue_dir = get("queue-dir").map(PathBuf::from);
            }
            if loc.queue_lifetime.is_none() {
                if let Some(v) = get("queue-lifetime") {
                    // Already checked by the same parser.
                    loc.queue_lifetime = Some(parse_duration(&v).map_err(|e| {
                        format!("--config: {}: queue-lifetime: {e}", path.display())
                    })?);
                }
            }
        }
        let spool = loc
            .spool_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR));
        Ok(Resolved {
            queue_dir: loc
                .queue_dir
                .clone()
                .unwrap_or_else(|| spool.join(".queue")),
            lifetime: loc.queue_lifetime.unwrap_or(DEFAULT_LIFETIME),
        })
    }
}

/// The queue tool's actions.
#[derive(Debug, Clone, Subcommand)]
pub enum Action {
    /// List the queue (as mailq): id, size, age, next attempt (or "held"), sender, and each
    /// recipient with its state and last reply.
    List,
    /// Show one entry: its envelope and the message's header section (not the body).
    Show {
        /// The queue id (as `list` shows it).
        id: String,
    },
    /// Make entries due now (all, the given ones, or those with a pending recipient in
    /// --domain); the running daemon tries them within a second or two. Held entries are
    /// left on hold.
    Flush {
        /// Queue ids [default: every entry not on hold].
        #[arg(conflicts_with = "domain")]
        ids: Vec<String>,
        /// Only entries with a pending recipient at this domain.
        #[arg(long, value_name = "DOMAIN")]
        domain: Option<String>,
    },
    /// Remove entries without delivering them and without a bounce (as postsuper -d).
    Delete(Targets),
    /// Put entries on hold: never attempted, and not expiring, until released (postsuper -h).
    Hold(Targets),
    /// Release entries from hold: due now (postsuper -H); the queue lifetime counts from
    /// arrival, so an entry held past it is returned to its sender if its next attempt fails.
    Release(Targets),
    /// Return entries to their senders now: the running daemon sends an RFC 3464 bounce for
    /// every recipient not yet delivered (none to the null sender) and removes the entry.
    Bounce {
        /// Queue ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// The entries an action applies to: ids, or all.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct Targets {
    /// Queue ids.
    pub ids: Vec<String>,
    /// Every entry (delete: active and held; hold: every active one; release: every held one).
    #[arg(long)]
    pub all: bool,
}

/// Runs the subcommand; returns the exit status (see the module doc).
pub fn run(args: &QueueArgs) -> ExitCode {
    // Read while the process has one thread (the time crate refuses otherwise).
    let offset = time::UtcOffset::current_local_offset().unwrap_or(time::UtcOffset::UTC);
    let loc = match args.location.resolve() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("smtp-server queue: {e}");
            return ExitCode::from(EX_ERROR);
        }
    };
    // What the queue library reports (an entry moved to corrupt/, a stray file, an entry
    // that cannot be read) goes to stderr: the admin running the tool is the one to tell.
    // Escaped and in the daemon's key=value form, without the time.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .fmt_fields(crate::logfmt::KeyValue)
        .with_writer(crate::logsafe::LogWriter {
            target: crate::logsafe::Target::Stderr,
            json: false,
        })
        .try_init();
    if let Err(e) = act_as_owner(&loc.queue_dir) {
        eprintln!("smtp-server queue: {e}");
        return ExitCode::from(EX_ERROR);
    }
    let queue = match open(&loc.queue_dir) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("smtp-server queue: {e}");
            return ExitCode::from(EX_ERROR);
        }
    };
    let tool = Tool {
        queue,
        corrupt_dir: loc.queue_dir.join("corrupt"),
        lifetime: loc.lifetime,
        now: SystemTime::now(),
        offset,
        json: args.json,
    };
    let mut out = String::new();
    let code = match &args.action {
        Action::List => tool.list(&mut out),
        Action::Show { id } => tool.show(id, &mut out),
        Action::Flush { ids, domain } => tool.flush(ids, domain.as_deref(), &mut out),
        Action::Delete(t) => tool.apply(Op::Delete, t, &mut out),
        Action::Hold(t) => tool.apply(Op::Hold, t, &mut out),
        Action::Release(t) => tool.apply(Op::Release, t, &mut out),
        Action::Bounce { ids } => tool.apply(
            Op::Bounce,
            &Targets {
                ids: ids.clone(),
                all: false,
            },
            &mut out,
        ),
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::from(code),
        // A reader that went away (`| head`) is not worth a message.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(code),
        Err(e) => {
            eprintln!("smtp-server queue: cannot write the output: {e}");
            ExitCode::from(EX_ERROR)
        }
    }
}

/// Run as root (`sudo smtp-server queue ...`), the tool becomes the queue directory's owner
/// (its user and group, no supplementary groups) before it touches anything, as Postfix's
/// postsuper keeps the queue's ownership: an entry it rewrote as root (mode 0600) would be
/// unreadable for a daemon running as another user, and never tried again. Must run while
/// the process has one thread (the identity is set for the calling thread only).
fn act_as_owner(dir: &std::path::Path) -> Result<(), String> {
    use rustix::process::{Gid, Uid};
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    // A missing directory is open()'s to explain.
    let Ok(m) = std::fs::metadata(dir) else {
        return Ok(());
    };
    if m.uid() == 0 {
        return Ok(());
    }
    let (uid, gid) = (Uid::from_raw(m.uid()), Gid::from_raw(m.gid()));
    rustix::thread::set_thread_groups(&[])
        .and_then(|()| rustix::thread::set_thread_res_gid(gid, gid, gid))
        .and_then(|()| rustix::thread::set_thread_res_uid(uid, uid, uid))
        .map_err(|e| {
            format!(
                "{}: cannot become its owner (uid {}, gid {}): {e}",
                dir.display(),
                m.uid(),
                m.gid()
            )
        })
}

/// Opens an existing queue (never creates one where the daemon has none: a mistyped
/// directory is an error, exit 2).
fn open(dir: &std::path::Path) -> Result<Queue, String> {
    match std::fs::metadata(dir.join("entries")) {
        Ok(m) if m.is_dir() => {}
        Ok(_) | Err(_) => {
            return Err(format!(
                "{}: no queue there (give the daemon's -d/--spool-dir or -q/--queue-dir)",
                dir.display()
            ))
        }
    }
    Queue::open(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

struct Tool {
    queue: Queue,
    /// Where the queue sets damaged entries aside.
    corrupt_dir: std::path::PathBuf,
    lifetime: Duration,
    now: SystemTime,
    offset: time::UtcOffset,
    json: bool,
}

/// What one action did to one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Done; the text says what (`deleted`, `on hold`, ...).
    Done(&'static str),
    /// Being delivered now.
    Busy,
    /// No such entry.
    Unknown,
    /// Not in a state for the action (the text says why).
    Wrong(&'static str),
    /// An error.
    Failed(String),
}

impl Outcome {
    fn code(&self) -> u8 {
        match self {
            Outcome::Done(_) => EX_OK,
            Outcome::Busy => EX_TEMPFAIL,
            Outcome::Unknown | Outcome::Wrong(_) => EX_UNKNOWN,
            Outcome::Failed(_) => EX_ERROR,
        }
    }

    fn key(&self) -> &'static str {
        match self {
            Outcome::Done(_) => "done",
            Outcome::Busy => "busy",
            Outcome::Unknown => "unknown",
            Outcome::Wrong(_) => "wrong-state",
            Outcome::Failed(_) => "error",
        }
    }

    fn text(&self) -> String {
        match self {
            Outcome::Done(t) => (*t).to_owned(),
            Outcome::Busy => "being delivered now, try again".into(),
            Outcome::Unknown => "no such queue entry".into(),
            Outcome::Wrong(t) => (*t).to_owned(),
            Outcome::Failed(e) => e.clone(),
        }
    }
}

/// The worst of several exit statuses: error, then unknown, then busy.
fn worst(codes: impl IntoIterator<Item = u8>) -> u8 {
    let rank = |c: u8| match c {
        EX_ERROR => 3,
        EX_UNKNOWN => 2,
        EX_TEMPFAIL => 1,
        _ => 0,
    };
    codes.into_iter().max_by_key(|c| rank(*c)).unwrap_or(EX_OK)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Delete,
    Hold,
    Release,
    Bounce,
    Flush,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Delete => "delete",
            Op::Hold => "hold",
            Op::Release => "release",
            Op::Bounce => "bounce",
            Op::Flush => "flush",
        }
    }
}

/// The diagnostic a `bounce` gives each recipient not yet delivered.
pub const RETURNED: &str = "message returned to the sender by the mail administrator";

impl Tool {
    fn list(&self, out: &mut String) -> u8 {
        let mut all = match self.queue.list() {
            Ok(v) => v
                .into_iter()
                .map(|(id, e)| (id, Place::Active, e))
                .collect::<Vec<_>>(),
            Err(e) => return self.error(&e.to_string()),
        };
        match self.queue.list_held() {
            Ok(v) => all.extend(v.into_iter().map(|(id, e)| (id, Place::Held, e))),
            Err(e) => return self.error(&e.to_string()),
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        if self.json {
            let entries: Vec<Value> = all
                .iter()
                .map(|(id, place, e)| self.entry_json(id, *place, e))
                .collect();
            push_json(out, &json!({ "entries": entries }));
            return EX_OK;
        }
        if all.is_empty() {
            out.push_str("Mail queue is empty\n");
            self.corrupt_note(out);
            return EX_OK;
        }
        let width = all
            .iter()
            .map(|(id, _, _)| id.as_str().len())
            .max()
            .unwrap_or(8);
        // When each entry goes next: on hold, being delivered now (its claim is held, as
        // Postfix's mailq marks active mail), due, or a time.
        let nexts: Vec<String> = all
            .iter()
            .map(|(id, place, e)| match place {
                Place::Held => "held".to_owned(),
                _ if self.queue.is_busy(id) => "being delivered now".to_owned(),
                _ if e.next_attempt <= self.now => format!("{} due", self.local(e.next_attempt)),
                _ => self.local(e.next_attempt),
            })
            .collect();
        let next_width = nexts.iter().map(String::len).max().unwrap_or(0).max(12);
        let _ = writeln!(
            out,
            "{:<width$}  {:>9}  {:>6}  {:<next_width$}  SENDER",
            "QUEUE ID", "SIZE", "AGE", "NEXT ATTEMPT"
        );
        let (mut bytes, mut held, mut expired) = (0u64, 0, 0);
        for ((id, place, e), next) in all.iter().zip(&nexts) {
            let size = self.size(id);
            bytes = bytes.saturating_add(size.unwrap_or(0));
            if *place == Place::Held {
                held += 1;
            }
            let _ = write!(
                out,
                "{:<width$}  {:>9}  {:>6}  {:<next_width$}  {}",
                id.as_str(),
                size.map_or("?".into(), |s| s.to_string()),
                age(self.now, e.created),
                next,
                safe(&e.envelope.from.to_string())
            );
            if *place == Place::Active && self.expired(e) {
                expired += 1;
                out.push_str("  [expired: returned at its next attempt]");
            }
            out.push('\n');
            if let Some(err) = &e.last_error {
                let _ = writeln!(out, "    last error: {}", safe(err));
            }
            for (r, st) in e.recipients() {
                let address = address_text(&r.path);
                let (state, reply) = rcpt_state(st, &address, e.last_error.as_deref());
                let _ = write!(out, "    {state:<9}  {}", safe(&address));
                if let Some(reply) = reply {
                    let _ = write!(out, "  ({})", safe(&reply));
                }
                out.push('\n');
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "-- {} {}, {bytes} bytes ({held} held, {expired} expired)",
            all.len(),
            if all.len() == 1 { "entry" } else { "entries" }
        );
        self.corrupt_note(out);
        EX_OK
    }

    /// A line about the damaged entries set aside in `corrupt/`, if there are any: they are
    /// not delivered, and `list` is where an admin looks.
    fn corrupt_note(&self, out: &mut String) {
        let n = std::fs::read_dir(&self.corrupt_dir).map_or(0, |d| d.count());
        if n > 0 {
            let _ = writeln!(
                out,
                "-- {n} damaged {} set aside in {} (not delivered; the log says why)",
                if n == 1 { "entry" } else { "entries" },
                safe(&self.corrupt_dir.display().to_string())
            );
        }
    }

    fn show(&self, id: &str, out: &mut String) -> u8 {
        let Ok(qid) = id.parse::<QueueId>() else {
            return self.show_failure(id, &Outcome::Unknown);
        };
        let (place, e) = match self.queue.find(&qid) {
            Ok(Some(found)) => found,
            Ok(None) => return self.show_failure(id, &Outcome::Unknown),
            Err(e) => return self.error(&e.to_string()),
        };
        let head = match self.head(&qid) {
            Ok(h) => h,
            Err(e) => return self.error(&e),
        };
        if self.json {
            let mut v = self.entry_json(&qid, place, &e);
            v["headers"] = Value::String(String::from_utf8_lossy(&head).into_owned());
            push_json(out, &v);
            return EX_OK;
        }
        let mut field = |name: &str, value: &str| {
            let _ = writeln!(out, "{name:<14}{value}");
        };
        field("Queue ID:", qid.as_str());
        field(
            "State:",
            if place == Place::Held {
                "held (not attempted until released)"
            } else {
                "queued"
            },
        );
        field(
            "Size:",
            &self.size(&qid).map_or("?".into(), |s| format!("{s} bytes")),
        );
        field(
            "Arrival:",
            &format!(
                "{} ({} ago)",
                self.local(e.created),
                age(self.now, e.created)
            ),
        );
        field("Attempts:", &e.attempts.to_string());
        match place {
            Place::Held => field("Next attempt:", "held"),
            _ => field("Next attempt:", &self.local(e.next_attempt)),
        }
        let expires = crate::relay::add_saturating(e.created, self.lifetime);
        match place {
            Place::Held => field("Expires:", "not while held"),
            _ if self.expired(&e) => field(
                "Expires:",
                &format!(
                    "{} (expired: returned to the sender at its next attempt)",
                    self.local(expires)
                ),
            ),
            _ => field("Expires:", &self.local(expires)),
        }
        if let Some(err) = &e.last_error {
            field("Last error:", &safe(err));
        }
        field("Sender:", &safe(&e.envelope.from.to_string()));
        if let Some(ret) = &e.envelope.ret {
            field("RET:", ret.as_str());
        }
        if let Some(envid) = &e.envelope.envid {
            field("ENVID:", &safe(&envid.decode()));
        }
        for (r, st) in e.recipients() {
            let address = address_text(&r.path);
            let (state, reply) = rcpt_state(st, &address, e.last_error.as_deref());
            let mut line = format!("{}  {state}", safe(&angle(&address)));
            if let Some(reply) = reply {
                let _ = write!(line, "  ({})", safe(&reply));
            }
            if let Some(n) = &r.notify {
                let _ = write!(line, "  NOTIFY={n}");
            }
            if let Some(o) = orcpt_text(r) {
                let _ = write!(line, "  ORCPT={}", safe(&o));
            }
            field("Recipient:", &line);
        }
        out.push('\n');
        for line in String::from_utf8_lossy(&head).split_inclusive('\n') {
            let line = line.strip_suffix('\n').unwrap_or(line);
            let line = line.strip_suffix('\r').unwrap_or(line);
            out.push_str(&safe_keep_tabs(line));
            out.push('\n');
        }
        EX_OK
    }

    fn flush(&self, ids: &[String], domain: Option<&str>, out: &mut String) -> u8 {
        if !ids.is_empty() {
            return self.apply(
                Op::Flush,
                &Targets {
                    ids: ids.to_vec(),
                    all: false,
                },
                out,
            );
        }
        let entries = match self.queue.list() {
            Ok(v) => v,
            Err(e) => return self.error(&e.to_string()),
        };
        let domain = domain.map(|d| d.trim_end_matches('.').to_ascii_lowercase());
        let chosen: Vec<QueueId> = entries
            .into_iter()
            .filter(|(_, e)| match &domain {
                None => true,
                Some(d) => e.recipients().any(|(r, st)| {
                    *st == RcptState::Pending
                        && matches!(&r.path, ForwardPath::Mailbox(m)
                            if m.domain().to_string().trim_end_matches('.').eq_ignore_ascii_case(d))
                }),
            })
            .map(|(id, _)| id)
            .collect();
        if chosen.is_empty() && !self.json {
            // Nothing to do is no failure (as postqueue -s), but say so.
            let held = self.queue.list_held().map_or(0, |h| h.len());
            match &domain {
                Some(d) => {
                    let _ = writeln!(out, "no queued recipient in {}", safe(d));
                }
                None if held > 0 => {
                    let _ = writeln!(
                        out,
                        "nothing to flush ({held} on hold: release them to send them)"
                    );
                }
                None => out.push_str("Mail queue is empty\n"),
            }
            return EX_OK;
        }
        // In bulk, an entry being delivered is not an error: it is being tried now, which
        // is what was asked; nor one that was listed and is gone (delivered meanwhile: the
        // runner takes new mail at once, so on a busy queue entries come and go quickly).
        let results: Vec<(String, Outcome)> = chosen
            .iter()
            .map(|id| {
                let o = match self.change(Op::Flush, id) {
                    Outcome::Busy => Outcome::Done("being delivered now"),
                    Outcome::Unknown => Outcome::Done("finished meanwhile"),
                    o => o,
                };
                (id.to_string(), o)
            })
            .collect();
        self.report(Op::Flush, &results, out)
    }

    /// Applies `op` to each target; reports each entry.
    fn apply(&self, op: Op, t: &Targets, out: &mut String) -> u8 {
        let ids: Vec<String> = if t.all {
            let listed = match op {
                Op::Release => self.queue.list_held(),
                Op::Delete => self.queue.list().and_then(|mut a| {
                    a.extend(self.queue.list_held()?);
                    Ok(a)
                }),
                _ => self.queue.list(),
            };
            match listed {
                Ok(v) => v.into_iter().map(|(id, _)| id.to_string()).collect(),
                Err(e) => return self.error(&e.to_string()),
            }
        } else {
            t.ids.clone()
        };
        let results: Vec<(String, Outcome)> = ids
            .into_iter()
            .map(|id| {
                let o = match id.parse::<QueueId>() {
                    Ok(qid) => self.change(op, &qid),
                    Err(_) => Outcome::Unknown,
                };
                (id, o)
            })
            .collect();
        self.report(op, &results, out)
    }

    /// One entry, under its claim.
    fn change(&self, op: Op, id: &QueueId) -> Outcome {
        let mut claim = match self.queue.try_claim(id) {
            Ok(TryClaim::Claimed(c)) => c,
            Ok(TryClaim::Busy) => return Outcome::Busy,
            Ok(TryClaim::Gone) => return Outcome::Unknown,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let held = claim.place() == Place::Held;
        let r = match op {
            Op::Delete => claim.finish().map(|()| "deleted"),
            Op::Hold if held => Ok("already on hold"),
            Op::Hold => claim.hold().map(|()| "on hold"),
            Op::Release if !held => return Outcome::Wrong("not on hold"),
            Op::Release => claim.release(self.now).map(|()| "released, due now"),
            Op::Flush if held => {
                return Outcome::Wrong("on hold, not flushed (release it first)");
            }
            Op::Flush => claim.set_next_attempt(self.now).map(|()| "due now"),
            Op::Bounce => {
                let e = claim.entry().clone();
                // Each recipient's own last reason (the bounce shows at most
                // bounce::DIAG_MAX octets of it).
                let reply = |address: &str| match &e.last_error {
                    Some(last) => format!("{RETURNED}; last error: {}", reply_for(address, last)),
                    None => RETURNED.to_owned(),
                };
                let states: Vec<(usize, RcptState)> = e
                    .recipients()
                    .enumerate()
                    .filter(|(_, (_, st))| **st == RcptState::Pending)
                    .map(|(i, (r, _))| {
                        (
                            i,
                            RcptState::Refused {
                                reply: reply(&address_text(&r.path)),
                                status: Some("5.0.0".into()),
                                remote_mta: None,
                            },
                        )
                    })
                    .collect();
                claim
                    .record_many(states)
                    .and_then(|()| claim.release(self.now))
                    .map(|()| "returned to the sender (the daemon sends the bounce)")
            }
        };
        match r {
            Ok(text) => Outcome::Done(text),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    /// Writes the per-entry results, wakes the daemon when something became due, and
    /// returns the exit status.
    fn report(&self, op: Op, results: &[(String, Outcome)], out: &mut String) -> u8 {
        let woke_needed = matches!(op, Op::Flush | Op::Release | Op::Bounce)
            && results.iter().any(|(_, o)| matches!(o, Outcome::Done(_)));
        let mut wake_error = None;
        if woke_needed {
            if let Err(e) = self.queue.wake() {
                wake_error = Some(format!(
                    "cannot tell the daemon (it will see the change at its next scan): {e}"
                ));
            }
        }
        if self.json {
            let entries: Vec<Value> = results
                .iter()
                .map(|(id, o)| json!({ "id": id, "result": o.key(), "message": o.text() }))
                .collect();
            push_json(out, &json!({ "action": op.name(), "entries": entries }));
        } else {
            for (id, o) in results {
                match o {
                    Outcome::Done(t) => {
                        let _ = writeln!(out, "{}: {t}", safe(id));
                    }
                    other => eprintln!("smtp-server queue: {}: {}", safe(id), safe(&other.text())),
                }
            }
        }
        if let Some(e) = wake_error {
            eprintln!("smtp-server queue: {}", safe(&e));
        }
        // For the daemon's log (see Queue::note): what was changed, by whom.
        let uid = rustix::process::getuid().as_raw();
        for (id, o) in results {
            if let Outcome::Done(t) = o {
                let note = format!(
                    "action={} queue_id={} result={} uid={uid}",
                    op.name(),
                    crate::logfmt::Quoted(id),
                    crate::logfmt::Quoted(t)
                );
                if let Err(e) = self.queue.note(&note) {
                    eprintln!("smtp-server queue: not noted for the daemon's log: {e}");
                    break;
                }
            }
        }
        worst(results.iter().map(|(_, o)| o.code()))
    }

    /// A failure of `show`.
    fn show_failure(&self, id: &str, o: &Outcome) -> u8 {
        eprintln!("smtp-server queue show: {}: {}", safe(id), o.text());
        o.code()
    }

    fn error(&self, e: &str) -> u8 {
        eprintln!("smtp-server queue: {}", safe(e));
        EX_ERROR
    }

    fn expired(&self, e: &QueueEntry) -> bool {
        crate::relay::add_saturating(e.created, self.lifetime) <= self.now
    }

    /// The queued message's size (with our `Received:` field; the envelope not counted).
    fn size(&self, id: &QueueId) -> Option<u64> {
        use std::io::Seek;
        let mut f = self.queue.read_body_any(id).ok()?;
        let start = f.stream_position().ok()?;
        let len = f.metadata().ok()?.len();
        Some(len.saturating_sub(start))
    }

    /// The message's header section (at most [`HEAD_MAX`] octets).
    fn head(&self, id: &QueueId) -> Result<Vec<u8>, String> {
        let f = self.queue.read_body_any(id).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        f.take(HEAD_MAX as u64)
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read the message of {id}: {e}"))?;
        let n = crate::headers::header_section(&buf, HEAD_MAX).len();
        buf.truncate(n);
        Ok(buf)
    }

    /// A time in the local time zone, `2025-05-09 14:03:00 +0200`; `never` past year 9999.
    fn local(&self, t: SystemTime) -> String {
        let fmt = time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]"
        );
        odt(t)
            .map(|d| d.to_offset(self.offset))
            .and_then(|d| d.format(&fmt).ok())
            .unwrap_or_else(|| "never".into())
    }

    fn entry_json(&self, id: &QueueId, place: Place, e: &QueueEntry) -> Value {
        let held = place == Place::Held;
        let expires = crate::relay::add_saturating(e.created, self.lifetime);
        // The JSON keeps the text forms the queue used to store: addresses without angle
        // brackets (`""` for the null sender), ENVID and the ORCPT address decoded.
        let recipients: Vec<Value> = e
            .recipients()
            .map(|(r, st)| {
                let address = address_text(&r.path);
                let (state, reply) = rcpt_state(st, &address, e.last_error.as_deref());
                json!({
                    "address": address,
                    "state": state,
                    "reply": reply,
                    "notify": r.notify.map(|n| n.to_string()),
                    "orcpt": orcpt_text(r),
                })
            })
            .collect();
        let sender = match &e.envelope.from {
            ReversePath::Null => String::new(),
            ReversePath::Mailbox(m) => m.to_string(),
        };
        json!({
            "id": id.as_str(),
            "state": if held {
                "held"
            } else if self.queue.is_busy(id) {
                "delivering"
            } else {
                "queued"
            },
            "size": self.size(id),
            "created": rfc3339(e.created),
            "age_seconds": self.now.duration_since(e.created).map_or(0, |d| d.as_secs()),
            "attempts": e.attempts,
            "next_attempt": if held { Value::Null } else { rfc3339(e.next_attempt) },
            "expires": if held { Value::Null } else { rfc3339(expires) },
            "expired": !held && self.expired(e),
            "last_error": e.last_error,
            "sender": sender,
            "ret": e.envelope.ret.map(|r| r.as_str()),
            "envid": e.envelope.envid.as_ref().map(|x| x.decode().into_owned()),
            "recipients": recipients,
        })
    }
}

fn odt(t: SystemTime) -> Option<time::OffsetDateTime> {
    let secs = i64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()?;
    time::OffsetDateTime::from_unix_timestamp(secs).ok()
}

/// RFC 3339 in UTC (`2025-05-09T12:03:00Z`), or null past year 9999 ("never").
fn rfc3339(t: SystemTime) -> Value {
    odt(t)
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .map_or(Value::Null, Value::String)
}

/// The state's name and the recipient's last reply: the refusal for a failed one; for a
/// pending one the entry's last error, narrowed to the part that names the recipient when it
/// names it (the runner writes `reason (for a, b); other reason (for c)`).
fn rcpt_state(
    state: &RcptState,
    address: &str,
    last_error: Option<&str>,
) -> (&'static str, Option<String>) {
    match state {
        RcptState::Pending => ("pending", last_error.map(|e| reply_for(address, e))),
        RcptState::Delivered => ("delivered", None),
        RcptState::Failed { reply } => ("failed", Some(reply.clone())),
        RcptState::Refused { reply, .. } => ("refused", Some(reply.clone())),
        _ => ("unknown", None),
    }
}

/// The part of `last_error` about `address` (see [`rcpt_state`]), or all of it.
///
/// `last_error` is the relay's summary: `reason (for a, b, c and 2 more); reason (for d)`,
/// reasons for no recipient last. A reason may itself contain `; ` (it is the remote
/// server's text): the pieces before a `(for ...)` list belong to its reason.
fn reply_for(address: &str, last_error: &str) -> String {
    let mut start = 0;
    let mut from = 0;
    while from <= last_error.len() {
        let end = last_error[from..]
            .find("; ")
            .map_or(last_error.len(), |i| from + i);
        let part = &last_error[start..end];
        if let Some((why, names)) = part.strip_suffix(')').and_then(|p| p.rsplit_once(" (for ")) {
            let names = names.split(" and ").next().unwrap_or(names);
            if names.split(", ").any(|n| n == address) {
                return why.to_owned();
            }
            start = end + 2;
        }
        from = end + 2;
    }
    last_error.to_owned()
}

/// `<address>`, `<>` for the null sender.
fn angle(a: &str) -> String {
    format!("<{a}>")
}

/// A recipient as the tool shows it: `bob@example.net`, or `postmaster`.
fn address_text(path: &ForwardPath) -> String {
    match path {
        ForwardPath::Postmaster => "postmaster".to_owned(),
        ForwardPath::Mailbox(m) => m.to_string(),
    }
}

/// `ORCPT` as the tool shows it: `type;address`, the address decoded.
fn orcpt_text(r: &Recipient) -> Option<String> {
    r.orcpt
        .as_ref()
        .map(|o| format!("{};{}", o.addr_type(), o.addr().decode()))
}

/// Text from the queue made safe for a terminal (see `logsafe`).
fn safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    crate::logsafe::escape_into(&mut out, s);
    out
}

/// As [`safe`], keeping tabs (folded header lines).
fn safe_keep_tabs(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, part) in s.split('\t').enumerate() {
        if i > 0 {
            out.push('\t');
        }
        crate::logsafe::escape_into(&mut out, part);
    }
    out
}

/// Appends `v` as one line of JSON, with every character `logsafe` finds unsafe for a
/// terminal written as a `\u` escape (serde_json escapes only the C0 controls; C1 controls,
/// DEL and the bidirectional controls would reach the terminal raw). They only occur inside
/// strings, where the escape means the same character.
fn push_json(out: &mut String, v: &Value) {
    let text = v.to_string();
    for c in text.chars() {
        if crate::logsafe::is_unsafe(c) {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    out.push('\n');
}

/// `45s`, `12m`, `3h12m`, `2d4h`.
fn age(now: SystemTime, then: SystemTime) -> String {
    let s = now.duration_since(then).map_or(0, |d| d.as_secs());
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h{}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{}h", s / 86_400, s / 3600 % 24),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::{Cli, Command};
    use clap::Parser;

    #[test]
    fn defaults_follow_the_daemon() {
        let c = Cli::try_parse_from(["smtp-server"]).unwrap().daemon;
        let Some(Command::Queue(q)) = Cli::try_parse_from(["smtp-server", "queue", "list"])
            .unwrap()
            .command
        else {
            panic!("queue subcommand expected")
        };
        let r = q.location.resolve().unwrap();
        assert_eq!(r.queue_dir, c.queue_dir());
        assert_eq!(r.lifetime, c.queue_lifetime);
        assert!(!q.json);
    }

    #[test]
    fn options_before_or_after_the_action() {
        for args in [
            &[
                "smtp-server",
                "queue",
                "-d",
                "/s",
                "--json",
                "flush",
                "--domain",
                "x.test",
            ][..],
            &[
                "smtp-server",
                "queue",
                "flush",
                "--domain",
                "x.test",
                "-d",
                "/s",
                "--json",
            ],
        ] {
            let Some(Command::Queue(q)) = Cli::try_parse_from(args).unwrap().command else {
                panic!()
            };
            assert_eq!(
                q.location.resolve().unwrap().queue_dir,
                PathBuf::from("/s/.queue")
            );
            assert!(q.json);
            assert!(
                matches!(q.action, Action::Flush { ref domain, .. } if domain.as_deref() == Some("x.test"))
            );
        }
        let q = |a: &[&str]| Cli::try_parse_from(a).map(|c| c.command);
        assert!(
            q(&["smtp-server", "queue", "delete"]).is_err(),
            "delete needs ids or --all"
        );
        assert!(q(&["smtp-server", "queue", "delete", "a", "--all"]).is_err());
        assert!(q(&["smtp-server", "queue", "delete", "--all"]).is_ok());
        assert!(q(&["smtp-server", "queue", "bounce"]).is_err());
        assert!(q(&["smtp-server", "queue", "flush", "a", "--domain", "d"]).is_err());
        assert!(q(&["smtp-server", "queue", "-q", "/q", "hold", "a", "b"]).is_ok());
    }

    #[test]
    fn replies_per_recipient() {
        let e = "451 4.3.0 not now (for a@x.test, b@x.test); 421 busy; try later (for c@y.test and 2 more); 454 dns";
        assert_eq!(reply_for("b@x.test", e), "451 4.3.0 not now");
        assert_eq!(reply_for("c@y.test", e), "421 busy; try later");
        assert_eq!(reply_for("z@y.test", e), e);
        assert_eq!(reply_for("x", "451 x"), "451 x");
        assert_eq!(reply_for("x", ""), "");
        assert_eq!(worst([EX_OK, EX_TEMPFAIL, EX_UNKNOWN]), EX_UNKNOWN);
        assert_eq!(worst([EX_TEMPFAIL, EX_ERROR, EX_UNKNOWN]), EX_ERROR);
        assert_eq!(worst([EX_OK, EX_TEMPFAIL]), EX_TEMPFAIL);
        assert_eq!(worst([]), EX_OK);
    }

    #[test]
    fn output_is_terminal_safe() {
        let mut out = String::new();
        push_json(&mut out, &json!({"s": "a\u{1b}[2J\u{202e}b\u{85}\u{7f}"}));
        assert_eq!(out, "{\"s\":\"a\\u001b[2J\\u202eb\\u0085\\u007f\"}\n");
        let back: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back["s"], "a\u{1b}[2J\u{202e}b\u{85}\u{7f}");
        assert_eq!(safe("x\r\ny\u{1b}"), "x\\r\\ny\\x1b");
        assert_eq!(safe_keep_tabs("\tfolded\u{7}"), "\tfolded\\x07");
        assert_eq!(
            age(UNIX_EPOCH + Duration::from_secs(90_061), UNIX_EPOCH),
            "1d1h"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1)),
            "1970-01-01T00:00:01Z"
        );
        assert_eq!(
            rfc3339(crate::relay::add_saturating(UNIX_EPOCH, Duration::MAX)),
            Value::Null
        );
    }
}
