//! `sink`: an SMTP server that accepts every message and discards it — the library's
//! "hello world", and the receiver of the throughput benchmark.
//!
//! ```text
//! cargo run --release --example sink -- --listen 127.0.0.1:2525 --listen '[::1]:2525'
//! ```
//! Stops on Ctrl-C or SIGTERM (sessions receiving a message may finish it).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use smtp_proto::Refusal;
use smtp_server::{
    BodyStream, ConnectionInfo, DataOutcome, Envelope, Handler, Limits, Server, SessionHandler,
    TlsConfig,
};

/// Accept every message and discard it.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (repeatable).
    #[arg(short, long, default_value = "127.0.0.1:2525")]
    listen: Vec<SocketAddr>,
    /// Address to listen on with implicit TLS (repeatable; needs --tls-cert and --tls-key).
    #[arg(long)]
    implicit_tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain: enables STARTTLS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Name in the greeting and EHLO reply.
    #[arg(long, default_value = "sink.localhost")]
    hostname: String,
    /// Most concurrent connections (default: no limit).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Most concurrent connections from one IP address (default: no limit).
    #[arg(long)]
    max_connections_per_ip: Option<usize>,
    /// Largest message in octets.
    #[arg(long, default_value_t = 25 << 20)]
    max_message_size: u64,
    /// Log filter (tracing-subscriber EnvFilter syntax), e.g. `info` to log every message.
    #[arg(long, default_value = "warn")]
    log: String,
    /// Runtime worker threads; 0 for one per CPU core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

struct Sink;
struct SinkSession;

impl Handler for Sink {
    type Session = SinkSession;

    async fn connect(&self, _info: &ConnectionInfo) -> Result<SinkSession, Refusal> {
        Ok(SinkSession)
    }
}

impl SessionHandler for SinkSession {
    async fn data(&mut self, _envelope: &Envelope, body: &mut BodyStream<'_>) -> DataOutcome {
        // Read to the end so the reply means "received"; errors were answered already.
        while let Ok(Some(_)) = body.chunk().await {}
        DataOutcome::accepted("Message accepted and discarded")
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 0 {
                b.worker_threads(n);
            }
            b.enable_all().build()?
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let mut limits = Limits::default();
    limits.max_connections = args.max_connections;
    limits.max_connections_per_ip = args.max_connections_per_ip;
    limits.max_message_size = Some(args.max_message_size);
    let mut builder = Server::builder(Sink).hostname(args.hostname).limits(limits);
    for addr in args.listen {
        builder = builder.listen(addr);
    }
    for addr in args.implicit_tls_listen {
        builder = builder.implicit_tls_listen(addr);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        builder = builder.tls(TlsConfig::from_pem_files(cert, key)?);
    }
    let server = builder.bind().await?;
    for addr in server.local_addrs() {
        eprintln!("sink: listening on {addr}");
    }
    server.serve(stop_signal()).await?;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending().await,
            }
        } => {}
    }
}
