//! The server library as an LMTP server (RFC 2033) and with an extension verb: smtp-client's
//! LMTP client against it over loopback TCP, and the exact bytes a raw client sees.
#![allow(clippy::unwrap_used)]

mod server_support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use server_support::{Client, WAIT};
use smtp_client::lmtp::{Lmtp, LmtpTarget};
use smtp_client::{
    parse_forward_path, ClientConfig, Envelope as CEnvelope, Message, RcptOutcome, ReversePath,
    TlsPolicy,
};
use smtp_proto::ehlo::Capability;
use smtp_server::{
    BodyStream, ConnectionInfo, DataOutcome, EnhancedCode, Envelope, Handler, Refusal, Reply,
    Server, SessionHandler,
};

/// Delivers to each recipient's "mailbox": `full@` is over quota (`452 4.2.2`), `gone@`
/// refused for good (`550 5.1.1`) after the data, everyone else gets it. Records the
/// arguments of XCLIENT commands.
/// A recipient and the message it got.
type Delivered = Vec<(String, Vec<u8>)>;

#[derive(Clone, Default)]
struct Mailboxes {
    delivered: Arc<Mutex<Delivered>>,
    xclient: Arc<Mutex<Vec<String>>>,
}

struct MailboxSession(Mailboxes, bool);

impl Handler for Mailboxes {
    type Session = MailboxSession;
    async fn connect(&self, info: &ConnectionInfo) -> Result<MailboxSession, Refusal> {
        Ok(MailboxSession(self.clone(), info.lmtp))
    }
}

const FULL: Refusal = Refusal::fixed(452, Some(EnhancedCode::fixed(4, 2, 2)), "Mailbox full");
const GONE: Refusal = Refusal::fixed(550, Some(EnhancedCode::fixed(5, 1, 1)), "No such mailbox");

impl SessionHandler for MailboxSession {
    async fn data(&mut self, env: &Envelope, body: &mut BodyStream<'_>) -> DataOutcome {
        assert!(self.1, "the listener speaks LMTP");
        let mut content = Vec::new();
        while let Ok(Some(piece)) = body.chunk().await {
            content.extend_from_slice(piece);
        }
        let outcomes = env.rcpts.iter().map(|(to, _)| {
            let to = to.to_string();
            if to.starts_with("<full@") {
                FULL.into()
            } else if to.starts_with("<gone@") {
                GONE.into()
            } else {
                self.0
                    .delivered
                    .lock()
                    .unwrap()
                    .push((to.clone(), content.clone()));
                DataOutcome::accepted(format!("{to} delivered"))
            }
        });
        DataOutcome::per_recipient(outcomes.collect::<Vec<_>>())
    }

    async fn extension(&mut self, verb: &str, args: Option<&str>) -> Reply {
        assert!(verb.eq_ignore_ascii_case("XCLIENT"));
        self.0
            .xclient
            .lock()
            .unwrap()
            .push(args.unwrap_or("").to_owned());
        Reply::new(220, None, "lmtp.test ready for the proxied client").unwrap()
    }
}

async fn start(handler: Mailboxes) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let bound = Server::builder(handler)
        .hostname("lmtp.test")
        .lmtp_listen("127.0.0.1:0".parse().unwrap())
        .extension(
            "XCLIENT",
            Some(Capability::Other("XCLIENT".into(), vec!["ADDR".into()])),
        )
        .bind()
        .await
        .unwrap();
    let addr = bound.local_addrs()[0];
    let task = tokio::spawn(async move {
        bound.serve(std::future::pending()).await.unwrap();
    });
    (addr, task)
}

#[tokio::test]
async fn smtp_client_gets_one_verdict_per_recipient() {
    let handler = Mailboxes::default();
    let (addr, task) = start(handler.clone()).await;
    let lmtp = Lmtp::new(
        LmtpTarget::Tcp(addr),
        ClientConfig::new("mx.example.org").with_tls(TlsPolicy::None),
    );
    let rcpts = [
        "<alice@example.org>",
        "<full@example.org>",
        "<gone@example.org>",
        "<bob@example.org>",
    ]
    .map(|r| parse_forward_path(r).unwrap().into_owned());
    let envelope = CEnvelope::new(ReversePath::Null, rcpts.to_vec());
    let message = Message::bytes(b"Subject: hi\r\n\r\n.leading dot\r\n");
    let report = tokio::time::timeout(WAIT, lmtp.deliver_message(&envelope, &message))
        .await
        .unwrap();
    let verdicts: Vec<String> = report
        .rcpts
        .iter()
        .map(|(to, o)| match o {
            RcptOutcome::Delivered(r) => format!("{to} delivered {}", r.code()),
            RcptOutcome::Transient(f) => format!("{to} transient {}", f.enhanced),
            RcptOutcome::Permanent(f) => format!("{to} permanent {}", f.enhanced),
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            "<alice@example.org> delivered 250",
            "<full@example.org> transient 4.2.2",
            "<gone@example.org> permanent 5.1.1",
            "<bob@example.org> delivered 250",
        ]
    );
    let delivered = handler.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 2);
    assert_eq!(delivered[0].1, b"Subject: hi\r\n\r\n.leading dot\r\n");
    task.abort();
}

#[tokio::test]
async fn raw_lmtp_dialogue_and_an_extension_verb() {
    let handler = Mailboxes::default();
    let (addr, task) = start(handler.clone()).await;
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await, "220 lmtp.test LMTP ready");
    assert_eq!(
        c.cmd("EHLO client.example").await,
        "500 5.5.1 Command unrecognized: use LHLO"
    );
    let lhlo = c.cmd("LHLO client.example").await;
    assert!(
        lhlo.starts_with("250-lmtp.test greets client.example\n"),
        "{lhlo}"
    );
    assert!(lhlo.ends_with("\n250 XCLIENT ADDR"), "{lhlo}");
    assert_eq!(
        c.cmd("XCLIENT ADDR=192.0.2.7").await,
        "220 lmtp.test ready for the proxied client"
    );
    assert_eq!(*handler.xclient.lock().unwrap(), ["ADDR=192.0.2.7"]);
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.net>").await,
        "250 2.1.0 Sender OK"
    );
    assert_eq!(
        c.cmd("RCPT TO:<full@example.org>").await,
        "250 2.1.5 Recipient OK"
    );
    assert_eq!(
        c.cmd("RCPT TO:<carol@example.org>").await,
        "250 2.1.5 Recipient OK"
    );
    assert_eq!(c.cmd("DATA").await, "354 End data with <CR><LF>.<CR><LF>");
    c.send("Subject: x\r\n\r\nhello\r\n.\r\n").await;
    // One reply per recipient, in RCPT order: each its own line, read one by one.
    assert_eq!(c.reply().await, "452 4.2.2 Mailbox full");
    assert_eq!(c.reply().await, "250 2.0.0 <carol@example.org> delivered");
    assert_eq!(
        c.cmd("QUIT").await,
        "221 2.0.0 lmtp.test closing connection"
    );
    task.abort();
}
