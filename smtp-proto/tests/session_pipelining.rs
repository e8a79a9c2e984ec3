//! The session against clients that break the line-end and pipelining rules: bare LF and CR
//! in command lines, unauthorised pipelining (RFC 2920, Postfix's
//! `smtpd_forbid_unauth_pipelining`), talking before the greeting; and the recipient-limit
//! and parameter-value replies. Each test is what a client sees: the replies on the wire,
//! whether the session closed, and which events (what a handler would receive) occurred.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use smtp_proto::session::{Event, Session, SessionConfig};
use smtp_proto::Reply;

const SYNC: &str = "554 5.5.0 Error: SMTP protocol synchronization";
const BARE_LF: &str = "550 5.5.2 mx.test Error: bare <LF> received";
const BARE_CR: &str = "550 5.5.2 mx.test Error: bare <CR> received";

/// A session and what its driver saw. The driver answers [`Event::SyncCheck`] with
/// `pending` (what its socket would say), refuses recipients starting with `bad` and accepts
/// everything else.
struct Driver {
    s: Session,
    events: Vec<String>,
    pending: bool,
}

impl Driver {
    /// Connects: the greeting is in the first reply of [`Driver::send`] (`&[]`).
    fn new(config: SessionConfig) -> Self {
        Self {
            s: Session::new(config),
            events: Vec::new(),
            pending: false,
        }
    }

    /// A driver that has been greeted.
    fn greeted(config: SessionConfig) -> Self {
        let mut d = Self::new(config);
        assert_eq!(d.send(b""), ["220 mx.test ESMTP ready"]);
        d
    }

    /// A driver whose EHLO was accepted.
    fn after_ehlo(config: SessionConfig) -> Self {
        let mut d = Self::greeted(config);
        assert!(d.send(b"EHLO c.test\r\n")[0].starts_with("250-mx.test"));
        d
    }

    /// Feeds one write of the client and returns the reply lines it got back.
    fn send(&mut self, bytes: &[u8]) -> Vec<String> {
        self.s.feed(bytes);
        while let Some(ev) = self.s.poll_event() {
            let (name, refuse) = match &ev {
                Event::Connect => ("connect".to_owned(), false),
                Event::Hello { domain, .. } => (format!("hello {domain}"), false),
                Event::Mail { from, .. } => (format!("mail {from}"), false),
                Event::Rcpt { to, .. } => {
                    (format!("rcpt {to}"), to.to_string().starts_with("<bad"))
                }
                Event::DataStart => ("data".to_owned(), false),
                Event::Body(_) => ("body".to_owned(), false),
                Event::DataEnd { .. } => ("end".to_owned(), false),
                Event::Reset => ("reset".to_owned(), false),
                Event::StartTls => ("starttls".to_owned(), false),
                Event::Quit => ("quit".to_owned(), false),
                Event::Closed => ("closed".to_owned(), false),
                Event::SyncCheck => ("check".to_owned(), false),
                _ => ("other".to_owned(), false),
            };
            let check = matches!(ev, Event::SyncCheck);
            let decide = ev.needs_decision();
            let starttls = matches!(ev, Event::StartTls);
            self.events.push(name);
            if check {
                self.s.input_pending(self.pending);
            } else if refuse {
                self.s
                    .respond(Reply::new(550, "5.1.1".parse().ok(), "No such user").unwrap());
            } else if decide {
                self.s.accept();
            }
            if starttls {
                self.s.tls_established();
            }
        }
        let out = String::from_utf8(self.s.output().to_vec()).unwrap();
        self.s.clear_output();
        out.split("\r\n")
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The events after the first `skip`, without the sync checks.
    fn events_since(&self, skip: usize) -> Vec<&str> {
        self.events[skip..]
            .iter()
            .map(String::as_str)
            .filter(|e| *e != "check")
            .collect()
    }
}

fn config() -> SessionConfig {
    let mut c = SessionConfig::new("mx.test");
    c.starttls = true;
    c
}

// ---- bare LF and CR in command lines ----

/// The issue's case: the text after the bare LF was executed as a second command.
#[test]
fn bare_lf_after_ehlo_word_closes_and_runs_nothing() {
    let mut d = Driver::greeted(config());
    let n = d.events.len();
    assert_eq!(d.send(b"EHLO a\nMAIL FROM:<x@ext.example>\r\n"), [BARE_LF]);
    assert!(d.s.is_closed());
    assert_eq!(d.events_since(n), ["closed"]);
    // Nothing more is read.
    assert!(d.send(b"MAIL FROM:<y@ext.example>\r\n").is_empty());
    assert_eq!(d.events_since(n), ["closed"]);
}

/// Whatever the command before the bare LF, in every state where commands are read.
#[test]
fn bare_lf_and_cr_close_in_every_state() {
    let tail = b"MAIL FROM:<x@ext.example>\r\nRCPT TO:<y@mx.test>\r\n";
    // (what the client sends first, each a write it waited for the reply to)
    let states: &[(&str, &[&[u8]])] = &[
        ("before EHLO", &[]),
        ("after EHLO", &[b"EHLO c\r\n"]),
        ("after HELO", &[b"HELO c\r\n"]),
        (
            "in a transaction",
            &[
                b"EHLO c\r\n",
                b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@mx.test>\r\n",
            ],
        ),
        (
            "between BDAT chunks",
            &[
                b"EHLO c\r\n",
                b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@mx.test>\r\nBDAT 3\r\nabc",
            ],
        ),
        (
            "after STARTTLS",
            &[b"EHLO c\r\n", b"STARTTLS\r\n", b"EHLO c\r\n"],
        ),
        (
            "after a message",
            &[
                b"EHLO c\r\n",
                b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@mx.test>\r\nDATA\r\n",
                b"hi\r\n.\r\n",
            ],
        ),
    ];
    let lines: &[(&[u8], &str)] = &[
        (b"EHLO a\n", BARE_LF),
        (b"HELO a\n", BARE_LF),
        (b"NOOP\n", BARE_LF),
        (b"RSET\n", BARE_LF),
        (b"QUIT\n", BARE_LF),
        (b"DATA\n", BARE_LF),
        (b"MAIL FROM:<a@b.test>\n", BARE_LF),
        (b"RCPT TO:<c@mx.test>\n", BARE_LF),
        (b"BDAT 10\n", BARE_LF),
        (b"\n", BARE_LF),
        (b"EHLO a\rb\r\n", BARE_CR),
        (b"NOOP\rRSET\r\n", BARE_CR),
        (b"MAIL FROM:<a@b.test>\r.\r\n", BARE_CR),
        (b"RCPT TO:<c@mx.test>\rRCPT TO:<d@mx.test>\r\n", BARE_CR),
    ];
    for (state, before) in states {
        for (line, want) in lines {
            let mut d = Driver::greeted(config());
            for b in *before {
                d.send(b);
            }
            assert!(!d.s.is_closed(), "{state}");
            let n = d.events.len();
            let mut input = line.to_vec();
            input.extend_from_slice(tail);
            let got = d.send(&input);
            let what = format!("{state}: {:?}", String::from_utf8_lossy(line));
            assert_eq!(got, [*want], "{what}");
            assert!(d.s.is_closed(), "{what}");
            assert_eq!(d.events_since(n), ["closed"], "{what}");
        }
    }
}

/// A bare LF split from its line by the read boundary, or ending an over-long line that is
/// being dropped, is caught as well.
#[test]
fn bare_lf_across_reads_and_after_long_lines() {
    let mut d = Driver::after_ehlo(config());
    assert!(d.send(b"MAIL FROM:<a@b.test>").is_empty());
    assert_eq!(d.send(b"\nRCPT TO:<x@ext.example>\r\n"), [BARE_LF]);
    assert!(d.s.is_closed());

    // An over-long line in pieces: refused when it passes the limit, then its bare LF closes.
    let mut d = Driver::after_ehlo(config());
    let n = d.events.len();
    let long = format!("NOOP {}", "x".repeat(600));
    assert_eq!(d.send(long.as_bytes()), ["500 5.5.2 Line too long"]);
    assert!(d.send(b"xxxx\r").is_empty());
    assert_eq!(d.send(b"x\nMAIL FROM:<x@ext.example>\r\n"), [BARE_LF]);
    assert_eq!(d.events_since(n), ["closed"]);

    // Its CR and LF in different reads are a proper line end.
    let mut d = Driver::after_ehlo(config());
    assert_eq!(d.send(long.as_bytes()), ["500 5.5.2 Line too long"]);
    assert!(d.send(b"\r").is_empty());
    assert!(d.send(b"\n").is_empty());
    assert_eq!(d.send(b"NOOP\r\n"), ["250 2.0.0 OK"]);

    // The same over-long line in one read.
    let mut d = Driver::after_ehlo(config());
    let n = d.events.len();
    let one = format!("{long}\nMAIL FROM:<x@ext.example>\r\n");
    assert_eq!(d.send(one.as_bytes()), [BARE_LF]);
    assert_eq!(d.events_since(n), ["closed"]);
}

fn command_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"EHLO c.test".to_vec()),
        Just(b"MAIL FROM:<a@b.test>".to_vec()),
        Just(b"RCPT TO:<c@mx.test>".to_vec()),
        Just(b"NOOP".to_vec()),
        Just(b"DATA".to_vec()),
        Just(b"BDAT 4".to_vec()),
        prop::collection::vec(
            any::<u8>().prop_filter("no line end", |b| *b != b'\n' && *b != b'\r'),
            0..700
        ),
    ]
}

proptest! {
    /// Whatever precedes a bare LF on a command line and whatever follows it, in any state
    /// and under either pipelining policy, the session answers `550 5.5.2`, closes, and no
    /// command of that write reaches the handler.
    #[test]
    fn nothing_behind_a_bare_lf_is_executed(
        state in 0usize..4,
        first in command_line(),
        rest in prop::collection::vec(any::<u8>(), 0..200),
        policy in any::<bool>(),
    ) {
        let mut c = config();
        c.forbid_unauth_pipelining = policy;
        let mut d = Driver::greeted(c);
        let before: &[&[u8]] = match state {
            0 => &[],
            1 => &[b"EHLO c\r\n"],
            2 => &[b"EHLO c\r\n", b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@mx.test>\r\n"],
            _ => &[b"EHLO c\r\n", b"STARTTLS\r\n", b"EHLO c\r\n"],
        };
        for b in before {
            d.send(b);
        }
        let n = d.events.len();
        let mut input = first.clone();
        input.push(b'\n');
        input.extend_from_slice(&rest);
        input.extend_from_slice(b"\r\nMAIL FROM:<x@ext.example>\r\n");
        let got = d.send(&input);
        prop_assert_eq!(got.last().map(String::as_str), Some(BARE_LF));
        prop_assert!(d.s.is_closed());
        prop_assert_eq!(d.events_since(n), ["closed"]);
    }
}

// ---- input before the greeting ----

#[test]
fn client_talking_before_the_greeting_gets_554_and_no_greeting() {
    let mut d = Driver::new(config());
    assert_eq!(d.send(b"EHLO c.test\r\n"), [SYNC]);
    assert!(d.s.is_closed());
    assert_eq!(d.events, ["connect", "closed"]);
}

#[test]
fn greeting_waits_for_the_drivers_check() {
    let mut d = Driver::new(config());
    d.pending = true;
    assert_eq!(d.send(b""), [SYNC]);
    assert!(d.s.is_closed());
    assert_eq!(d.events, ["connect", "check", "closed"]);

    // Step by step: nothing is written before the check is answered.
    let mut s = Session::new(config());
    assert!(matches!(s.poll_event(), Some(Event::Connect)));
    s.accept();
    assert!(s.output().is_empty());
    assert!(matches!(s.poll_event(), Some(Event::SyncCheck)));
    assert!(s.poll_event().is_none(), "waits for the answer");
    assert!(s.output().is_empty());
    s.input_pending(false);
    assert!(s.poll_event().is_none());
    assert_eq!(s.output(), b"220 mx.test ESMTP ready\r\n");
}

// ---- unauthorised pipelining ----

/// Every command that must end a group (RFC 2920 §3.1), followed by more in the same write:
/// refused before it runs, and the session closes.
#[test]
fn input_behind_a_group_ending_command_is_refused_unexecuted() {
    let behind = b"MAIL FROM:<x@ext.example>\r\n";
    // (the command, and what it would have done)
    let cases: &[(&[u8], &str)] = &[
        (b"EHLO again.test\r\n", "hello again.test"),
        (b"HELO again.test\r\n", "hello again.test"),
        (b"DATA\r\n", "data"),
        (b"VRFY bob\r\n", "vrfy"),
        (b"EXPN staff\r\n", "expn"),
        (b"NOOP\r\n", "noop"),
        (b"QUIT\r\n", "quit"),
        (b"TURN\r\n", "turn"),
    ];
    for (cmd, _) in cases {
        let mut d = Driver::after_ehlo(config());
        assert_eq!(
            d.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@mx.test>\r\n"),
            ["250 2.1.0 Sender OK", "250 2.1.5 Recipient OK"]
        );
        let n = d.events.len();
        let mut input = cmd.to_vec();
        input.extend_from_slice(behind);
        let what = String::from_utf8_lossy(cmd).into_owned();
        assert_eq!(d.send(&input), [SYNC], "{what}");
        assert!(d.s.is_closed(), "{what}");
        assert_eq!(d.events_since(n), ["closed"], "{what}");
    }
}

/// Message content sent before the 354: DATA is refused, nothing of the content is read.
#[test]
fn content_before_354_is_refused() {
    let mut d = Driver::after_ehlo(config());
    let n = d.events.len();
    let got = d.send(
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@mx.test>\r\nDATA\r\nSubject: early\r\n\r\nhi\r\n.\r\n",
    );
    assert_eq!(got, ["250 2.1.0 Sender OK", "250 2.1.5 Recipient OK", SYNC]);
    assert!(d.s.is_closed());
    assert_eq!(
        d.events_since(n),
        ["mail <a@b.test>", "rcpt <c@mx.test>", "closed"]
    );
}

/// The same when the content is still on the socket: the driver's answer decides.
#[test]
fn content_the_driver_reports_pending_is_refused() {
    let mut d = Driver::after_ehlo(config());
    d.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@mx.test>\r\n");
    d.pending = true;
    let n = d.events.len();
    assert_eq!(d.send(b"DATA\r\n"), [SYNC]);
    assert_eq!(d.events[n..], ["check", "closed"]);

    // A driver may also feed what it found, then accept: the session sees it behind DATA.
    let mut s = Session::new(config());
    for input in [
        &b""[..],
        b"EHLO c\r\n",
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@mx.test>\r\nDATA\r\n",
    ] {
        s.feed(input);
        loop {
            match s.poll_event() {
                Some(Event::SyncCheck) if input.starts_with(b"MAIL") => {
                    s.feed(b"Subject: early\r\n");
                    s.accept();
                }
                Some(e) if e.needs_decision() => s.accept(),
                Some(_) => {}
                None => break,
            }
        }
    }
    let out = String::from_utf8_lossy(s.output()).into_owned();
    assert!(
        out.ends_with(&format!("250 2.1.5 Recipient OK\r\n{SYNC}\r\n")),
        "{out}"
    );
    assert!(s.is_closed());
}

/// Before an EHLO was accepted (no EHLO yet, after HELO, after a refused EHLO) every command
/// must wait for its reply.
#[test]
fn no_pipelining_before_ehlo_or_after_helo() {
    let mut d = Driver::greeted(config());
    assert_eq!(d.send(b"RSET\r\nNOOP\r\n"), [SYNC]);
    assert_eq!(d.events, ["connect", "check", "closed"]);

    let mut d = Driver::greeted(config());
    assert_eq!(d.send(b"HELO c.test\r\n"), ["250 mx.test"]);
    let n = d.events.len();
    assert_eq!(
        d.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@mx.test>\r\n"),
        [SYNC]
    );
    assert_eq!(d.events_since(n), ["closed"]);

    // One command per write after HELO is fine.
    let mut d = Driver::greeted(config());
    d.send(b"HELO c.test\r\n");
    assert_eq!(d.send(b"MAIL FROM:<a@b.test>\r\n"), ["250 2.1.0 Sender OK"]);
    assert_eq!(
        d.send(b"RCPT TO:<c@mx.test>\r\n"),
        ["250 2.1.5 Recipient OK"]
    );

    // A refused EHLO allows no pipelining either.
    let mut s = Session::new(config());
    for input in [
        &b""[..],
        b"EHLO c\r\n",
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@mx.test>\r\n",
    ] {
        s.feed(input);
        while let Some(e) = s.poll_event() {
            match e {
                Event::Hello { .. } => {
                    s.respond(Reply::new(550, "5.7.1".parse().ok(), "Go away").unwrap());
                }
                e if e.needs_decision() => s.accept(),
                _ => {}
            }
        }
    }
    let out = String::from_utf8_lossy(s.output()).into_owned();
    assert!(
        out.ends_with(&format!("550 5.7.1 Go away\r\n{SYNC}\r\n")),
        "{out}"
    );
}

/// What RFC 2920 and RFC 3030 allow is answered as before.
#[test]
fn allowed_pipelining_is_served() {
    let mut d = Driver::after_ehlo(config());
    assert_eq!(
        d.send(b"RSET\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@mx.test>\r\nRCPT TO:<bad@mx.test>\r\nDATA\r\n"),
        [
            "250 2.0.0 OK",
            "250 2.1.0 Sender OK",
            "250 2.1.5 Recipient OK",
            "550 5.1.1 No such user",
            "354 End data with <CR><LF>.<CR><LF>"
        ]
    );
    // Commands may follow the end of the message; QUIT ends the write.
    assert_eq!(
        d.send(b"hi\r\n.\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@mx.test>\r\nBDAT 3\r\nabcBDAT 2 LAST\r\ndeHELP\r\nQUIT\r\n"),
        [
            "250 2.0.0 Message accepted",
            "250 2.1.0 Sender OK",
            "250 2.1.5 Recipient OK",
            "250 2.0.0 3 octets received",
            "250 2.0.0 Message accepted",
            "214 2.0.0 See RFC 5321: https://www.rfc-editor.org/rfc/rfc5321",
            "221 2.0.0 mx.test closing connection"
        ]
    );
    assert!(d.s.is_closed());
    assert!(!d.events.contains(&"closed".to_owned()));
}

/// STARTTLS keeps its own rule: what follows it is dropped, not refused.
#[test]
fn starttls_drops_what_follows_it() {
    let mut d = Driver::after_ehlo(config());
    assert_eq!(
        d.send(b"STARTTLS\r\nMAIL FROM:<x@ext.example>\r\n"),
        ["220 2.0.0 Ready to start TLS"]
    );
    assert!(!d.s.is_closed());
    assert!(d.send(b"EHLO c\r\n")[0].starts_with("250-mx.test"));
}

/// With the policy off, a client may pipeline a whole dialogue.
#[test]
fn policy_off_serves_unauthorised_pipelining() {
    let mut c = config();
    c.forbid_unauth_pipelining = false;
    let mut d = Driver::new(c);
    let got = d.send(
        b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@mx.test>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n",
    );
    assert_eq!(got[0], "220 mx.test ESMTP ready");
    assert_eq!(got.last().unwrap(), "221 2.0.0 mx.test closing connection");
    assert!(!d.events.contains(&"check".to_owned()));
}

proptest! {
    /// A client that waits wherever RFC 2920 says gets the same replies, however its writes
    /// are cut into reads (the driver reports nothing pending: the reads all came in).
    #[test]
    fn a_conforming_client_is_never_refused(cut in 1usize..40) {
        let writes: [&[u8]; 4] = [
            b"EHLO c.test\r\n",
            b"MAIL FROM:<a@b.test> SIZE=10\r\nRCPT TO:<c@mx.test>\r\nDATA\r\n",
            b"Subject: x\r\n\r\nhi\r\n.\r\nRSET\r\nNOOP\r\n",
            b"QUIT\r\n",
        ];
        let mut d = Driver::greeted(config());
        let mut all = Vec::new();
        for w in writes {
            for piece in w.chunks(cut) {
                all.extend(d.send(piece));
            }
        }
        prop_assert!(!all.iter().any(|l| l.starts_with("554")), "{:?}", all);
        prop_assert_eq!(all.last().map(String::as_str), Some("221 2.0.0 mx.test closing connection"));
    }
}

// ---- recipient limit and parameter values ----

/// Recipients past the limit get `452 4.5.3`; past the overshoot allowance each further one
/// also counts as an error, and the budget spent closes the session with `421 4.7.0`.
#[test]
fn recipients_past_the_limit_count_as_errors() {
    let mut c = config();
    c.max_recipients = 1;
    c.max_recipient_overshoot = 2;
    c.max_errors = 3;
    let mut d = Driver::after_ehlo(c);
    let mut input = b"MAIL FROM:<a@b.test>\r\n".to_vec();
    for i in 0..10 {
        input.extend_from_slice(format!("RCPT TO:<r{i}@mx.test>\r\n").as_bytes());
    }
    let got = d.send(&input);
    let mut want = vec!["250 2.1.0 Sender OK", "250 2.1.5 Recipient OK"];
    // 2 within the allowance, then 3 errors: the third closes.
    want.extend(["452 4.5.3 Too many recipients"; 5]);
    want.push("421 4.7.0 mx.test Too many errors, closing connection");
    assert_eq!(got, want);
    assert!(d.s.is_closed());
}

/// The review's case (Python's `smtplib.sendmail` to 120 addresses) with the defaults: 100
/// accepted, 20 refused with `452 4.5.3`, and the message goes to the 100.
#[test]
fn recipients_past_the_limit_do_not_kill_the_transaction() {
    let mut d = Driver::after_ehlo(config());
    assert_eq!(d.s.config().max_recipient_overshoot, 1000);
    assert_eq!(d.send(b"MAIL FROM:<a@b.test>\r\n"), ["250 2.1.0 Sender OK"]);
    let mut input = Vec::new();
    for i in 0..120 {
        input.extend_from_slice(format!("RCPT TO:<r{i}@mx.test>\r\n").as_bytes());
    }
    let n = d.events.len();
    let got = d.send(&input);
    assert_eq!(got.len(), 120);
    assert!(
        got[..100].iter().all(|l| l == "250 2.1.5 Recipient OK"),
        "{got:?}"
    );
    assert!(
        got[100..]
            .iter()
            .all(|l| l == "452 4.5.3 Too many recipients"),
        "{got:?}"
    );
    assert_eq!(d.s.recipients(), 100);
    // The handler heard of the 100 only.
    assert_eq!(
        d.events_since(n)
            .iter()
            .filter(|e| e.starts_with("rcpt"))
            .count(),
        100
    );
    assert_eq!(d.send(b"DATA\r\n"), ["354 End data with <CR><LF>.<CR><LF>"]);
    assert_eq!(
        d.send(b"Subject: many\r\n\r\nhi\r\n.\r\n"),
        ["250 2.0.0 Message accepted"]
    );
    assert!(!d.s.is_closed());
    assert!(d.events.contains(&"end".to_owned()));
}

/// With the defaults, 1000 recipients past the limit are refused without counting; the
/// 1001st and later each count, and the 10th error closes. The allowance is per
/// transaction (as Postfix's `rcpt_reset`): a new one starts afresh.
#[test]
fn overshoot_past_the_allowance_spends_the_error_budget() {
    let rcpts = |from: usize, count: usize| {
        let mut input = Vec::new();
        for i in from..from + count {
            input.extend_from_slice(format!("RCPT TO:<r{i}@mx.test>\r\n").as_bytes());
        }
        input
    };
    let mut d = Driver::after_ehlo(config());
    d.send(b"MAIL FROM:<a@b.test>\r\n");
    let got = d.send(&rcpts(0, 1100));
    assert_eq!(got.len(), 1100);
    assert!(!d.s.is_closed());
    // A new transaction: its own allowance.
    assert_eq!(d.send(b"RSET\r\n"), ["250 2.0.0 OK"]);
    d.send(b"MAIL FROM:<a@b.test>\r\n");
    let got = d.send(&rcpts(0, 1100));
    assert_eq!(got.len(), 1100);
    assert!(!d.s.is_closed(), "the first 1000 past the limit are free");
    // Past the allowance: the 1001st to 1009th each count (errors 1 to 9)...
    let got = d.send(&rcpts(2000, 9));
    assert_eq!(got, ["452 4.5.3 Too many recipients"; 9]);
    assert!(!d.s.is_closed());
    // ...and the 10th closes; what follows it is not read.
    let got = d.send(&rcpts(3000, 5));
    assert_eq!(
        got,
        [
            "452 4.5.3 Too many recipients",
            "421 4.7.0 mx.test Too many errors, closing connection"
        ]
    );
    assert!(d.s.is_closed());
}

/// A known parameter with a malformed or missing value is a syntax error (`501 5.5.4`); an
/// unknown one is not recognised (`555 5.5.4`).
#[test]
fn malformed_known_parameters_are_501_unknown_ones_555() {
    let mut c = config();
    c.dsn = true;
    c.max_errors = 100;
    let cases: &[(&str, &str)] = &[
        (
            "MAIL FROM:<a@b.test> SIZE=abc",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "MAIL FROM:<a@b.test> SIZE",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "MAIL FROM:<a@b.test> SIZE=999999999999999999999",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "MAIL FROM:<a@b.test> BODY=9BIT",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "MAIL FROM:<a@b.test> BODY",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "MAIL FROM:<a@b.test> RET=ALL",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "MAIL FROM:<a@b.test> ENVID=a+zz",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "MAIL FROM:<a@b.test> ENVID",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "MAIL FROM:<a@b.test> AUTH=a+1",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "MAIL FROM:<a@b.test> AUTH",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "MAIL FROM:<a@b.test> SMTPUTF8=yes",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "MAIL FROM:<a@b.test> SIZE=1 SIZE=2",
            "501 5.5.4 Duplicate parameter",
        ),
        (
            "MAIL FROM:<a@b.test> SIZE=",
            "501 5.5.4 Syntax error in parameters",
        ),
        (
            "MAIL FROM:<a@b.test> FOO=BAR",
            "555 5.5.4 Unsupported parameter FOO",
        ),
        (
            "MAIL FROM:<a@b.test> NOTIFY=NEVER",
            "555 5.5.4 Parameter not valid for this command",
        ),
        ("MAIL FROM:<a@b.test>", "250 2.1.0 Sender OK"),
        (
            "RCPT TO:<c@mx.test> NOTIFY=SOMETIMES",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "RCPT TO:<c@mx.test> NOTIFY=NEVER,SUCCESS",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "RCPT TO:<c@mx.test> NOTIFY",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "RCPT TO:<c@mx.test> ORCPT=c@mx.test",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "RCPT TO:<c@mx.test> ORCPT=rfc822;a+zz",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "RCPT TO:<c@mx.test> X-PRIORITY=1",
            "555 5.5.4 Unsupported parameter X-PRIORITY",
        ),
        (
            "RCPT TO:<c@mx.test> SIZE=10",
            "555 5.5.4 Parameter not valid for this command",
        ),
        (
            "RCPT TO:<c@mx.test> NOTIFY=NEVER ORCPT=rfc822;c@mx.test",
            "250 2.1.5 Recipient OK",
        ),
    ];
    let mut d = Driver::after_ehlo(c);
    for (cmd, want) in cases {
        let got = d.send(format!("{cmd}\r\n").as_bytes());
        assert_eq!(got, [*want], "{cmd}");
    }
}

// ---- BDAT outside an EHLO session ----

/// CHUNKING is offered only in the EHLO reply: BDAT after HELO (or before any greeting) gets
/// `503 5.5.1 Send EHLO first`, its chunk swallowed, nothing delivered, whether the chunk
/// came with the command or in a later write; a client that pipelines a command behind the
/// chunk is still refused for that, as after HELO anywhere.
#[test]
fn bdat_outside_an_ehlo_session_is_refused_the_same_however_it_is_split() {
    let splits: &[&[&[u8]]] = &[
        &[b"BDAT 5 LAST\r\nhello"],
        &[b"BDAT 5 LAST\r\n", b"hello"],
        &[b"BDAT 5 LAST\r\nhe", b"llo"],
        &[b"BDAT 2\r\nhe", b"BDAT 3 LAST\r\n", b"llo"],
    ];
    for hello in ["HELO c.test", ""] {
        for writes in splits {
            let mut d = Driver::greeted(config());
            if !hello.is_empty() {
                assert_eq!(d.send(format!("{hello}\r\n").as_bytes()), ["250 mx.test"]);
                let r = d.send(b"MAIL FROM:<a@b.test>\r\n");
                assert_eq!(r, ["250 2.1.0 Sender OK"]);
                let r = d.send(b"RCPT TO:<c@mx.test>\r\n");
                assert_eq!(r, ["250 2.1.5 Recipient OK"]);
            }
            let n = d.events.len();
            let mut replies = Vec::new();
            for w in *writes {
                replies.extend(d.send(w));
            }
            let chunks = replies.len();
            assert!(chunks >= 1, "{hello:?} {writes:?}");
            assert!(
                replies.iter().all(|r| r == "503 5.5.1 Send EHLO first"),
                "{hello:?} {writes:?}: {replies:?}"
            );
            assert!(!d.s.is_closed(), "{hello:?} {writes:?}");
            assert!(!d.events_since(n).contains(&"data"), "{:?}", d.events);
            // The chunk was swallowed: the next command is read as one.
            assert_eq!(
                d.send(b"NOOP\r\n"),
                ["250 2.0.0 OK"],
                "{hello:?} {writes:?}"
            );
        }
        // A command pipelined behind the chunk, where pipelining is not allowed.
        let mut d = Driver::greeted(config());
        if !hello.is_empty() {
            d.send(format!("{hello}\r\n").as_bytes());
        }
        assert_eq!(d.send(b"BDAT 5 LAST\r\nhelloNOOP\r\n"), [SYNC]);
        assert!(d.s.is_closed());
    }
}

/// RFC 1870 §6: `size-value = 1*20DIGIT`, and a size over the server's limit is `552 5.3.4`,
/// also one of 20 digits that no 64-bit number holds; 21 digits are a syntax error.
#[test]
fn declared_sizes_past_64_bits_are_too_large_not_malformed() {
    let mut c = config();
    c.max_message_size = Some(10_000_000);
    c.max_errors = 100;
    let cases = [
        ("10000000", "250 2.1.0 Sender OK"),
        (
            "10000001",
            "552 5.3.4 Message size exceeds fixed maximum message size",
        ),
        (
            "18446744073709551615",
            "552 5.3.4 Message size exceeds fixed maximum message size",
        ),
        (
            "18446744073709551616",
            "552 5.3.4 Message size exceeds fixed maximum message size",
        ),
        (
            "99999999999999999999",
            "552 5.3.4 Message size exceeds fixed maximum message size",
        ),
        ("00000000000000000001", "250 2.1.0 Sender OK"),
        ("999999999999999999999", "501 5.5.4 Invalid parameter value"),
    ];
    for (size, want) in cases {
        let mut d = Driver::after_ehlo(c.clone());
        let got = d.send(format!("MAIL FROM:<a@b.test> SIZE={size}\r\n").as_bytes());
        assert_eq!(got, [want], "SIZE={size}");
    }
}

/// A BDAT line that does not parse says nothing about where its chunk ends: what follows
/// (here a chunk holding commands) is never read as commands; `521 5.5.4` closes the
/// session, as Postfix's reply does.
#[test]
fn malformed_bdat_closes_instead_of_reading_its_chunk_as_commands() {
    let chunk = "RSET\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@mx.test>\r\nDATA\r\n";
    let huge = format!("BDAT {}", "9".repeat(21));
    let lines = [
        "BDAT",
        "BDAT x",
        "bdat 10 FIRST",
        "BDAT 10 LASTX",
        "BDAT -5",
        "BDAT 18446744073709551616",
        huge.as_str(),
        "BDAT 5 LAST junk",
        "BDAT\t5",
        "BDAT\x0b5 LAST",
        "BDAT 5 LAST\tjunk",
    ];
    // Each case: the client's writes. Too long, complete in one write or not: the same.
    let long = format!("BDAT 5 LAST{}", " ".repeat(600));
    let mut cases: Vec<Vec<String>> = lines
        .iter()
        .map(|line| vec![format!("{line}\r\n{chunk}")])
        .collect();
    cases.push(vec![format!("{long}\r\n{chunk}")]);
    cases.push(vec![long.clone(), format!("\r\n{chunk}")]);
    for writes in cases {
        let mut d = Driver::after_ehlo(config());
        assert_eq!(d.send(b"MAIL FROM:<a@b.test>\r\n"), ["250 2.1.0 Sender OK"]);
        assert_eq!(
            d.send(b"RCPT TO:<c@mx.test>\r\n"),
            ["250 2.1.5 Recipient OK"]
        );
        let n = d.events.len();
        let mut got = Vec::new();
        for w in &writes {
            got.extend(d.send(w.as_bytes()));
        }
        let what = &writes[0][..writes[0].len().min(20)];
        assert_eq!(got, ["521 5.5.4 Syntax: BDAT count [LAST]"], "{what:?}");
        assert!(d.s.is_closed(), "{what:?}");
        assert_eq!(d.events_since(n), ["closed"], "{what:?}");
    }
    // A verb that only starts like BDAT is an unknown command, nothing more.
    let mut d = Driver::after_ehlo(config());
    assert_eq!(d.send(b"BDATX 5\r\n"), ["500 5.5.1 Command unrecognized"]);
    assert!(!d.s.is_closed());
}
