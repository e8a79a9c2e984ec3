//! The command line (clap), and the few values derived from it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
pub use smtp_server::machine_hostname;

use crate::auth::{Authenticator, Endpoint, Scheme};

fn parse_address_preference(s: &str) -> Result<smtp_client::AddressPreference, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// The users file format, shown in `--help`.
const USERS_HELP: &str = "Accepted local users and aliases. Without this option any valid \
mailbox name is accepted.\n\
File format, one entry per line, `#` starts a comment, blank lines are ignored:\n  \
alice                     a user: mail for alice@<any local domain> goes to mailbox `alice`\n  \
postmaster: alice         an alias: mail for postmaster goes to alice's mailbox\n  \
team: alice, bob          an alias with several targets (local users, or remote addresses\n                            \
such as carol@example.org, which are relayed)\n\
Names are compared without case and without a `+detail`. `postmaster` is always accepted \
(delivered to a mailbox named postmaster unless it is an alias).";

/// The relay password file format, shown in `--help`.
const RELAY_PASSWORD_HELP: &str = "Log in (SMTP AUTH, PLAIN or LOGIN) to --relay-host with \
the credentials this file lists for it, as Postfix's smtp_sasl_password_maps.\n\
File format (Postfix's sasl_passwd), one entry per line, `#` starts a comment line, blank \
lines are ignored:\n  \
[smtp.example.org]:587    alice@example.org:secret\n  \
smtp.example.org          alice:secret          (any port)\n  \
[::1]:2525                user:password\n\
The key is host, [host] or [host]:port; the value user:password (the password is everything \
after the first colon). An entry with the relay host's port wins over one without. The \
password is sent only over TLS: when the relay host does not offer STARTTLS, STARTTLS fails or \
the login is refused (535), the mail stays queued and is retried, and the log says why. The \
file must not be readable by other users (chmod 600); it is read at start.";

const AFTER_HELP: &str = "\
Mailboxes: `<spool-dir>/<user>/<n>` with `<n>.status` (numbered spool) or \
`<spool-dir>/<user>/{tmp,new,cur}` (Maildir). The user is the local part of the address, with \
any `+detail` removed and ASCII letters in lower case.\n\n\
Example, without root, on unprivileged loopback ports:\n  \
smtp-server -d ./mail -s localhost --hostname localhost -l 127.0.0.1:2525 -l '[::1]:2526' --no-public\n\n\
On port 25 without root: `setcap cap_net_bind_service=+ep smtp-server` (see DAEMON.md).\n\
Exit status: 0 after SIGTERM/SIGINT, 2 for a bad option or configuration.";

/// `--passwd-file`, shown in `--help`.
const PASSWD_FILE_HELP: &str = "Users who may log in with SMTP AUTH (submission), from a \
Dovecot-format passwd-file. Not with --auth-dovecot.\n\
One user per line, `#` starts a comment, blank lines are ignored:\n  \
user:{SCHEME}hash[:uid:gid:gecos:home:shell:extra]\n  \
alice@example.org:{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$...\n\
Schemes: ARGON2ID, ARGON2I, BLF-CRYPT ($2y$), SHA512-CRYPT ($6$), SHA256-CRYPT ($5$), CRYPT \
(one of those crypt formats; the default without {SCHEME}), PLAIN (tests only). Make a line \
with `smtp-server passwd USER` or `doveadm pw -s ARGON2ID`. Names are compared in lower case. \
Extra fields: `nologin`, `allow_nets=NET,...`. The file is checked at startup and re-read \
when it changes; a broken new version is logged and nobody logs in (454) until it is fixed (replace the file with `mv`). `user:!hash` or `user:*` locks a user.";

/// `--auth-dovecot`, shown in `--help`.
const AUTH_DOVECOT_HELP: &str = "Users who may log in with SMTP AUTH (submission), checked \
by Dovecot's auth service, as Postfix's `smtpd_sasl_type = dovecot`: the path of its \
auth-client socket, or inet:HOST:PORT for a TCP listener. Not with --passwd-file.\n\
In Dovecot's configuration (conf.d/10-master.conf), for example:\n  \
service auth {\n    \
unix_listener auth-client { path = /run/dovecot/auth-client  mode = 0660  user = <daemon's user> }\n  \
}\n\
and `auth_mechanisms = plain login`. The login is sent as PLAIN with service=smtp; the \
user name Dovecot returns is the canonical one.";

/// The log format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// tracing's text lines: time, level, span, message, `key=value` fields.
    Text,
    /// One JSON object per line.
    Json,
}

/// The mailbox format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Numbered spool: `<user>/1`, `<user>/1.status`, ...
    Spool,
    /// Maildir: `<user>/{tmp,new,cur}`.
    Maildir,
}

/// `smtp-server`: a small mail server and relay. Without a subcommand it runs the daemon with
/// the options of [`Config`]; a subcommand is a tool around it.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "smtp-server",
    version,
    about = "A small SMTP mail server: stores mail for its own domains and relays mail \
             that local clients send to the rest of the world",
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    // `smtp-server help`, as `--help`, would shadow a future subcommand's name less well.
    disable_help_subcommand = true
)]
pub struct Cli {
    /// A tool to run instead of the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The daemon's options.
    #[command(flatten)]
    pub daemon: Config,
}

/// The subcommands, each with its own `Args` struct and a module under `cmd/`.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Print a passwd-file line (for --passwd-file) for USER, with a password read from
    /// standard input (asked twice without echo on a terminal).
    Passwd(PasswdArgs),
    /// Look at and act on the outbound queue (as mailq, postqueue -f, postsuper -d/-h/-H):
    /// list, show, flush, delete, hold, release, bounce. Safe while the daemon runs.
    Queue(crate::cmd::queue::QueueArgs),
    /// Check a configuration (`--config FILE` and any options) without starting the daemon:
    /// load every file it names (certificates, users, passwd-file, keys), plan the listeners,
    /// then print the effective configuration as TOML with where each value came from. Exit 0
    /// when it would start, 2 with one line naming the problem otherwise.
    CheckConfig(Box<Config>),
    /// Make a DKIM signing key (for --dkim-key) and print the DNS TXT record to publish.
    DkimKeygen(crate::cmd::dkim::KeygenArgs),
    /// Print the DNS records (SPF, DMARC, and DKIM for --dkim-key files) a domain owner
    /// publishes for mail sent through this server.
    DnsRecords(crate::cmd::dkim::RecordsArgs),
}

/// `smtp-server passwd`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "The line goes to standard output, ready to append to the file:\n  \
smtp-server passwd alice@example.org >> /etc/smtp-server/users\n\
From a script, give the password on standard input (one line):\n  \
printf '%s\\n' \"$PASSWORD\" | smtp-server passwd alice@example.org\n\
The user name is written in lower case, as logins are compared."
)]
pub struct PasswdArgs {
    /// The login name clients will give (e.g. alice@example.org).
    pub user: String,
    /// Password scheme (Dovecot's name).
    #[arg(long, value_enum, ignore_case = true, default_value_t = Scheme::Argon2id)]
    pub scheme: Scheme,
}

/// The daemon's options.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Read options from this TOML file, one `long-option-name = value` per line (lists for
    /// repeatable options, true/false for flags; see contrib/smtp-server.toml). Options on the
    /// command line override the file's, and drop its entries they cannot be used with;
    /// `--FLAG=false` turns off a flag the file sets.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Root directory of the mailboxes.
    #[arg(
        short = 'd',
        long,
        value_name = "DIR",
        default_value = "/var/spool/mail/"
    )]
    pub spool_dir: PathBuf,

    /// A local domain (repeatable); mail for it is stored here [default: the machine's
    /// hostname].
    #[arg(short = 's', long = "domain", value_name = "DOMAIN", value_parser = parse_domain)]
    pub domains: Vec<String>,

    /// Name used in the greeting, EHLO and Received headers [default: the machine's hostname,
    /// or localhost when that is not a domain name].
    #[arg(long, value_name = "NAME", value_parser = parse_domain)]
    pub hostname: Option<String>,

    /// Loopback listener (repeatable): clients may relay to any address [default: 127.0.0.1:25,
    /// [::1]:25].
    #[arg(short = 'l', long = "local-listen", value_name = "ADDR")]
    pub local_listen: Vec<SocketAddr>,

    /// Public listener (repeatable): local delivery only, relaying refused with 554 5.7.1
    /// [default: 0.0.0.0:25, [::]:25]. A wildcard address sharing its port with a loopback
    /// listener (as the defaults do) is one socket: a connection to 127.0.0.1 or ::1 gets the
    /// loopback listener's rights, any other the public ones.
    #[arg(short = 'p', long = "public-listen", value_name = "ADDR")]
    pub public_listen: Vec<SocketAddr>,

    /// Run without the public listener.
    #[arg(long)]
    pub no_public: bool,

    /// PEM certificate chain; with --tls-key, enables STARTTLS and --tls-listen.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Implicit-TLS submission listener, port 465 style (repeatable; RFC 8314): AUTH is
    /// offered (with --passwd-file or --auth-dovecot) and logged-in users may relay; a client
    /// that has not logged in gets 530 5.7.0 for MAIL, from any address (local programs that
    /// do not log in use --local-listen).
    #[arg(long, value_name = "ADDR", requires = "tls_cert")]
    pub tls_listen: Vec<SocketAddr>,

    /// Submission listener with STARTTLS, port 587 style (repeatable; RFC 6409): as
    /// --tls-listen, but clients start in plain text and AUTH is offered only after STARTTLS.
    /// Needs --tls-cert and a user database (--passwd-file or --auth-dovecot).
    #[arg(long, value_name = "ADDR", requires = "tls_cert")]
    pub submission_listen: Vec<SocketAddr>,

    /// Mailbox format.
    #[arg(short = 'f', long, value_enum, default_value_t = Format::Spool)]
    pub format: Format,

    /// Directory of the outbound queue [default: <spool-dir>/.queue].
    #[arg(short = 'q', long, value_name = "DIR")]
    pub queue_dir: Option<PathBuf>,

    #[arg(short = 'u', long, value_name = "FILE", long_help = USERS_HELP,
          help = "Accepted local users and aliases (format: see --help); default: any valid name")]
    /// The users file.
    pub users: Option<PathBuf>,

    /// Send all remote mail through this smarthost (HOST or HOST:PORT, port 25 by default)
    /// instead of looking up MX records.
    #[arg(long, value_name = "HOST[:PORT]", value_parser = parse_relay_host)]
    pub relay_host: Option<String>,

    #[arg(long, value_name = "FILE", requires = "relay_host", long_help = RELAY_PASSWORD_HELP,
          help = "Log in to --relay-host with the user and password listed for it in FILE \
                  (Postfix sasl_passwd format: see --help); STARTTLS required")]
    /// The relay host password file.
    pub relay_password_file: Option<PathBuf>,

    /// Name server to query (ADDR or ADDR:PORT) instead of the system's [default: the system's
    /// name servers].
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_dns_server)]
    pub dns_server: Option<SocketAddr>,

    /// Port for outbound delivery to MX hosts.
    #[arg(long, value_name = "PORT", default_value_t = 25,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub remote_port: u16,

    /// Which address family outbound connections try first when a mail host has both:
    /// `ipv4` (for a host without an IPv6 route), `ipv6`, or `any` (alternating, the first at
    /// random, as Postfix's `smtp_address_preference` default). The other family is still
    /// tried when the first fails.
    #[arg(long, value_name = "ipv4|ipv6|any", default_value = "any",
          value_parser = parse_address_preference)]
    pub address_preference: smtp_client::AddressPreference,

    /// Most deliveries to remote hosts at once, over all destinations (as Postfix's
    /// `default_process_limit`).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_deliveries: u32,

    /// Most deliveries at once to one destination domain (as Postfix's
    /// `default_destination_concurrency_limit`): slow or silent hosts of one domain cannot
    /// take the slots mail for other domains needs.
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub destination_concurrency: u32,

    /// Keep a session to a next hop open this long after its message, and send the next
    /// message for the same hop on it after RSET (as Postfix's connection cache); 0 closes
    /// each session after its message.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub connection_cache_time: Duration,

    /// Largest message accepted, in bytes (advertised as SIZE); 0 for no limit.
    #[arg(long, value_name = "BYTES", default_value_t = 26_214_400)]
    pub max_message_size: u64,

    /// Most recipients per message.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_recipients: u32,

    /// Most concurrent SMTP sessions over all listeners; more are answered `421 4.7.0` and
    /// closed. 0 for no limit (the open file limit still bounds them: see DAEMON.md).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Most concurrent sessions from one client address, an IPv6 client's /64 counted as one
    /// (loopback clients are not counted); more are answered `421 4.7.0` and closed. 0 for
    /// no limit.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub max_connections_per_ip: usize,

    /// Give up on a remote delivery and bounce after this long (e.g. 5d, 12h, 30m).
    #[arg(long, value_name = "DURATION", default_value = "5d", value_parser = parse_duration)]
    pub queue_lifetime: Duration,

    /// First retry delay of the queue; later retries wait longer (1m, 5m, 15m, 30m, 1h, 2h,
    /// 4h... with the default).
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration,
          hide = true)]
    pub retry_base: Duration,

    /// Log level: error, warn, info, debug, trace (or a tracing filter such as
    /// `smtp_server=debug`).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,

    /// Append the log to this file instead of writing it to stderr (under systemd, stderr goes
    /// to the journal). Reopened on SIGHUP, for logrotate's `postrotate`.
    #[arg(long, value_name = "FILE", conflicts_with = "syslog")]
    pub log_file: Option<PathBuf>,

    /// Send the log to the local syslog socket (default /dev/log; rsyslog's or journald's),
    /// facility mail, severity from each line's level, instead of stderr.
    #[arg(long, value_name = "SOCKET", num_args = 0..=1, default_missing_value = "/dev/log")]
    pub syslog: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (meant for a loopback address such as
    /// 127.0.0.1:9425; off by default). See DAEMON.md for the metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log line format: `text` (one line per event, `key=value` fields) or `json` (one JSON
    /// object per line, for log pipelines).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Mode of new mailbox directories, in octal (at least 0700); new message files get its
    /// read and write bits (2770 gives 0660 files). Existing directories are left as they are.
    #[arg(long, value_name = "OCTAL", default_value = "0700", value_parser = parse_mailbox_mode)]
    pub mailbox_mode: u32,

    /// Group (name from /etc/group, or number) given to new mailbox directories and files, so
    /// that a reader running as another user in that group (Dovecot, see DAEMON.md) can read
    /// them [default: the system's choice].
    #[arg(long, value_name = "NAME|GID", value_parser = parse_mailbox_group)]
    pub mailbox_group: Option<u32>,

    /// Owner (name from /etc/passwd, or number) given to new mailbox directories and files
    /// (the daemon must run as root to give files away; as `root:mail`-owned spools are)
    /// [default: the daemon's user].
    #[arg(long, value_name = "NAME|UID", value_parser = parse_mailbox_owner)]
    pub mailbox_owner: Option<u32>,

    #[arg(long, value_name = "FILE", long_help = PASSWD_FILE_HELP,
          conflicts_with = "auth_dovecot",
          help = "SMTP AUTH users from a Dovecot-format passwd-file (format: see --help)")]
    /// The passwd-file.
    pub passwd_file: Option<PathBuf>,

    #[arg(long, value_name = "PATH|inet:HOST:PORT", long_help = AUTH_DOVECOT_HELP,
          help = "SMTP AUTH users checked by Dovecot's auth service at this socket (see --help)")]
    /// Dovecot's auth socket.
    pub auth_dovecot: Option<Endpoint>,

    #[arg(long = "dkim-key", value_name = "DOMAIN:SELECTOR:KEYFILE",
          value_parser = crate::dkim::parse_key_spec, long_help = crate::cmd::dkim::DKIM_KEY_HELP,
          help = "DKIM-sign mail our users send From: DOMAIN with this key (repeatable; \
                  see --help)")]
    /// The DKIM signing keys.
    pub dkim_keys: Vec<crate::dkim::KeySpec>,

    #[arg(long, value_name = "unix:PATH|inet:IP:PORT", long_help = LMTP_HELP,
          help = "Deliver local mail by LMTP to this server (Dovecot's lmtp) instead of into \
                  --spool-dir (see --help)")]
    /// The LMTP server for local mail.
    pub lmtp: Option<smtp_client::lmtp::LmtpTarget>,

    /// Do not check SPF, DKIM, DMARC and ARC on mail from the public listener, and add no
    /// Authentication-Results: field (incoming ones claiming --hostname are still removed).
    /// The checks are on by default; they only record verdicts unless --spf-reject or
    /// --dmarc-reject is given.
    #[arg(long)]
    pub no_email_auth: bool,

    /// Refuse MAIL FROM with 550 5.7.23 when its SPF result is `fail` (the sender's domain
    /// says the client may not send for it: `-all`), on the public listener. Off by default;
    /// softfail, neutral, none and errors are accepted and recorded.
    #[arg(long, conflicts_with = "no_email_auth")]
    pub spf_reject: bool,

    /// Refuse a message with 550 5.7.1 at the end of DATA when it fails DMARC and its From:
    /// domain's policy is p=reject, on the public listener. Off by default: failures are
    /// accepted with dmarc=fail and the policy in the Authentication-Results: field.
    #[arg(long, conflicts_with = "no_email_auth")]
    pub dmarc_reject: bool,

    /// Largest message whose DKIM and ARC signatures are verified (mail-auth holds it in
    /// memory); a larger one gets dkim=policy for each signature, and DMARC counts them as
    /// temporary errors.
    #[arg(long, value_name = "BYTES", default_value_t = 10_485_760)]
    pub email_auth_max_size: u64,

    /// Time allowed for the DNS lookups of each check (SPF; DKIM and ARC; DMARC): after it
    /// the check gives temperror and the message is accepted (temporary errors never refuse
    /// mail).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub email_auth_timeout: Duration,
}

const LMTP_HELP: &str = "\
Deliver local mail by LMTP (RFC 2033) to this server instead of storing it under --spool-dir,
as Postfix's `mailbox_transport = lmtp:...`: `unix:/run/dovecot/lmtp` (or just the path) for
a Unix-domain socket, `inet:127.0.0.1:24` (`inet:[::1]:24`) for TCP; an IP address, not a
host name.

Local mail is queued first (the `250` means it is in the queue, durably) and handed to the
LMTP server at once; each recipient gets the server's own verdict: delivered, retried later
for a 4yz (a full mailbox, the server down), returned to the sender for a 5yz (unknown user).
A recipient is the mailbox name (after the users file's aliases) at the first --domain:
`alice@example.org`; give Dovecot `auth_username_format = %Ln` when its users are names.
Bounces to local senders go the same way. The spool is not written.";

impl Config {
    /// The queue directory, defaulted.
    pub fn queue_dir(&self) -> PathBuf {
        self.queue_dir
            .clone()
            .unwrap_or_else(|| self.spool_dir.join(".queue"))
    }

    /// The loopback listeners, defaulted.
    pub fn local_listen(&self) -> Vec<SocketAddr> {
        if self.local_listen.is_empty() {
            vec![
                "127.0.0.1:25".parse().expect("a valid literal"),
                "[::1]:25".parse().expect("a valid literal"),
            ]
        } else {
            self.local_listen.clone()
        }
    }

    /// The public listeners, defaulted (none with `--no-public`).
    pub fn public_listen(&self) -> Vec<SocketAddr> {
        if self.no_public {
            Vec::new()
        } else if self.public_listen.is_empty() {
            vec![
                "0.0.0.0:25".parse().expect("a valid literal"),
                "[::]:25".parse().expect("a valid literal"),
            ]
        } else {
            self.public_listen.clone()
        }
    }

    /// The users for SMTP AUTH (`--passwd-file` or `--auth-dovecot`), `None` without either.
    /// A passwd-file is read and checked now.
    ///
    /// # Errors
    ///
    /// The option and the passwd-file's problem (`file:line: ...`).
    pub fn authenticator(&self) -> Result<Option<Authenticator>, (&'static str, String)> {
        match (&self.passwd_file, &self.auth_dovecot) {
            (Some(p), _) => Authenticator::passwd_file(p.clone())
                .map(Some)
                .map_err(|e| ("--passwd-file", e)),
            (None, Some(e)) => Ok(Some(Authenticator::dovecot(e.clone()))),
            (None, None) => Ok(None),
        }
    }

    /// The host name, defaulted to the machine's, without a trailing dot (`mx.example.org.`
    /// is accepted for `--hostname`, but the greeting and EHLO take a domain without it).
    pub fn hostname(&self) -> String {
        let name = self.hostname.clone().unwrap_or_else(machine_hostname);
        match name.strip_suffix('.') {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => name,
        }
    }

    /// The local domains, lower case, defaulted to the host name.
    pub fn domains(&self) -> Vec<String> {
        let mut d: Vec<String> = if self.domains.is_empty() {
            vec![self.hostname()]
        } else {
            self.domains.clone()
        };
        for x in &mut d {
            *x = x.trim_end_matches('.').to_ascii_lowercase();
        }
        d.sort();
        d.dedup();
        d
    }
}

/// `5d`, `12h`, `30m`, `45s`, `1w`, combinations like `1h30m`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut rest = s;
    while !rest.is_empty() {
        let c = rest.chars().next().expect("rest is not empty");
        if c.is_ascii_digit() {
            num.push(c);
            rest = &rest[1..];
            continue;
        }
        let (unit, len) = if rest.starts_with("ms") {
            (0, 2)
        } else {
            let u = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                'w' => 604_800,
                _ => return Err(format!("{s:?}: unknown unit {c:?} (use s, m, h, d or w)")),
            };
            (u, 1)
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?}: a number must come before each unit"))?;
        num.clear();
        rest = &rest[len..];
        total = total
            .checked_add(n.checked_mul(unit).ok_or("duration too long")?)
            .ok_or("duration too long")?;
        if unit == 0 {
            // milliseconds: only for tests; add them exactly
            return Ok(Duration::from_secs(total) + Duration::from_millis(n));
        }
    }
    if !num.is_empty() {
        return Err(format!(
            "{s:?}: missing unit after {num} (use s, m, h, d or w)"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// A duration in the largest unit that divides it (`5d`, `90m`, `30s`).
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s == 0 {
        return format!("{}ms", d.as_millis());
    }
    for (unit, n) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if (s / n) * n == s {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

/// `ADDR` or `ADDR:PORT` (`[v6]:port`), port 53 by default.
pub fn parse_dns_server(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip = s.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{s:?} is not an IP address or ADDR:PORT"))
}

/// A domain name for `--domain` and `--hostname`: dot-separated labels of letters, digits
/// and hyphens (non-ASCII letters allowed), each 1 to 63 octets and not starting or ending with
/// a hyphen, at most 253 octets in all; one trailing dot is allowed.
pub fn parse_domain(s: &str) -> Result<String, String> {
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() {
        return Err("empty domain name".into());
    }
    if name.len() > 253 {
        return Err(format!("{s:?}: a domain name has at most 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!(
                "{s:?}: empty label (two dots in a row, or a leading dot)"
            ));
        }
        if label.len() > 63 {
            return Err(format!(
                "{s:?}: label {label:?} is longer than 63 characters"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("{s:?}: label {label:?} starts or ends with '-'"));
        }
        if let Some(c) = label.chars().find(|c| !(c.is_alphanumeric() || *c == '-')) {
            return Err(format!(
                "{s:?}: character {c:?} not allowed in a domain name"
            ));
        }
    }
    Ok(s.to_owned())
}

/// `--relay-host`: checked with [`parse_host_port`] (a domain name or IP address, a port from
/// 1 to 65535), kept as given.
fn parse_relay_host(s: &str) -> Result<String, String> {
    let (host, port) = parse_host_port(s)?;
    if port == 0 {
        return Err(format!("{s:?}: port 0"));
    }
    if host.parse::<std::net::IpAddr>().is_err() {
        parse_domain(&host)?;
    }
    Ok(s.to_owned())
}

/// `HOST` or `HOST:PORT` or `[v6]:PORT`, port 25 by default.
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok((a.ip().to_string(), a.port()));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("missing ]")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
            None if after.is_empty() => 25,
            None => return Err(format!("unexpected {after:?}")),
        };
        return Ok((host.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => {
            let port = p.parse().map_err(|_| format!("bad port {p:?}"))?;
            Ok((h.to_owned(), port))
        }
        _ if s.is_empty() => Err("empty host".into()),
        _ => Ok((s.to_owned(), 25)),
    }
}

#[cfg(test)]
fn parse_config<const N: usize>(args: [&str; N]) -> Result<Config, clap::Error> {
    Cli::try_parse_from(args).map(|c| c.daemon)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hostname_loses_its_trailing_dot() {
        let c = parse_config(["smtp-server", "--hostname", "mx.example.org."]).unwrap();
        assert_eq!(c.hostname(), "mx.example.org");
        let c = parse_config(["smtp-server", "--hostname", "mx.example.org"]).unwrap();
        assert_eq!(c.hostname(), "mx.example.org");
        assert!(parse_config(["smtp-server", "--hostname", "my_host"]).is_err());
        // Whatever the machine is called, the default is something a greeting can carry.
        assert!(smtp_proto::address::parse_domain(&machine_hostname()).is_ok());
    }

    #[test]
    fn auth_options_and_subcommand() {
        let c = parse_config(["smtp-server"]).unwrap();
        assert!(c.authenticator().unwrap().is_none());
        let c =
            parse_config(["smtp-server", "--auth-dovecot", "/run/dovecot/auth-client"]).unwrap();
        assert_eq!(
            c.auth_dovecot,
            Some(Endpoint::Unix("/run/dovecot/auth-client".into()))
        );
        assert!(c.authenticator().unwrap().is_some());
        let e = parse_config(["smtp-server", "--passwd-file", "/nonexistent/users"])
            .unwrap()
            .authenticator()
            .unwrap_err();
        assert_eq!(e.0, "--passwd-file");
        assert!(e.1.contains("/nonexistent/users"), "{}", e.1);
        let both = ["smtp-server", "--passwd-file", "f", "--auth-dovecot", "s"];
        assert!(parse_config(both).is_err());

        let cli = Cli::try_parse_from(["smtp-server", "passwd", "Alice@example.org"]).unwrap();
        let Some(Command::Passwd(p)) = cli.command else {
            panic!("passwd subcommand expected")
        };
        assert_eq!(
            (p.user.as_str(), p.scheme),
            ("Alice@example.org", Scheme::Argon2id)
        );
        let cli = Cli::try_parse_from(["smtp-server", "passwd", "a", "--scheme", "blf-crypt"]);
        let Some(Command::Passwd(p)) = cli.unwrap().command else {
            panic!("passwd subcommand expected")
        };
        assert_eq!(p.scheme, Scheme::BlfCrypt);
        // Daemon options and a subcommand do not mix.
        assert!(Cli::try_parse_from(["smtp-server", "-d", "x", "passwd", "a"]).is_err());
        assert!(Cli::try_parse_from(["smtp-server", "passwd"]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("5d").unwrap(),
            Duration::from_secs(5 * 86400)
        );
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5d3").is_err());
    }

    #[test]
    fn host_ports() {
        assert_eq!(
            parse_host_port("mx.example").unwrap(),
            ("mx.example".into(), 25)
        );
        assert_eq!(parse_host_port("mx:587").unwrap(), ("mx".into(), 587));
        assert_eq!(parse_host_port("[::1]:2525").unwrap(), ("::1".into(), 2525));
        assert_eq!(
            parse_dns_server("127.0.0.1").unwrap(),
            "127.0.0.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_dns_server("[::1]:5353").unwrap(),
            "[::1]:5353".parse().unwrap()
        );
    }

    #[test]
    fn defaults() {
        let c = parse_config(["smtp-server"]).unwrap();
        assert_eq!(c.spool_dir, PathBuf::from("/var/spool/mail/"));
        assert_eq!(c.queue_dir(), PathBuf::from("/var/spool/mail/.queue"));
        assert_eq!(c.local_listen().len(), 2);
        assert_eq!(c.public_listen().len(), 2);
        assert_eq!(c.max_message_size, 26_214_400);
        assert_eq!(c.queue_lifetime, Duration::from_secs(5 * 86400));
        let c = parse_config(["smtp-server", "--no-public", "-s", "Example.ORG."]).unwrap();
        assert!(c.public_listen().is_empty());
        assert_eq!(c.domains(), vec!["example.org".to_string()]);
    }

    #[test]
    fn domain_names() {
        for good in [
            "localhost",
            "Example.ORG.",
            "mx-1.example.org",
            "bücher.example",
            "a",
        ] {
            assert_eq!(parse_domain(good).unwrap(), good);
        }
        let long_label = "a".repeat(64);
        let long_name = ["a"; 128].join("."); // 255 characters
        for bad in [
            "",
            ".",
            "a b",
            "a..b",
            ".a",
            "-a.org",
            "a-.org",
            "a_b.org",
            "a/b",
            "a@b",
            "[127.0.0.1]",
            &long_label,
            &long_name,
        ] {
            assert!(parse_domain(bad).is_err(), "{bad:?}");
        }
        for good in [
            "mx.example.org",
            "mx:587",
            "127.0.0.1:2525",
            "[::1]:2525",
            "[::1]",
        ] {
            assert!(parse_relay_host(good).is_ok(), "{good:?}");
        }
        for bad in [":25", "a b:25", "mx:0", "mx:x", "", "[::1]x"] {
            assert!(parse_relay_host(bad).is_err(), "{bad:?}");
        }
    }
}

/// `--mailbox-mode`: octal digits, at most `7777`, with the owner's `rwx` (the daemon must be
/// able to deliver into what it creates).
fn parse_mailbox_mode(s: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777 && !s.is_empty())
        .ok_or_else(|| format!("{s:?}: not an octal mode such as 0700 or 2770"))?;
    if mode & 0o700 != 0o700 {
        return Err(format!(
            "{s:?}: the owner needs rwx (0700) on mailbox directories"
        ));
    }
    Ok(mode)
}

/// `--mailbox-group`: a number, or a name looked up in `/etc/group` (groups only known to
/// NSS services such as LDAP: give the number).
fn parse_mailbox_group(s: &str) -> Result<u32, String> {
    let text = std::fs::read_to_string("/etc/group").unwrap_or_default();
    group_id(s, &text)
}

/// `--mailbox-owner`: a number, or a name looked up in `/etc/passwd`.
fn parse_mailbox_owner(s: &str) -> Result<u32, String> {
    let text = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    id_from_file(s, &text, "user", "/etc/passwd")
}

fn group_id(s: &str, etc_group: &str) -> Result<u32, String> {
    id_from_file(s, etc_group, "group", "/etc/group")
}

/// A numeric id, or the third field of the line of `/etc/passwd` or `/etc/group` (`text`)
/// whose first field is `s`.
fn id_from_file(s: &str, text: &str, what: &str, file: &str) -> Result<u32, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u32>()
            .ok()
            .filter(|g| *g != u32::MAX)
            .ok_or_else(|| format!("{s:?}: not a valid {what} id"));
    }
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(name, _)| *name == s)
        .and_then(|(_, gid)| gid.parse::<u32>().ok())
        .ok_or_else(|| format!("{s:?}: no such {what} in {file} (give the number)"))
}

#[cfg(test)]
mod mailbox_option_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mailbox_mode_and_group() {
        let c = parse_config(["smtp-server"]).unwrap();
        assert_eq!((c.mailbox_mode, c.mailbox_group), (0o700, None));
        let c = parse_config([
            "smtp-server",
            "--mailbox-mode",
            "2770",
            "--mailbox-group",
            "8",
        ])
        .unwrap();
        assert_eq!((c.mailbox_mode, c.mailbox_group), (0o2770, Some(8)));
        for bad in ["", "9", "0750x", "10000", "0070", "0600"] {
            assert!(parse_mailbox_mode(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_mailbox_mode("0750").unwrap(), 0o750);
        let etc = "root:x:0:\nmail:x:8:\nbroken\ndovecot:x:117:alice,bob\n";
        assert_eq!(group_id("mail", etc).unwrap(), 8);
        assert_eq!(group_id("dovecot", etc).unwrap(), 117);
        assert_eq!(group_id("12", etc).unwrap(), 12);
        assert!(group_id("nobody", etc).is_err());
        assert!(group_id("4294967295", etc).is_err());
        assert!(group_id("", etc).is_err());
        let passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n";
        assert_eq!(id_from_file("nobody", passwd, "user", "p").unwrap(), 65534);
        assert_eq!(id_from_file("1000", passwd, "user", "p").unwrap(), 1000);
        let e = id_from_file("alice", passwd, "user", "/etc/passwd").unwrap_err();
        assert!(e.contains("no such user in /etc/passwd"), "{e}");
    }
}
