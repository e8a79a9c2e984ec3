//! Property tests for the shared envelope's text form: to_text → parse gives the same value,
//! and parsing never panics.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use smtp_proto::address::{Domain, ForwardPath, Mailbox, ReversePath};
use smtp_proto::envelope::{Envelope, Recipient};
use smtp_proto::param::{Notify, Orcpt, Ret, XText};

fn domain() -> impl Strategy<Value = Domain> {
    let label = prop_oneof![
        "[a-zA-Z0-9]",
        "[a-zA-Z0-9][a-zA-Z0-9-]{0,10}[a-zA-Z0-9]",
        "[a-zäöüß例]{1,5}"
    ];
    prop_oneof![
        4 => prop::collection::vec(label, 1..5).prop_map(|l| Domain::name(l.join(".")).unwrap()),
        1 => any::<[u8; 4]>().prop_map(|a| Domain::Ipv4(a.into())),
        1 => any::<[u16; 8]>().prop_map(|a| Domain::Ipv6(a.into())),
    ]
}

fn mailbox() -> impl Strategy<Value = Mailbox> {
    let local = prop_oneof![
        prop::collection::vec("[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,8}", 1..4)
            .prop_map(|a| a.join(".")),
        "[ -~]{0,20}",
        "[a-zé中\" \\\\.@]{0,20}",
    ];
    (local, domain()).prop_map(|(l, d)| Mailbox::new(l, d).unwrap())
}

fn recipient() -> impl Strategy<Value = Recipient> {
    (
        prop::option::of(mailbox()),
        prop::option::of(any::<(bool, bool, bool)>().prop_map(|(s, f, d)| Notify {
            success: s,
            failure: f,
            delay: d,
        })),
        prop::option::of(("[a-zA-Z0-9-]{1,10}", "\\PC{0,20}")),
    )
        .prop_map(|(m, notify, orcpt)| {
            let mut r = Recipient::new(m.map_or(ForwardPath::Postmaster, ForwardPath::Mailbox));
            if let Some(n) = notify {
                r = r.with_notify(n);
            }
            if let Some((t, a)) = orcpt {
                r = r.with_orcpt(Orcpt::new(t, XText::encode(&a)).unwrap());
            }
            r
        })
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        prop::option::of(mailbox()),
        prop::collection::vec(recipient(), 0..6),
        prop::option::of(prop_oneof![Just(Ret::Full), Just(Ret::Hdrs)]),
        prop::option::of("\\PC{1,20}"),
    )
        .prop_map(|(from, rcpts, ret, envid)| {
            let mut e = Envelope::with_recipients(
                from.map_or(ReversePath::Null, ReversePath::Mailbox),
                rcpts,
            );
            if let Some(r) = ret {
                e = e.with_ret(r);
            }
            if let Some(id) = envid {
                e = e.with_envid(XText::encode(&id));
            }
            e
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn envelope_text_round_trip(e in envelope()) {
        let text = e.to_text();
        prop_assert!(!text.contains('\0'));
        // One line per command: a line-based container can hold each as it is.
        prop_assert_eq!(text.matches('\n').count(), 1 + e.rcpts.len());
        prop_assert_eq!(text.matches('\r').count(), 1 + e.rcpts.len());
        prop_assert_eq!(Envelope::parse(&text), Ok(e), "{}", text);
    }

    #[test]
    fn envelope_parse_never_panics(s in "\\PC{0,80}|(MAIL FROM:|RCPT TO:)[<>@\"\\\\.:,=+; a-zA-Z0-9\r\n-]{0,60}") {
        let _ = Envelope::parse(&s);
    }
}
