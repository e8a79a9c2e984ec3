//! Address literals (RFC 5321 §4.1.3) written from any address parse back to that address.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use smtp_client::resolve::{resolve_literal, ResolveError};

proptest! {
    #[test]
    fn ipv4_literals_round_trip(ip in any::<Ipv4Addr>()) {
        let literal = format!("[{ip}]");
        prop_assert_eq!(resolve_literal(&literal), Some(Ok(IpAddr::V4(ip))));
    }

    #[test]
    fn ipv6_literals_round_trip(ip in any::<Ipv6Addr>(), upper in any::<bool>()) {
        let tag = if upper { "IPV6" } else { "IPv6" };
        let literal = format!("[{tag}:{ip}]");
        prop_assert_eq!(resolve_literal(&literal), Some(Ok(IpAddr::V6(ip))));
    }

    #[test]
    fn unbracketed_text_is_not_a_literal(text in "[a-z0-9.-]{0,40}") {
        prop_assert_eq!(resolve_literal(&text), None);
    }

    #[test]
    fn bracketed_junk_is_an_error_never_a_panic(text in "\\[[^\\]]{0,40}\\]?") {
        match resolve_literal(&text) {
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                let invalid = matches!(e, ResolveError::InvalidDomain { .. });
                prop_assert!(invalid, "{}", e);
            }
            None => prop_assert!(false, "starts with '[' so it is a literal"),
        }
    }
}
