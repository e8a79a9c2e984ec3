//! LMTP (RFC 2033) in the session, and extension verbs given to the caller: the bytes a
//! client sees.
#![allow(clippy::unwrap_used)]

use smtp_proto::ehlo::Capability;
use smtp_proto::session::{Event, Session, SessionConfig};
use smtp_proto::Reply;

fn lmtp() -> Session {
    let mut c = SessionConfig::new("lmtp.example");
    c.lmtp = true;
    Session::new(c)
}

/// Feeds each chunk, answering every decision with `decide` (given the event's name), and
/// returns everything the session wrote.
fn run(s: &mut Session, chunks: &[&[u8]], mut decide: impl FnMut(&mut Session, &str)) -> String {
    let mut out = String::new();
    for chunk in chunks {
        s.feed(chunk);
        while let Some(ev) = s.poll_event() {
            let name = match &ev {
                Event::Hello { domain, extended } => format!("hello {domain} {extended}"),
                Event::Rcpt { to, .. } => format!("rcpt {to}"),
                Event::DataEnd { .. } => "end".into(),
                Event::Extension { verb, args } => format!("ext {verb} {args:?}"),
                _ => "other".into(),
            };
            if ev.needs_decision() {
                decide(s, &name);
            }
        }
        out.push_str(&String::from_utf8_lossy(s.output()));
        s.clear_output();
    }
    out
}

const TRANSACTION: &[&[u8]] = &[
    b"",
    b"LHLO client.example\r\n",
    b"MAIL FROM:<a@example.net>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<nobody@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n",
    b"Subject: hi\r\n\r\nbody\r\n.\r\n",
];

#[test]
fn lmtp_replies_once_per_accepted_recipient_after_the_data() {
    let mut s = lmtp();
    let out = run(&mut s, TRANSACTION, |s, name| match name {
        "rcpt <nobody@example.org>" => {
            s.respond(Reply::new(550, "5.1.1".parse().ok(), "No such user").unwrap());
        }
        "end" => s.respond_per_recipient([
            Reply::new(250, "2.0.0".parse().ok(), "alice delivered").unwrap(),
            Reply::new(452, "4.2.2".parse().ok(), "bob is over quota").unwrap(),
        ]),
        _ => s.accept(),
    });
    assert!(
        out.starts_with(
            "220 lmtp.example LMTP ready\r\n250-lmtp.example greets client.example\r\n"
        ),
        "{out}"
    );
    assert!(
        out.ends_with(
            "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n550 5.1.1 No such user\r\n\
             250 2.1.5 Recipient OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n\
             250 2.0.0 alice delivered\r\n452 4.2.2 bob is over quota\r\n"
        ),
        "{out}"
    );
}

#[test]
fn lmtp_accept_gives_every_recipient_the_reply_and_missing_ones_are_temporary() {
    let mut s = lmtp();
    let out = run(&mut s, TRANSACTION, |s, _| s.accept());
    assert!(out.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Message accepted\r\n250 2.0.0 Message accepted\r\n250 2.0.0 Message accepted\r\n"), "{out}");

    // Too few replies: the rest are 451 4.3.0, not silence (the client would hang) nor
    // success (the mail would be lost).
    let mut s = lmtp();
    let out = run(&mut s, TRANSACTION, |s, name| {
        if name == "end" {
            s.respond_per_recipient([Reply::ok()]);
        } else {
            s.accept();
        }
    });
    assert!(out.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 OK\r\n451 4.3.0 No reply for this recipient, try again later\r\n451 4.3.0 No reply for this recipient, try again later\r\n"), "{out}");
}

#[test]
fn lmtp_refuses_helo_and_ehlo_and_a_bad_lhlo() {
    let mut s = lmtp();
    let out = run(
        &mut s,
        &[
            b"",
            b"EHLO client.example\r\n",
            b"HELO client.example\r\n",
            b"LHLO\r\n",
            b"LHLO two words\r\n",
        ],
        |s, _| s.accept(),
    );
    assert_eq!(
        out,
        "220 lmtp.example LMTP ready\r\n500 5.5.1 Command unrecognized: use LHLO\r\n\
         500 5.5.1 Command unrecognized: use LHLO\r\n501 5.5.4 Syntax: LHLO hostname\r\n\
         501 5.5.4 Syntax: LHLO hostname\r\n"
    );
}

#[test]
fn lmtp_content_refused_by_the_session_gets_one_reply_per_recipient() {
    let mut c = SessionConfig::new("lmtp.example");
    c.lmtp = true;
    c.max_message_size = Some(10);
    let mut s = Session::new(c);
    let out = run(&mut s, TRANSACTION, |s, _| s.accept());
    let tail = "354 End data with <CR><LF>.<CR><LF>\r\n";
    let after = &out[out.find(tail).unwrap() + tail.len()..];
    assert_eq!(after.matches("552 5.3.4").count(), 3, "{after}");
}

#[test]
fn smtp_combines_per_recipient_replies_without_losing_mail() {
    let mut s = Session::new(SessionConfig::new("mx.example"));
    let chunks: &[&[u8]] = &[
        b"",
        b"EHLO client.example\r\n",
        b"MAIL FROM:<a@example.net>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n",
        b"body\r\n.\r\n",
    ];
    let out = run(&mut s, chunks, |s, name| {
        if name == "end" {
            s.respond_per_recipient([
                Reply::ok(),
                Reply::new(452, "4.2.2".parse().ok(), "bob is over quota").unwrap(),
            ]);
        } else {
            s.accept();
        }
    });
    // One reply: the temporary one, so the client retries (alice may get it twice; no one
    // loses it).
    assert!(
        out.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n452 4.2.2 bob is over quota\r\n"),
        "{out}"
    );
}

#[test]
fn extension_verbs_reach_the_caller_and_others_are_still_refused() {
    let mut c = SessionConfig::new("mx.example");
    c.extension_verbs = vec!["XCLIENT".into(), "ETRN".into()];
    c.extra_capabilities = vec![Capability::Other(
        "XCLIENT".into(),
        vec!["NAME".into(), "ADDR".into()],
    )];
    let mut s = Session::new(c);
    let mut seen = Vec::new();
    let out = run(
        &mut s,
        &[
            b"",
            b"EHLO client.example\r\n",
            b"xclient NAME=spike.example ADDR=192.0.2.1\r\n",
            b"ETRN example.org\r\n",
            b"XFOO bar\r\n",
            b"TURN\r\n",
        ],
        |s, name| {
            if let Some(ext) = name.strip_prefix("ext ") {
                seen.push(ext.to_owned());
                if ext.starts_with("ETRN") {
                    s.respond(
                        Reply::new(
                            458,
                            "4.0.0".parse().ok(),
                            "Unable to queue messages for node example.org",
                        )
                        .unwrap(),
                    );
                } else {
                    s.respond(Reply::new(220, None, "mx.example ESMTP ready").unwrap());
                }
            } else {
                s.accept();
            }
        },
    );
    assert_eq!(
        seen,
        [
            "xclient Some(\"NAME=spike.example ADDR=192.0.2.1\")",
            "ETRN Some(\"example.org\")"
        ]
    );
    assert!(out.contains("\r\n250 XCLIENT NAME ADDR\r\n"), "{out}");
    assert!(
        out.ends_with(
            "220 mx.example ESMTP ready\r\n458 4.0.0 Unable to queue messages for node example.org\r\n\
             500 5.5.1 Command unrecognized\r\n502 5.5.1 Command not implemented\r\n"
        ),
        "{out}"
    );
}

#[test]
fn extension_verbs_are_off_by_default_and_cannot_carry_control_characters() {
    let mut s = Session::new(SessionConfig::new("mx.example"));
    let out = run(
        &mut s,
        &[b"", b"EHLO c.example\r\n", b"XCLIENT NAME=x\r\n"],
        |s, _| s.accept(),
    );
    assert!(out.ends_with("500 5.5.1 Command unrecognized\r\n"), "{out}");

    let mut c = SessionConfig::new("mx.example");
    c.extension_verbs = vec!["XCLIENT".into()];
    let mut s = Session::new(c);
    let mut called = false;
    let out = run(
        &mut s,
        &[b"", b"EHLO c.example\r\n", b"XCLIENT NAME=\x01x\r\n"],
        |s, name| {
            called |= name.starts_with("ext");
            s.accept();
        },
    );
    assert!(!called);
    assert!(out.ends_with("500 5.5.1 Command unrecognized\r\n"), "{out}");
}

#[test]
fn lmtp_message_delivered_to_one_recipient_starts_the_junk_count_again() {
    // 300 messages, each behind RSET and NOOP (600 junk commands), answered per recipient
    // with one success and one failure: delivered, so never cut off. Answered with failures
    // only, the junk commands add up and the connection is closed.
    let mut c = SessionConfig::new("lmtp.example");
    c.lmtp = true;
    c.forbid_unauth_pipelining = false;
    let one =
        b"RSET\r\nNOOP\r\nMAIL FROM:<>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\nx\r\n.\r\n";
    let mut input = b"LHLO c\r\n".to_vec();
    for _ in 0..300 {
        input.extend_from_slice(one);
    }
    for delivered in [true, false] {
        let mut s = Session::new(c.clone());
        let out = run(&mut s, &[&input], |s, name| match name {
            "end" => s.respond_per_recipient([
                if delivered {
                    Reply::new(250, "2.0.0".parse().ok(), "delivered").unwrap()
                } else {
                    Reply::new(452, "4.2.2".parse().ok(), "over quota").unwrap()
                },
                Reply::new(550, "5.1.1".parse().ok(), "No such user").unwrap(),
            ]),
            _ => s.accept(),
        });
        let closed = out.contains("421 4.7.0 lmtp.example Too many errors");
        if delivered {
            assert_eq!(out.matches("250 2.0.0 delivered").count(), 300);
            assert!(!closed, "{out}");
        } else {
            assert_eq!(out.matches("452 4.2.2 over quota").count(), 54, "{out}");
            assert!(closed, "{out}");
        }
    }
}
