//! Property tests: any valid mailbox prints to text that parses back to the same mailbox.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use smtp_proto::address::{
    parse_forward_path, parse_mailbox, parse_reverse_path, Domain, ForwardPath, Mailbox,
    ReversePath,
};

/// A domain name, an IPv4 or an IPv6 literal; labels include U-labels.
fn domain() -> impl Strategy<Value = Domain> {
    let label = prop_oneof![
        "[a-zA-Z0-9]",
        "[a-zA-Z0-9][a-zA-Z0-9-]{0,10}[a-zA-Z0-9]",
        "[a-zäöüß例え]{1,5}",
    ];
    prop_oneof![
        4 => prop::collection::vec(label, 1..5).prop_map(|l| Domain::name(l.join(".")).unwrap()),
        1 => any::<[u8; 4]>().prop_map(|a| Domain::Ipv4(a.into())),
        1 => any::<[u16; 8]>().prop_map(|a| Domain::Ipv6(a.into())),
    ]
}

/// A local part: a dot-string, or anything that can be quoted (with quotes and backslashes).
fn local_part() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec("[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,8}", 1..4)
            .prop_map(|a| a.join(".")),
        "[ -~]{0,20}",
        "[a-zé中\" \\\\.@]{0,20}",
    ]
}

fn mailbox() -> impl Strategy<Value = Mailbox> {
    (local_part(), domain()).prop_map(|(l, d)| Mailbox::new(l, d).unwrap())
}

proptest! {
    #[test]
    fn mailbox_display_parses_back(m in mailbox()) {
        let text = m.to_string();
        let parsed = parse_mailbox(&text);
        prop_assert_eq!(parsed.map(Mailbox::into_owned), Ok(m.clone()), "{}", text);
        prop_assert_eq!(m.is_ascii(), text.is_ascii());
    }

    #[test]
    fn paths_display_parse_back(m in mailbox()) {
        let rp = ReversePath::Mailbox(m.clone());
        let t = rp.to_string();
        prop_assert_eq!(parse_reverse_path(&t).unwrap(), rp);
        let fp = ForwardPath::Mailbox(m);
        let t = fp.to_string();
        prop_assert_eq!(parse_forward_path(&t).unwrap(), fp);
    }

    #[test]
    fn parse_mailbox_never_panics_and_is_stable(s in "\\PC{0,40}|[a-z@.\"\\\\\\[\\]:<>]{0,40}") {
        if let Ok(m) = parse_mailbox(&s) {
            // Whatever parses prints to a canonical form that parses to the same value.
            let t = m.to_string();
            prop_assert_eq!(parse_mailbox(&t).unwrap(), m);
        }
    }
}
