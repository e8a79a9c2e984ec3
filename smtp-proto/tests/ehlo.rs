//! EHLO reply builder and parser.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use smtp_proto::ehlo::{parse_ehlo, Capability, EhloError, EhloReply};
use smtp_proto::reply::{parse_reply, Reply};

fn parse_wire(wire: &[u8]) -> EhloReply {
    let (reply, n) = parse_reply(wire).unwrap().unwrap();
    assert_eq!(n, wire.len());
    parse_ehlo(&reply).unwrap()
}

#[test]
fn builds_the_server_reply() {
    let ehlo = EhloReply::new("mx.example.org", "greets client.example")
        .with(Capability::Pipelining)
        .with(Capability::Size(Some(10_485_760)))
        .with(Capability::EightBitMime)
        .with(Capability::SmtpUtf8)
        .with(Capability::EnhancedStatusCodes)
        .with(Capability::StartTls)
        .with(Capability::Chunking)
        .with(Capability::BinaryMime)
        .with(Capability::Auth(vec!["PLAIN".into(), "LOGIN".into()]))
        .with(Capability::Dsn)
        .with(Capability::Size(None))
        .with(Capability::Other(
            "X-FOO".into(),
            vec!["a=1".into(), "b".into()],
        ));
    let wire = ehlo.to_reply().to_bytes();
    assert_eq!(
        String::from_utf8(wire).unwrap(),
        "250-mx.example.org greets client.example\r\n\
         250-PIPELINING\r\n\
         250-SIZE 10485760\r\n\
         250-8BITMIME\r\n\
         250-SMTPUTF8\r\n\
         250-ENHANCEDSTATUSCODES\r\n\
         250-STARTTLS\r\n\
         250-CHUNKING\r\n\
         250-BINARYMIME\r\n\
         250-AUTH PLAIN LOGIN\r\n\
         250-DSN\r\n\
         250-SIZE\r\n\
         250 X-FOO a=1 b\r\n"
    );
    // Without capabilities or greeting: one line, just the domain.
    let bare = EhloReply::new("mx", "").to_reply();
    assert_eq!(bare.to_bytes(), b"250 mx\r\n");
    assert_eq!(parse_ehlo(&bare).unwrap(), EhloReply::new("mx", ""));
}

#[test]
fn parses_real_server_replies() {
    // Shape of a Postfix reply, keywords in mixed case, old AUTH= form as Exim and old
    // Outlook clients need it.
    let ehlo = parse_wire(
        b"250-mail.example.com\r\n\
          250-pipelining\r\n\
          250-SIZE 52428800\r\n\
          250-VRFY\r\n\
          250-ETRN\r\n\
          250-StartTLS\r\n\
          250-AUTH PLAIN LOGIN\r\n\
          250-AUTH=PLAIN LOGIN CRAM-MD5\r\n\
          250-ENHANCEDSTATUSCODES\r\n\
          250-8BITMIME\r\n\
          250-DSN\r\n\
          250 SMTPUTF8\r\n",
    );
    assert_eq!(ehlo.domain, "mail.example.com");
    assert_eq!(ehlo.greeting, "");
    assert_eq!(
        ehlo.capabilities,
        vec![
            Capability::Pipelining,
            Capability::Size(Some(52_428_800)),
            Capability::Other("VRFY".into(), vec![]),
            Capability::Other("ETRN".into(), vec![]),
            Capability::StartTls,
            Capability::Auth(vec!["PLAIN".into(), "LOGIN".into(), "CRAM-MD5".into()]),
            Capability::EnhancedStatusCodes,
            Capability::EightBitMime,
            Capability::Dsn,
            Capability::SmtpUtf8,
        ]
    );
    assert!(ehlo.has("PIPELINING") && ehlo.has("starttls") && ehlo.has("vrfy"));
    assert!(ehlo.has("auth") && !ehlo.has("CHUNKING"));
    assert_eq!(ehlo.size(), Some(52_428_800));
    assert_eq!(ehlo.auth_mechanisms(), ["PLAIN", "LOGIN", "CRAM-MD5"]);
}

#[test]
fn capability_lines() {
    let cases: &[(&str, Option<Capability>)] = &[
        ("SIZE", Some(Capability::Size(None))),
        ("size 0", Some(Capability::Size(Some(0)))),
        ("SIZE lots", Some(Capability::Size(None))),
        ("AUTH=LOGIN", Some(Capability::Auth(vec!["LOGIN".into()]))),
        ("AUTH", Some(Capability::Auth(vec![]))),
        (
            "auth  plain   xoauth2",
            Some(Capability::Auth(vec!["plain".into(), "xoauth2".into()])),
        ),
        ("chunking", Some(Capability::Chunking)),
        ("BinaryMime", Some(Capability::BinaryMime)),
        (
            "X-EXPS GSSAPI NTLM",
            Some(Capability::Other(
                "X-EXPS".into(),
                vec!["GSSAPI".into(), "NTLM".into()],
            )),
        ),
        ("", None),
        ("   ", None),
    ];
    for (line, cap) in cases {
        assert_eq!(Capability::from_line(line), *cap, "{line:?}");
    }
}

#[test]
fn size_lookup_ignores_zero_and_missing() {
    let e = EhloReply::new("mx", "").with(Capability::Size(Some(0)));
    assert_eq!(e.size(), None);
    let e = EhloReply::new("mx", "").with(Capability::Size(None));
    assert_eq!(e.size(), None);
    assert!(e.has("size"));
    assert_eq!(e.auth_mechanisms(), [] as [String; 0]);
}

#[test]
fn refused_ehlo_is_an_error() {
    let reply = Reply::new(502, None, "5.5.1 Command not implemented").unwrap();
    assert_eq!(
        parse_ehlo(&reply),
        Err(EhloError::NotAccepted(reply.clone()))
    );
    let ok = Reply::new(220, None, "mx").unwrap();
    assert!(parse_ehlo(&ok).is_err());
}

fn other_capability() -> impl Strategy<Value = Capability> {
    (
        "X-[A-Z0-9-]{1,12}",
        prop::collection::vec("[!-~]{1,10}", 0..3),
    )
        .prop_map(|(k, p)| Capability::Other(k, p))
}

fn capability() -> impl Strategy<Value = Capability> {
    prop_oneof![
        Just(Capability::Pipelining),
        any::<Option<u64>>().prop_map(Capability::Size),
        Just(Capability::EightBitMime),
        Just(Capability::SmtpUtf8),
        Just(Capability::EnhancedStatusCodes),
        Just(Capability::StartTls),
        Just(Capability::Chunking),
        Just(Capability::BinaryMime),
        prop::collection::vec("[A-Z0-9_-]{1,20}", 0..4).prop_map(|mut m| {
            m.dedup();
            Capability::Auth(m)
        }),
        Just(Capability::Dsn),
        other_capability(),
    ]
}

proptest! {
    #[test]
    fn builder_reply_parses_back(
        domain in "[a-z0-9.-]{1,30}",
        greeting in "([!-~][ -~]{0,30})?",
        caps in prop::collection::vec(capability(), 0..12),
    ) {
        // One AUTH line at most: several are merged when parsed.
        let mut seen_auth = false;
        let caps: Vec<Capability> = caps
            .into_iter()
            .filter(|c| !matches!(c, Capability::Auth(_)) || !std::mem::replace(&mut seen_auth, true))
            .collect();
        let ehlo = EhloReply { domain, greeting, capabilities: caps };
        let wire = ehlo.to_reply().to_bytes();
        prop_assert_eq!(parse_wire(&wire), ehlo);
    }

    #[test]
    fn parse_ehlo_never_panics(lines in prop::collection::vec("[ -~]{0,30}", 1..10)) {
        let reply = Reply::multiline(250, None, lines).unwrap();
        let ehlo = parse_ehlo(&reply).unwrap();
        prop_assert!(ehlo.capabilities.len() < reply.line_count());
    }
}

proptest! {
    /// Whatever text the domain, greeting and capabilities hold (CR, LF, NUL, spaces), the
    /// reply has one line for the domain and one per valid capability, and what the client
    /// parses back is exactly the valid capabilities: nothing the builder was given can add
    /// a capability line (`STARTTLS` injected through the host name, say).
    #[test]
    fn no_text_adds_a_line(
        domain in "\\PC*|[a-z\r\n\0 ]{0,20}",
        greeting in "[ -~\r\n\0\u{85}]{0,30}",
        other in prop::collection::vec(("[A-Za-z0-9 \r\n-]{0,8}", prop::collection::vec("[ -~\r\n\0]{0,6}", 0..3)), 0..4),
    ) {
        let caps: Vec<Capability> = other
            .into_iter()
            .map(|(k, p)| Capability::Other(k, p))
            .chain([Capability::Auth(vec!["PLAIN\r\n250-STARTTLS".into()]), Capability::Chunking])
            .collect();
        let valid: Vec<Capability> = caps.iter().filter(|c| c.is_valid()).cloned().collect();
        let ehlo = EhloReply { domain, greeting, capabilities: caps };
        let reply = ehlo.to_reply();
        prop_assert_eq!(reply.line_count(), 1 + valid.len());
        let wire = reply.to_bytes();
        let parsed = parse_wire(&wire);
        prop_assert_eq!(parsed.capabilities, valid);
    }
}

#[test]
fn capability_validity_follows_the_ehlo_line_grammar() {
    assert!(Capability::Other("X-FOO".into(), vec!["a=b".into()]).is_valid());
    assert!(Capability::Other("9X".into(), vec![]).is_valid());
    assert!(Capability::StartTls.is_valid());
    assert!(Capability::Size(Some(1)).is_valid());
    for bad in [
        Capability::Other(String::new(), vec![]),
        Capability::Other("-X".into(), vec![]),
        Capability::Other("X Y".into(), vec![]),
        Capability::Other("X\r\n250-STARTTLS".into(), vec![]),
        Capability::Other("X".into(), vec![String::new()]),
        Capability::Other("X".into(), vec!["a b".into()]),
        Capability::Other("X".into(), vec!["\u{e9}".into()]),
        Capability::Auth(vec!["PLAIN\nSTARTTLS".into()]),
    ] {
        assert!(!bad.is_valid(), "{bad:?}");
    }
    let reply = EhloReply::new("mx.test\r\n250-STARTTLS", "hi\r\nAUTH PLAIN")
        .with(Capability::Other("X\r\nSTARTTLS".into(), vec![]))
        .with(Capability::Pipelining)
        .to_reply();
    assert_eq!(
        String::from_utf8(reply.to_bytes()).unwrap(),
        "250-mx.test??250-STARTTLS hi??AUTH PLAIN\r\n250 PIPELINING\r\n"
    );
}
