//! Known-answer tests for addresses (RFC 5321 §4.1.2, RFC 6531).
#![allow(clippy::unwrap_used)]

use smtp_proto::address::{
    parse_domain, parse_forward_path, parse_mailbox, parse_path, parse_reverse_path, AddressError,
    Domain, ForwardPath, Mailbox, ReversePath,
};

#[test]
fn mailboxes() {
    // (input, local part unquoted, domain as displayed, canonical form)
    let cases = [
        (
            "user@example.com",
            "user",
            "example.com",
            "user@example.com",
        ),
        (
            "first.last@sub.example.co.uk",
            "first.last",
            "sub.example.co.uk",
            "first.last@sub.example.co.uk",
        ),
        (
            "\"first.last\"@example.com",
            "first.last",
            "example.com",
            "first.last@example.com",
        ),
        (
            "\"john doe\"@example.com",
            "john doe",
            "example.com",
            "\"john doe\"@example.com",
        ),
        ("\"a\\\"b\"@x.y", "a\"b", "x.y", "\"a\\\"b\"@x.y"),
        ("\"a\\b\"@x.y", "ab", "x.y", "ab@x.y"),
        ("\"a..b\"@x.y", "a..b", "x.y", "\"a..b\"@x.y"),
        ("\".a\"@x.y", ".a", "x.y", "\".a\"@x.y"),
        ("\"\"@x.y", "", "x.y", "\"\"@x.y"),
        ("\"@\"@x.y", "@", "x.y", "\"@\"@x.y"),
        ("a+tag@x.y", "a+tag", "x.y", "a+tag@x.y"),
        ("u@[192.0.2.1]", "u", "[192.0.2.1]", "u@[192.0.2.1]"),
        (
            "u@[IPv6:2001:DB8:0:0:0:0:0:1]",
            "u",
            "[IPv6:2001:db8::1]",
            "u@[IPv6:2001:db8::1]",
        ),
        ("u@123.example", "u", "123.example", "u@123.example"),
        ("u@a-b.c", "u", "a-b.c", "u@a-b.c"),
        (
            "Pelé@例え.テスト",
            "Pelé",
            "例え.テスト",
            "Pelé@例え.テスト",
        ),
        (
            "\"我 们\"@example.org",
            "我 们",
            "example.org",
            "\"我 们\"@example.org",
        ),
    ];
    for (input, local, domain, canonical) in cases {
        let m = parse_mailbox(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(m.local_part(), local, "{input}");
        assert_eq!(m.domain().to_string(), domain, "{input}");
        assert_eq!(m.to_string(), canonical, "{input}");
        assert_eq!(parse_mailbox(canonical).unwrap(), m, "{input}");
    }
}

#[test]
fn refused_mailboxes() {
    let cases = [
        ("", AddressError::Syntax),
        ("user", AddressError::Syntax),
        ("@example.com", AddressError::Syntax),
        ("user@", AddressError::Syntax),
        ("us er@x.y", AddressError::Syntax),
        ("a..b@x.y", AddressError::Syntax),
        ("a.@x.y", AddressError::Syntax),
        ("\"abc@x.y", AddressError::Syntax),
        ("\"a\\\"@x.y", AddressError::Syntax),
        ("a\"b\"@x.y", AddressError::Syntax),
        ("a@b@x.y", AddressError::Syntax),
        ("a@-x.y", AddressError::Syntax),
        ("a@x-.y", AddressError::Syntax),
        ("a@x..y", AddressError::Syntax),
        ("a@x.y.", AddressError::Syntax),
        ("a@x_y.z", AddressError::Syntax),
        ("<a@x.y>", AddressError::Syntax),
        ("a@[192.0.2.256]", AddressError::InvalidAddressLiteral),
        ("a@[192.0.2]", AddressError::InvalidAddressLiteral),
        ("a@[IPv6:192.0.2.1]", AddressError::InvalidAddressLiteral),
        ("a@[IPv6:::1", AddressError::Syntax),
        ("a@[tag:value]", AddressError::UnsupportedAddressLiteral),
        ("a@[]", AddressError::Syntax),
        ("a\u{0}@x.y", AddressError::Syntax),
    ];
    for (input, want) in cases {
        assert_eq!(parse_mailbox(input), Err(want), "{input:?}");
    }
    let long_local = format!("{}@x.y", "a".repeat(65));
    assert_eq!(
        parse_mailbox(&long_local),
        Err(AddressError::LocalPartTooLong)
    );
    let ok_local = format!("{}@x.y", "a".repeat(64));
    assert!(parse_mailbox(&ok_local).is_ok());
    let long_domain = format!("a@{}", vec!["b".repeat(63); 4].join("."));
    assert_eq!(long_domain.len() - 2, 255);
    assert!(parse_mailbox(&long_domain).is_ok());
    assert_eq!(
        parse_mailbox(&format!("{long_domain}x")),
        Err(AddressError::DomainTooLong)
    );
}

#[test]
fn paths_and_domains() {
    assert_eq!(parse_reverse_path("<>"), Ok(ReversePath::Null));
    assert_eq!(
        parse_reverse_path("<postmaster>"),
        Err(AddressError::MailboxRequired)
    );
    assert_eq!(
        parse_forward_path("<POSTMASTER>"),
        Ok(ForwardPath::Postmaster)
    );
    assert_eq!(parse_forward_path("<>"), Err(AddressError::MailboxRequired));
    assert_eq!(parse_forward_path("<<>>"), Err(AddressError::Syntax));
    let routed = parse_path("<@a.example,@b.example:joe@c.example>").unwrap();
    assert_eq!(routed, parse_mailbox("joe@c.example").unwrap());
    assert_eq!(parse_path("joe@c.example"), Err(AddressError::Syntax));
    assert_eq!(parse_path("<joe@c.example"), Err(AddressError::Syntax));
    assert_eq!(parse_path("<joe@c.example>x"), Err(AddressError::Syntax));

    assert_eq!(
        parse_domain("example.com").unwrap(),
        Domain::name("example.com").unwrap()
    );
    assert_eq!(
        parse_domain("[127.0.0.1]").unwrap(),
        Domain::Ipv4([127, 0, 0, 1].into())
    );
    assert_eq!(
        parse_domain("[IPv6:::1]").unwrap(),
        Domain::Ipv6(std::net::Ipv6Addr::LOCALHOST)
    );
    assert!(parse_domain("under_score.example").is_err());
    assert!(parse_domain("").is_err());
}

#[test]
fn building_mailboxes() {
    let d = Domain::name("example.org").unwrap();
    let m = Mailbox::new("john \"j\" doe", d).unwrap();
    assert_eq!(m.to_string(), "\"john \\\"j\\\" doe\"@example.org");
    assert!(m.needs_quoting());
    assert!(m.is_ascii());
    assert_eq!(parse_mailbox(&m.to_string()).unwrap(), m);
    assert_eq!(Mailbox::new("a\rb", d), Err(AddressError::InvalidLocalPart));
    assert_eq!(
        Mailbox::new("a\u{7f}", d),
        Err(AddressError::InvalidLocalPart)
    );
    assert_eq!(
        Domain::name("bad..domain"),
        Err(AddressError::InvalidDomain)
    );
    assert_eq!(Domain::name("-x.y"), Err(AddressError::InvalidDomain));
    // A domain that is not a name cannot even be built to give to a mailbox.
    assert_eq!(Domain::name("x y"), Err(AddressError::InvalidDomain));
    let buf = Mailbox::new("ü", Domain::name("x.y").unwrap())
        .unwrap()
        .to_buf();
    assert!(!buf.is_ascii());
    assert_eq!(buf.to_string(), "ü@x.y");
}
