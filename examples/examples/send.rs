//! Sends one message from the command line, to the recipients' mail hosts (MX lookup) or
//! through a given host.
//!
//! ```text
//! # Through a relay (or a local test server) on port 2525, message from a file:
//! cargo run -p smtp-examples --example send -- --host 127.0.0.1:2525 \
//!     --from alice@example.org --to bob@example.net --file message.eml
//!
//! # To the recipient domain's MX hosts, asking a given name server, message on stdin:
//! printf 'Subject: hi\r\n\r\nHello\r\n' | cargo run -p smtp-examples --example send -- \
//!     --dns-server 127.0.0.1:5353 --from alice@example.org --to bob@example.net
//!
//! # Through a submission server, logging in after STARTTLS (password from the environment):
//! SMTP_PASSWORD=s3cret cargo run -p smtp-examples --example send -- --host smtp.example.org:587 \
//!     --auth-user alice@example.org --from alice@example.org --to bob@example.net < message.eml
//! ```
//!
//! With `--auth-user` the password comes from the `SMTP_PASSWORD` environment variable (never
//! the command line, which other users can read in `ps`), and is sent only over TLS unless
//! `--allow-plaintext-auth` is given. A failed login defers every recipient (exit 75).
//!
//! Recipients in several domains are delivered domain by domain. One line per recipient tells
//! what happened. Exit status: 0 when every recipient got the message, 75 (`EX_TEMPFAIL`) when
//! some failed transiently (and none permanently), 1 when some failed permanently, 2 for bad
//! arguments.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use smtp_client::text::SafeReply;
use smtp_client::{
    AddressOrder, ClientConfig, Credentials, Deliverer, Envelope, RcptOutcome, Recipient, Resolver,
    TlsPolicy,
};
use smtp_proto::address::{parse_mailbox, ForwardPath, ReversePath};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Tls {
    /// Use STARTTLS when offered, even with an unverifiable certificate (as between MX
    /// hosts; no protection against an active attacker).
    Opportunistic,
    /// Require STARTTLS and a certificate valid for the host name.
    Require,
    /// Implicit TLS (port 465, RFC 8314), with a certificate valid for the host name.
    Implicit,
    /// Never use TLS.
    None,
}

/// Send one message by SMTP.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Sender address (`alice@example.org`); empty for the null sender `<>`.
    #[arg(short, long)]
    from: String,
    /// Recipient address; repeat for several.
    #[arg(short, long = "to", required = true)]
    to: Vec<String>,
    /// Read the message (headers and body) from this file instead of standard input.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Send everything through this host instead of looking up MX records:
    /// `HOST:PORT`, `IP:PORT` or `[IPv6]:PORT`.
    #[arg(short = 'H', long)]
    host: Option<String>,
    /// Name server to ask for MX records (`IP:PORT`) instead of the system's.
    #[arg(long)]
    dns_server: Option<SocketAddr>,
    /// Port of the MX hosts.
    #[arg(short, long, default_value_t = 25)]
    port: u16,
    /// Name to give in EHLO.
    #[arg(long, default_value = "localhost")]
    helo: String,
    /// TLS policy.
    #[arg(long, value_enum, default_value_t = Tls::Opportunistic)]
    tls: Tls,
    /// Connect over IPv4 only (for networks without an IPv6 route).
    #[arg(short = '4', long)]
    ipv4_only: bool,
    /// Log in (SMTP AUTH) as this user at --host; the password is read from `SMTP_PASSWORD`.
    /// Needs --host: a password is never given to a recipient domain's MX hosts.
    #[arg(long, value_name = "USER", requires = "host")]
    auth_user: Option<String>,
    /// Also log in over a connection without TLS, sending the password in clear text.
    #[arg(long, requires = "auth_user")]
    allow_plaintext_auth: bool,
}

/// Splits `HOST:PORT` (the host may be `[v6]`).
fn split_host(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?}: expected HOST:PORT"))?;
    let port = port
        .parse()
        .map_err(|_| format!("{text:?}: bad port {port:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_owned(), port))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("send: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, String> {
    let from = if args.from.is_empty() {
        ReversePath::Null
    } else {
        let mailbox = parse_mailbox(&args.from).map_err(|e| format!("--from: {e}"))?;
        ReversePath::Mailbox(mailbox.into_owned())
    };
    let mut by_domain: BTreeMap<String, Vec<Recipient>> = BTreeMap::new();
    for to in &args.to {
        let mailbox = parse_mailbox(to).map_err(|e| format!("--to {to}: {e}"))?;
        let domain = mailbox.domain().to_string().to_ascii_lowercase();
        by_domain
            .entry(domain)
            .or_default()
            .push(ForwardPath::Mailbox(mailbox.into_owned()).into());
    }

    let mut message = Vec::new();
    match &args.file {
        Some(path) => {
            message = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => {
            std::io::stdin()
                .read_to_end(&mut message)
                .map_err(|e| format!("standard input: {e}"))?;
        }
    }

    let resolver = match args.dns_server {
        Some(addr) => Resolver::with_nameserver(addr),
        None => Resolver::system(),
    }
    .map_err(|e| format!("resolver: {e}"))?;
    let resolver = if args.ipv4_only {
        resolver.with_address_order(AddressOrder::Ipv4Only)
    } else {
        resolver
    };
    let tls = match args.tls {
        Tls::Opportunistic => TlsPolicy::OpportunisticUnverified,
        Tls::Require => TlsPolicy::RequireVerified,
        Tls::Implicit => TlsPolicy::Implicit,
        Tls::None => TlsPolicy::None,
    };
    let mut config = ClientConfig::new(args.helo).with_tls(tls);
    if let Some(user) = args.auth_user {
        let password = std::env::var("SMTP_PASSWORD")
            .map_err(|_| "--auth-user: set the password in SMTP_PASSWORD".to_owned())?;
        let mut credentials =
            Credentials::new(user, password).map_err(|e| format!("--auth-user: {e}"))?;
        if args.allow_plaintext_auth {
            credentials = credentials.allow_plaintext_auth();
        }
        config = config.with_credentials(credentials);
    }
    let mut deliverer = Deliverer::new(resolver, config).with_port(args.port);
    if let Some(host) = &args.host {
        let (host, port) = split_host(host)?;
        deliverer = deliverer.with_smarthost(host, port);
    }

    let (mut transient, mut permanent) = (false, false);
    for (domain, rcpts) in by_domain {
        let envelope = Envelope::with_recipients(from.clone(), rcpts);
        let report = deliverer.deliver(&domain, &envelope, &message).await;
        let via = match &report.delivered_via {
            Some((host, addr)) => {
                let tls = if report.tls { "TLS" } else { "clear text" };
                format!(" via {host} [{addr}], {tls}")
            }
            None => String::new(),
        };
        for (rcpt, outcome) in &report.rcpts {
            match outcome {
                // The server's text, escaped: it could hold terminal control sequences.
                RcptOutcome::Delivered(reply) => {
                    println!("{rcpt}: delivered{via}: {}", SafeReply(reply));
                }
                RcptOutcome::Transient(f) => {
                    transient = true;
                    println!("{rcpt}: deferred ({}){via}: {f}", f.enhanced);
                }
                RcptOutcome::Permanent(f) => {
                    permanent = true;
                    println!("{rcpt}: bounced ({}){via}: {f}", f.enhanced);
                }
            }
        }
    }
    Ok(if permanent {
        ExitCode::FAILURE
    } else if transient {
        ExitCode::from(75)
    } else {
        ExitCode::SUCCESS
    })
}
