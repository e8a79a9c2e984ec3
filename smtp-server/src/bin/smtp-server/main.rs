//! The `smtp-server` mail daemon: stores mail for its own domains and relays mail that local
//! clients send to the rest of the world. See `DAEMON.md` beside `Cargo.toml` for how to run it.
//!
//! Modules: [`config`] (the command line), [`policy`] (local domains, users, relay rules),
//! [`headers`] (trace headers), [`local`] (storing a message), [`relay`] (the queue runner),
//! [`relay_auth`] (the relay host's password file), [`bounce`] (RFC 3464 reports), [`listen`]
//! (sockets and connection classes), [`logsafe`] (log lines escaped), [`auth`] (users for
//! SMTP AUTH), [`dkim`] (signing outbound mail), [`inbound_auth`] (SPF, DKIM, DMARC and ARC
//! verdicts on mail from the public listener), [`cmd`] (subcommands such as
//! `smtp-server passwd`).

mod auth;
mod bounce;
mod cmd;
mod config;
mod config_file;
mod dkim;
mod from_field;
mod headers;
mod inbound_auth;
mod listen;
mod local;
mod logfmt;
mod logsafe;
mod metrics;
mod policy;
mod relay;
mod relay_auth;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use clap::Parser;
use mailstore::queue::{Queue, QueueEntry};
use mailstore::{MailboxName, Store};
use smtp_proto::address::{ForwardPath, ReversePath};
use smtp_proto::envelope::Recipient as QRecipient;
use smtp_proto::param::{MailParams, Notify, Orcpt, RcptParams};
use smtp_proto::Refusal;
use smtp_server::handler::{
    BodyError, BodyStream, ConnectionInfo, DataOutcome, Envelope, Handler, SessionHandler, TlsInfo,
};
use smtp_server::{AuthFailure, Credentials};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::config::{Cli, Command, Config, Format, LogFormat};
use crate::headers::{Protocol, Received, MAX_HOPS};
use crate::listen::{Configured, Kind, Plan};
use crate::local::Incoming;
use crate::policy::{Destinations, Policy, RcptRefusal, Users};
use crate::relay::Relay;

/// A configuration error: one line for stderr, exit code 2.
struct Fatal(String);

fn fatal(option: &str, what: impl std::fmt::Display) -> Fatal {
    Fatal(format!("{option}: {what}"))
}

fn main() -> ExitCode {
    let (argv, file_keys) = match config_file::expand(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("smtp-server: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(&argv);
    match &cli.command {
        Some(Command::Passwd(args)) => return cmd::passwd::run(args),
        Some(Command::Queue(args)) => return cmd::queue::run(args),
        Some(Command::CheckConfig(cfg)) => return check_config(cfg, &argv, &file_keys),
        Some(Command::DkimKeygen(args)) => return cmd::dkim::keygen(args),
        Some(Command::DnsRecords(args)) => return cmd::dkim::records(args),
        None => {}
    }
    let cfg = cli.daemon;
    let log_to_file = cfg.log_file.is_some();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("smtp-server: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal(msg)) => {
            eprintln!("smtp-server: {msg}");
            if log_to_file {
                error!("{msg}");
            }
            ExitCode::from(2)
        }
    }
}

/// Everything the sessions share.
struct Daemon {
    /// How connections are classified (see [`listen`]).
    plan: Arc<Plan>,
    hostname: String,
    policy: Arc<Policy>,
    store: Arc<dyn Store>,
    queue: Queue,
    relay_notify: Arc<relay::Handoff>,
    /// Where submission users come from (`--passwd-file`, `--auth-dovecot`).
    auth: Option<Arc<auth::Authenticator>>,
    /// DKIM signing keys (`--dkim-key`).
    dkim: Arc<dkim::Keys>,
    /// The sender checks of mail from the public listener (none with `--no-email-auth`).
    verifier: Option<Arc<inbound_auth::Verifier>>,
    /// Local mail goes to the LMTP server (`--lmtp`), through the queue.
    lmtp: bool,
    /// Where mail is stored and queued, one directory per file system (`--queue-dir` may be
    /// on another than the spool), for the free-space check at MAIL.
    space_dirs: Vec<PathBuf>,
    /// The space the spool's file system must have free for a transaction to start:
    /// [`min_free_space`].
    min_free: u64,
}

/// A transaction is refused at MAIL with `452 4.3.1` when the spool's file system has less
/// than 1.5 times the largest message free (25 MiB when there is no limit), or less than a
/// declared `SIZE=`, as Postfix's `queue_minfree` check does: a full disk would otherwise be
/// found only at the end of the data (`451`), after the client sent it all, and an
/// unauthenticated sender could fill the spool's file system for everything else on it.
fn min_free_space(max_message_size: u64) -> u64 {
    let largest = if max_message_size == 0 {
        25 << 20
    } else {
        max_message_size
    };
    largest.saturating_add(largest / 2)
}

/// The spool, and the queue when it is on another file system: each is checked at MAIL.
fn space_dirs(spool: &Path, queue: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = |d: &Path| std::fs::metadata(d).map(|m| m.dev()).ok();
    let mut dirs = vec![spool.to_owned()];
    if dev(spool).is_none() || dev(spool) != dev(queue) {
        dirs.push(queue.to_owned());
    }
    dirs
}

/// Octets free for an unprivileged user on the file system of `dir`; `None` when unknown
/// (the check is then skipped: the store's own errors still answer `451`).
fn free_space(dir: &std::path::Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Loads `--dkim-key`: any unreadable or invalid key stops the daemon.
fn load_dkim_keys(cfg: &Config) -> Result<dkim::Keys, Fatal> {
    let option = "--dkim-key";
    let mut keys = dkim::Keys::default();
    for spec in &cfg.dkim_keys {
        let (key, exposed) = dkim::load_key(&spec.path).map_err(|e| fatal(option, e))?;
        if exposed {
            warn!(file = %spec.path.display(),
                  "{option}: the key file may be read by its group or by others (chmod 600)");
        }
        keys.add(spec, key).map_err(|e| fatal(option, e))?;
    }
    if !keys.is_empty() {
        info!("DKIM signing keys: {}", keys.describe());
    }
    Ok(keys)
}

/// `--log-level` as a tracing filter.
fn log_filter(cfg: &Config) -> Result<tracing_subscriber::EnvFilter, Fatal> {
    tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
        .map_err(|e| fatal("--log-level", format!("{:?}: {e}", cfg.log_level)))
}

/// What `check-config` can tell of `--log-file`, `--spool-dir` and `--queue-dir` without
/// creating anything: an existing log file opens for appending, a new one's directory exists
/// and is writable; the spool and the queue, if they exist, are writable directories, else
/// the nearest existing directory above each is. (Run as root, "writable" is what root may do: permission is not a test then.)
fn check_paths(cfg: &Config) -> Result<(), Fatal> {
    use rustix::fs::{access, Access};
    let writable_dir = |d: &std::path::Path| -> Result<(), String> {
        match std::fs::metadata(d) {
            Ok(m) if !m.is_dir() => Err("not a directory".to_owned()),
            Ok(_) => access(d, Access::WRITE_OK | Access::EXEC_OK)
                .map_err(|e| std::io::Error::from(e).to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    if let Some(path) = &cfg.log_file {
        let exists = std::fs::symlink_metadata(path).is_ok();
        let r = if exists {
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map(drop)
                .map_err(|e| format!("{}: {e}", path.display()))
        } else {
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            writable_dir(parent).map_err(|e| format!("{}: {e}", path.display()))
        };
        r.map_err(|e| fatal("--log-file", e))?;
    }
    // The spool and the queue, or the nearest directory above each that exists: the daemon
    // makes the rest.
    let queue = cfg.queue_dir();
    for (option, dir) in [("--spool-dir", &cfg.spool_dir), ("--queue-dir", &queue)] {
        let d = dir
            .ancestors()
            .find(|d| d.as_os_str().is_empty() || d.exists())
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        writable_dir(d).map_err(|e| fatal(option, format!("{}: {e}", d.display())))?;
    }
    Ok(())
}

/// Sets up the log; returns the log file, for SIGHUP to reopen.
fn init_logging(cfg: &Config) -> Result<Option<Arc<logsafe::LogFile>>, Fatal> {
    let filter = log_filter(cfg)?;
    let file = match &cfg.log_file {
        None => None,
        Some(path) => Some(
            logsafe::LogFile::open(path)
                .map_err(|e| fatal("--log-file", format!("{}: {e}", path.display())))?,
        ),
    };
    let json = cfg.log_format == LogFormat::Json;
    let syslog = match &cfg.syslog {
        None => None,
        Some(path) => Some(
            logsafe::Syslog::open(path)
                .map_err(|e| fatal("--syslog", format!("{}: {e}", path.display())))?,
        ),
    };
    let target = match (&file, &syslog) {
        (Some(f), _) => logsafe::Target::File(f.clone()),
        (None, Some(s)) => logsafe::Target::Syslog(s.clone()),
        (None, None) => logsafe::Target::Stderr,
    };
    let writer = logsafe::LogWriter { target, json };
    // No colours: every line is escaped on its way out (see `logsafe`), and a terminal's
    // escape sequences would be too.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(writer);
    // Syslog stamps each line itself.
    match (json, syslog.is_some()) {
        (true, false) => builder.json().init(),
        (true, true) => builder.json().without_time().init(),
        (false, false) => builder.fmt_fields(logfmt::KeyValue).init(),
        (false, true) => builder.fmt_fields(logfmt::KeyValue).without_time().init(),
    }
    Ok(file)
}

/// Opens a store and proves it writable (a temporary file is made and removed).
fn open_store(cfg: &Config) -> Result<Arc<dyn Store>, Fatal> {
    let dir = &cfg.spool_dir;
    let mut options = mailstore::StoreOptions::new().mode(cfg.mailbox_mode);
    if let Some(gid) = cfg.mailbox_group {
        options = options.group(gid);
    }
    if let Some(uid) = cfg.mailbox_owner {
        options = options.owner(uid);
    }
    let store: Arc<dyn Store> = match cfg.format {
        Format::Spool => Arc::new(
            mailstore::spool::Spool::open_with(dir, &options)
                .map_err(|e| fatal("--spool-dir", io_cause(&e)))?,
        ),
        Format::Maildir => Arc::new(
            mailstore::maildir::Maildir::open_with(dir, &options)
                .map_err(|e| fatal("--spool-dir", io_cause(&e)))?,
        ),
    };
    store.begin().map_err(|e| {
        fatal(
            "--spool-dir",
            format!("{} is not writable: {}", dir.display(), io_cause(&e)),
        )
    })?;
    Ok(store)
}

fn io_cause(e: &mailstore::Error) -> String {
    e.to_string()
}

fn open_queue(dir: &Path) -> Result<Queue, Fatal> {
    let q = Queue::open(dir).map_err(|e| fatal("--queue-dir", e))?;
    q.begin().map_err(|e| {
        fatal(
            "--queue-dir",
            format!("{} is not writable: {e}", dir.display()),
        )
    })?;
    Ok(q)
}

/// Descriptors kept for the spool, the logs, the listeners and the resolver when comparing
/// `--max-connections` with the open file limit (besides the store's remembered directories,
/// [`mailstore::directories_kept_open`]).
const FD_MARGIN: usize = 256;

/// Raises the soft limit on open descriptors to the hard limit (every session and every queue
/// entry being delivered holds one; the usual soft limit, 1024, is small for a mail server)
/// and returns the limit now in force.
fn raise_nofile_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let lim = getrlimit(Resource::Nofile);
    let soft = lim.current.unwrap_or(u64::MAX);
    match lim.maximum {
        Some(hard) if hard > soft => {
            let raised = rustix::process::Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => hard,
                Err(e) => {
                    warn!(error = %e, soft, hard, "cannot raise the open file limit");
                    soft
                }
            }
        }
        None if lim.current.is_some() => {
            let raised = rustix::process::Rlimit {
                current: None,
                maximum: None,
            };
            setrlimit(Resource::Nofile, raised).map_or(soft, |()| u64::MAX)
        }
        _ => soft,
    }
}

/// Every configured listener with its kind, defaults applied.
fn configured_listeners(cfg: &Config) -> Vec<Configured> {
    let mut listeners = Vec::new();
    for (kind, addrs) in [
        (Kind::Loopback, cfg.local_listen()),
        (Kind::Public, cfg.public_listen()),
        (Kind::Tls, cfg.tls_listen.clone()),
        (Kind::Submission, cfg.submission_listen.clone()),
    ] {
        listeners.extend(addrs.into_iter().map(|addr| Configured { kind, addr }));
    }
    listeners
}

/// `--submission-listen` is refused without a user database to log in with.
fn submission_needs_users(cfg: &Config, have_users: bool) -> Result<(), Fatal> {
    if !have_users && !cfg.submission_listen.is_empty() {
        return Err(fatal(
            "--submission-listen",
            "needs a user database to log in with: --passwd-file or --auth-dovecot",
        ));
    }
    Ok(())
}

/// The TLS certificate and key, loaded, if configured.
fn load_tls(cfg: &Config) -> Result<Option<smtp_server::TlsConfig>, Fatal> {
    match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => smtp_server::TlsConfig::from_pem_files(c, k)
            .map(Some)
            .map_err(|e| fatal("--tls-cert/--tls-key", e)),
        _ => Ok(None),
    }
}

/// `smtp-server check-config`: what `run` checks before it binds, without side effects, then
/// the effective configuration.
fn check_config(
    cfg: &Config,
    argv: &[std::ffi::OsString],
    file_keys: &config_file::Origins,
) -> ExitCode {
    let checked = (|| -> Result<(), Fatal> {
        log_filter(cfg)?;
        check_paths(cfg)?;
        if let Some(p) = &cfg.users {
            Users::load(p).map_err(|e| fatal("--users", format!("{}: {e}", p.display())))?;
        }
        let auth = cfg.authenticator().map_err(|(opt, e)| fatal(opt, e))?;
        submission_needs_users(cfg, auth.is_some())?;
        load_dkim_keys(cfg)?;
        load_tls(cfg)?;
        if let Some(path) = &cfg.relay_password_file {
            relay_auth::PasswordFile::load(path)
                .map_err(|e| fatal("--relay-password-file", format!("{}: {e}", path.display())))?;
        }
        Plan::new(&configured_listeners(cfg)).map_err(|e| fatal("listen", e))?;
        Ok(())
    })();
    if let Err(Fatal(e)) = checked {
        eprintln!("smtp-server: {e}");
        return ExitCode::from(2);
    }
    match config_file::effective(argv, file_keys) {
        Ok(text) => {
            println!("# smtp-server check-config: the configuration is valid. Effective options:");
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smtp-server: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(cfg: Config) -> Result<(), Fatal> {
    let log_file = init_logging(&cfg)?;
    let nofile = raise_nofile_limit();
    if nofile < 4096 {
        warn!(
            limit = nofile,
            "the open file limit is low for a mail server (LimitNOFILE= in the systemd unit)"
        );
    }
    let hostname = cfg.hostname();
    let domains = cfg.domains();

    let users = match &cfg.users {
        Some(p) => {
            Some(Users::load(p).map_err(|e| fatal("--users", format!("{}: {e}", p.display())))?)
        }
        None => None,
    };
    // Checked at startup, so that a broken passwd-file stops the daemon with exit 2.
    let auth = cfg.authenticator().map_err(|(opt, e)| fatal(opt, e))?;
    if let Some(a) = &auth {
        info!("SMTP AUTH users: {}", a.describe());
    }
    submission_needs_users(&cfg, auth.is_some())?;
    if auth.is_none() && !cfg.tls_listen.is_empty() {
        warn!("--tls-listen without --passwd-file or --auth-dovecot: no one can log in there, so every MAIL gets 530 5.7.0");
    }
    if auth.is_some() && cfg.submission_listen.is_empty() && cfg.tls_listen.is_empty() {
        warn!("a user database is configured but no --submission-listen or --tls-listen: AUTH is offered nowhere");
    }
    let auth = auth.map(Arc::new);
    let dkim = Arc::new(load_dkim_keys(&cfg)?);
    let store = open_store(&cfg)?;
    let queue = open_queue(&cfg.queue_dir())?;

    let tls = load_tls(&cfg)?;
    let listeners = configured_listeners(&cfg);
    let plan = Arc::new(Plan::new(&listeners).map_err(|e| fatal("listen", e))?);
    let listen_addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.addr).collect();
    let policy = Arc::new(Policy::new(domains.clone(), listen_addrs, users));

    let resolver = match cfg.dns_server {
        Some(a) => {
            smtp_client::Resolver::with_nameserver(a).map_err(|e| fatal("--dns-server", e))?
        }
        None => smtp_client::Resolver::system().map_err(|e| {
            fatal(
                "--dns-server",
                format!("cannot read the system's resolver configuration: {e}"),
            )
        })?,
    };
    let verifier = (!cfg.no_email_auth).then(|| {
        let settings = inbound_auth::Settings {
            spf_reject: cfg.spf_reject,
            dmarc_reject: cfg.dmarc_reject,
            max_size: cfg.email_auth_max_size,
            timeout: cfg.email_auth_timeout,
        };
        if !cfg.public_listen().is_empty() {
            info!(
                spf_reject = settings.spf_reject,
                dmarc_reject = settings.dmarc_reject,
                max_size = settings.max_size,
                timeout_ms = settings.timeout.as_millis() as u64,
                "public listener: SPF, DKIM, DMARC and ARC verdicts in Authentication-Results"
            );
        }
        // The checks' own resolver (the same name servers, its own cache): address lookups
        // ask for A records only, as `exists:` must (RFC 7208 §5.7; mail-auth's `exists`
        // looks up both families, the one place it uses that lookup).
        let auth_resolver = resolver
            .hickory_with_options(|o| {
                o.ip_strategy = mail_auth::hickory_resolver::config::LookupIpStrategy::Ipv4Only;
            })
            .unwrap_or_else(|e| {
                warn!(error = %e, "SPF: exists: terms also match AAAA records");
                resolver.hickory().clone()
            });
        Arc::new(inbound_auth::Verifier::new(
            auth_resolver,
            hostname.clone(),
            settings,
        ))
    });
    // MX delivery (and the relay host, as before): STARTTLS whenever offered, certificate
    // not required to verify (Postfix's `may`), clear text after a failed STARTTLS.
    let mut client_config = smtp_client::ClientConfig::new(hostname.clone())
        .with_tls(smtp_client::TlsPolicy::OpportunisticUnverified);
    let relay_host = match &cfg.relay_host {
        Some(h) => Some(config::parse_host_port(h).map_err(|e| fatal("--relay-host", e))?),
        None => None,
    };
    if let (Some(path), Some((host, port))) = (&cfg.relay_password_file, &relay_host) {
        let option = "--relay-password-file";
        let loaded = relay_auth::PasswordFile::load(path)
            .map_err(|e| fatal(option, format!("{}: {e}", path.display())))?;
        if loaded.group_readable {
            warn!(file = %path.display(), "{option}: the file's group may read the passwords");
        }
        match loaded.file.lookup(host, *port) {
            Some(credentials) => {
                info!(relay_host = %host, port, user = %credentials.user(),
                      "deliveries to the relay host log in (after STARTTLS)");
                client_config = client_config.with_credentials(credentials);
            }
            None => warn!(
                file = %path.display(), relay_host = %host, port,
                entries = loaded.file.len(),
                "{option}: no entry for the relay host; delivering without logging in"
            ),
        }
    }
    let mut deliverer = smtp_client::Deliverer::new(resolver, client_config)
        .with_port(cfg.remote_port)
        .with_address_preference(cfg.address_preference)
        .with_connection_cache(cfg.connection_cache_time);
    if let Some((host, port)) = relay_host {
        deliverer = deliverer.with_smarthost(host, port);
    }
    let guard = policy.clone();
    deliverer = deliverer.with_address_filter(Arc::new(move |addr| !guard.is_own_socket(addr)));

    let relay_notify = Arc::new(relay::Handoff::default());
    let daemon = Arc::new(Daemon {
        plan: plan.clone(),
        hostname: hostname.clone(),
        policy: policy.clone(),
        store: store.clone(),
        queue: queue.clone(),
        relay_notify: relay_notify.clone(),
        auth: auth.clone(),
        dkim,
        verifier,
        lmtp: cfg.lmtp.is_some(),
        space_dirs: space_dirs(&cfg.spool_dir, &cfg.queue_dir()),
        min_free: min_free_space(cfg.max_message_size),
    });

    let mut limits = smtp_server::Limits::default();
    // 0 means no limit, as Postfix's message_size_limit (SIZE is then advertised without a
    // number).
    limits.max_message_size = (cfg.max_message_size > 0).then_some(cfg.max_message_size);
    limits.max_recipients = cfg.max_recipients as usize;
    limits.max_connections = (cfg.max_connections > 0).then_some(cfg.max_connections);
    limits.max_connections_per_ip =
        (cfg.max_connections_per_ip > 0).then_some(cfg.max_connections_per_ip);
    // Every program on this machine connects from 127.0.0.1: the per-IP limit (50) would cap
    // local clients of the relaying listener (Postfix exempts $mynetworks the same way).
    limits.per_ip_exempt_loopback = true;
    // Each session holds a descriptor; the queue's deliveries may hold a quarter of the limit
    // (see the relay below), and the spool, the logs and the listeners need some more.
    let fd_limit = usize::try_from(nofile).unwrap_or(usize::MAX);
    let margin = FD_MARGIN + mailstore::directories_kept_open();
    let for_sessions = (fd_limit - fd_limit / 4).saturating_sub(margin);
    if limits.max_connections.is_none_or(|max| max > for_sessions) {
        warn!(
            max_connections = cfg.max_connections,
            open_file_limit = nofile,
            for_sessions,
            "--max-connections allows more sessions than the open file limit leaves for them \
             (three quarters of it, less {margin}): when the descriptors run out, new \
             connections wait in the kernel's backlog and storing or relaying mail fails \
             until sessions end (raise LimitNOFILE= in the systemd unit)"
        );
    }
    // Accept text lines over RFC 5321's 1000 octets, as Postfix does: real mail (HTML from
    // some mailers) has them, and refusing it loses mail. Bare CR/LF are still refused.
    limits.max_text_line = None;

    let mut builder = smtp_server::Server::builder(DaemonHandler { daemon })
        .hostname(hostname.clone())
        .limits(limits);
    if let Some(t) = &tls {
        builder = builder.tls(t.clone());
    }
    if auth.is_some() {
        // Offered only where the handler says so (the submission listeners) and only over TLS.
        builder = builder.auth([smtp_server::Mechanism::Plain, smtp_server::Mechanism::Login]);
    }
    for l in &plan.sockets {
        let sl = smtp_server::Listener::named(l.kind.name(), l.addr);
        builder = builder.listener(if l.kind.implicit_tls() {
            sl.implicit_tls()
        } else {
            sl
        });
    }
    for (l, socket) in &plan.shared {
        info!(
            "{} {} is served by the {socket} socket (the same port cannot be bound twice)",
            l.kind.option(),
            l.addr
        );
    }
    let has_tls = tls.is_some();
    if let Some(addr) = cfg.metrics_listen {
        // Every series that can grow, at zero from the start (for Prometheus' rate()).
        let kinds = plan
            .sockets
            .iter()
            .chain(plan.shared.iter().map(|(l, _)| l));
        let destinations = [
            if cfg.lmtp.is_some() { "lmtp" } else { "local" },
            if cfg.relay_host.is_some() {
                "smarthost"
            } else {
                "mx"
            },
        ];
        metrics::m().zero(kinds.map(|l| l.kind.name()), destinations);
        metrics::serve(addr, queue.clone())
            .await
            .map_err(|e| fatal("--metrics-listen", format!("cannot listen on {addr}: {e}")))?;
    }
    spawn_reload_on_sighup(tls, log_file)?;
    let server = builder.bind().await.map_err(|e| match &e {
        smtp_server::Error::Bind { addr, source } => {
            let option = plan
                .sockets
                .iter()
                .find(|l| l.addr == *addr)
                .map_or("listen", |l| l.kind.option());
            fatal(option, format!("cannot listen on {addr}: {source}"))
        }
        _ => fatal("listen", e),
    })?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let relay = Arc::new(
        Relay::new(
            queue,
            store,
            policy,
            deliverer,
            hostname.clone(),
            cfg.queue_lifetime,
            cfg.retry_base,
            relay_notify,
            relay::Slots::new(
                cfg.max_deliveries as usize,
                cfg.destination_concurrency as usize,
            ),
            // Each entry being worked on holds a descriptor: a quarter of the limit, so that
            // sessions, the spool and the queue keep the rest.
            (nofile / 4) as usize,
        )
        .with_lmtp(cfg.lmtp.clone().map(|target| {
            // The LMTP server is this host or next to it: no STARTTLS, no login.
            let config = smtp_client::ClientConfig::new(hostname.clone())
                .with_tls(smtp_client::TlsPolicy::None);
            smtp_client::lmtp::Lmtp::new(target, config)
        })),
    );
    let relay_task = tokio::spawn(relay.run(stopped(stop_rx.clone())));
    let join = |v: Vec<String>| v.join(",");
    if !hostname.contains('.') {
        warn!(hostname = %hostname, "the host name is not fully qualified: remote servers check the EHLO name and the Received headers; give --hostname mail.example.org");
    }
    for l in &plan.sockets {
        let (how, auth) = match l.kind {
            Kind::Tls => ("implicit TLS", auth.is_some()),
            _ if has_tls => (
                "plain text, STARTTLS offered",
                l.kind.is_submission() && auth.is_some(),
            ),
            _ => ("plain text, no STARTTLS (no --tls-cert)", false),
        };
        let rights = match l.kind {
            Kind::Loopback => "relays for loopback clients",
            Kind::Public => "local delivery only",
            Kind::Tls | Kind::Submission => "relays for logged-in users only",
        };
        let auth = if auth {
            "PLAIN LOGIN after TLS"
        } else {
            "none"
        };
        info!(listener = %l.kind.name(), addr = %l.addr, tls = %how, auth = %auth,
              rights = %rights, "listener");
    }
    info!(
        hostname = %hostname,
        domains = %join(domains.clone()),
        listen = %join(server.local_addrs().iter().map(|a| a.to_string()).collect()),
        spool = %cfg.spool_dir.display(),
        format = %match cfg.format { Format::Spool => "spool", Format::Maildir => "maildir" },
        "smtp-server started"
    );

    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    if let Err(e) = server.serve(stopped(stop_rx)).await {
        error!(error = %e, "server failed");
    }
    let _ = relay_task.await;
    info!("smtp-server stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => info!("SIGTERM: shutting down"),
                _ = i.recv() => info!("SIGINT: shutting down"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// SIGHUP re-reads the TLS certificate and key (for later handshakes; a bad file is logged and
/// the old certificate stays in use). Without TLS it is logged and ignored: the daemon never
/// dies of a SIGHUP.
/// SIGHUP: reopen `--log-file` (logrotate's `postrotate`), reload the TLS certificate.
fn spawn_reload_on_sighup(
    tls: Option<smtp_server::TlsConfig>,
    log_file: Option<Arc<logsafe::LogFile>>,
) -> Result<(), Fatal> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup =
        signal(SignalKind::hangup()).map_err(|e| Fatal(format!("cannot handle SIGHUP: {e}")))?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if let Some(f) = &log_file {
                match f.reopen() {
                    Ok(()) => info!("SIGHUP: log file reopened"),
                    Err(e) => {
                        error!(error = %e, "SIGHUP: cannot reopen the log file, still writing to the old one")
                    }
                }
            }
            match &tls {
                Some(t) => match t.reload() {
                    Ok(()) => info!("SIGHUP: TLS certificate and key reloaded"),
                    Err(e) => {
                        error!(error = %e, "SIGHUP: TLS reload failed, keeping the old certificate")
                    }
                },
                None => info!("SIGHUP: nothing to reload (no --tls-cert)"),
            }
        }
    });
    Ok(())
}

/// The refusals this daemon's handler gives, with their fixed codes and a default text (most
/// get a text made at run time with [`Refusal::with_text`]).
mod refusals {
    use smtp_proto::{EnhancedCode, Refusal};

    const fn r(code: u16, e: (u8, u16, u16), text: &'static str) -> Refusal {
        Refusal::fixed(code, Some(EnhancedCode::fixed(e.0, e.1, e.2)), text)
    }

    pub const AUTH_REQUIRED: Refusal = r(530, (5, 7, 0), "Authentication required");
    pub const NO_SPACE: Refusal = r(452, (4, 3, 1), "Insufficient system storage");
    pub const SENDER_NOT_OWNED: Refusal =
        r(553, (5, 7, 1), "Sender address rejected: not owned by user");
    pub const SPF_FAIL: Refusal = r(550, (5, 7, 23), "Sender address rejected: SPF fail");
    pub const RELAY_DENIED: Refusal = r(554, (5, 7, 1), "Relay access denied");
    pub const USER_UNKNOWN: Refusal = r(550, (5, 1, 1), "Recipient address rejected: User unknown");
    pub const BAD_MAILBOX: Refusal = r(550, (5, 1, 3), "Recipient address rejected");
    pub const MAIL_LOOP: Refusal = r(554, (5, 4, 6), "Too many hops: mail loop detected");
    pub const DMARC_REJECT: Refusal = r(550, (5, 7, 1), "Message rejected due to DMARC policy");
    pub const HEADER_TOO_LONG_TO_SIGN: Refusal =
        r(552, (5, 3, 4), "Message header section too long to sign");
}

/// Makes one [`Session`] per connection, with the relay right of its listener.
struct DaemonHandler {
    daemon: Arc<Daemon>,
}

impl Handler for DaemonHandler {
    type Session = Session;

    async fn connect(&self, info: &ConnectionInfo) -> Result<Session, Refusal> {
        let socket_kind = Kind::from_name(&info.listener).unwrap_or(Kind::Public);
        let kind = self.daemon.plan.classify(socket_kind, info.local);
        let relay = listen::may_relay(kind, info.local, info.peer);
        let submission = kind.is_submission();
        metrics::m().connection(kind.name());
        if info.tls.is_some() {
            metrics::m().tls_session(kind.name());
        }
        Ok(Session {
            // Mail from other servers: the public listener (which never relays).
            check_sender: kind == Kind::Public && !relay && self.daemon.verifier.is_some(),
            spf: None,
            lost: false,
            messages: 0,
            listener: kind.name(),
            offer_auth: submission && self.daemon.auth.is_some(),
            submission,
            base_relay: relay,
            user: None,
            local: info.local,
            tls: info.tls.is_some(),
            d: self.daemon.clone(),
            relay,
            helo: String::new(),
            extended: false,
            peer: info.peer,
            session_id: info.session_id,
            rcpts: Vec::new(),
        })
    }
}

/// An accepted recipient and where it goes.
struct Accepted {
    /// The address as given, for `Received: ... for <address>`.
    address: String,
    dest: Destinations,
    notify: Option<Notify>,
    orcpt: Option<Orcpt>,
}

/// One connection's state.
struct Session {
    d: Arc<Daemon>,
    /// Whether remote recipients are accepted now: the listener's right ([`base_relay`]), or
    /// a login on a submission listener.
    ///
    /// [`base_relay`]: Session::base_relay
    relay: bool,
    /// The listener's relay right, without a login.
    base_relay: bool,
    /// A submission listener: MAIL needs a login.
    submission: bool,
    /// AUTH is offered (a submission listener with a user database).
    offer_auth: bool,
    /// The logged-in user.
    user: Option<String>,
    /// The listener's name, for the metrics.
    listener: &'static str,
    local: SocketAddr,
    tls: bool,
    helo: String,
    extended: bool,
    peer: SocketAddr,
    session_id: u64,
    rcpts: Vec<Accepted>,
    /// SPF, DKIM, DMARC and ARC are checked (see [`inbound_auth`]).
    check_sender: bool,
    /// The SPF verdicts of the current transaction (from its MAIL FROM); boxed, so that an
    /// idle session keeps a pointer, not their room.
    spf: Option<Box<inbound_auth::Spf>>,
    /// The client went away (or timed out) before the end of the last message: no reply
    /// class to count.
    lost: bool,
    /// Messages accepted, for the sessions metric.
    messages: u32,
}

impl Drop for Session {
    fn drop(&mut self) {
        let outcome = if self.messages > 0 { "mail" } else { "no_mail" };
        metrics::m().session(self.listener, outcome);
    }
}

impl SessionHandler for Session {
    async fn hello(&mut self, domain: &str, extended: bool) -> Result<(), Refusal> {
        self.helo = domain.to_owned();
        self.extended = extended;
        Ok(())
    }

    fn tls_started(&mut self, _info: &TlsInfo) {
        // STARTTLS forgets a login (RFC 3207), though none can happen before it here.
        self.tls = true;
        metrics::m().tls_session(self.listener);
        self.user = None;
        self.relay = self.base_relay;
    }

    fn auth_offered(&self) -> bool {
        self.offer_auth
    }

    async fn authenticate(&mut self, c: &Credentials) -> Result<String, AuthFailure> {
        let Some(db) = self.d.auth.clone() else {
            return Err(AuthFailure::Invalid);
        };
        // Acting as someone else (PLAIN's authorisation identity) is not supported; naming
        // oneself is, compared as logins are (`Alice@Example.test` is `alice@example.test`).
        let same_user = |z: &str| {
            auth::canonical_login(z).is_some_and(|z| Some(z) == auth::canonical_login(c.authcid()))
        };
        if c.authzid().is_some_and(|z| !same_user(z)) {
            info!(
                session = self.session_id,
                login = c.authcid(),
                authzid = c.authzid().unwrap_or(""),
                "login refused: authorization identity differs from the login"
            );
            return Err(AuthFailure::Invalid);
        }
        let client = auth::Client {
            peer: self.peer,
            local: self.local,
            secured: self.tls,
        };
        match db.verify(c.authcid(), c.secret(), &client).await {
            Ok(auth::Verdict::Ok { user }) => {
                metrics::m().auth("ok");
                self.user = Some(user.clone());
                self.relay = true;
                Ok(user)
            }
            Ok(auth::Verdict::Invalid) => {
                metrics::m().auth("failed");
                Err(AuthFailure::Invalid)
            }
            Err(auth::Temporary(why)) => {
                metrics::m().auth("temporary");
                warn!(session = self.session_id, error = %why, "user database unavailable");
                Err(AuthFailure::Temporary)
            }
        }
    }

    async fn mail(&mut self, from: &ReversePath, params: &MailParams) -> Result<(), Refusal> {
        self.rcpts.clear();
        self.spf = None;
        if self.submission && self.user.is_none() {
            return Err(refusals::AUTH_REQUIRED);
        }
        let least = (self.d.space_dirs.iter())
            .filter_map(|d| free_space(d).map(|free| (free, d)))
            .min_by_key(|(free, _)| *free);
        if let Some((free, dir)) = least {
            let needed = self.d.min_free.max(params.size.unwrap_or(0));
            if free < needed {
                warn!(session = self.session_id, free, needed, dir = %dir.display(),
                      "sender refused: not enough free space for mail");
                return Err(refusals::NO_SPACE);
            }
        }
        if let (Some(user), ReversePath::Mailbox(m)) = (&self.user, from) {
            if !self.d.policy.sender_owned_by(m, user) {
                info!(session = self.session_id, user = %user, from = %from,
                      "sender refused: not owned by the login");
                let text = format!("<{m}>: Sender address rejected: not owned by user {user}");
                return Err(refusals::SENDER_NOT_OWNED.with_text(text));
            }
        }
        if let (true, Some(v)) = (self.check_sender, self.d.verifier.clone()) {
            let sender = match from {
                ReversePath::Null => String::new(),
                ReversePath::Mailbox(m) => m.to_string(),
            };
            // An IPv4 client on an IPv6 socket is checked as its IPv4 address.
            let spf = v
                .spf(self.peer.ip().to_canonical(), &self.helo, &sender)
                .await;
            if v.settings().spf_reject && spf.result() == mail_auth::SpfResult::Fail {
                info!(session = self.session_id, peer = %self.peer, from = %from,
                      spf = %"fail", spf_domain = %spf.domain(), "sender refused: SPF fail");
                let ip = self.peer.ip().to_canonical();
                let domain = spf.domain();
                let text = format!(
                    "<{sender}>: Sender address rejected: SPF fail: {domain} does not designate {ip} as permitted sender"
                );
                return Err(refusals::SPF_FAIL.with_text(text));
            }
            self.spf = Some(Box::new(spf));
        }
        Ok(())
    }

    async fn rcpt(&mut self, to: &ForwardPath, params: &RcptParams) -> Result<(), Refusal> {
        match self.d.policy.route(to, self.relay) {
            Ok(dest) => {
                let address = match to {
                    ForwardPath::Postmaster => "postmaster".to_owned(),
                    ForwardPath::Mailbox(m) => m.to_string(),
                };
                self.rcpts.push(Accepted {
                    address,
                    dest,
                    notify: params.notify,
                    orcpt: params.orcpt.clone(),
                });
                Ok(())
            }
            Err(refusal) => {
                let r = self.refuse_rcpt(to, refusal);
                metrics::m().rcpt_refused(r.code());
                Err(r)
            }
        }
    }

    async fn data(&mut self, envelope: &Envelope, body: &mut BodyStream<'_>) -> DataOutcome {
        let outcome = self.receive(envelope, body).await;
        if !std::mem::take(&mut self.lost) {
            let code = outcome.reply().code();
            metrics::m().message(self.listener, code);
            if code < 300 {
                self.messages += 1;
            }
        }
        outcome
    }

    fn reset(&mut self) {
        self.rcpts.clear();
        self.spf = None;
    }
}

impl Session {
    /// The reply refusing recipient `to`.
    fn refuse_rcpt(&self, to: &ForwardPath, refusal: RcptRefusal) -> Refusal {
        match refusal {
            // Logged by the library with the reply ("refused RCPT").
            RcptRefusal::RelayDenied => {
                refusals::RELAY_DENIED.with_text(format!("{to}: Relay access denied"))
            }
            RcptRefusal::UnknownUser => refusals::USER_UNKNOWN
                .with_text(format!("{to}: Recipient address rejected: User unknown")),
            RcptRefusal::BadMailbox(why) => {
                refusals::BAD_MAILBOX.with_text(format!("{to}: Recipient address rejected: {why}"))
            }
        }
    }

    /// Receives and stores one message (the body of [`SessionHandler::data`]).
    async fn receive(&mut self, envelope: &Envelope, body: &mut BodyStream<'_>) -> DataOutcome {
        let rcpts = std::mem::take(&mut self.rcpts);
        let d = self.d.clone();
        let sender = match &envelope.from {
            ReversePath::Null => String::new(),
            ReversePath::Mailbox(m) => m.to_string(),
        };
        let mut mailboxes: Vec<MailboxName> = Vec::new();
        let mut remote: Vec<QRecipient> = Vec::new();
        // With --lmtp, local recipients are queued for the LMTP server instead (see lmtp).
        let mut by_lmtp: Vec<QRecipient> = Vec::new();
        for a in &rcpts {
            if d.lmtp {
                for mb in &a.dest.local {
                    let Some(address) = d.policy.lmtp_address(mb) else {
                        error!(session = self.session_id, mailbox = %mb,
                               "no LMTP address for a local mailbox: no local domain name");
                        return DataOutcome::temporary_failure(
                            "Local error in processing, try again later",
                        );
                    };
                    let address = ForwardPath::Mailbox(address);
                    if by_lmtp.iter().any(|q| q.path == address) {
                        continue;
                    }
                    let mut q = QRecipient::new(address);
                    if a.dest.local.len() == 1 && a.dest.remote.is_empty() {
                        q.notify = a.notify;
                        q.orcpt = a.orcpt.clone();
                    }
                    by_lmtp.push(q);
                }
            } else {
                mailboxes.extend(a.dest.local.iter().cloned());
            }
            for r in &a.dest.remote {
                let r = ForwardPath::Mailbox(r.clone());
                // One copy per address (a repeated RCPT, or an alias target also named
                // directly): the next hop would otherwise be given it twice.
                if remote.iter().any(|q: &QRecipient| q.path == r) {
                    continue;
                }
                let mut q = QRecipient::new(r);
                // DSN parameters belong to the address the client gave, not to alias targets.
                if a.dest.remote.len() == 1 && a.dest.local.is_empty() {
                    q.notify = a.notify;
                    q.orcpt = a.orcpt.clone();
                }
                remote.push(q);
            }
        }
        let id = headers::unique_id();
        let now = SystemTime::now();
        let for_rcpt = (rcpts.len() == 1).then(|| rcpts[0].address.clone());
        let received = Received {
            helo: &self.helo,
            peer: self.peer.ip(),
            by: &d.hostname,
            protocol: Protocol {
                extended: self.extended,
                tls: envelope.tls.is_some(),
                auth: self.user.is_some(),
                utf8: envelope.mail_params.smtputf8,
            },
            tls: envelope.tls.as_ref(),
            id: &id,
            for_rcpt: for_rcpt.as_deref(),
            date: now,
        }
        .to_header();
        let return_path = headers::return_path(&sender);
        let local_prefix = (!mailboxes.is_empty()).then(|| format!("{return_path}{received}"));
        // Whether some recipients are in other domains (relayed), before LMTP's join the
        // queued ones: what is added to the message and whether it is signed depend on it.
        let relayed = !remote.is_empty();
        remote.extend(by_lmtp);
        let queue_prefix = (!remote.is_empty()).then(|| received.clone());
        // With the sender checks, the prefixes go in front at the end, with their verdicts;
        // mail to be signed is signed with them (see `dkim`), before it is queued, so that
        // every attempt sends the same bytes.
        let spf = if self.check_sender {
            self.spf.take()
        } else {
            None
        };
        let sign = self.relay && relayed && !d.dkim.is_empty();
        let at_the_end = spf.is_some() || sign;
        let deferred = |p: &Option<String>| -> Option<String> {
            p.as_ref()
                .map(|p| if at_the_end { String::new() } else { p.clone() })
        };
        let entry = (!remote.is_empty()).then(|| {
            // The transaction's own sender and DSN parameters (RET, ENVID), with the
            // recipients routing gave.
            let mut e = QueueEntry::new(envelope.transaction().for_recipients(remote), now);
            e.next_attempt = now;
            e
        });
        // The usual message is held in memory (checked and signed there), and written once,
        // after its prefixes, when it is committed (see local). A longer one with nothing to
        // put in front at the end goes straight into its queue entry's file.
        let mut incoming = Incoming::begin(
            d.store.clone(),
            d.queue.clone(),
            deferred(&local_prefix),
            deferred(&queue_prefix),
            entry,
            at_the_end,
            // Date: and Message-ID: for mail our own users submit (see headers); a
            // Message-ID: alone for mail from the network that is relayed onward.
            if self.relay {
                Some(headers::Missing::new(&id, &d.hostname, now))
            } else if relayed {
                Some(headers::Missing::message_id_only(&id, &d.hostname))
            } else {
                None
            },
            &d.hostname,
        );
        loop {
            match body.chunk().await {
                Ok(Some(chunk)) => {
                    metrics::m().received(chunk.len());
                    // The chunk that no longer fits in memory makes the files and writes
                    // what was held: off the runtime's own work (later chunks go through
                    // the files' buffers, into the page cache, as they arrive).
                    let written = if incoming.would_open(chunk.len()) {
                        tokio::task::block_in_place(|| incoming.write(chunk))
                    } else {
                        incoming.write(chunk)
                    };
                    if let Err(e) = written {
                        error!(session = self.session_id, error = %e, "cannot store message");
                        return DataOutcome::temporary_failure(
                            "Local error in processing, try again later",
                        );
                    }
                    if incoming.received_count() >= MAX_HOPS {
                        warn!(
                            session = self.session_id,
                            "mail loop: too many Received headers"
                        );
                        return refusals::MAIL_LOOP.into();
                    }
                }
                Ok(None) => break,
                // The session answered already; dropping `incoming` removes the partial file.
                // What the session answered, for the metrics: the refusal the library sent
                // (552 5.3.4 for size, 550 for bare line endings or long lines); nothing for a
                // message the client never finished.
                Err(BodyError::Refused(e)) => {
                    return Refusal::try_from(e.reply()).map_or_else(
                        |_| DataOutcome::temporary_failure("message not received"),
                        DataOutcome::from,
                    )
                }
                Err(_) => {
                    self.lost = true;
                    return DataOutcome::temporary_failure("message not received");
                }
            }
        }
        // The verdicts for the `message accepted` line (`-` when not checked).
        let mut verdicts = ("-", String::from("-"), "-");
        let mut field = String::new();
        if let (Some(spf), Some(v)) = (&spf, &d.verifier) {
            // Bounded memory: sessions wait for their share of the checks' budget.
            let _memory = v.memory_for(incoming.size()).await;
            let body = match tokio::task::block_in_place(|| {
                incoming.read_for_verify(v.settings().max_size)
            }) {
                Ok(b) => b,
                Err(e) => {
                    error!(session = self.session_id, error = %e, "cannot read the message back");
                    return DataOutcome::temporary_failure(
                        "Local error in processing, try again later",
                    );
                }
            };
            let verdict = v.message(spf, &body).await;
            drop(body);
            info!(session = self.session_id, id = %id, peer = %self.peer, from = %envelope.from,
                  spf = %inbound_auth::spf_keyword(spf.result()),
                  spf_helo = %inbound_auth::spf_keyword(spf.helo_result()),
                  dkim = %verdict.dkim, dmarc = %verdict.dmarc,
                  dmarc_policy = %verdict.dmarc_policy, header_from = %verdict.from_domain,
                  arc = %verdict.arc,
                  action = %if verdict.reject.is_some() { "reject" } else { "accept" },
                  "sender authentication");
            if let Some(why) = &verdict.reject {
                return refusals::DMARC_REJECT.with_text(why.clone()).into();
            }
            verdicts = (
                inbound_auth::spf_keyword(spf.result()),
                verdict.dkim.clone(),
                verdict.dmarc,
            );
            field = verdict.field;
        }
        // The prefixes go in front (and the queued copy is signed) in the commit's task.
        let trace = at_the_end.then(|| local::Trace {
            local: format!("{return_path}{field}{received}"),
            queued: format!("{field}{received}"),
            keys: sign.then(|| d.dkim.clone()),
            from_allowed: self.user.clone().map(|user| {
                let policy = d.policy.clone();
                Arc::new(move |address: &str| {
                    smtp_proto::address::parse_mailbox(address)
                        .is_ok_and(|m| policy.sender_owned_by(&m, &user))
                }) as Arc<dkim::FromAllowed>
            }),
        });
        match incoming
            .commit(d.store.clone(), d.queue.clone(), mailboxes, trace)
            .await
        {
            Ok(stored) => {
                match &stored.signed {
                    Some(dkim::Outcome::Signed { keys, .. }) => {
                        for (domain, selector) in keys {
                            debug!(session = self.session_id, id = %id, %domain, %selector, "DKIM-signed");
                        }
                    }
                    Some(dkim::Outcome::Unsigned(why)) if *why == dkim::NOT_THE_LOGINS => {
                        let user = self.user.as_deref().unwrap_or("-");
                        info!(session = self.session_id, id = %id, %user, "not DKIM-signed: {why}");
                    }
                    Some(dkim::Outcome::Unsigned(why)) => {
                        debug!(session = self.session_id, id = %id, "not DKIM-signed: {why}");
                    }
                    None => {}
                }
                // The library logs each transaction once ("message ... outcome=250 ...");
                // this says where it went: the Received id (`id`, in our Received: field)
                // linked to the queue id every relay line carries, and each stored copy.
                let queue_id = stored
                    .queue_id
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |q| q.to_string());
                info!(session = self.session_id, id = %id, queue_id = %queue_id,
                      from = %envelope.from, recipients = envelope.rcpts.len(),
                      stored = stored.mailboxes, spf = %verdicts.0, dkim = %verdicts.1,
                      dmarc = %verdicts.2, "message accepted");
                for place in &stored.places {
                    info!(session = self.session_id, id = %id, mailbox = %place, "stored as {place}");
                }
                metrics::m().deliveries("local", "delivered", stored.mailboxes);
                if let Some(q) = stored.queue_id {
                    d.relay_notify.hand_off(q.clone());
                    DataOutcome::accepted(format!("Ok: queued as {q}"))
                } else {
                    DataOutcome::accepted(format!("Ok: delivered as {id}"))
                }
            }
            Err(local::CommitError::Sign(e @ dkim::SignError::HeaderTooLong)) => {
                info!(session = self.session_id, id = %id, "refused: {e}");
                refusals::HEADER_TOO_LONG_TO_SIGN.into()
            }
            Err(e) => {
                error!(session = self.session_id, id = %id, error = %e, "cannot store message");
                DataOutcome::temporary_failure("Local error in processing, try again later")
            }
        }
    }
}
