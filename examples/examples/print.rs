//! `print`: an SMTP server that prints each message with its envelope on standard output.
//!
//! ```text
//! cargo run --example print -- --listen 127.0.0.1:2525
//! ```
//! Each message is printed as a block of envelope lines, a blank line, the message, and a
//! line `.`; messages are written whole (one lock on stdout), so parallel sessions do not
//! interleave.

use std::io::Write;
use std::net::SocketAddr;

use clap::Parser;
use smtp_proto::Refusal;
use smtp_server::{
    BodyStream, ConnectionInfo, DataOutcome, Envelope, Handler, Server, SessionHandler, TlsInfo,
};

/// Print each message with its envelope.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (repeatable).
    #[arg(short, long, default_value = "127.0.0.1:2525")]
    listen: Vec<SocketAddr>,
    /// Name in the greeting and EHLO reply.
    #[arg(long, default_value = "print.localhost")]
    hostname: String,
    /// Log filter (tracing-subscriber EnvFilter syntax), logs go to standard error.
    #[arg(long, default_value = "info")]
    log: String,
}

struct Printer;

struct PrintSession {
    info: ConnectionInfo,
}

impl Handler for Printer {
    type Session = PrintSession;

    async fn connect(&self, info: &ConnectionInfo) -> Result<PrintSession, Refusal> {
        Ok(PrintSession { info: info.clone() })
    }
}

impl SessionHandler for PrintSession {
    fn tls_started(&mut self, info: &TlsInfo) {
        self.info.tls = Some(info.clone());
    }

    async fn data(&mut self, env: &Envelope, body: &mut BodyStream<'_>) -> DataOutcome {
        let mut text = format!(
            "Session: {} (listener {})\nPeer: {}\nHelo: {}\nTLS: {}\nMail-From: {}\n",
            self.info.session_id,
            self.info.listener,
            env.peer,
            env.helo,
            env.tls.as_ref().map_or_else(
                || "no".to_owned(),
                |t| format!("{} {}", t.protocol, t.cipher)
            ),
            env.from,
        );
        for (to, _) in &env.rcpts {
            text.push_str(&format!("Rcpt-To: {to}\n"));
        }
        text.push('\n');
        let mut message = Vec::new();
        loop {
            match body.chunk().await {
                Ok(Some(piece)) => message.extend_from_slice(piece),
                Ok(None) => break,
                // Lost (too big, client gone...): the client was answered; print nothing.
                Err(_) => return DataOutcome::temporary_failure("Message lost"),
            }
        }
        let mut out = std::io::stdout().lock();
        let written = out
            .write_all(text.as_bytes())
            .and_then(|()| out.write_all(&message))
            .and_then(|()| out.write_all(b".\n"))
            .and_then(|()| out.flush());
        match written {
            Ok(()) => DataOutcome::accepted("Message printed"),
            Err(_) => DataOutcome::temporary_failure("Cannot write to standard output"),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let mut builder = Server::builder(Printer).hostname(args.hostname);
    for addr in args.listen {
        builder = builder.listen(addr);
    }
    let server = builder.bind().await?;
    for addr in server.local_addrs() {
        eprintln!("print: listening on {addr}");
    }
    server
        .serve(async {
            tokio::signal::ctrl_c().await.ok();
        })
        .await?;
    Ok(())
}
