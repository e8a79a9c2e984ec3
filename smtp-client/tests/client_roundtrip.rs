//! Property: any message body sent through the client arrives at a real server on loopback
//! exactly as smtp-proto's normalisation describes it (byte-identical when it has only CRLF
//! line ends and ends with CRLF), over TLS and in clear text.
#![allow(clippy::unwrap_used)]

mod common;

use common::{client_config, test_pki, Behaviour, TestServer};
use proptest::prelude::*;
use smtp_client::{Connection, Envelope, TlsPolicy};
use smtp_proto::address::{parse_forward_path, parse_reverse_path};
use smtp_proto::data::normalize_line_endings;

fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
    // Lines made of the troublesome bytes: dots at line starts, CR, LF, 8-bit octets.
    proptest::collection::vec(
        prop_oneof![
            3 => Just(b'.'),
            3 => Just(b'\r'),
            3 => Just(b'\n'),
            1 => Just(0u8),
            1 => Just(0xffu8),
            6 => any::<u8>(),
            10 => b'a'..=b'z',
        ],
        0..3000,
    )
}

fn crlf_only_strategy() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        proptest::collection::vec(prop_oneof![Just(b'.'), b' '..=b'~', Just(0xc3u8)], 0..100),
        0..40,
    )
    .prop_map(|lines| {
        let mut body = Vec::new();
        for line in lines {
            body.extend_from_slice(&line);
            body.extend_from_slice(b"\r\n");
        }
        body
    })
}

fn send_all(bodies: &[Vec<u8>], tls: bool) -> Vec<Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let behaviour = Behaviour {
            tls: tls.then(|| test_pki(&["mx.test"]).server),
            ..Behaviour::default()
        };
        let server = TestServer::local(behaviour).await;
        let mut conn = Connection::connect(
            server.addr,
            "mx.test",
            &client_config(TlsPolicy::OpportunisticUnverified),
        )
        .await
        .unwrap();
        assert_eq!(conn.is_tls(), tls);
        let env = Envelope::new(
            parse_reverse_path("<a@client.test>").unwrap().into_owned(),
            vec![parse_forward_path("<b@mx.test>").unwrap().into_owned()],
        );
        for body in bodies {
            let result = conn.send(&env, body).await.unwrap();
            assert_eq!(result.accepted(), 1);
        }
        conn.quit().await.unwrap();
        server.messages().into_iter().map(|m| m.body).collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_body_arrives_normalised(bodies in proptest::collection::vec(body_strategy(), 1..6), tls in any::<bool>()) {
        let received = send_all(&bodies, tls);
        prop_assert_eq!(received.len(), bodies.len());
        for (sent, got) in bodies.iter().zip(&received) {
            prop_assert_eq!(got, &normalize_line_endings(sent));
        }
    }

    #[test]
    fn crlf_bodies_arrive_byte_identical(bodies in proptest::collection::vec(crlf_only_strategy(), 1..4)) {
        let received = send_all(&bodies, false);
        for (sent, got) in bodies.iter().zip(&received) {
            prop_assert_eq!(got, sent);
        }
    }
}
