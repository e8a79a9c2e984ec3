//! An SMTP server on blocking `std::net`, one thread per connection, with no async runtime:
//! the sans-IO [`smtp_proto::session::Session`] does all the protocol work, this file only
//! moves bytes. It prints each message's envelope and size.
//!
//! ```sh
//! cargo run --example blocking -- 127.0.0.1:2525
//! swaks --server 127.0.0.1:2525 --to bob@example.org
//! ```
//!
//! No TLS here (STARTTLS is not offered). Timeouts: the session says by when the client must
//! send more ([`Session::poll_timeout`]: 5 minutes for a command, 3 inside a message, by
//! default), the socket's read timeout is set to what is left of that, and when a read times
//! out [`Session::handle_timeout`] queues `421 4.4.2` once the deadline has really passed.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use smtp_proto::session::{Event, Session, SessionConfig};

fn serve(mut stream: TcpStream) -> io::Result<()> {
    let mut config = SessionConfig::new("blocking.example");
    config.max_message_size = Some(10 << 20);
    let mut session = Session::new(config);
    let mut buf = [0u8; 8192];
    let (mut from, mut rcpts, mut size) = (String::new(), Vec::new(), 0usize);
    loop {
        // Handle everything the bytes so far allow, answering policy questions as we go.
        while let Some(event) = session.poll_event() {
            match event {
                Event::Mail { from: f, .. } => {
                    from = f.to_string();
                    rcpts.clear();
                    size = 0;
                }
                Event::Rcpt { to, .. } => rcpts.push(to.to_string()),
                Event::Body(chunk) => size += chunk.len(),
                Event::DataEnd { .. } => println!("{from} -> {} ({size} bytes)", rcpts.join(", ")),
                _ => {}
            }
            // This server accepts whatever the session itself did not refuse.
            session.accept();
        }
        // Flush: pipelined replies leave in one write.
        stream.write_all(session.output())?;
        session.clear_output();
        if session.is_closed() {
            return Ok(());
        }
        // The session waits for the client (no decision is pending here): wait as long as it
        // allows. A zero read timeout means "none" to std, so at least a millisecond.
        let now = Instant::now();
        let wait = session
            .poll_timeout(now)
            .map_or(session.config().command_timeout, |deadline| {
                deadline.saturating_duration_since(now)
            });
        stream.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => session.feed(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                // Early wake-ups (a signal) change nothing: the loop waits again.
                session.handle_timeout(Instant::now());
            }
            Err(e) => return Err(e),
        }
    }
}

fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:2525".into());
    let listener = TcpListener::bind(&addr)?;
    eprintln!("listening on {addr}");
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || {
            if let Err(e) = serve(stream) {
                eprintln!("connection: {e}");
            }
        });
    }
    Ok(())
}
