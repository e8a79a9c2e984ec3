//! The session's deadlines (`poll_timeout` / `handle_timeout`) with synthetic instants: no
//! clock is read, no test sleeps.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use smtp_proto::session::{Event, Session, SessionConfig};
use smtp_proto::Reply;

const CMD: Duration = Duration::from_secs(300);
const DATA: Duration = Duration::from_secs(180);
const TIMEOUT_421: &[u8] = b"421 4.4.2 mx.test Timeout exceeded, closing connection\r\n";

fn config() -> SessionConfig {
    SessionConfig::new("mx.test")
}

/// Answers every event with `accept` until the session needs input; returns the output.
fn pump(s: &mut Session) -> String {
    while let Some(ev) = s.poll_event() {
        if ev.needs_decision() {
            s.accept();
        }
    }
    let out = String::from_utf8_lossy(s.output()).into_owned();
    s.clear_output();
    out
}

/// A session that sent its greeting and waits for the first command.
fn greeted(config: SessionConfig) -> Session {
    let mut s = Session::new(config);
    assert!(pump(&mut s).starts_with("220 "));
    s
}

fn send(s: &mut Session, bytes: &[u8]) -> String {
    s.feed(bytes);
    pump(s)
}

#[test]
fn defaults_are_five_minutes_for_commands_and_three_for_data() {
    let c = config();
    assert_eq!(c.command_timeout, CMD);
    assert_eq!(c.data_timeout, DATA);
}

#[test]
fn no_deadline_before_the_first_event_nor_while_connect_is_decided() {
    let mut s = Session::new(config());
    let t0 = Instant::now();
    assert_eq!(s.poll_timeout(t0), None);
    assert!(matches!(s.poll_event(), Some(Event::Connect)));
    // The server is deciding: the client has nothing to do.
    assert_eq!(s.poll_timeout(t0), None);
    assert!(!s.handle_timeout(t0 + CMD * 10));
    assert!(s.output().is_empty());
}

#[test]
fn command_deadline_fires_with_exact_421_bytes() {
    let mut s = greeted(config());
    let t0 = Instant::now();
    assert_eq!(s.poll_timeout(t0), Some(t0 + CMD));
    // Asking again later does not move it: only input does.
    assert_eq!(
        s.poll_timeout(t0 + Duration::from_secs(100)),
        Some(t0 + CMD)
    );
    // Early wake-ups change nothing.
    assert!(!s.handle_timeout(t0));
    assert!(!s.handle_timeout(t0 + CMD - Duration::from_nanos(1)));
    assert!(s.output().is_empty() && !s.is_closed());
    assert!(s.handle_timeout(t0 + CMD));
    assert_eq!(s.output(), TIMEOUT_421);
    assert!(s.is_closed());
    assert_eq!(s.poll_timeout(t0 + CMD), None);
    // Once closed, nothing more is queued.
    s.clear_output();
    assert!(!s.handle_timeout(t0 + CMD * 2));
    assert!(s.output().is_empty());
}

#[test]
fn deadline_moves_with_input() {
    let mut s = greeted(config());
    let t0 = Instant::now();
    assert_eq!(s.poll_timeout(t0), Some(t0 + CMD));
    // Half a command at t0 + 200 s: the clock restarts there.
    let t1 = t0 + Duration::from_secs(200);
    assert_eq!(send(&mut s, b"EHLO cli"), "");
    assert_eq!(s.poll_timeout(t1), Some(t1 + CMD));
    // The old deadline has passed but no longer applies.
    assert!(!s.handle_timeout(t0 + CMD));
    // The rest of the line: EHLO is answered, and the next command has its own deadline.
    let t2 = t1 + Duration::from_secs(250);
    assert!(send(&mut s, b"ent.test\r\n").starts_with("250-mx.test"));
    assert_eq!(s.poll_timeout(t2), Some(t2 + CMD));
    assert!(!s.handle_timeout(t1 + CMD));
    assert!(s.handle_timeout(t2 + CMD));
    assert_eq!(s.output(), TIMEOUT_421);
}

#[test]
fn empty_input_does_not_move_the_deadline() {
    let mut s = greeted(config());
    let t0 = Instant::now();
    assert_eq!(s.poll_timeout(t0), Some(t0 + CMD));
    s.feed(b"");
    assert_eq!(s.poll_timeout(t0 + Duration::from_secs(10)), Some(t0 + CMD));
}

#[test]
fn data_phase_uses_the_data_timeout() {
    let mut c = config();
    c.command_timeout = Duration::from_secs(30);
    c.data_timeout = Duration::from_secs(90);
    let (cmd, data) = (c.command_timeout, c.data_timeout);
    let mut s = greeted(c);
    let t0 = Instant::now();
    send(&mut s, b"EHLO c.test\r\n");
    send(&mut s, b"MAIL FROM:<a@example.net>\r\n");
    assert_eq!(s.poll_timeout(t0), Some(t0 + cmd));
    send(&mut s, b"RCPT TO:<b@example.org>\r\n");
    assert_eq!(
        send(&mut s, b"DATA\r\n"),
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    assert!(s.is_receiving_data());
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(s.poll_timeout(t1), Some(t1 + data));
    send(&mut s, b"Subject: slow\r\n");
    let t2 = t1 + Duration::from_secs(60);
    assert_eq!(s.poll_timeout(t2), Some(t2 + data));
    // Past the command timeout but within the data timeout: still fine.
    assert!(!s.handle_timeout(t2 + cmd));
    assert!(s.handle_timeout(t2 + data));
    assert_eq!(s.output(), TIMEOUT_421);
    assert!(s.is_closed());
}

#[test]
fn back_to_the_command_timeout_after_the_message() {
    let mut s = greeted(config());
    send(&mut s, b"EHLO c.test\r\n");
    send(&mut s, b"MAIL FROM:<a@example.net>\r\n");
    send(&mut s, b"RCPT TO:<b@example.org>\r\n");
    send(&mut s, b"DATA\r\n");
    let out = send(&mut s, b"hi\r\n.\r\n");
    assert_eq!(out, "250 2.0.0 Message accepted\r\n");
    let t = Instant::now();
    assert_eq!(s.poll_timeout(t), Some(t + CMD));
}

#[test]
fn bdat_chunks_and_the_gaps_between_them_use_the_data_timeout() {
    let mut s = greeted(config());
    send(&mut s, b"EHLO c.test\r\n");
    send(&mut s, b"MAIL FROM:<a@example.net>\r\n");
    send(&mut s, b"RCPT TO:<b@example.org>\r\n");
    let t = Instant::now();
    // Inside a chunk.
    assert_eq!(send(&mut s, b"BDAT 10\r\nabc"), "");
    assert_eq!(s.poll_timeout(t), Some(t + DATA));
    // Between chunks.
    assert_eq!(send(&mut s, b"defghij"), "250 2.0.0 10 octets received\r\n");
    let t = t + Duration::from_secs(5);
    assert_eq!(s.poll_timeout(t), Some(t + DATA));
    assert_eq!(
        send(&mut s, b"BDAT 0 LAST\r\n"),
        "250 2.0.0 Message accepted\r\n"
    );
    let t = t + Duration::from_secs(5);
    assert_eq!(s.poll_timeout(t), Some(t + CMD));
}

#[test]
fn no_deadline_while_a_decision_is_pending_and_a_fresh_one_after_it() {
    let mut s = greeted(config());
    let t0 = Instant::now();
    assert_eq!(s.poll_timeout(t0), Some(t0 + CMD));
    s.feed(b"EHLO c.test\r\n");
    // EHLO ends a pipelining group: first the check that nothing follows it.
    assert!(matches!(s.poll_event(), Some(Event::SyncCheck)));
    assert_eq!(s.poll_timeout(t0), None);
    s.input_pending(false);
    assert!(matches!(s.poll_event(), Some(Event::Hello { .. })));
    // The server thinks (a DNS lookup, say) for longer than the command timeout.
    assert_eq!(s.poll_timeout(t0), None);
    assert!(!s.handle_timeout(t0 + CMD * 2));
    assert!(s.output().is_empty());
    s.accept();
    assert!(pump(&mut s).starts_with("250-mx.test"));
    // The client's clock starts when the reply is out, not when it sent EHLO.
    let t1 = t0 + CMD * 2;
    assert_eq!(s.poll_timeout(t1), Some(t1 + CMD));

    // The same for the message's final reply.
    send(&mut s, b"MAIL FROM:<a@example.net>\r\n");
    send(&mut s, b"RCPT TO:<b@example.org>\r\n");
    send(&mut s, b"DATA\r\n");
    s.feed(b"x\r\n.\r\n");
    let mut ended = false;
    while let Some(ev) = s.poll_event() {
        if let Event::DataEnd { .. } = ev {
            ended = true;
            break;
        }
    }
    assert!(ended);
    assert_eq!(s.poll_timeout(t1), None);
    let t2 = t1 + Duration::from_secs(1000);
    s.respond(Reply::new(250, "2.0.0".parse().ok(), "Stored").unwrap());
    assert_eq!(s.poll_timeout(t2), Some(t2 + CMD));
}

#[test]
fn no_deadline_while_the_tls_handshake_is_due() {
    let mut c = config();
    c.starttls = true;
    let mut s = greeted(c);
    send(&mut s, b"EHLO c.test\r\n");
    s.feed(b"STARTTLS\r\n");
    assert!(matches!(s.poll_event(), Some(Event::StartTls)));
    assert!(s.awaiting_tls());
    let t0 = Instant::now();
    assert_eq!(s.poll_timeout(t0), None);
    s.tls_established();
    let t1 = t0 + Duration::from_secs(7);
    assert_eq!(s.poll_timeout(t1), Some(t1 + CMD));
}

#[test]
fn no_deadline_after_quit() {
    let mut s = greeted(config());
    assert!(send(&mut s, b"QUIT\r\n").starts_with("221 2.0.0"));
    assert_eq!(s.poll_timeout(Instant::now()), None);
}

#[test]
fn a_timeout_too_large_for_an_instant_means_no_deadline() {
    let mut c = config();
    c.command_timeout = Duration::MAX;
    let mut s = greeted(c);
    let t = Instant::now();
    assert_eq!(s.poll_timeout(t), None);
    assert!(!s.handle_timeout(t + Duration::from_secs(1 << 40)));
    assert!(!s.is_closed());
}

#[test]
fn the_unconditional_timeout_still_closes_at_once() {
    let mut s = greeted(config());
    s.timeout();
    assert_eq!(s.output(), TIMEOUT_421);
    assert!(s.is_closed());
}
