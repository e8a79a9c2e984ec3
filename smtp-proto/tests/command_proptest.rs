//! Property tests: encode → parse round trips for commands, parameters and xtext, and the
//! parser never panics.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use smtp_proto::address::{Domain, ForwardPath, Mailbox, ReversePath};
use smtp_proto::command::{parse_command, Command, Limits, Text, Word};
use smtp_proto::param::{
    xtext_decode, xtext_encode, Body, MailParams, Notify, Orcpt, OtherParams, RcptParams, Ret,
    XText,
};

/// Commands in these tests hold `&'static str`; the strings are leaked (tests only).
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn roomy() -> Limits {
    Limits::RFC5321.with_max_command_line(8192)
}

/// The xtext form of `plain`, leaked.
fn xtext(plain: &str) -> XText<&'static str> {
    XText::new(leak(xtext_encode(plain))).unwrap()
}

fn domain() -> impl Strategy<Value = Domain<&'static str>> {
    let label = prop_oneof![
        "[a-zA-Z0-9]",
        "[a-zA-Z0-9][a-zA-Z0-9-]{0,10}[a-zA-Z0-9]",
        "[a-zäöüß例]{1,5}"
    ];
    prop_oneof![
        4 => prop::collection::vec(label, 1..5).prop_map(|l| Domain::name(leak(l.join("."))).unwrap()),
        1 => any::<[u8; 4]>().prop_map(|a| Domain::Ipv4(a.into())),
        1 => any::<[u16; 8]>().prop_map(|a| Domain::Ipv6(a.into())),
    ]
}

fn mailbox() -> impl Strategy<Value = Mailbox<&'static str>> {
    let local = prop_oneof![
        prop::collection::vec("[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,8}", 1..4)
            .prop_map(|a| a.join(".")),
        "[ -~]{0,20}",
        "[a-zé中\" \\\\.@]{0,20}",
    ];
    (local, domain()).prop_map(|(l, d)| Mailbox::new(leak(l), d).unwrap())
}

/// Unknown parameters: keywords that are not the known ones, values per esmtp-value.
fn others() -> impl Strategy<Value = OtherParams<&'static str>> {
    prop::collection::btree_map("X-[A-Z0-9]{1,8}", prop::option::of("[!-<>-~]{1,10}"), 0..3)
        .prop_map(|m| {
            let text = m
                .into_iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={v}"),
                    None => k,
                })
                .collect::<Vec<_>>()
                .join(" ");
            OtherParams::new(leak(text)).unwrap()
        })
}

fn mail_params() -> impl Strategy<Value = MailParams<&'static str>> {
    (
        prop::option::of(any::<u64>()),
        prop::option::of(prop_oneof![
            Just(Body::SevenBit),
            Just(Body::EightBitMime),
            Just(Body::BinaryMime)
        ]),
        any::<bool>(),
        prop::option::of("\\PC{1,20}"),
        prop::option::of(prop_oneof![Just(Ret::Full), Just(Ret::Hdrs)]),
        prop::option::of("\\PC{1,20}"),
        others(),
    )
        .prop_map(
            |(size, body, smtputf8, auth, ret, envid, other)| MailParams {
                size,
                body,
                smtputf8,
                auth: auth.as_deref().map(xtext),
                ret,
                envid: envid.as_deref().map(xtext),
                other,
            },
        )
}

fn rcpt_params() -> impl Strategy<Value = RcptParams<&'static str>> {
    (
        prop::option::of(any::<(bool, bool, bool)>().prop_map(|(s, f, d)| Notify {
            success: s,
            failure: f,
            delay: d,
        })),
        prop::option::of(("[a-zA-Z0-9-]{1,10}", "\\PC{0,20}")),
        others(),
    )
        .prop_map(|(notify, orcpt, other)| RcptParams {
            notify,
            orcpt: orcpt.map(|(t, a)| Orcpt::new(leak(t), xtext(&a)).unwrap()),
            other,
        })
}

fn text() -> impl Strategy<Value = Text<'static>> {
    "[!-~]([ -~]{0,20}[!-~])?".prop_map(|s| Text::new(leak(s)).unwrap())
}

fn command() -> impl Strategy<Value = Command<'static>> {
    let word = "[a-zA-Z0-9.:\\[\\]-]{1,30}".prop_map(|s| Word::new(leak(s)).unwrap());
    // Any visible ASCII token: `=`, base64, or not base64 (decoding is the session's job).
    let base64 = "=|([A-Za-z0-9+/]{4}){1,10}([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?|[!-~]{1,40}"
        .prop_map(|s| Word::new(leak(s)).unwrap());
    prop_oneof![
        word.clone().prop_map(Command::Ehlo),
        word.prop_map(Command::Helo),
        (prop::option::of(mailbox()), mail_params()).prop_map(|(m, params)| Command::Mail {
            from: m.map_or(ReversePath::Null, ReversePath::Mailbox),
            params
        }),
        (prop::option::of(mailbox()), rcpt_params()).prop_map(|(m, params)| Command::Rcpt {
            to: m.map_or(ForwardPath::Postmaster, ForwardPath::Mailbox),
            params
        }),
        Just(Command::Data),
        Just(Command::Rset),
        Just(Command::Noop),
        Just(Command::Quit),
        Just(Command::StartTls),
        text().prop_map(Command::Vrfy),
        text().prop_map(Command::Expn),
        prop::option::of(text()).prop_map(Command::Help),
        (
            "[A-Za-z0-9_-]{1,20}".prop_map(|s| Word::new(leak(s)).unwrap()),
            prop::option::of(base64)
        )
            .prop_map(|(mechanism, r)| {
                Command::Auth {
                    mechanism,
                    initial_response: r,
                }
            }),
        (any::<u64>(), any::<bool>()).prop_map(|(size, last)| Command::Bdat { size, last }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn command_encode_then_parse_gives_it_back(cmd in command()) {
        let mut wire = Vec::new();
        cmd.encode(&mut wire);
        let parsed = parse_command(&wire, &roomy());
        prop_assert_eq!(parsed, Ok(Some((cmd, wire.len()))), "{}", String::from_utf8_lossy(&wire));
    }

    #[test]
    fn mail_params_round_trip(p in mail_params()) {
        let text = p.to_string();
        prop_assert_eq!(MailParams::parse(&text), Ok(p), "{}", text);
    }

    #[test]
    fn rcpt_params_round_trip(p in rcpt_params()) {
        let text = p.to_string();
        prop_assert_eq!(RcptParams::parse(&text), Ok(p), "{}", text);
    }

    #[test]
    fn xtext_round_trip(s in "\\PC{0,30}|[+= a-z\u{0}-\u{1f}]{0,30}") {
        let enc = xtext_encode(&s);
        prop_assert!(enc.bytes().all(|b| (b'!'..=b'~').contains(&b) && b != b'='), "{}", enc);
        prop_assert_eq!(xtext_decode(&enc).unwrap(), s);
    }

    #[test]
    fn parse_never_panics_on_bytes(input in prop::collection::vec(any::<u8>(), 0..700)) {
        let _ = parse_command(&input, &Limits::default());
    }

    /// Lines that start like real commands, then go wrong anywhere.
    #[test]
    fn parse_is_stable_on_command_like_lines(
        verb in prop::sample::select(vec!["MAIL FROM:", "RCPT TO:", "EHLO ", "AUTH ", "BDAT ", "VRFY ", "HELP", "DATA"]),
        rest in "[<>@\"\\\\.:,\\[\\] a-zA-Z0-9=+;-]{0,60}",
        tail in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut line = format!("{verb}{rest}").into_bytes();
        line.extend_from_slice(&tail);
        line.extend_from_slice(b"\r\n");
        match parse_command(&line, &Limits::default()) {
            Ok(Some((cmd, used))) => {
                // A tail holding a line end makes the first line shorter: the
                // parser stops at its CRLF and leaves the rest for the next call.
                if tail.contains(&b'\n') {
                    prop_assert!(used <= line.len());
                    prop_assert_eq!(line[used - 1], b'\n');
                } else {
                    prop_assert_eq!(used, line.len());
                }
                // Whatever parses re-encodes to a line that parses to the same command.
                let again = cmd.to_string();
                let reparsed = parse_command(again.as_bytes(), &roomy());
                prop_assert_eq!(reparsed, Ok(Some((cmd, again.len()))));
            }
            Ok(None) => prop_assert!(false, "a whole line must not be partial"),
            Err(e) => prop_assert!(e.consumed == line.len() || tail.contains(&b'\n')),
        }
    }
}
