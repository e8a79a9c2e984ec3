//! Python's smtplib (a client no one here wrote) against the server, plain and with
//! STARTTLS, through `scripts/smtplib_check.py`. Skipped with a note if python3 is missing.
#![allow(clippy::unwrap_used)]

mod server_support;

use server_support::{pki, start};
use smtp_server::TlsConfig;

fn python() -> bool {
    std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn smtplib_plain_and_starttls() {
    if !python() {
        eprintln!("note: python3 not found; smtplib test skipped");
        return;
    }
    let p = pki("smtplib");
    let tls = TlsConfig::from_pem(p.cert_pem.as_bytes(), p.key_pem.as_bytes()).unwrap();
    let srv = start(move |b| b.listen("127.0.0.1:0".parse().unwrap()).tls(tls)).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/smtplib_check.py");
    let port = srv.addr().port().to_string();
    for (args, subject) in [(vec![], "plain run"), (vec!["--starttls"], "tls run")] {
        let out = tokio::process::Command::new("python3")
            .arg(script)
            .args(["127.0.0.1", &port, "--subject", subject])
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A refused recipient makes the script fail.
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args(["127.0.0.1", &port, "--to", "bad@example.org"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());

    let msgs = srv.rec.messages();
    assert_eq!(msgs.len(), 2);
    let plain = String::from_utf8_lossy(&msgs[0].body).into_owned();
    assert!(plain.contains("Subject: plain run\r\n"), "{plain}");
    assert!(
        plain.contains("\r\n.A line that starts with a dot.\r\n"),
        "{plain}"
    );
    assert_eq!(msgs[0].envelope.helo, "smtplib.test");
    assert!(msgs[0].envelope.tls.is_none());
    assert!(String::from_utf8_lossy(&msgs[1].body).contains("Subject: tls run\r\n"));
    assert!(msgs[1].envelope.tls.is_some());
}
