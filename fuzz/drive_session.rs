// Shared by the `session` fuzz target and smtp-proto's corpus replay test (via `include!`),
// so both run exactly the same checks.
//
// The first byte of the input picks the read size; the rest is what the client sends. The
// policy accepts everything except recipients containing "x". Checks: no panic, the output
// is always a sequence of well-formed replies, and no event follows QUIT or a close.
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
    let mut session = Session::new(config);
    let mut out = Vec::new();
    let mut closed_seen = false;
    for chunk in input.chunks(read) {
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
