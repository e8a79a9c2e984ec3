// The checks of the fuzz targets, shared with smtp-proto's corpus replay tests
// (`smtp-proto/tests/fuzz_corpus.rs`) through `include!`, so a crash found once by fuzzing
// stays fixed and both run exactly the same assertions. Each function takes the raw fuzz input.

/// `parse_command` over the input as a pipelined stream: a parsed command re-encodes to a
/// line that parses to the same command; an error always skips at least one byte and at most
/// the input; "need more" only without a line end and under the length limit.
#[allow(dead_code)]
fn check_command(data: &[u8]) {
    use smtp_proto::command::{parse_command, Limits};

    let limits = Limits::default();
    let roomy = Limits::RFC5321.with_max_command_line(1 << 16);
    let mut rest = data;
    while !rest.is_empty() {
        match parse_command(rest, &limits) {
            Ok(Some((cmd, used))) => {
                assert!(used > 0 && used <= rest.len());
                let wire = cmd.to_string();
                let again = parse_command(wire.as_bytes(), &roomy);
                assert_eq!(again, Ok(Some((cmd, wire.len()))), "re-encoded: {wire:?}");
                rest = &rest[used..];
            }
            Ok(None) => {
                assert!(rest.len() < limits.max_command_line && !rest.contains(&b'\n'));
                break;
            }
            Err(e) => {
                assert!(e.consumed > 0 && e.consumed <= rest.len());
                rest = &rest[e.consumed..];
            }
        }
    }
}

/// Reply parser: whatever parses re-encodes to a reply that parses back equal.
#[allow(dead_code)]
fn check_reply(data: &[u8]) {
    use smtp_proto::reply::{parse_reply, ReplyErrorKind};

    let Ok(Some((reply, consumed))) = parse_reply(data) else {
        return;
    };
    assert!(consumed > 0 && consumed <= data.len());
    let wire = reply.to_bytes();
    match parse_reply(&wire) {
        Ok(Some((again, n))) => {
            assert_eq!(n, wire.len());
            assert_eq!(again, reply);
        }
        // Re-encoding may grow a reply past the parser's bounds (the enhanced code repeated on
        // every line, U+FFFD for invalid UTF-8); anything else is a bug.
        Err(e)
            if matches!(
                e.kind(),
                ReplyErrorKind::LineTooLong | ReplyErrorKind::ReplyTooLong
            ) =>
        {
            assert!(wire.len() > consumed);
        }
        other => panic!("re-encoded reply {wire:?} parsed as {other:?}"),
    }
}

/// DATA decoder: chunk boundaries do not change the result, and an accepted body re-encoded
/// with `encode_data` decodes to the same body. The first byte picks the policy and the chunk
/// pattern, the rest is the DATA stream. Returns whether the input held an accepted message.
#[allow(dead_code)]
fn check_data(data: &[u8]) -> bool {
    use smtp_proto::data::{encode_data, BareLineEnding, DataConfig};

    let Some((&sel, input)) = data.split_first() else {
        return false;
    };
    let config = DataConfig::new()
        .with_bare_line_ending(if sel & 1 == 0 {
            BareLineEnding::Reject
        } else {
            BareLineEnding::Normalize
        })
        .with_max_line_len((sel & 2 != 0).then_some(78));
    let whole = decode(config, input, 0);
    let chunked = decode(config, input, usize::from(sel >> 2) + 1);
    assert_eq!(whole, chunked);
    if let Some((body, _, true)) = whole {
        let mut wire = Vec::new();
        encode_data(&body, &mut wire);
        let plain = config.with_max_line_len(None);
        assert_eq!(decode(plain, &wire, 0), Some((body, wire.len(), true)));
        return true;
    }
    false
}

/// Decodes `input` fed in chunks of 1..=step bytes chosen from the input itself (0: all at
/// once): the body, the bytes consumed and whether the message was accepted.
#[allow(dead_code)]
fn decode(
    config: smtp_proto::data::DataConfig,
    input: &[u8],
    step: usize,
) -> Option<(Vec<u8>, usize, bool)> {
    use smtp_proto::data::{DataDecoder, DataStatus};

    let mut dec = DataDecoder::with_config(config);
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while start < input.len() {
        // Chunk lengths derived from the input itself: 1..=step.
        let len = if step == 0 {
            input.len()
        } else {
            1 + usize::from(input[i % input.len()]) % step
        };
        i += 1;
        let end = (start + len).min(input.len());
        match dec.decode(&input[start..end], &mut out) {
            DataStatus::NeedMore => start = end,
            DataStatus::End { consumed, result } => {
                assert!(consumed <= end - start);
                return Some((out, start + consumed, result.is_ok()));
            }
        }
    }
    None
}

/// The session state machine: the first byte of the input picks the read size (low six
/// bits), STARTTLS (0x40) and the pipelining policy (0x80); the rest is what the client
/// sends. The policy accepts everything except recipients containing "x".
/// Checks: no panic, the output is always a sequence of well-formed replies, and no event
/// follows QUIT or a close.
#[allow(dead_code)]
fn drive_session(data: &[u8]) {
    use smtp_proto::session::{Event, Session, SessionConfig};
    use smtp_proto::{parse_reply, Reply};

    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let read = usize::from(first % 64) + 1;
    let mut config = SessionConfig::new("fuzz.test");
    config.max_message_size = Some(4096);
    config.max_recipients = 4;
    config.starttls = first & 0x40 != 0;
    // Either policy: with it, most fuzz inputs are unauthorised pipelining and end early.
    config.forbid_unauth_pipelining = first & 0x80 != 0;
    let mut session = Session::new(config);
    let mut out = Vec::new();
    let mut closed_seen = false;
    // First round without input: the client waits for the greeting.
    for chunk in std::iter::once(&[][..]).chain(input.chunks(read)) {
        session.feed(chunk);
        while let Some(event) = session.poll_event() {
            assert!(!closed_seen, "event after close: {event:?}");
            let refuse = matches!(&event, Event::Rcpt { to, .. } if to.to_string().contains('x'));
            if matches!(event, Event::Quit | Event::Closed) {
                closed_seen = true;
            }
            let starttls = matches!(event, Event::StartTls);
            if event.needs_decision() {
                if refuse {
                    session.respond(
                        Reply::new(550, "5.1.1".parse().ok(), "no").expect("valid reply"),
                    );
                } else {
                    session.accept();
                }
            }
            if starttls {
                session.tls_established();
            }
        }
        out.extend_from_slice(session.output());
        session.clear_output();
    }
    let mut rest = &out[..];
    while !rest.is_empty() {
        match parse_reply(rest) {
            Ok(Some((_, used))) => rest = &rest[used..],
            other => panic!("session wrote a bad reply {other:?}: {:?}", String::from_utf8_lossy(rest)),
        }
    }
}

/// An AUTH exchange: the session offers PLAIN and LOGIN (over TLS or, by the first byte, also
/// without), the client greets and then sends the fuzz input. The driver accepts the login
/// `ok` and refuses every other. Checks: every reply parses, nothing happens after the close,
/// the session is authenticated exactly when the driver accepted a login (and at most once),
/// and no decoded secret is ever echoed.
#[allow(dead_code)]
fn drive_auth(data: &[u8]) {
    use smtp_proto::sasl::Mechanism;
    use smtp_proto::session::{Event, Session, SessionConfig};
    use smtp_proto::{parse_reply, Reply};

    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let read = usize::from(first % 32) + 1;
    let mut config = SessionConfig::new("fuzz.test");
    config.auth_mechanisms = vec![Mechanism::Plain, Mechanism::Login];
    config.tls_active = first & 0x40 != 0;
    config.auth_requires_tls = first & 0x20 == 0;
    config.forbid_unauth_pipelining = first & 0x80 != 0;
    let mut session = Session::new(config);
    let mut out = Vec::new();
    let mut closed_seen = false;
    let mut accepted = 0;
    for chunk in [&[][..], b"EHLO fuzz.test\r\n"]
        .into_iter()
        .chain(input.chunks(read))
    {
        session.feed(chunk);
        while let Some(event) = session.poll_event() {
            assert!(!closed_seen, "event after close: {event:?}");
            if matches!(event, Event::Quit | Event::Closed) {
                closed_seen = true;
            }
            let login_ok = match &event {
                Event::Auth { credentials } => Some(credentials.authcid() == "ok"),
                _ => None,
            };
            let starttls = matches!(event, Event::StartTls);
            match login_ok {
                Some(true) => {
                    assert!(!session.is_authenticated(), "a second AUTH reached the driver");
                    accepted += 1;
                    session.accept();
                }
                Some(false) => session.respond(
                    Reply::new(535, "5.7.8".parse().ok(), "no").expect("valid reply"),
                ),
                None if event.needs_decision() => session.accept(),
                None => {}
            }
            if starttls {
                session.tls_established();
                accepted = 0;
            }
        }
        out.extend_from_slice(session.output());
        session.clear_output();
    }
    assert_eq!(session.is_authenticated(), accepted == 1, "accepted {accepted}");
    let mut rest = &out[..];
    while !rest.is_empty() {
        match parse_reply(rest) {
            Ok(Some((_, used))) => rest = &rest[used..],
            other => panic!(
                "session wrote a bad reply {other:?}: {:?}",
                String::from_utf8_lossy(rest)
            ),
        }
    }
}
