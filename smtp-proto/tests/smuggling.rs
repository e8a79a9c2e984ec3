//! Every type that is written to the wire is valid by construction: each test tries to
//! smuggle a line break (and with it a second command or reply) through one public
//! constructor and must get an error, or text that stays inside one reply line per line.
//! (The `const` constructors are covered by `compile_fail` doctests: a bad fixed reply,
//! refusal or enhanced code does not compile, nor does building a type with private fields.)
#![allow(clippy::unwrap_used)]

use smtp_proto::address::{Domain, DomainName, Mailbox};
use smtp_proto::command::{Command, Text, Word};
use smtp_proto::param::{Orcpt, OtherParams, XText};
use smtp_proto::{parse_command, parse_reply, EnhancedCode, Refusal, Reply};

const HOSTILE: &[&str] = &[
    "x\r\nRSET",
    "x\nRSET",
    "x\rRSET",
    "x\0y",
    "x\r\n.\r\nMAIL FROM:<evil@example>",
];

#[test]
fn domains_refuse_line_breaks() {
    for s in HOSTILE {
        assert!(DomainName::new(*s).is_err(), "{s:?}");
        assert!(Domain::name(*s).is_err(), "{s:?}");
        assert!(DomainName::try_from(s.to_string()).is_err(), "{s:?}");
    }
}

#[test]
fn mailboxes_refuse_line_breaks_in_local_parts() {
    let d = Domain::name("example.org").unwrap();
    for s in HOSTILE {
        assert!(Mailbox::new(*s, d).is_err(), "{s:?}");
    }
    // A quotable local part with a space is fine, and is quoted on the wire.
    let m = Mailbox::new("a b", d).unwrap();
    assert_eq!(m.to_string(), "\"a b\"@example.org");
}

#[test]
fn params_refuse_line_breaks() {
    let x = XText::new("a").unwrap();
    for s in HOSTILE {
        assert!(Orcpt::new(*s, x).is_err(), "{s:?}");
        assert!(XText::new(*s).is_err(), "{s:?}");
        assert!(OtherParams::new(*s).is_err(), "{s:?}");
    }
    // XText::encode escapes what it is given: nothing of it reaches the wire raw.
    let enc = XText::encode("a\r\nRSET");
    assert!(!enc.as_encoded().contains(['\r', '\n']));
    assert_eq!(enc.decode(), "a\r\nRSET");
}

#[test]
fn command_arguments_refuse_line_breaks() {
    for s in HOSTILE {
        assert!(Word::new(s).is_err(), "{s:?}");
        assert!(Text::new(s).is_err(), "{s:?}");
    }
    assert!(Word::new("").is_err());
    assert!(Text::new("").is_err());
    assert!(Word::new("a b").is_err());
    // What can be built encodes to exactly one line that parses back to the same command.
    let cmd = Command::Vrfy(Text::new("John \"Q\" Public").unwrap());
    let wire = cmd.to_string();
    assert_eq!(wire.matches("\r\n").count(), 1);
    let (parsed, used) = parse_command(wire.as_bytes(), &Default::default())
        .unwrap()
        .unwrap();
    assert_eq!((parsed, used), (cmd, wire.len()));
}

#[test]
fn replies_keep_line_breaks_inside_their_own_lines() {
    // Text with line breaks becomes more lines of the same reply, each with the code:
    // no line of the encoding can be read as a reply of another code, or end the reply early.
    for s in HOSTILE {
        let text = format!("{s}\r\n250 2.0.0 forged");
        let r = Reply::new(550, EnhancedCode::new(5, 7, 1), text).unwrap();
        let wire = r.to_bytes();
        let (parsed, used) = parse_reply(&wire).unwrap().unwrap();
        assert_eq!(used, wire.len(), "{s:?}");
        assert_eq!(parsed.code(), 550);
        assert!(parsed.lines().all(|l| !l.contains(['\r', '\n'])));
        let text = String::from_utf8(wire).unwrap();
        for line in text.split_terminator("\r\n") {
            assert!(
                line.starts_with("550-5.7.1") || line.starts_with("550 5.7.1"),
                "{line:?}"
            );
        }
        // The same through with_text on a fixed reply, and on a refusal.
        const BASE: Refusal = Refusal::fixed(550, Some(EnhancedCode::fixed(5, 7, 1)), "no");
        let r = BASE.with_text(format!("{s}\r\n250 ok"));
        assert!(r.reply().lines().all(|l| !l.contains(['\r', '\n'])));
        assert_eq!(r.code(), 550);
    }
}

#[test]
fn a_refusal_cannot_hold_a_positive_reply() {
    for code in [220, 235, 250, 251, 334, 354] {
        assert!(Refusal::new(code, None, "x").is_err(), "{code}");
        let reply = Reply::new(code, None, "x").unwrap();
        assert_eq!(Refusal::try_from(reply.clone()), Err(reply));
    }
    for code in [421, 450, 451, 452, 454, 500, 530, 535, 550, 554] {
        let r = Refusal::new(code, None, "x").unwrap();
        assert!(!r.reply().is_positive_completion());
    }
}

#[test]
fn enhanced_codes_are_valid_or_absent() {
    assert_eq!(EnhancedCode::new(3, 0, 0), None);
    assert_eq!(EnhancedCode::new(2, 1000, 0), None);
    assert_eq!(EnhancedCode::new(4, 0, 1000), None);
    assert!("5.1.1\r\n".parse::<EnhancedCode>().is_err());
    let e = EnhancedCode::new(5, 1, 1).unwrap();
    assert_eq!((e.class(), e.subject(), e.detail()), (5, 1, 1));
    assert_eq!(e.with_class(4), EnhancedCode::new(4, 1, 1));
    assert_eq!(e.with_class(3), None);
    // A reply refuses an enhanced code of another class.
    assert!(Reply::new(250, Some(e), "x").is_err());
}
