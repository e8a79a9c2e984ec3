//! Cases aimed at the parser's fast paths: verbs recognised four bytes at a time, the UTF-8
//! check over a widened, aligned range, and the hand-written scanners. Each input is parsed at
//! every offset of a buffer (so at every alignment) and with other bytes after the line.
#![allow(clippy::unwrap_used)]

use smtp_proto::address::AddressError;
use smtp_proto::command::{parse_command, CommandErrorKind, Limits};

/// Parses `line` placed at offsets 0..16 of a buffer, followed by each of `after`, and
/// checks every run gives the same outcome; returns it as text.
fn outcome(line: &[u8]) -> String {
    let limits = Limits::default();
    let afters: [&[u8]; 4] = [b"", b"RCPT TO:<a@b>\r\n", b"\xff\xfe\x80 binary", b"\xc3"];
    let mut seen: Option<String> = None;
    for pad in 0..16 {
        for after in afters {
            let mut buf = vec![b'x'; pad];
            buf.extend_from_slice(line);
            buf.extend_from_slice(after);
            let got = format!("{:?}", parse_command(&buf[pad..], &limits));
            match &seen {
                Some(s) => assert_eq!(&got, s, "line {line:?}, offset {pad}, after {after:?}"),
                None => seen = Some(got),
            }
        }
    }
    seen.unwrap()
}

fn kind(line: &[u8]) -> CommandErrorKind {
    let limits = Limits::default();
    parse_command(line, &limits).unwrap_err().kind
}

#[test]
fn verbs_are_whole_words() {
    for line in [
        &b"MAILX FROM:<a@b>\r\n"[..],
        b"STARTTLSX\r\n",
        b"STAR\r\n",
        b"STARTTL\r\n",
        b"DAT\r\n",
        b"DATA1\r\n",
        b"M@IL FROM:<a@b>\r\n",
        b"\xc4\x81AIL FROM:<a@b>\r\n",
    ] {
        assert_eq!(kind(line), CommandErrorKind::UnknownCommand, "{line:?}");
    }
    assert_eq!(kind(b"DATA\tx\r\n"), CommandErrorKind::UnknownCommand);
    assert_eq!(kind(b"turn\r\n"), CommandErrorKind::NotImplemented);
    assert!(outcome(b"sTaRtTlS\r\n").contains("StartTls"));
    assert!(outcome(b"data  \t \r\n").contains("Data"));
}

#[test]
fn keyword_colon_is_exact() {
    // 0x1A differs from ':' only in bit 5, which case folding must not ignore.
    assert_eq!(
        kind(b"MAIL FROM\x1a<a@b>\r\n"),
        CommandErrorKind::Syntax("Syntax: MAIL FROM:<address> [parameters]")
    );
    assert_eq!(
        kind(b"RCPT TO\x1a<a@b>\r\n"),
        CommandErrorKind::Syntax("Syntax: RCPT TO:<address> [parameters]")
    );
}

#[test]
fn same_outcome_at_every_alignment_and_whatever_follows() {
    for line in [
        &b"EHLO client.example.org\r\n"[..],
        b"MAIL FROM:<alice.sender@example.org> SIZE=123456 BODY=8BITMIME\r\n",
        b"RCPT TO:<carol.jones@mail.example.net> NOTIFY=SUCCESS,FAILURE\r\n",
        b"RCPT TO:<\xc3\xa9t\xc3\xa9@\xc3\xa9xample.org>\r\n",
        b"MAIL FROM:<a@b> X=\xff\r\n",
        b"VRFY \xc3\r\n",
        b"HELP me\r\n",
        b"AUTH PLAIN dGVzdA==\r\n",
        b"RCPT TO:<a@b.>\r\n",
        b"RCPT TO:<a.@b>\r\n",
        b"RCPT TO:<a@-b.c>\r\n",
        b"RCPT TO:<a@b-.c>\r\n",
    ] {
        outcome(line);
    }
}

#[test]
fn invalid_utf8_anywhere_in_the_arguments_is_reported_first() {
    assert_eq!(
        kind(b"MAIL FROM:<a@b> X=\xff\r\n"),
        CommandErrorKind::BadSender(AddressError::InvalidUtf8)
    );
    assert_eq!(
        kind(b"RCPT TO:<a@b> NOTIFY=\xc3\r\n"),
        CommandErrorKind::BadRecipient(AddressError::InvalidUtf8)
    );
    assert!(outcome(b"RCPT TO:<a@b> NOTIFY=\xc3\r\n").contains("InvalidUtf8"));
    // Valid UTF-8 in the line, and bytes that are not UTF-8 after it: the line parses.
    assert!(outcome(b"EHLO h\xc3\xa9.example\r\n").contains("Ehlo(\"h\u{e9}.example\")"));
}

#[test]
fn dots_and_hyphens_end_scans_where_the_grammar_does() {
    for (line, want) in [
        (&b"RCPT TO:<a..b@c>\r\n"[..], AddressError::Syntax),
        (b"RCPT TO:<a@b..c>\r\n", AddressError::Syntax),
        (b"RCPT TO:<a@b.-c>\r\n", AddressError::Syntax),
        (b"RCPT TO:<.a@b>\r\n", AddressError::Syntax),
    ] {
        assert_eq!(kind(line), CommandErrorKind::BadRecipient(want), "{line:?}");
    }
    assert!(outcome(b"RCPT TO:<a.b-c@x-1.y2.z>\r\n").contains("x-1.y2.z"));
}
