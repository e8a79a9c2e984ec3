//! The session state machine driven in memory: replies as a client sees them.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use smtp_proto::session::{Event, Session, SessionConfig};
use smtp_proto::Reply;

/// What a driver saw: the reply bytes, the message bodies and the event names.
#[derive(Debug, Default, PartialEq)]
struct Trace {
    out: String,
    bodies: Vec<Vec<u8>>,
    events: Vec<String>,
    /// Body of the message being received.
    current: Vec<u8>,
}

/// Policy: refuse recipients whose address starts with "bad", accept everything else.
fn drive(s: &mut Session, chunks: &[&[u8]], t: &mut Trace) {
    for chunk in chunks {
        s.feed(chunk);
        pump(s, t);
    }
}

fn pump(s: &mut Session, t: &mut Trace) {
    while let Some(ev) = s.poll_event() {
        let refuse = match &ev {
            Event::Rcpt { to, .. } => to.to_string().starts_with("<bad"),
            _ => false,
        };
        let name = match &ev {
            Event::Connect => "connect".to_string(),
            Event::Hello { domain, extended } => format!("hello {domain} {extended}"),
            Event::Mail { from, .. } => format!("mail {from}"),
            Event::Rcpt { to, .. } => format!("rcpt {to}"),
            Event::DataStart => "data".into(),
            Event::Body(b) => {
                t.current.extend_from_slice(b);
                String::new()
            }
            Event::DataEnd { size } => format!("end {size}"),
            Event::DataAborted(e) => format!("aborted {e}"),
            Event::Reset => "reset".into(),
            Event::StartTls => "starttls".into(),
            Event::Quit => "quit".into(),
            Event::Closed => "closed".into(),
            _ => "other".into(),
        };
        let decide = ev.needs_decision();
        if !name.is_empty() {
            t.events.push(name.clone());
        }
        if name.starts_with("end") || name.starts_with("aborted") {
            t.bodies.push(std::mem::take(&mut t.current));
        }
        if decide {
            if refuse {
                s.respond(Reply::new(550, "5.1.1".parse().ok(), "No such user").unwrap());
            } else {
                s.accept();
            }
        }
    }
    t.out.push_str(&String::from_utf8_lossy(s.output()));
    s.clear_output();
}

/// These tests feed whole dialogues at once, before the greeting and behind EHLO and DATA:
/// that is unauthorised pipelining, which the default configuration refuses (see
/// `session_pipelining.rs`). They test everything else, so the policy is off here.
fn config() -> SessionConfig {
    let mut c = SessionConfig::new("mx.test");
    c.forbid_unauth_pipelining = false;
    c.max_message_size = Some(1000);
    c.max_recipients = 3;
    c.starttls = true;
    c
}

fn run(input: &[u8]) -> Trace {
    let mut s = Session::new(config());
    let mut t = Trace::default();
    drive(&mut s, &[input], &mut t);
    t
}

/// The reply lines after the greeting.
fn replies(input: &str) -> Vec<String> {
    let t = run(input.as_bytes());
    t.out
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .skip(1)
        .map(str::to_owned)
        .collect()
}

const EHLO_LINES: usize = 9; // 250-mx.test, PIPELINING, SIZE, 8BITMIME, ENH, SMTPUTF8, CHUNKING, STARTTLS

#[test]
fn ehlo_advertises_extensions() {
    let r = replies("EHLO c.test\r\n");
    assert_eq!(
        r,
        [
            "250-mx.test greets c.test",
            "250-PIPELINING",
            "250-SIZE 1000",
            "250-8BITMIME",
            "250-ENHANCEDSTATUSCODES",
            "250-SMTPUTF8",
            "250-CHUNKING",
            "250 STARTTLS",
        ]
    );
    assert_eq!(EHLO_LINES - 1, r.len());
}

#[test]
fn pipelined_transaction_replies_in_order() {
    let t = run(b"EHLO c.test\r\nMAIL FROM:<a@x.test> SIZE=20\r\nRCPT TO:<b@mx.test>\r\nRCPT TO:<bad@mx.test>\r\nDATA\r\nHello\r\n..dot\r\n.\r\nQUIT\r\n");
    let lines: Vec<&str> = t.out.split("\r\n").collect();
    assert_eq!(lines[0], "220 mx.test ESMTP ready");
    assert_eq!(
        &lines[EHLO_LINES..],
        [
            "250 2.1.0 Sender OK",
            "250 2.1.5 Recipient OK",
            "550 5.1.1 No such user",
            "354 End data with <CR><LF>.<CR><LF>",
            "250 2.0.0 Message accepted",
            "221 2.0.0 mx.test closing connection",
            ""
        ]
    );
    assert_eq!(t.bodies, vec![b"Hello\r\n.dot\r\n".to_vec()]);
    assert_eq!(
        t.events,
        [
            "connect",
            "hello c.test true",
            "mail <a@x.test>",
            "rcpt <b@mx.test>",
            "rcpt <bad@mx.test>",
            "data",
            "end 13",
            "quit"
        ]
    );
}

#[test]
fn replies_table() {
    // (dialogue after the greeting, expected last reply line)
    let cases: &[(&str, &str)] = &[
        ("MAIL FROM:<a@b.test>\r\n", "503 5.5.1 Send EHLO or HELO first"),
        ("EHLO c\r\nRCPT TO:<a@b.test>\r\n", "503 5.5.1 Need MAIL before RCPT"),
        ("EHLO c\r\nDATA\r\n", "503 5.5.1 Need MAIL command"),
        ("EHLO c\r\nMAIL FROM:<>\r\nMAIL FROM:<>\r\n", "503 5.5.1 Nested MAIL command"),
        ("EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<bad@x>\r\nDATA\r\n", "554 5.5.1 No valid recipients"),
        ("EHLO c\r\nMAIL FROM:<> SIZE=1001\r\n", "552 5.3.4 Message size exceeds fixed maximum message size"),
        ("EHLO c\r\nMAIL FROM:<> FOO=BAR\r\n", "555 5.5.4 Unsupported parameter FOO"),
        ("EHLO c\r\nMAIL FROM:<> RET=FULL\r\n", "555 5.5.4 DSN parameters not supported"),
        ("HELO c\r\nMAIL FROM:<> SIZE=10\r\n", "555 5.5.4 Parameters need EHLO"),
        ("EHLO c\r\nMAIL FROM:<jörg@x.test>\r\n", "553 5.6.7 Non-ASCII address needs SMTPUTF8"),
        ("EHLO c\r\nMAIL FROM:<jörg@x.test> SMTPUTF8\r\n", "250 2.1.0 Sender OK"),
        ("EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nRCPT TO:<c@b>\r\nRCPT TO:<d@b>\r\nRCPT TO:<e@b>\r\n", "452 4.5.3 Too many recipients"),
        ("FOO\r\n", "500 5.5.1 Command unrecognized"),
        ("EXPN staff\r\n", "502 5.5.1 EXPN not available"),
        ("TURN\r\n", "502 5.5.1 Command not implemented"),
        ("AUTH PLAIN\r\n", "502 5.5.1 AUTH not available"),
        ("VRFY bob\r\n", "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"),
        ("NOOP\r\n", "250 2.0.0 OK"),
        ("RSET\r\n", "250 2.0.0 OK"),
        ("QUIT now\r\n", "501 5.5.4 Syntax: QUIT"),
        ("NOOP\n", "550 5.5.2 mx.test Error: bare <LF> received"),
        ("HELO c\r\nSTARTTLS\r\nSTARTTLS\r\n", "220 2.0.0 Ready to start TLS"),
    ];
    for (input, want) in cases {
        let r = replies(input);
        assert_eq!(
            r.last().map(String::as_str),
            Some(*want),
            "input {input:?}: {r:?}"
        );
    }
}

#[test]
fn long_line_is_refused_and_session_continues() {
    let mut input = b"NOOP ".to_vec();
    input.extend(std::iter::repeat_n(b'x', 2000));
    input.extend_from_slice(b"\r\nNOOP\r\n");
    let mut s = Session::new(config());
    let mut t = Trace::default();
    // In pieces, so the long line is never complete in one buffer.
    let pieces: Vec<&[u8]> = input.chunks(100).collect();
    drive(&mut s, &pieces, &mut t);
    assert_eq!(
        t.out,
        "220 mx.test ESMTP ready\r\n500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n"
    );
}

#[test]
fn error_budget_closes_with_421() {
    let t = run("FOO\r\n".repeat(12).as_bytes());
    assert!(t.out.ends_with("500 5.5.1 Command unrecognized\r\n421 4.7.0 mx.test Too many errors, closing connection\r\n"), "{}", t.out);
    assert_eq!(t.out.matches("500 5.5.1").count(), 10);
    assert_eq!(t.events.last().unwrap(), "closed");
}

#[test]
fn starttls_discards_pipelined_input_and_requires_new_ehlo() {
    let mut s = Session::new(config());
    let mut t = Trace::default();
    drive(
        &mut s,
        &[b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x>\r\n"],
        &mut t,
    );
    assert!(s.awaiting_tls());
    assert!(
        t.out
            .ends_with("250 STARTTLS\r\n220 2.0.0 Ready to start TLS\r\n"),
        "{}",
        t.out
    );
    assert_eq!(t.events.last().unwrap(), "starttls");
    // Bytes arriving before the handshake completes are ignored too.
    s.feed(b"RCPT TO:<evil@x>\r\n");
    s.tls_established();
    assert!(s.is_tls());
    t.out.clear();
    drive(&mut s, &[b"MAIL FROM:<a@b>\r\nEHLO c\r\n"], &mut t);
    assert!(
        t.out
            .starts_with("503 5.5.1 Send EHLO or HELO first\r\n250-mx.test"),
        "{}",
        t.out
    );
    assert!(
        !t.out.contains("STARTTLS"),
        "STARTTLS offered again: {}",
        t.out
    );
    assert!(!t.events.iter().any(|e| e.contains("evil")));
}

#[test]
fn size_limit_while_streaming() {
    let mut body = "x".repeat(70) + "\r\n";
    body = body.repeat(20); // 1440 octets > 1000
    let input = format!("EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\n{body}.\r\nNOOP\r\n");
    let r = replies(&input);
    assert_eq!(
        &r[r.len() - 2..],
        [
            "552 5.3.4 message size exceeds the limit of 1000 octets",
            "250 2.0.0 OK"
        ]
    );
}

#[test]
fn bare_lf_in_data_is_refused_after_the_end() {
    let r = replies(
        "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\nline\n.\nstill data\r\n.\r\nNOOP\r\n",
    );
    assert_eq!(
        &r[r.len() - 2..],
        [
            "550 5.5.2 Message contains bare CR or LF; lines must end with CRLF",
            "250 2.0.0 OK"
        ]
    );
}

#[test]
fn bdat_chunks() {
    let t = run(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nBDAT 6\r\nHello\rBDAT 9 LAST\r\n\n world\r\nQUIT\r\n");
    assert!(t.out.ends_with("250 2.1.5 Recipient OK\r\n250 2.0.0 6 octets received\r\n250 2.0.0 Message accepted\r\n221 2.0.0 mx.test closing connection\r\n"), "{}", t.out);
    assert_eq!(t.bodies, vec![b"Hello\r\n world\r\n".to_vec()]);
}

/// Text sent by BDAT has CRLF line ends as DATA's does (RFC 3030 §2): a bare CR or LF, also
/// one split from its partner by a chunk boundary or ending the message, gets DATA's
/// `550 5.5.2` (a reader that splits lines on a bare CR would see other header fields than
/// the server checked).
#[test]
fn bdat_text_with_a_bare_line_end_is_refused() {
    for content in [
        &["a\rb\r\n"][..],
        &["a\nb\r\n"],
        &["a\r", "b\r\n"],
        &["a\r\n", "\nb\r\n"],
        &["a\r\nb\r"],
        &["a\r\n", "b\r"],
    ] {
        let mut input = String::from("EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\n");
        for (i, c) in content.iter().enumerate() {
            let last = if i + 1 == content.len() { " LAST" } else { "" };
            input.push_str(&format!("BDAT {}{last}\r\n{c}", c.len()));
        }
        input.push_str("NOOP\r\n");
        let t = run(input.as_bytes());
        assert!(
            t.out.contains(
                "550 5.5.2 Message contains bare CR or LF; lines must end with CRLF\r\n250 2.0.0 OK\r\n"
            ),
            "{content:?}: {}",
            t.out
        );
        assert!(
            t.events.iter().any(|e| e.starts_with("aborted")),
            "{:?}",
            t.events
        );
    }
    // BINARYMIME is not offered: BODY=BINARYMIME is refused as a parameter not advertised,
    // with or without CHUNKING, and its chunks swallowed.
    let t = run(
        b"EHLO c\r\nMAIL FROM:<> BODY=BINARYMIME\r\nRCPT TO:<a@b>\r\nBDAT 4 LAST\r\na\rb\nNOOP\r\n",
    );
    assert!(
        t.out
            .contains("555 5.5.4 BODY=BINARYMIME not supported\r\n"),
        "{}",
        t.out
    );
    assert!(t.bodies.is_empty(), "{:?}", t.bodies);
    // With the normalising policy they become CRLF, wherever the chunks are cut.
    let mut c = config();
    c.data.bare_line_ending = smtp_proto::data::BareLineEnding::Normalize;
    let mut s = Session::new(c);
    let mut t = Trace::default();
    drive(
        &mut s,
        &[b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nBDAT 4\r\na\rb\rBDAT 4 LAST\r\nc\nd\rNOOP\r\n"],
        &mut t,
    );
    assert!(
        t.out.contains("250 2.0.0 Message accepted\r\n"),
        "{}",
        t.out
    );
    assert_eq!(t.bodies, vec![b"a\r\nb\r\nc\r\nd\r\n".to_vec()]);
}

#[test]
fn bdat_without_transaction_swallows_its_chunk() {
    let r = replies("EHLO c\r\nBDAT 6\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(
        &r[r.len() - 2..],
        ["503 5.5.1 Need MAIL command", "250 2.0.0 OK"]
    );
}

#[test]
fn bdat_over_size_limit() {
    let chunk = "y".repeat(600);
    let input = format!("EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nBDAT 600\r\n{chunk}BDAT 600\r\n{chunk}BDAT 3 LAST\r\nabcNOOP\r\n");
    let r = replies(&input);
    assert_eq!(
        &r[r.len() - 4..],
        [
            "250 2.0.0 600 octets received",
            "552 5.3.4 message size exceeds the limit of 1000 octets",
            // The LAST chunk of the failed transaction is refused and swallowed.
            "503 5.5.1 Need MAIL command",
            "250 2.0.0 OK"
        ]
    );
}

#[test]
fn rejected_greeting_closes() {
    let mut s = Session::new(config());
    assert!(matches!(s.poll_event(), Some(Event::Connect)));
    s.respond(Reply::new(554, "5.7.1".parse().ok(), "Go away").unwrap());
    assert!(s.is_closed());
    assert_eq!(s.output(), b"554 5.7.1 Go away\r\n");
    s.feed(b"EHLO c\r\n");
    assert!(s.poll_event().is_none());
}

#[test]
fn timeout_and_shutdown() {
    let mut s = Session::new(config());
    let mut t = Trace::default();
    drive(&mut s, &[b"EHLO c\r\n"], &mut t);
    s.timeout();
    assert!(s.is_closed());
    assert_eq!(
        s.output(),
        b"421 4.4.2 mx.test Timeout exceeded, closing connection\r\n"
    );
    let mut s = Session::new(config());
    drive(&mut s, &[b"EHLO c\r\n"], &mut t);
    s.shutdown();
    assert!(String::from_utf8_lossy(s.output()).starts_with("421 4.3.2 mx.test"));
}

#[test]
fn receiving_data_flag() {
    let mut s = Session::new(config());
    let mut t = Trace::default();
    drive(
        &mut s,
        &[b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\npart"],
        &mut t,
    );
    assert!(s.is_receiving_data());
    drive(&mut s, &[b"ial\r\n.\r\n"], &mut t);
    assert!(!s.is_receiving_data());
    assert_eq!(t.bodies, vec![b"partial\r\n".to_vec()]);
}

const DIALOGUE: &[u8] = b"EHLO c.test\r\nMAIL FROM:<a@x.test> SIZE=20\r\nRCPT TO:<b@mx.test>\r\nRCPT TO:<bad@mx.test>\r\nDATA\r\nHello\r\n..dot\r\n\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<c@d>\r\nBDAT 4\r\nab\r\nBDAT 0 LAST\r\nRSET\r\nFOO\r\nNOOP\r\nQUIT\r\n";

proptest! {
    /// Any split of the input into reads gives the same replies, bodies and events.
    #[test]
    fn any_split_gives_the_same_result(cuts in prop::collection::vec(0..DIALOGUE.len(), 0..20)) {
        let whole = run(DIALOGUE);
        let mut cuts = cuts;
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut last = 0;
        for c in cuts {
            pieces.push(&DIALOGUE[last..c]);
            last = c;
        }
        pieces.push(&DIALOGUE[last..]);
        let mut s = Session::new(config());
        let mut t = Trace::default();
        drive(&mut s, &pieces, &mut t);
        prop_assert_eq!(t, whole);
    }

    /// Arbitrary bytes never panic the session, and it never emits output without a reply code.
    #[test]
    fn arbitrary_input_never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..10)) {
        let mut s = Session::new(config());
        let mut t = Trace::default();
        let pieces: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        drive(&mut s, &pieces, &mut t);
        for line in t.out.split("\r\n").filter(|l| !l.is_empty()) {
            let code: u16 = line[..3].parse().unwrap();
            prop_assert!((200..600).contains(&code), "{}", line);
        }
    }
}

#[test]
fn shrink_buffers_keeps_unprocessed_input_and_unsent_output() {
    let mut c = config();
    c.max_message_size = None;
    let mut s = Session::new(c);
    let mut t = Trace::default();
    let mut big =
        b"EHLO c\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n".to_vec();
    for _ in 0..2000 {
        big.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
    }
    big.extend_from_slice(b".\r\nNO");
    s.feed(&big);
    while let Some(ev) = s.poll_event() {
        if ev.needs_decision() {
            s.accept();
        }
    }
    assert_eq!(s.buffered_input(), 2);
    s.shrink_buffers(16);
    assert_eq!(s.buffered_input(), 2);
    assert!(String::from_utf8_lossy(s.output()).ends_with("250 2.0.0 Message accepted\r\n"));
    s.clear_output();
    drive(&mut s, &[b"OP\r\n"], &mut t);
    assert_eq!(t.out, "250 2.0.0 OK\r\n");
}

/// Fragments a hostile or merely pipelining client may send, in any order.
const FRAGMENTS: &[&str] = &[
    "EHLO c\r\n",
    "HELO c\r\n",
    "MAIL FROM:<>\r\nRCPT TO:<c@d>\r\n",
    "MAIL FROM:<a@x.test>\r\n",
    "MAIL FROM:<> SIZE=5000\r\n",
    "RCPT TO:<b@mx.test>\r\n",
    "RCPT TO:<bad@mx.test>\r\n",
    "DATA\r\n",
    "Hello\r\n..dot\r\n.\r\n",
    "x\ry\r\n.\r\n",
    "BDAT 4\r\nab\r\n",
    "BDAT 0 LAST\r\n",
    "BDAT 700\r\n",
    "BDAT 3 LAST\r\nxyz",
    "z",
    "RSET\r\n",
    "NOOP\r\n",
    "FOO\r\n",
    "\r\n",
    ".\r\n",
];

fn fragments() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            12 => (0..FRAGMENTS.len()).prop_map(|i| FRAGMENTS[i].as_bytes().to_vec()),
            1 => (1usize..800).prop_map(|n| vec![b'q'; n]),
        ],
        0..30,
    )
    .prop_map(|v| [b"EHLO c\r\n".to_vec(), v.concat()].concat())
}

proptest! {
    /// Any split of any pipelined mix of commands and content gives the same result as one
    /// read.
    #[test]
    fn any_split_of_any_pipeline_gives_the_same_result(
        input in fragments(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let mut c = config();
        c.max_errors = 1000;
        let mut s = Session::new(c.clone());
        let mut whole = Trace::default();
        drive(&mut s, &[&input], &mut whole);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut last = 0;
        for c in cuts {
            pieces.push(&input[last..c]);
            last = c;
        }
        pieces.push(&input[last..]);
        let mut s = Session::new(c);
        let mut t = Trace::default();
        drive(&mut s, &pieces, &mut t);
        prop_assert_eq!(t, whole);
    }
}

#[test]
fn junk_commands_count_as_errors_past_the_limit() {
    // 100 NOOPs are fine; the next 10 each count as an error and the 10th closes.
    let t = run("NOOP\r\n".repeat(115).as_bytes());
    assert_eq!(t.out.matches("250 2.0.0 OK").count(), 110, "{}", t.out);
    assert!(
        t.out
            .ends_with("250 2.0.0 OK\r\n421 4.7.0 mx.test Too many errors, closing connection\r\n"),
        "{}",
        t.out
    );
    // A real transaction in between does not reset the count, but 100 are plenty for it.
    let mut input = "RSET\r\n".repeat(99);
    input.push_str("EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n");
    let r = replies(&input);
    assert_eq!(r.last().unwrap(), "221 2.0.0 mx.test closing connection");
}

/// How many `250 2.0.0 Message accepted` replies there are in `r`.
fn accepted(r: &[String]) -> usize {
    r.iter()
        .filter(|l| *l == "250 2.0.0 Message accepted")
        .count()
}

/// One message on a reused connection, with the RSET (and a NOOP) a client sends before each.
const RSET_MESSAGE: &str = "RSET\r\nNOOP\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\nx\r\n.\r\n";

#[test]
fn accepted_messages_start_the_junk_and_error_counts_again() {
    // 500 messages on one connection, each behind RSET and NOOP (1000 junk commands) and
    // one unknown command (500 errors): all accepted, never cut off, as with Postfix, whose
    // junk count "is reset after mail is delivered".
    let mut input = String::from("EHLO c\r\n");
    for _ in 0..500 {
        input.push_str("FOO\r\n");
        input.push_str(RSET_MESSAGE);
    }
    input.push_str("QUIT\r\n");
    let r = replies(&input);
    assert_eq!(accepted(&r), 500);
    assert_eq!(r.iter().filter(|l| l.starts_with("500 5.5.1")).count(), 500);
    assert!(!r.iter().any(|l| l.starts_with("421")), "{r:?}");
    assert_eq!(r.last().unwrap(), "221 2.0.0 mx.test closing connection");
}

#[test]
fn refused_messages_do_not_start_the_counts_again() {
    // A message refused at its end (a policy's 554) delivered nothing: the junk commands
    // before it still count, and the 110th closes the connection as without messages.
    let mut s = Session::new(config());
    let mut out = String::new();
    let mut input = String::from("EHLO c\r\n");
    for _ in 0..60 {
        input.push_str(RSET_MESSAGE);
    }
    s.feed(input.as_bytes());
    while let Some(ev) = s.poll_event() {
        match ev {
            Event::DataEnd { .. } => {
                s.respond(Reply::new(554, "5.7.1".parse().ok(), "Refused").unwrap());
            }
            ev if ev.needs_decision() => s.accept(),
            _ => {}
        }
    }
    out.push_str(&String::from_utf8_lossy(s.output()));
    // 120 junk commands: 100 free, then errors 1..=10, the 10th (the 110th junk command,
    // the NOOP of the 55th message) closes.
    assert_eq!(out.matches("554 5.7.1 Refused").count(), 54, "{out}");
    assert!(
        out.ends_with("250 2.0.0 OK\r\n421 4.7.0 mx.test Too many errors, closing connection\r\n"),
        "{out}"
    );
}

#[test]
fn bdat_chunks_behind_a_failed_one_are_not_protocol_errors() {
    // 12 chunks pipelined behind one over the size limit: each gets 503, none closes.
    let chunk = "y".repeat(600);
    let mut input = format!(
        "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nBDAT 600\r\n{chunk}BDAT 600\r\n{chunk}"
    );
    for _ in 0..12 {
        input.push_str("BDAT 2\r\nzz");
    }
    input.push_str("NOOP\r\n");
    let r = replies(&input);
    assert_eq!(r.iter().filter(|l| l.starts_with("503 5.5.1")).count(), 12);
    assert_eq!(r.last().unwrap(), "250 2.0.0 OK");
}

#[test]
fn long_client_name_is_not_echoed() {
    let name = "a".repeat(400);
    let r = replies(&format!("EHLO {name}\r\n"));
    assert_eq!(r[0], "250-mx.test greets you");
    let r = replies("EHLO client.example\r\n");
    assert_eq!(r[0], "250-mx.test greets client.example");
}

/// The session's own refusals, for the driver's log: every 4yz/5yz reply it sent by itself,
/// with the refused verb, and the reply it closed with; never the caller's own refusals.
#[test]
fn the_sessions_own_refusals_are_reported_with_their_verb() {
    let mut s = Session::new(config());
    let mut t = Trace::default();
    drive(
        &mut s,
        &[b"mail from:<a@x.test>\r\n", b"EHLO c.test\r\n"],
        &mut t,
    );
    drive(
        &mut s,
        &[
            b"MAIL FROM:<a@x.test> SIZE=999999\r\n",
            b"MAIL FROM:<a@x.test> FOO=1\r\n",
            b"MAIL FROM:<a@x.test>\r\n",
            b"RCPT TO:<bad@x.test>\r\n",
            b"RCPT TO:<a b>\r\n",
            b"BOGUS\r\n",
            b"RCPT TO:<ok@x.test>\r\n",
        ],
        &mut t,
    );
    let got: Vec<(Option<String>, String)> = s
        .take_refusals()
        .into_iter()
        .map(|r| (r.command, r.reply.to_string()))
        .collect();
    let codes: Vec<(Option<&str>, &str)> =
        got.iter().map(|(c, r)| (c.as_deref(), &r[..3])).collect();
    // The 550 for <bad@x.test> is the caller's, and not among them.
    assert_eq!(
        codes,
        [
            (Some("MAIL"), "503"),
            (Some("MAIL"), "552"),
            (Some("MAIL"), "555"),
            (Some("RCPT"), "501"),
            (Some("BOGUS"), "500"),
        ],
        "{got:?}\n{}",
        t.out
    );
    assert!(s.take_refusals().is_empty());
    // Closing replies have no verb.
    s.timeout();
    let closed = s.take_refusals();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].command, None);
    assert_eq!(closed[0].reply.code(), 421);
}

#[test]
fn refusals_kept_between_takes_are_bounded() {
    let mut c = config();
    c.max_errors = 10_000;
    let mut s = Session::new(c);
    let mut t = Trace::default();
    let junk = "BOGUS\r\n".repeat(100);
    drive(&mut s, &[b"EHLO c.test\r\n", junk.as_bytes()], &mut t);
    let r = s.take_refusals();
    assert_eq!(r.len(), 32);
    assert_eq!(r[31].dropped, 68);
}

#[test]
fn a_host_name_with_line_breaks_never_splits_a_reply() {
    // check() refuses it; a session made from it anyway writes its CR and LF as `?`, so no
    // reply gets a line it was not meant to have (here a forged `250-STARTTLS`).
    let mut c = config();
    c.starttls = false;
    c.hostname = "mx.test\r\n250-STARTTLS".into();
    assert!(matches!(
        c.check(),
        Err(smtp_proto::session::ConfigError::Hostname(_))
    ));
    let mut s = Session::new(c);
    let mut t = Trace::default();
    drive(&mut s, &[b"EHLO c\r\nHELO c\r\nQUIT\r\n"], &mut t);
    assert!(
        t.out.starts_with(
            "220 mx.test??250-STARTTLS ESMTP ready\r\n250-mx.test??250-STARTTLS greets c\r\n"
        ),
        "{}",
        t.out
    );
    assert!(!t.out.contains("\r\n250-STARTTLS"), "{}", t.out);
    assert!(
        t.out.ends_with(
            "250 mx.test??250-STARTTLS\r\n221 2.0.0 mx.test??250-STARTTLS closing connection\r\n"
        ),
        "{}",
        t.out
    );
    let mut c = config();
    c.hostname = String::new();
    assert!(c.check().is_err());
    let t = {
        let mut s = Session::new(c);
        let mut t = Trace::default();
        drive(&mut s, &[b"QUIT\r\n"], &mut t);
        t
    };
    assert_eq!(
        t.out,
        "220 localhost ESMTP ready\r\n221 2.0.0 localhost closing connection\r\n"
    );
    assert!(config().check().is_ok());
}

#[test]
fn refused_recipients_close_the_session_at_the_limit() {
    // A client guessing addresses: the 20th refused recipient is answered, then `421 4.7.0`
    // closes the session (as Postfix's smtpd_hard_error_limit of 20), one connection never
    // tries thousands. Accepted ones do not count; nor does the session's own 452 for too
    // many recipients; a delivered message starts the count again.
    let mut input = String::from("EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\n");
    for i in 0..30 {
        input.push_str(&format!("RCPT TO:<bad{i}@b>\r\n"));
    }
    let t = run(input.as_bytes());
    assert_eq!(
        t.out.matches("550 5.1.1 No such user").count(),
        20,
        "{}",
        t.out
    );
    assert!(
        t.out.ends_with(
            "550 5.1.1 No such user\r\n421 4.7.0 mx.test Too many errors, closing connection\r\n"
        ),
        "{}",
        t.out
    );
    assert_eq!(t.events.last().unwrap(), "closed");
    // 19 refused, a message delivered, 19 more: never closed.
    let mut input = String::from("EHLO c\r\n");
    for _ in 0..3 {
        input.push_str("MAIL FROM:<>\r\n");
        for i in 0..19 {
            input.push_str(&format!("RCPT TO:<bad{i}@b>\r\n"));
        }
        input.push_str("RCPT TO:<a@b>\r\nDATA\r\nx\r\n.\r\n");
    }
    input.push_str("QUIT\r\n");
    let r = replies(&input);
    assert_eq!(accepted(&r), 3);
    assert!(!r.iter().any(|l| l.starts_with("421")), "{r:?}");
}
