//! Reply type, encoder and incremental parser: known answers, hostile input, round trips.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use smtp_proto::reply::{
    parse_reply, EnhancedCode, InvalidReply, Refusal, Reply, ReplyError, ReplyErrorKind, Severity,
    MAX_REPLY_LEN, MAX_REPLY_LINES, MAX_REPLY_LINE_LEN,
};

fn ec(class: u8, subject: u16, detail: u16) -> EnhancedCode {
    EnhancedCode::new(class, subject, detail).unwrap()
}

fn enc(r: &Reply) -> String {
    String::from_utf8(r.to_bytes()).unwrap()
}

#[test]
fn encodes_single_and_multiline() {
    let cases: &[(Reply, &str)] = &[
        (Reply::new(250, None, "OK").unwrap(), "250 OK\r\n"),
        (
            Reply::new(250, Some(ec(2, 1, 0)), "Sender ok").unwrap(),
            "250 2.1.0 Sender ok\r\n",
        ),
        (Reply::new(250, None, "").unwrap(), "250\r\n"),
        (
            Reply::new(250, Some(ec(2, 0, 0)), "").unwrap(),
            "250 2.0.0\r\n",
        ),
        (
            Reply::multiline(250, None, ["mx.example.org", "PIPELINING", "SIZE 1000"]).unwrap(),
            "250-mx.example.org\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
        ),
        (
            Reply::multiline(550, Some(ec(5, 1, 1)), ["No such user", "", "see docs"]).unwrap(),
            "550-5.1.1 No such user\r\n550-5.1.1\r\n550 5.1.1 see docs\r\n",
        ),
        (
            Reply::multiline(250, None, ["a", ""]).unwrap(),
            "250-a\r\n250\r\n",
        ),
        // Line breaks in text become separate lines: no reply injection.
        (
            Reply::new(250, None, "ok\r\n250 fake\nx\ry\n").unwrap(),
            "250-ok\r\n250-250 fake\r\n250-x\r\n250 y\r\n",
        ),
        (Reply::ok(), "250 2.0.0 OK\r\n"),
        (
            Reply::service_ready("mx.example"),
            "220 mx.example ESMTP ready\r\n",
        ),
        (
            Reply::closing("mx.example"),
            "221 2.0.0 mx.example closing connection\r\n",
        ),
        (
            Reply::start_mail_input(),
            "354 End data with <CR><LF>.<CR><LF>\r\n",
        ),
        (
            Reply::service_unavailable("mx"),
            "421 4.3.2 mx Service not available, closing transmission channel\r\n",
        ),
        (Reply::ok().without_enhanced(), "250 OK\r\n"),
        (
            Reply::service_ready("evil\r\n250 injected"),
            "220-evil\r\n220 250 injected ESMTP ready\r\n",
        ),
    ];
    for (reply, wire) in cases {
        assert_eq!(enc(reply), *wire, "{reply:?}");
    }
}

#[test]
fn display_shows_wire_lines() {
    let r = Reply::multiline(550, Some(ec(5, 7, 1)), ["Relay", "denied"]).unwrap();
    assert_eq!(r.to_string(), "550-5.7.1 Relay\n550 5.7.1 denied");
    assert_eq!(ec(5, 1, 10).to_string(), "5.1.10");
}

#[test]
fn constructor_validation() {
    for code in [0, 199, 100, 260, 299, 560, 600, 999, 2500] {
        assert_eq!(
            Reply::new(code, None, "x"),
            Err(InvalidReply::Code(code)),
            "{code}"
        );
    }
    for code in [200, 211, 250, 354, 421, 559] {
        assert!(Reply::new(code, None, "x").is_ok(), "{code}");
    }
    // An invalid enhanced code cannot even be built.
    assert_eq!(EnhancedCode::new(3, 0, 0), None);
    assert_eq!(EnhancedCode::new(5, 1000, 0), None);
    assert_eq!(EnhancedCode::new(5, 0, 1000), None);
    assert_eq!(
        Refusal::new(250, None, "x"),
        Err(InvalidReply::NotARefusal(250))
    );
    assert_eq!(
        Refusal::new(354, None, "x"),
        Err(InvalidReply::NotARefusal(354))
    );
    assert_eq!(
        Reply::new(250, Some(ec(5, 0, 0)), "x"),
        Err(InvalidReply::ClassMismatch {
            code: 250,
            enhanced: ec(5, 0, 0)
        })
    );
    assert!(Reply::new(354, Some(ec(2, 0, 0)), "x").is_err());
    assert_eq!(EnhancedCode::new(4, 999, 999), Some(ec(4, 999, 999)));
    assert_eq!(EnhancedCode::new(1, 0, 0), None);
    assert_eq!(
        Reply::multiline(250, None, Vec::<String>::new())
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        [""]
    );
}

#[test]
fn severity_getters() {
    let cases = [
        (220, Severity::PositiveCompletion),
        (354, Severity::PositiveIntermediate),
        (451, Severity::TransientNegative),
        (554, Severity::PermanentNegative),
    ];
    for (code, sev) in cases {
        let r = Reply::new(code, None, "t").unwrap();
        assert_eq!(r.severity(), sev);
        assert_eq!(r.code(), code);
        assert_eq!(r.is_positive_completion(), code / 100 == 2);
        assert_eq!(r.is_positive_intermediate(), code / 100 == 3);
        assert_eq!(r.is_transient(), code / 100 == 4);
        assert_eq!(r.is_permanent(), code / 100 == 5);
    }
}

/// (input, expected code, enhanced, lines, consumed)
#[test]
fn parses_valid_replies() {
    type Case = (
        &'static [u8],
        u16,
        Option<EnhancedCode>,
        &'static [&'static str],
        usize,
    );
    let cases: &[Case] = &[
        (b"220 mx.example ESMTP\r\n", 220, None, &["mx.example ESMTP"], 22),
        (b"250\r\n", 250, None, &[""], 5),
        (b"250 \r\n", 250, None, &[""], 6),
        (b"250 2.1.5 Ok\r\n", 250, Some(ec(2, 1, 5)), &["Ok"], 14),
        (b"250 2.1.5\r\n", 250, Some(ec(2, 1, 5)), &[""], 11),
        // RFC 5321 §4.2.1 multi-line example.
        (
            b"123-First line\r\n",
            0,
            None,
            &[],
            0,
        ),
        (
            b"250-First line\r\n250-Second line\r\n250-234 Text beginning with numbers\r\n250 The last line\r\n",
            250,
            None,
            &["First line", "Second line", "234 Text beginning with numbers", "The last line"],
            89,
        ),
        // Enhanced code of another class stays text.
        (b"250 5.0.0 odd\r\n", 250, None, &["5.0.0 odd"], 15),
        // Not quite an enhanced code: stays text.
        (b"550 5.01.1 x\r\n", 550, None, &["5.01.1 x"], 14),
        (b"550 5.1.1x\r\n", 550, None, &["5.1.1x"], 12),
        // Enhanced code stripped from every line that repeats it, kept where it differs.
        (
            b"550-5.1.1 No such user\r\n550-5.7.1 other\r\n550 5.1.1 bye\r\n",
            550,
            Some(ec(5, 1, 1)),
            &["No such user", "5.7.1 other", "bye"],
            56,
        ),
        // Continuation line with empty text.
        (b"250-\r\n250 x\r\n", 250, None, &["", "x"], 13),
        // Trailing pipelined bytes are not consumed.
        (b"250 ok\r\n354 go\r\n", 250, None, &["ok"], 8),
        // Non-UTF-8 text is replaced, not refused.
        (b"250 caf\xe9\r\n", 250, None, &["caf\u{fffd}"], 10),
    ];
    for (input, code, enhanced, lines, consumed) in cases {
        let got = parse_reply(input);
        if *code == 0 {
            assert!(got.is_err(), "{:?}", String::from_utf8_lossy(input));
            continue;
        }
        let (reply, n) = got.unwrap().unwrap();
        assert_eq!(reply.code(), *code);
        assert_eq!(reply.enhanced(), *enhanced, "{reply:?}");
        assert_eq!(reply.lines().collect::<Vec<_>>(), *lines);
        assert_eq!(n, *consumed);
    }
}

#[test]
fn incomplete_input_needs_more() {
    let full = b"250-mx.example\r\n250-PIPELINING\r\n250 2.0.0 SIZE 10\r\n";
    for cut in 0..full.len() {
        assert_eq!(parse_reply(&full[..cut]), Ok(None), "cut at {cut}");
    }
    assert!(parse_reply(full).unwrap().is_some());
}

#[test]
fn refuses_malformed_replies() {
    let cases: &[(&[u8], ReplyErrorKind, &str)] = &[
        (
            b"199 too low\r\n",
            ReplyErrorKind::InvalidCode,
            "199 too low",
        ),
        (
            b"600 too high\r\n",
            ReplyErrorKind::InvalidCode,
            "600 too high",
        ),
        (
            b"260 bad middle\r\n",
            ReplyErrorKind::InvalidCode,
            "260 bad middle",
        ),
        (b"abc def\r\n", ReplyErrorKind::InvalidCode, "abc def"),
        (b"25\r\n", ReplyErrorKind::InvalidCode, "25"),
        (b"\r\n", ReplyErrorKind::InvalidCode, ""),
        (b"1", ReplyErrorKind::InvalidCode, "1"),
        (b"x", ReplyErrorKind::InvalidCode, "x"),
        (b"250x ok\r\n", ReplyErrorKind::InvalidSeparator, "250x ok"),
        (b"2500 ok\r\n", ReplyErrorKind::InvalidSeparator, "2500 ok"),
        (b"250_", ReplyErrorKind::InvalidSeparator, "250_"),
        (
            b"250-first\r\n251 second\r\n",
            ReplyErrorKind::CodeMismatch,
            "251 second",
        ),
        (b"250-first\r\n550", ReplyErrorKind::CodeMismatch, "550"),
        (
            b"250-first\r\n250 x\n",
            ReplyErrorKind::BareLineEnding,
            "250 x",
        ),
        (b"250 ok\n", ReplyErrorKind::BareLineEnding, "250 ok"),
        (b"250 o\rk\r\n", ReplyErrorKind::BareLineEnding, "250 o\rk"),
    ];
    for (input, kind, line) in cases {
        let err = parse_reply(input).unwrap_err();
        assert_eq!(err.kind(), *kind, "{:?}", String::from_utf8_lossy(input));
        assert_eq!(err.line(), *line);
    }
    let err = parse_reply(b"554 \xff\xfe bad\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "reply line with a bare CR or LF: \"554 \u{fffd}\u{fffd} bad\""
    );
}

#[test]
fn errors_keep_only_the_start_of_a_long_line() {
    // A line of 4,000 control characters: the error (and its message) stays small.
    let mut long = b"250 ".to_vec();
    long.resize(4000, 0x1b);
    long.extend_from_slice(b"\n");
    let err = parse_reply(&long).unwrap_err();
    assert_eq!(err.kind(), ReplyErrorKind::BareLineEnding);
    assert_eq!(err.line().len(), ReplyError::LINE_MAX);
    assert!(err.is_cut());
    let text = err.to_string();
    assert!(text.ends_with("\\u{1b}\" (cut)"), "{text}");
    assert!(text.len() < 7 * ReplyError::LINE_MAX, "{}", text.len());
    // Cut inside a character: the partial character is dropped, not shown as U+FFFD.
    let mut utf8 = b"2".to_vec();
    utf8.extend("é".repeat(300).as_bytes());
    let err = parse_reply(&utf8).unwrap_err();
    assert_eq!(err.kind(), ReplyErrorKind::InvalidCode);
    assert_eq!(err.line(), format!("2{}", "é".repeat(127)));
    // A short line is kept whole and not marked.
    let err = parse_reply(b"HTTP/1.1 400 Bad Request\r\n").unwrap_err();
    assert_eq!(err.line(), "HTTP/1.1 400 Bad Request");
    assert!(!err.is_cut());
    assert_eq!(
        err.to_string(),
        "invalid reply code: \"HTTP/1.1 400 Bad Request\""
    );
}

#[test]
fn bounded_buffering() {
    // A line without end: refused once it passes the bound, not buffered for ever.
    let mut long = b"250 ".to_vec();
    long.resize(MAX_REPLY_LINE_LEN - 1, b'a');
    assert_eq!(parse_reply(&long), Ok(None));
    long.push(b'a');
    assert_eq!(
        parse_reply(&long).unwrap_err().kind(),
        ReplyErrorKind::LineTooLong
    );
    // The longest line that is accepted.
    let mut ok = b"250 ".to_vec();
    ok.resize(MAX_REPLY_LINE_LEN - 2, b'a');
    ok.extend_from_slice(b"\r\n");
    assert!(parse_reply(&ok).unwrap().is_some());

    // Too many lines.
    let mut many = Vec::new();
    for _ in 0..MAX_REPLY_LINES {
        many.extend_from_slice(b"250-x\r\n");
    }
    let mut last = many.clone();
    last.extend_from_slice(b"250 x\r\n");
    assert_eq!(
        parse_reply(&last).unwrap_err().kind(),
        ReplyErrorKind::ReplyTooLong
    );
    many.truncate(many.len() - 7);
    many.extend_from_slice(b"250 x\r\n");
    assert_eq!(
        parse_reply(&many).unwrap().unwrap().0.line_count(),
        MAX_REPLY_LINES
    );

    // Too many octets in total.
    let mut line = b"250-".to_vec();
    line.resize(1022, b'y');
    line.extend_from_slice(b"\r\n");
    let mut huge = Vec::new();
    while huge.len() <= MAX_REPLY_LEN {
        huge.extend_from_slice(&line);
    }
    assert_eq!(
        parse_reply(&huge).unwrap_err().kind(),
        ReplyErrorKind::ReplyTooLong
    );
}

fn text_line() -> impl Strategy<Value = String> {
    // Printable text (including UTF-8) that does not itself start like an enhanced code.
    "([a-zA-Z <>@.:-]|\u{e9}|\u{4e2d})[ -~\u{e9}\u{4e2d}]{0,40}|"
}

fn enhanced_code() -> impl Strategy<Value = (u16, u16)> {
    (0u16..=999, 0u16..=999)
}

prop_compose! {
    fn any_reply()(
        code in prop::sample::select(vec![2u16, 3, 4, 5]),
        yz in 0u16..=59,
        with_enh in any::<bool>(),
        (subject, detail) in enhanced_code(),
        lines in prop::collection::vec(text_line(), 1..6),
    ) -> Reply {
        let code = code * 100 + yz;
        let enhanced = (with_enh && code / 100 != 3)
            .then(|| EnhancedCode::new((code / 100) as u8, subject, detail).unwrap());
        Reply::multiline(code, enhanced, lines).unwrap()
    }
}

proptest! {
    #[test]
    fn encode_then_parse_gives_the_reply(reply in any_reply(), tail in prop::collection::vec(any::<u8>(), 0..10)) {
        let mut wire = reply.to_bytes();
        let len = wire.len();
        wire.extend_from_slice(&tail);
        let (parsed, consumed) = parse_reply(&wire).unwrap().unwrap();
        prop_assert_eq!(consumed, len);
        prop_assert_eq!(parsed, reply);
        // Any prefix is "need more", never an error.
        for cut in 0..len {
            prop_assert_eq!(parse_reply(&wire[..cut]), Ok(None));
        }
    }

    #[test]
    fn enhanced_code_display_parses_back(class in prop::sample::select(vec![2u8, 4, 5]), (s, d) in enhanced_code()) {
        let code = EnhancedCode::new(class, s, d).unwrap();
        prop_assert_eq!(code.to_string().parse::<EnhancedCode>(), Ok(code));
    }

    #[test]
    fn parser_never_panics(input in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(Some((_, n))) = parse_reply(&input) {
            prop_assert!(n <= input.len());
        }
    }

    #[test]
    fn parser_never_panics_on_reply_like_input(
        input in prop::collection::vec(prop::sample::select(b"2505- .\r\n1x".to_vec()), 0..60)
    ) {
        if let Ok(Some((reply, n))) = parse_reply(&input) {
            prop_assert!(n <= input.len());
            // Whatever parsed re-encodes to something that parses to the same reply.
            let (again, _) = parse_reply(&reply.to_bytes()).unwrap().unwrap();
            prop_assert_eq!(again, reply);
        }
    }
}

#[test]
fn control_characters_in_built_texts_are_written_as_question_marks() {
    // NUL, ESC, DEL, C1 (NEL) would reach the client's screen or log as they are; tab is
    // allowed by RFC 5321's textstring and kept; line breaks still split lines.
    let r = Reply::new(
        550,
        Some(ec(5, 1, 1)),
        "no\0 such\x1b[31m user\x7f\u{85}\tx",
    )
    .unwrap();
    assert_eq!(enc(&r), "550 5.1.1 no? such?[31m user??\tx\r\n");
    let r = Reply::multiline(250, None, ["a\0", "b\r\nc\x07"]).unwrap();
    assert_eq!(enc(&r), "250-a?\r\n250-b\r\n250 c?\r\n");
    let r = Reply::ok().with_text("fine\x1b]0;owned\x07");
    assert_eq!(enc(&r), "250 2.0.0 fine?]0;owned?\r\n");
    let r = Refusal::new(451, None, "later\0")
        .unwrap()
        .with_text("x\x1by");
    assert_eq!(enc(r.reply()), "451 x?y\r\n");
}

proptest! {
    /// Whatever text a reply is built from, every byte on the wire but the CRLFs is tab or
    /// not an ASCII control, and the reply parses back as itself.
    #[test]
    fn built_replies_carry_no_control_characters(text in "\\PC*|[\0-\x7f\u{80}-\u{9f}]{0,30}") {
        let r = Reply::new(550, None, text).unwrap();
        let wire = r.to_bytes();
        let body = &wire[..wire.len() - 2];
        prop_assert!(!body.iter().any(|&b| (b < 0x20 && b != b'\t' && b != b'\r' && b != b'\n') || b == 0x7f));
        let c1 = String::from_utf8_lossy(&wire).chars().any(|c| c.is_control() && !c.is_ascii());
        prop_assert!(!c1);
        let (back, n) = parse_reply(&wire).unwrap().unwrap();
        prop_assert_eq!(n, wire.len());
        prop_assert_eq!(back, r);
    }
}
