//! Sending a message streamed from a file (`Message::file`, `send_message`,
//! `deliver_message`) gives the server exactly what sending the same bytes from memory gives it:
//! the same MAIL parameters (SIZE, BODY=8BITMIME) and the same content.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{client_config, Behaviour, Received, TestServer};
use proptest::prelude::*;
use smtp_client::{
    ClientConfig, Connection, Deliverer, DeliveryError, Envelope, Message, RcptOutcome, Resolver,
    TlsPolicy,
};

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "smtp-client-file-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn envelope() -> Envelope {
    common::envelope("<a@client.test>", &["<b@mx.test>"])
}

fn config() -> ClientConfig {
    client_config(TlsPolicy::None)
}

/// Sends `prefix + body` from memory, then `prefix` and `path` as a file, on one connection;
/// returns what the server got for each.
async fn both_ways(behaviour: Behaviour, prefix: &[u8], body: &[u8], path: &Path) -> Vec<Received> {
    let server = TestServer::local(behaviour).await;
    let mut conn = Connection::connect(server.addr, "mx.test", &config())
        .await
        .unwrap();
    let mut joined = prefix.to_vec();
    joined.extend_from_slice(body);
    let from_memory = conn.send(&envelope(), &joined).await.unwrap();
    assert_eq!(from_memory.accepted(), 1);
    let from_file = conn
        .send_message(&envelope(), &Message::file(prefix, path))
        .await
        .unwrap();
    assert_eq!(from_file.accepted(), 1);
    conn.quit().await.unwrap();
    let got = server.messages();
    assert_eq!(got.len(), 2);
    got
}

fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            3 => Just(b'.'),
            3 => Just(b'\r'),
            3 => Just(b'\n'),
            1 => Just(0xe9u8),
            10 => b'a'..=b'z',
        ],
        0..3000,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn file_arrives_as_the_same_bytes_from_memory(
        prefix in proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), b'a'..=b'z'], 0..40),
        body in body_strategy(),
    ) {
        let dir = TempDir::new();
        let path = dir.file("body", &body);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let got = rt.block_on(both_ways(
            Behaviour { size: Some(1 << 20), ..Behaviour::default() },
            &prefix,
            &body,
            &path,
        ));
        prop_assert_eq!(&got[1].mail_params, &got[0].mail_params);
        prop_assert_eq!(&got[1].body, &got[0].body);
    }
}

#[tokio::test]
async fn large_file_with_dot_lines_and_8bit_arrives_byte_identical() {
    // 1.5 MiB of CRLF lines, every third starting with a dot (some with two, some a lone dot),
    // some with 8-bit octets: crosses many 64 KiB chunk boundaries, and the chunking splits
    // CRLFs and dot-stuffed line starts.
    let mut body = Vec::new();
    let mut i = 0u32;
    while body.len() < 1_500_000 {
        match i % 7 {
            0 => body.extend_from_slice(b".\r\n"),
            1 | 4 => body.extend_from_slice(format!(".line {i}\r\n").as_bytes()),
            2 => body.extend_from_slice(format!("..two dots {i}\r\n").as_bytes()),
            3 => body.extend_from_slice("caf\u{e9} na\u{ef}ve\r\n".as_bytes()),
            _ => body.extend_from_slice(format!("plain line number {i:08}\r\n").as_bytes()),
        }
        i += 1;
    }
    let prefix = b"Message-ID: <q1@relay.test>\r\n";
    let dir = TempDir::new();
    let path = dir.file("body", &body);
    let got = both_ways(
        Behaviour {
            size: Some(10 << 20),
            ..Behaviour::default()
        },
        prefix,
        &body,
        &path,
    )
    .await;
    let mut expected = prefix.to_vec();
    expected.extend_from_slice(&body);
    assert_eq!(
        got[1].mail_params,
        format!("SIZE={} BODY=8BITMIME", expected.len())
    );
    assert_eq!(got[1].mail_params, got[0].mail_params);
    assert!(got[1].body == expected, "file body differs");
    assert!(got[0].body == expected, "memory body differs");
}

#[tokio::test]
async fn ascii_file_declares_no_8bitmime() {
    let dir = TempDir::new();
    let path = dir.file("body", b"Subject: x\r\n\r\n.leading dot\r\nend");
    let got = both_ways(
        Behaviour {
            size: Some(1000),
            ..Behaviour::default()
        },
        b"",
        b"Subject: x\r\n\r\n.leading dot\r\nend",
        &path,
    )
    .await;
    assert_eq!(got[1].mail_params, "SIZE=33");
    assert_eq!(got[1].body, b"Subject: x\r\n\r\n.leading dot\r\nend\r\n");
}

#[tokio::test]
async fn unreadable_file_sends_nothing() {
    let server = TestServer::local(Behaviour::default()).await;
    let mut conn = Connection::connect(server.addr, "mx.test", &config())
        .await
        .unwrap();
    let err = conn
        .send_message(
            &envelope(),
            &Message::file(b"", Path::new("/nonexistent/smtp-client/body")),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, smtp_client::ClientError::Message(ref e) if e.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    assert!(!err.is_permanent());
    // Nothing was sent, and the connection is still usable.
    let ok = conn.send(&envelope(), b"hello\r\n").await.unwrap();
    assert_eq!(ok.accepted(), 1);
    conn.quit().await.unwrap();
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn deliver_message_streams_the_file_and_reports_an_unreadable_one() {
    let server = TestServer::local(Behaviour::default()).await;
    // An IP smarthost: no DNS query is made (the name server address is never used).
    let resolver = Resolver::with_nameserver_timeout(
        "127.0.0.1:9".parse().unwrap(),
        Duration::from_secs(1),
        1,
    )
    .unwrap();
    let deliverer =
        Deliverer::new(resolver, config()).with_smarthost("127.0.0.1", server.addr.port());

    let dir = TempDir::new();
    let path = dir.file("body", b"Subject: s\r\n\r\n.x\r\n");
    let report = deliverer
        .deliver_message("mx.test", &envelope(), &Message::file(b"X-A: 1\r\n", &path))
        .await;
    assert!(report.all_delivered(), "{report:?}");
    assert_eq!(
        server.messages()[0].body,
        b"X-A: 1\r\nSubject: s\r\n\r\n.x\r\n"
    );

    let missing = dir.0.join("missing");
    let report = deliverer
        .deliver_message("mx.test", &envelope(), &Message::file(b"", &missing))
        .await;
    assert!(
        matches!(report.error, Some(DeliveryError::Message(_))),
        "{report:?}"
    );
    match &report.rcpts[0].1 {
        RcptOutcome::Transient(f) => assert_eq!(f.enhanced.to_string(), "4.3.0"),
        other => panic!("{other:?}"),
    }
    assert!(report.attempts.is_empty());
    assert_eq!(server.connections(), 1);
}
