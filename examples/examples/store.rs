//! `store`: an SMTP server that stores mail for one domain in Maildir — the smallest useful
//! receiving server written against the library's docs, and the pattern for durable storage
//! from async code (write as the content arrives, commit off the runtime's workers).
//!
//! ```text
//! cargo run --example store -- --domain example.org --maildir ./mail --listen 127.0.0.1:2525
//! ```
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use mailstore::{maildir::Maildir, MailboxName, Store as _};
use smtp_server::smtp_proto::address::ForwardPath;
use smtp_server::smtp_proto::param::RcptParams;
use smtp_server::{
    BodyStream, ConnectionInfo, DataOutcome, EnhancedCode, Envelope, Handler, Refusal, Server,
    SessionHandler,
};

/// Store mail for one domain in `<maildir>/<user>/{tmp,new,cur}`.
#[derive(Parser)]
struct Args {
    /// The domain mail is accepted for.
    #[arg(long)]
    domain: String,
    /// Where the mailboxes are.
    #[arg(long, default_value = "mail")]
    maildir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:2525")]
    listen: SocketAddr,
}

const NOT_OURS: Refusal = Refusal::fixed(
    554,
    Some(EnhancedCode::fixed(5, 7, 1)),
    "Relay access denied",
);
const BAD_MAILBOX: Refusal =
    Refusal::fixed(550, Some(EnhancedCode::fixed(5, 1, 1)), "No such mailbox");

#[derive(Clone)]
struct Mail {
    domain: String,
    store: Maildir,
}

impl Handler for Mail {
    type Session = Mail;
    async fn connect(&self, _: &ConnectionInfo) -> Result<Mail, Refusal> {
        Ok(self.clone())
    }
}

/// The mailbox of a recipient in our domain.
fn mailbox(to: &ForwardPath, domain: &str) -> Result<MailboxName, Refusal> {
    let ForwardPath::Mailbox(m) = to else {
        return MailboxName::from_local_part("postmaster").map_err(|_| BAD_MAILBOX);
    };
    if !m
        .domain()
        .as_name()
        .is_some_and(|d| d.eq_ignore_ascii_case(domain))
    {
        return Err(NOT_OURS);
    }
    MailboxName::from_local_part(&m.local_part()).map_err(|_| BAD_MAILBOX)
}

impl SessionHandler for Mail {
    async fn rcpt(&mut self, to: &ForwardPath, _: &RcptParams) -> Result<(), Refusal> {
        mailbox(to, &self.domain).map(drop)
    }

    async fn data(&mut self, env: &Envelope, body: &mut BodyStream<'_>) -> DataOutcome {
        let failed = || DataOutcome::temporary_failure("Local error, try again later");
        let Ok(mut pending) = self.store.begin() else {
            return failed();
        };
        // Writes go to the page cache through a buffer (no fsync): as short as a socket write.
        loop {
            match body.chunk().await {
                Ok(Some(piece)) if pending.write_all(piece).is_ok() => {}
                Ok(Some(_)) => return failed(),
                Ok(None) => break,
                // The session has answered already; dropping `pending` removes the file.
                Err(_) => return failed(),
            }
        }
        let mut names: Vec<MailboxName> = env
            .rcpts
            .iter()
            .filter_map(|(to, _)| mailbox(to, &self.domain).ok())
            .collect();
        names.dedup();
        // The commit fsyncs the file and each mailbox directory: off the async workers.
        let store = self.store.clone();
        let committed =
            tokio::task::spawn_blocking(move || store.commit(&mut pending, &names)).await;
        match committed {
            Ok(Ok(results)) if results.iter().all(Result::is_ok) => DataOutcome::accepted("Stored"),
            _ => failed(),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let store = Maildir::open(&args.maildir)?;
    Server::builder(Mail {
        domain: args.domain,
        store,
    })
    .listen(args.listen)
    .build()?
    .serve(async {
        tokio::signal::ctrl_c().await.ok();
    })
    .await?;
    Ok(())
}
