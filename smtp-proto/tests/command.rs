//! Known-answer tests for the command parser: RFC examples and hostile input.
#![allow(clippy::unwrap_used)]

use std::borrow::Cow;

use smtp_proto::address::{AddressError, Domain, ForwardPath, Mailbox, ReversePath};
use smtp_proto::command::{parse_command, Command, CommandErrorKind, Limits, Text, Word};
use smtp_proto::param::{
    Body, MailParams, Notify, Orcpt, OtherParams, ParamError, RcptParams, Ret, XText,
};

fn parse(line: &str) -> Command<'_> {
    match parse_command(line.as_bytes(), &Limits::default()) {
        Ok(Some((c, used))) => {
            assert_eq!(used, line.len(), "consumed for {line:?}");
            c
        }
        other => panic!("{line:?} gave {other:?}"),
    }
}

/// The reply a refused line gets, as `"501 5.5.4"`.
fn reply(line: &[u8]) -> String {
    match parse_command(line, &Limits::default()) {
        Err(e) => {
            let (a, b, c) = e.enhanced();
            format!("{} {a}.{b}.{c}", e.code())
        }
        other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(line)),
    }
}

fn mb(local: &'static str, domain: &'static str) -> Mailbox<&'static str> {
    Mailbox::new(local, Domain::name(domain).unwrap()).unwrap()
}

/// The xtext form of `plain`, as a parsed command holds it (leaked: tests only).
fn xtext(plain: &str) -> XText<&'static str> {
    let encoded: &'static str = String::leak(XText::encode(plain).to_string());
    XText::new(encoded).unwrap()
}

fn mail(
    local: &'static str,
    domain: &'static str,
    params: MailParams<&'static str>,
) -> Command<'static> {
    Command::Mail {
        from: ReversePath::Mailbox(mb(local, domain)),
        params,
    }
}

fn rcpt(
    local: &'static str,
    domain: &'static str,
    params: RcptParams<&'static str>,
) -> Command<'static> {
    Command::Rcpt {
        to: ForwardPath::Mailbox(mb(local, domain)),
        params,
    }
}

fn w(s: &'static str) -> Word<'static> {
    Word::new(s).unwrap()
}

fn t(s: &'static str) -> Text<'static> {
    Text::new(s).unwrap()
}

#[test]
fn rfc5321_d1_typical_transaction() {
    let none = MailParams::default;
    let cases: Vec<(&str, Command<'static>)> = vec![
        ("EHLO bar.com\r\n", Command::Ehlo(w("bar.com"))),
        (
            "MAIL FROM:<Smith@bar.com>\r\n",
            mail("Smith", "bar.com", none()),
        ),
        (
            "RCPT TO:<Jones@foo.com>\r\n",
            rcpt("Jones", "foo.com", RcptParams::default()),
        ),
        (
            "RCPT TO:<Green@foo.com>\r\n",
            rcpt("Green", "foo.com", RcptParams::default()),
        ),
        ("DATA\r\n", Command::Data),
        ("QUIT\r\n", Command::Quit),
        // D.3 relayed mail, D.4 verify
        ("HELO foo.com\r\n", Command::Helo(w("foo.com"))),
        (
            "MAIL FROM:<JQP@bar.com>\r\n",
            mail("JQP", "bar.com", none()),
        ),
        ("VRFY Crispin\r\n", Command::Vrfy(t("Crispin"))),
        (
            "EXPN Example-People\r\n",
            Command::Expn(t("Example-People")),
        ),
        ("RSET\r\n", Command::Rset),
        ("NOOP\r\n", Command::Noop),
        ("NOOP anything here\r\n", Command::Noop),
        ("HELP\r\n", Command::Help(None)),
        ("HELP MAIL\r\n", Command::Help(Some(t("MAIL")))),
        ("STARTTLS\r\n", Command::StartTls),
        // Verbs are case-insensitive.
        ("ehlo Bar.COM\r\n", Command::Ehlo(w("Bar.COM"))),
        ("mail from:<a@b.c>\r\n", mail("a", "b.c", none())),
        (
            "rCpT tO:<a@b.c>\r\n",
            rcpt("a", "b.c", RcptParams::default()),
        ),
        ("StartTLS\r\n", Command::StartTls),
        ("quit\r\n", Command::Quit),
        ("EHLO [192.0.2.1]\r\n", Command::Ehlo(w("[192.0.2.1]"))),
        (
            "EHLO [IPv6:2001:db8::1]\r\n",
            Command::Ehlo(w("[IPv6:2001:db8::1]")),
        ),
    ];
    for (line, want) in cases {
        assert_eq!(parse(line), want, "{line:?}");
    }
}

#[test]
fn paths() {
    let cases: Vec<(&str, Command<'static>)> = vec![
        (
            "MAIL FROM:<>\r\n",
            Command::Mail {
                from: ReversePath::Null,
                params: MailParams::default(),
            },
        ),
        (
            "RCPT TO:<postmaster>\r\n",
            Command::Rcpt {
                to: ForwardPath::Postmaster,
                params: RcptParams::default(),
            },
        ),
        (
            "RCPT TO:<PostMaster>\r\n",
            Command::Rcpt {
                to: ForwardPath::Postmaster,
                params: RcptParams::default(),
            },
        ),
        (
            "RCPT TO:<Postmaster@foo.com>\r\n",
            rcpt("Postmaster", "foo.com", RcptParams::default()),
        ),
        // RFC 5321 §3.6.1 / appendix C source route: parsed and dropped.
        (
            "RCPT TO:<@hosta.int,@jkl.org:userc@d.bar.org>\r\n",
            rcpt("userc", "d.bar.org", RcptParams::default()),
        ),
        (
            "MAIL FROM:<@a.example:joe@c.example>\r\n",
            mail("joe", "c.example", MailParams::default()),
        ),
        // Quoted local parts are stored unquoted.
        (
            "RCPT TO:<\"john doe\"@example.com>\r\n",
            rcpt("john doe", "example.com", RcptParams::default()),
        ),
        (
            "RCPT TO:<\"a\\\"b\\\\c\"@example.com>\r\n",
            rcpt("a\"b\\c", "example.com", RcptParams::default()),
        ),
        (
            "RCPT TO:<\"\"@example.com>\r\n",
            rcpt("", "example.com", RcptParams::default()),
        ),
        (
            "RCPT TO:<!#$%&'*+-/=?^_`{|}~@example.com>\r\n",
            rcpt("!#$%&'*+-/=?^_`{|}~", "example.com", RcptParams::default()),
        ),
        (
            "RCPT TO:<first.last@sub-1.example.com>\r\n",
            rcpt("first.last", "sub-1.example.com", RcptParams::default()),
        ),
        // RFC 6531: UTF-8 local part and domain.
        (
            "RCPT TO:<用户@例子.广告>\r\n",
            rcpt("用户", "例子.广告", RcptParams::default()),
        ),
        (
            "RCPT TO:<jöran@bücher.example>\r\n",
            rcpt("jöran", "bücher.example", RcptParams::default()),
        ),
        // Lenient: space after the colon, no angle brackets, trailing spaces.
        (
            "MAIL FROM: <a@b.c>\r\n",
            mail("a", "b.c", MailParams::default()),
        ),
        (
            "MAIL FROM:a@b.c\r\n",
            mail("a", "b.c", MailParams::default()),
        ),
        (
            "RCPT TO:  <a@b.c>  \r\n",
            rcpt("a", "b.c", RcptParams::default()),
        ),
        (
            "RCPT TO:postmaster\r\n",
            Command::Rcpt {
                to: ForwardPath::Postmaster,
                params: RcptParams::default(),
            },
        ),
    ];
    for (line, want) in cases {
        assert_eq!(parse(line), want, "{line:?}");
    }
}

#[test]
fn address_literals() {
    let Command::Rcpt {
        to: ForwardPath::Mailbox(m),
        ..
    } = parse("RCPT TO:<u@[192.0.2.1]>\r\n")
    else {
        panic!()
    };
    assert_eq!(m.domain(), &Domain::Ipv4("192.0.2.1".parse().unwrap()));
    let Command::Rcpt {
        to: ForwardPath::Mailbox(m),
        ..
    } = parse("RCPT TO:<u@[IPv6:2001:db8::1]>\r\n")
    else {
        panic!()
    };
    assert_eq!(m.domain(), &Domain::Ipv6("2001:db8::1".parse().unwrap()));
    let Command::Rcpt {
        to: ForwardPath::Mailbox(m),
        ..
    } = parse("RCPT TO:<u@[ipv6:::ffff:192.0.2.1]>\r\n")
    else {
        panic!()
    };
    assert_eq!(
        m.domain(),
        &Domain::Ipv6("::ffff:192.0.2.1".parse().unwrap())
    );
}

#[test]
fn esmtp_parameters_from_the_rfcs() {
    // RFC 1870
    assert_eq!(
        parse("MAIL FROM:<ned@thor.innosoft.com> SIZE=500000\r\n"),
        mail(
            "ned",
            "thor.innosoft.com",
            MailParams {
                size: Some(500000),
                ..Default::default()
            }
        )
    );
    // 1*20DIGIT: twenty digits past what 64 bits hold read as u64::MAX (too large for any
    // limit, refused for its size by the session, not as a syntax error).
    for big in [
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999",
    ] {
        assert_eq!(
            parse(&format!("MAIL FROM:<ned@thor.innosoft.com> SIZE={big}\r\n")),
            mail(
                "ned",
                "thor.innosoft.com",
                MailParams {
                    size: Some(u64::MAX),
                    ..Default::default()
                }
            )
        );
    }
    // RFC 3030
    assert_eq!(
        parse("MAIL FROM:<Sam@Random.com> BODY=BINARYMIME\r\n"),
        mail(
            "Sam",
            "Random.com",
            MailParams {
                body: Some(Body::BinaryMime),
                ..Default::default()
            }
        )
    );
    // RFC 6152, RFC 6531, several parameters, lower-case keywords.
    assert_eq!(
        parse("MAIL FROM:<a@b.c> size=10 body=8bitmime smtputf8\r\n"),
        mail(
            "a",
            "b.c",
            MailParams {
                size: Some(10),
                body: Some(Body::EightBitMime),
                smtputf8: true,
                ..Default::default()
            }
        )
    );
    // RFC 3461 §6 examples
    assert_eq!(
        parse("MAIL FROM:<Alice@Pure-Heart.ORG> RET=HDRS ENVID=QQ314159\r\n"),
        mail(
            "Alice",
            "Pure-Heart.ORG",
            MailParams {
                ret: Some(Ret::Hdrs),
                envid: Some(xtext("QQ314159")),
                ..Default::default()
            }
        )
    );
    let cases = [
        (
            "RCPT TO:<Bob@Big-Bucks.COM> NOTIFY=SUCCESS ORCPT=rfc822;Bob@Big-Bucks.COM\r\n",
            "Bob",
            "Big-Bucks.COM",
            Notify {
                success: true,
                ..Notify::NEVER
            },
            Some("Bob@Big-Bucks.COM"),
        ),
        (
            "RCPT TO:<Dana@Ivory.EDU> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Dana@Ivory.EDU\r\n",
            "Dana",
            "Ivory.EDU",
            Notify {
                success: true,
                failure: true,
                delay: false,
            },
            Some("Dana@Ivory.EDU"),
        ),
        (
            "RCPT TO:<Fred@Bombs.AF.MIL> NOTIFY=NEVER\r\n",
            "Fred",
            "Bombs.AF.MIL",
            Notify::NEVER,
            None,
        ),
        (
            "RCPT TO:<a@b.c> NOTIFY=delay,failure,success\r\n",
            "a",
            "b.c",
            Notify {
                success: true,
                failure: true,
                delay: true,
            },
            None,
        ),
    ];
    for (line, local, domain, notify, orcpt) in cases {
        let params = RcptParams {
            notify: Some(notify),
            orcpt: orcpt.map(|a| Orcpt::new("rfc822", xtext(a)).unwrap()),
            other: OtherParams::default(),
        };
        assert_eq!(parse(line), rcpt(local, domain, params), "{line:?}");
    }
    // xtext decoding: RFC 4954 §5 example and an ORCPT with escapes.
    assert_eq!(
        parse("MAIL FROM:<e=mc2@example.com> AUTH=e+3Dmc2@example.com\r\n"),
        mail(
            "e=mc2",
            "example.com",
            MailParams {
                auth: Some(xtext("e=mc2@example.com")),
                ..Default::default()
            }
        )
    );
    let Command::Rcpt { params, .. } = parse("RCPT TO:<a@b.c> ORCPT=rfc822;a+2Bb+20c@b.c\r\n")
    else {
        panic!()
    };
    assert_eq!(params.orcpt.unwrap().addr().decode(), "a+b c@b.c");
    // Unknown parameters are kept, in order.
    let Command::Mail { params, .. } =
        parse("MAIL FROM:<a@b.c> MT-PRIORITY=3 REQUIRETLS SIZE=1\r\n")
    else {
        panic!()
    };
    assert_eq!(
        params.other.iter().collect::<Vec<_>>(),
        vec![("MT-PRIORITY", Some("3")), ("REQUIRETLS", None)]
    );
    assert_eq!(params.size, Some(1));
}

#[test]
fn bdat_and_auth() {
    let cases: Vec<(&str, Command<'static>)> = vec![
        // RFC 3030 §4.2
        (
            "BDAT 86 LAST\r\n",
            Command::Bdat {
                size: 86,
                last: true,
            },
        ),
        (
            "BDAT 69\r\n",
            Command::Bdat {
                size: 69,
                last: false,
            },
        ),
        (
            "BDAT 0 LAST\r\n",
            Command::Bdat {
                size: 0,
                last: true,
            },
        ),
        (
            "bdat 18446744073709551615 last\r\n",
            Command::Bdat {
                size: u64::MAX,
                last: true,
            },
        ),
        // RFC 4954 §4 and §6
        (
            "AUTH GSSAPI\r\n",
            Command::Auth {
                mechanism: w("GSSAPI"),
                initial_response: None,
            },
        ),
        (
            "AUTH PLAIN dGVzdAB0ZXN0ADEyMzQ=\r\n",
            Command::Auth {
                mechanism: w("PLAIN"),
                initial_response: Some(w("dGVzdAB0ZXN0ADEyMzQ=")),
            },
        ),
        (
            "AUTH EXTERNAL =\r\n",
            Command::Auth {
                mechanism: w("EXTERNAL"),
                initial_response: Some(w("=")),
            },
        ),
        (
            "auth cram-md5\r\n",
            Command::Auth {
                mechanism: w("cram-md5"),
                initial_response: None,
            },
        ),
    ];
    for (line, want) in cases {
        assert_eq!(parse(line), want, "{line:?}");
    }
    let dbg = format!("{:?}", parse("AUTH PLAIN dGVzdAB0ZXN0ADEyMzQ=\r\n"));
    assert!(
        !dbg.contains("dGVzd"),
        "initial response must be redacted: {dbg}"
    );
}

#[test]
fn refused_lines_get_the_right_reply() {
    let long_local = format!("RCPT TO:<{}@b.c>\r\n", "a".repeat(65));
    let long_domain = format!("RCPT TO:<a@{}.com>\r\n", ["abcdefghij"; 26].join("."));
    let long_path = format!(
        "MAIL FROM:<@{}:a@b.c>\r\n",
        ["route.example"; 20].join(",@")
    );
    let cases: Vec<(&[u8], &str)> = vec![
        // Unknown verbs
        (b"FOO\r\n", "500 5.5.1"),
        (b"\r\n", "500 5.5.1"),
        (b" EHLO x\r\n", "500 5.5.1"),
        (b"EHLOx\r\n", "500 5.5.1"),
        (b"MAIL\x00FROM:<a@b>\r\n", "500 5.5.1"),
        (b"\xff\xfe\r\n", "500 5.5.1"),
        (b"GET / HTTP/1.1\r\n", "500 5.5.1"),
        // Known but not implemented
        (b"TURN\r\n", "502 5.5.1"),
        (b"ETRN example.com\r\n", "502 5.5.1"),
        (b"ATRN\r\n", "502 5.5.1"),
        // Bad arguments
        (b"EHLO\r\n", "501 5.5.4"),
        (b"HELO\r\n", "501 5.5.4"),
        (b"EHLO a\x00b\r\n", "501 5.5.4"),
        (b"EHLO a b\r\n", "501 5.5.4"),
        (b"EHLO \xff\r\n", "501 5.5.4"),
        (b"DATA x\r\n", "501 5.5.4"),
        (b"QUIT now\r\n", "501 5.5.4"),
        (b"VRFY\r\n", "501 5.5.4"),
        (b"VRFY a\x01\r\n", "501 5.5.4"),
        (b"MAIL\r\n", "501 5.5.4"),
        (b"MAIL FROM<a@b.c>\r\n", "501 5.5.4"),
        (b"MAIL TO:<a@b.c>\r\n", "501 5.5.4"),
        (b"MAIL FROM:\r\n", "501 5.5.4"),
        (b"RCPT <a@b.c>\r\n", "501 5.5.4"),
        (b"BDAT\r\n", "501 5.5.4"),
        (b"BDAT x\r\n", "501 5.5.4"),
        (b"BDAT 10 FIRST\r\n", "501 5.5.4"),
        (b"BDAT 18446744073709551616\r\n", "501 5.5.4"),
        (b"AUTH\r\n", "501 5.5.4"),
        (b"AUTH PLAIN dGVz dA==\r\n", "501 5.5.4"),
        (b"AUTH PLAIN dGVz\xc3\xa9\r\n", "501 5.5.4"),
        // Bad sender / recipient addresses
        (b"MAIL FROM:<<>>\r\n", "501 5.1.7"),
        (b"MAIL FROM:<a@b.c\r\n", "501 5.1.7"),
        (b"MAIL FROM:<\"unbalanced@b.c>\r\n", "501 5.1.7"),
        (b"MAIL FROM:<a..b@c.d>\r\n", "501 5.1.7"),
        (b"MAIL FROM:<.a@c.d>\r\n", "501 5.1.7"),
        (b"MAIL FROM:<a@-c.d>\r\n", "501 5.1.7"),
        (b"MAIL FROM:<a@c-.d>\r\n", "501 5.1.7"),
        (b"MAIL FROM:<a@c.d.>\r\n", "501 5.1.7"),
        (b"MAIL FROM:<a@c..d>\r\n", "501 5.1.7"),
        (b"MAIL FROM:<a>\r\n", "501 5.1.7"),
        (b"MAIL FROM:<postmaster>\r\n", "501 5.1.7"),
        (b"MAIL FROM:<a@b.c>SIZE=1\r\n", "501 5.1.7"),
        (b"MAIL FROM:<a\xff@b.c>\r\n", "501 5.1.7"),
        (b"MAIL FROM:<a b@c.d>\r\n", "501 5.1.7"),
        (b"RCPT TO:<>\r\n", "501 5.1.3"),
        (b"RCPT TO:<a@[300.0.0.1]>\r\n", "501 5.1.3"),
        (b"RCPT TO:<a@[IPv6:1::2::3]>\r\n", "501 5.1.3"),
        (b"RCPT TO:<a@[x-tag:stuff]>\r\n", "501 5.1.3"),
        (b"RCPT TO:<@a.b:>\r\n", "501 5.1.3"),
        (b"RCPT TO:<@a.b,c@d.e>\r\n", "501 5.1.3"),
        (b"RCPT TO:<\"a\x01\"@b.c>\r\n", "501 5.1.3"),
        (long_local.as_bytes(), "501 5.1.3"),
        (long_domain.as_bytes(), "501 5.1.3"),
        (long_path.as_bytes(), "501 5.1.7"),
        // Parameters
        (b"MAIL FROM:<a@b.c> SIZE=1 SIZE=2\r\n", "501 5.5.4"),
        (b"MAIL FROM:<a@b.c> FOO=1 foo=2\r\n", "501 5.5.4"),
        (b"MAIL FROM:<a@b.c> =1\r\n", "501 5.5.4"),
        (b"MAIL FROM:<a@b.c> SIZE=\r\n", "501 5.5.4"),
        (b"MAIL FROM:<a@b.c> SIZE=abc\r\n", "501 5.5.4"),
        (b"MAIL FROM:<a@b.c> SIZE\r\n", "501 5.5.4"),
        (
            b"MAIL FROM:<a@b.c> SIZE=999999999999999999999\r\n",
            "501 5.5.4",
        ),
        (b"MAIL FROM:<a@b.c> BODY=9BIT\r\n", "501 5.5.4"),
        (b"MAIL FROM:<a@b.c> SMTPUTF8=yes\r\n", "501 5.5.4"),
        (b"MAIL FROM:<a@b.c> RET=ALL\r\n", "501 5.5.4"),
        (b"MAIL FROM:<a@b.c> ENVID=a+zz\r\n", "501 5.5.4"),
        (b"MAIL FROM:<a@b.c> NOTIFY=NEVER\r\n", "555 5.5.4"),
        (b"RCPT TO:<a@b.c> SIZE=10\r\n", "555 5.5.4"),
        (b"RCPT TO:<a@b.c> NOTIFY=NEVER,SUCCESS\r\n", "501 5.5.4"),
        (b"RCPT TO:<a@b.c> NOTIFY=SOMETIMES\r\n", "501 5.5.4"),
        (b"RCPT TO:<a@b.c> NOTIFY=SUCCESS,,DELAY\r\n", "501 5.5.4"),
        (b"RCPT TO:<a@b.c> ORCPT=a@b.c\r\n", "501 5.5.4"),
        (
            b"RCPT TO:<a@b.c> NOTIFY=NEVER NOTIFY=NEVER\r\n",
            "501 5.5.4",
        ),
        // Line ends: a bare LF or CR is Postfix's `550 5.5.2` (bare LF was `500 5.5.2`, and a
        // bare CR got the reply of whatever the rest of the line looked like)
        (b"QUIT\n", "550 5.5.2"),
        (b"MAIL FROM:<a@b.c>\n", "550 5.5.2"),
        (b"\n", "550 5.5.2"),
        (b"EHLO a\nMAIL FROM:<x@ext.example>\r\n", "550 5.5.2"),
        (b"QUIT\rRSET\r\n", "550 5.5.2"),
        (b"MAIL FROM:<a@b.c>\r.\r\n", "550 5.5.2"),
        (b"\r\r\n", "550 5.5.2"),
    ];
    for (line, want) in cases {
        assert_eq!(reply(line), want, "{:?}", String::from_utf8_lossy(line));
    }
}

#[test]
fn error_kinds_and_texts() {
    let err = |l: &[u8]| parse_command(l, &Limits::default()).unwrap_err();
    let e = err(b"RCPT TO:<a@b.c> NOTIFY=NEVER NOTIFY=NEVER\r\n");
    assert_eq!(e.kind, CommandErrorKind::Parameter(ParamError::Duplicate));
    let e = err(b"MAIL FROM:<a@b.c> NOTIFY=NEVER\r\n");
    assert_eq!(
        e.kind,
        CommandErrorKind::Parameter(ParamError::WrongCommand)
    );
    let e = err(b"MAIL FROM:<a@b.c\r\n");
    assert_eq!(e.message(), "Bad sender address syntax");
    let e = err(format!("RCPT TO:<{}@b.c>\r\n", "a".repeat(65)).as_bytes());
    assert_eq!(
        e.kind,
        CommandErrorKind::BadRecipient(AddressError::LocalPartTooLong)
    );
    assert_eq!(e.message(), "Local part too long");
    assert_eq!(
        err(b"RCPT TO:<a@[x-tag:stuff]>\r\n").kind,
        CommandErrorKind::BadRecipient(AddressError::UnsupportedAddressLiteral)
    );
    assert_eq!(
        err(b"MAIL\r\n").message(),
        "Syntax: MAIL FROM:<address> [parameters]"
    );
    assert_eq!(err(b"QUIT\n").kind, CommandErrorKind::BareLineFeed);
    assert_eq!(err(b"QUIT\n").message(), "Error: bare <LF> received");
    assert_eq!(
        err(b"NOOP a\rb\r\n").kind,
        CommandErrorKind::BareCarriageReturn
    );
    assert_eq!(err(b"NOOP a\rb\r\n").message(), "Error: bare <CR> received");
}

#[test]
fn bare_lf_error_ends_at_the_lf_and_covers_long_lines() {
    let limits = Limits::default();
    // Reported as soon as the LF is there, without waiting for a CRLF.
    let e = parse_command(b"EHLO a\nMAIL FROM:<x@ext.example>", &limits).unwrap_err();
    assert_eq!((e.kind, e.consumed), (CommandErrorKind::BareLineFeed, 7));
    // A line over the limit that ends in a bare LF is a bare LF, not merely too long: what
    // follows is not the next command.
    let long = format!("NOOP {}\nMAIL FROM:<x@ext.example>\r\n", "x".repeat(600));
    let e = parse_command(long.as_bytes(), &limits).unwrap_err();
    assert_eq!((e.kind, e.consumed), (CommandErrorKind::BareLineFeed, 606));
    let long = format!("NOOP {}\r\nNOOP\r\n", "x".repeat(600));
    let e = parse_command(long.as_bytes(), &limits).unwrap_err();
    assert_eq!(
        (e.kind, e.consumed),
        (CommandErrorKind::LineTooLong { complete: true }, 607)
    );
    // No panic with a zero limit.
    let zero = Limits::RFC5321.with_max_command_line(0);
    assert!(parse_command(b"\n", &zero).is_err());
}

#[test]
fn limits_on_lengths_are_exact() {
    let limits = Limits::default();
    // Local part of exactly 64 octets is fine, 65 is not (quoted form counts the quotes).
    let ok = format!("RCPT TO:<{}@b.c>\r\n", "a".repeat(64));
    assert!(parse_command(ok.as_bytes(), &limits).unwrap().is_some());
    let quoted = format!("RCPT TO:<\"{}\"@b.c>\r\n", "a".repeat(63));
    assert!(parse_command(quoted.as_bytes(), &limits).is_err());
    // Path of exactly 256 octets including brackets.
    let local = "a".repeat(64);
    let domain = format!("{}.{}.{}", "b".repeat(63), "c".repeat(63), "d".repeat(61));
    let path = format!("<{local}@{domain}>");
    assert_eq!(path.len(), 256);
    let line = format!("RCPT TO:{path}\r\n");
    let big = Limits::RFC5321.with_max_command_line(1000);
    assert!(parse_command(line.as_bytes(), &big).unwrap().is_some());
    let line = format!("RCPT TO:<{local}@e{domain}>\r\n");
    let e = parse_command(line.as_bytes(), &big).unwrap_err();
    assert_eq!(
        e.kind,
        CommandErrorKind::BadRecipient(AddressError::PathTooLong)
    );
    // Larger configured limits are honoured.
    let roomy = Limits::RFC5321.with_max_local_part(200).with_max_path(300);
    let line = format!("RCPT TO:<{}@b.c>\r\n", "a".repeat(150));
    assert!(parse_command(line.as_bytes(), &roomy).unwrap().is_some());
}

#[test]
fn partial_input_needs_more_bytes() {
    let limits = Limits::default();
    let full = b"MAIL FROM:<a@b.c> SIZE=100\r\n";
    for n in 0..full.len() {
        assert_eq!(
            parse_command(&full[..n], &limits),
            Ok(None),
            "prefix of {n} bytes"
        );
    }
    assert!(parse_command(full, &limits).unwrap().is_some());
    // Pipelined commands: each call takes one line.
    let input = b"RSET\r\nNOOP\r\nQUIT\r\n";
    let (c, n) = parse_command(input, &limits).unwrap().unwrap();
    assert_eq!((c, n), (Command::Rset, 6));
    let (c, n2) = parse_command(&input[n..], &limits).unwrap().unwrap();
    assert_eq!((c, n2), (Command::Noop, 6));
}

#[test]
fn line_too_long() {
    let limits = Limits::default();
    // 510 characters + CRLF = 512: accepted.
    let ok = format!("NOOP {}\r\n", "x".repeat(505));
    assert_eq!(ok.len(), 512);
    assert_eq!(
        parse_command(ok.as_bytes(), &limits).unwrap().unwrap().1,
        512
    );
    // 513 with CRLF, all there: complete, consumed through the CRLF.
    let long = format!("NOOP {}\r\nQUIT\r\n", "x".repeat(506));
    let e = parse_command(long.as_bytes(), &limits).unwrap_err();
    assert_eq!(e.kind, CommandErrorKind::LineTooLong { complete: true });
    assert_eq!(e.consumed, 513);
    assert_eq!((e.code(), e.enhanced()), (500, (5, 5, 2)));
    assert_eq!(
        parse_command(&long.as_bytes()[e.consumed..], &limits)
            .unwrap()
            .unwrap()
            .0,
        Command::Quit
    );
    // A 10 KB line with no end yet: refused as soon as the limit is passed, all input dropped.
    let junk = vec![b'A'; 10 * 1024];
    let e = parse_command(&junk, &limits).unwrap_err();
    assert_eq!(e.kind, CommandErrorKind::LineTooLong { complete: false });
    assert_eq!(e.consumed, junk.len());
    // Under the limit without a line end: wait for more; at the limit: refuse.
    let partial = vec![b'A'; 511];
    assert_eq!(parse_command(&partial, &limits), Ok(None));
    let partial = vec![b'A'; 512];
    assert!(parse_command(&partial, &limits).is_err());
}

#[test]
fn encoding_is_the_wire_form() {
    let cases = [
        "EHLO mail.example.org\r\n",
        "MAIL FROM:<> BODY=8BITMIME\r\n",
        "MAIL FROM:<\"john doe\"@[IPv6:2001:db8::1]> SIZE=12 BODY=BINARYMIME SMTPUTF8 AUTH=<> RET=FULL ENVID=a+2Bb X-Y=z FOO\r\n",
        "RCPT TO:<Postmaster>\r\n",
        "RCPT TO:<bob@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;bob@example.com\r\n",
        "RCPT TO:<\"a\\\"b\"@[192.0.2.1]> NOTIFY=NEVER\r\n",
        "BDAT 100 LAST\r\n",
        "AUTH PLAIN =\r\n",
        "HELP\r\n",
        "VRFY <someone@example.org>\r\n",
    ];
    for line in cases {
        let c = parse(line);
        assert_eq!(c.to_string(), line);
        let mut out = Vec::new();
        c.encode(&mut out);
        assert_eq!(out, line.as_bytes());
    }
    // Canonical form: verb upper case, brackets added, keywords upper case.
    assert_eq!(
        parse("mail from: a@b.c size=5 smtputf8\r\n").to_string(),
        "MAIL FROM:<a@b.c> SIZE=5 SMTPUTF8\r\n"
    );
    assert_eq!(
        parse("RCPT TO:<@x.y:\"abc\"@b.c> notify=delay,success\r\n").to_string(),
        "RCPT TO:<abc@b.c> NOTIFY=SUCCESS,DELAY\r\n"
    );
}

#[test]
fn utf8_addresses_say_they_need_smtputf8() {
    let Command::Rcpt { to, .. } = parse("RCPT TO:<jöran@example.com>\r\n") else {
        panic!()
    };
    assert!(!to.is_ascii());
    let Command::Rcpt { to, .. } = parse("RCPT TO:<joran@bücher.example>\r\n") else {
        panic!()
    };
    assert!(!to.is_ascii());
    let Command::Rcpt { to, .. } = parse("RCPT TO:<joran@example.com>\r\n") else {
        panic!()
    };
    assert!(to.is_ascii());
}

#[test]
fn parsing_borrows_unless_unescaping() {
    let line = "RCPT TO:<\"plain quoted\"@b.c>\r\n";
    let Command::Rcpt {
        to: ForwardPath::Mailbox(m),
        ..
    } = parse(line)
    else {
        panic!()
    };
    let Domain::Name(d) = m.domain() else {
        panic!()
    };
    // The domain and the (unescaped) local part point into the line.
    assert!(line
        .as_bytes()
        .as_ptr_range()
        .contains(&d.as_str().as_ptr()));
    let local = m.local_part();
    assert!(matches!(local, Cow::Borrowed(_)));
    assert!(line.as_bytes().as_ptr_range().contains(&local.as_ptr()));
    let m2 = m;
    assert_eq!(m2.local_part(), "plain quoted");
    let owned = m.into_owned();
    assert_eq!(owned.to_string(), "\"plain quoted\"@b.c");
    // A quoted-pair has to be removed: only then is the local part built.
    let Command::Rcpt {
        to: ForwardPath::Mailbox(m),
        ..
    } = parse("RCPT TO:<\"a\\\"b\"@x.y>\r\n")
    else {
        panic!()
    };
    assert!(matches!(m.local_part(), Cow::Owned(_)));
}

#[test]
fn parsed_commands_own_nothing() {
    assert!(!std::mem::needs_drop::<Command<'static>>());
    let line = "RCPT TO:<\"a\\\"b\"@x.y>\r\n";
    let Command::Rcpt {
        to: ForwardPath::Mailbox(m),
        ..
    } = parse(line)
    else {
        panic!()
    };
    assert_eq!(m.local_part(), "a\"b");
    assert_eq!(m.to_string(), "\"a\\\"b\"@x.y");
    assert_eq!(m.domain(), &Domain::name("x.y").unwrap());
}

/// xtext is one value however it was escaped, and goes back on the wire in canonical form
/// (RFC 3461 asks for upper-case hex digits).
#[test]
fn xtext_compares_decoded_and_prints_canonically() {
    let lower = MailParams::parse("ENVID=+41b+2bc").unwrap();
    let upper = MailParams::parse("ENVID=Ab+2Bc").unwrap();
    assert_eq!(lower, upper);
    assert_eq!(lower.envid.unwrap().decode(), "Ab+c");
    assert_eq!(lower.envid.unwrap().as_encoded(), "+41b+2bc");
    assert_eq!(lower.to_string(), "ENVID=Ab+2Bc");
    assert_eq!(XText::new("plain").unwrap(), XText::encode("plain"));
    assert_eq!(XText::new("+4").unwrap_err(), ParamError::InvalidValue);
}

/// `OtherParams::new` holds only unknown parameters: a known one belongs in its field.
#[test]
fn other_params_refuse_known_keywords() {
    let o = OtherParams::new("X-A=1 mt-priority=2").unwrap();
    assert_eq!(
        o.iter().collect::<Vec<_>>(),
        vec![("X-A", Some("1")), ("mt-priority", Some("2"))]
    );
    assert_eq!(
        OtherParams::new("SIZE=5 X-A").unwrap_err(),
        ParamError::WrongCommand
    );
    assert_eq!(
        OtherParams::new("X-A X-a").unwrap_err(),
        ParamError::Duplicate
    );
    assert_eq!(OtherParams::new("=x").unwrap_err(), ParamError::Syntax);
}

/// Many unknown parameters on one long line: each is kept once, in order, and a repeat late
/// in the line is still found.
#[test]
fn many_unknown_parameters() {
    let params: Vec<String> = (0..2000).map(|i| format!("X{i}=v")).collect();
    let line = format!("MAIL FROM:<a@b.c> {}\r\n", params.join(" "));
    let limits = Limits::RFC5321.with_max_command_line(1 << 20);
    let Ok(Some((Command::Mail { params: p, .. }, used))) = parse_command(line.as_bytes(), &limits)
    else {
        panic!("not parsed");
    };
    assert_eq!(used, line.len());
    assert_eq!(p.other.iter().count(), 2000);
    assert_eq!(p.other.iter().last(), Some(("X1999", Some("v"))));
    let dup = format!("MAIL FROM:<a@b.c> {} x0\r\n", params.join(" "));
    let err = parse_command(dup.as_bytes(), &limits).unwrap_err();
    assert_eq!(err.kind, CommandErrorKind::Parameter(ParamError::Duplicate));
}
