//! `--metrics-listen`: the Prometheus text endpoint after a known load (parsed by the text
//! format's rules here; the field suite has a real Prometheus scrape it).
#![allow(clippy::unwrap_used)]

mod daemon_util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use daemon_util::{wait_until, Daemon};

fn get(port: u16, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

/// The value of the sample `name{labels}` (labels exactly as written), if present.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_after_a_known_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users"), "bob\ncarol\n").unwrap();
    let (d, [mport]) = Daemon::start_ports(
        &dir.path().join("mail"),
        "127.0.0.1:1".parse().unwrap(),
        |[p]| {
            daemon_util::strings(&[
                "--metrics-listen",
                &format!("127.0.0.1:{p}"),
                "-u",
                dir.path().join("users").to_str().unwrap(),
                "--max-message-size",
                "2000",
            ])
        },
    );
    let m = format!("127.0.0.1:{mport}");
    assert!(wait_until(Duration::from_secs(10), || TcpStream::connect(
        &m
    )
    .is_ok()));
    let mut c = d.connect();
    for _ in 0..2 {
        let (code, _) = c.send(
            "a@example.test",
            &["bob@example.test", "carol@example.test"],
            "Subject: x\r\n\r\nhello\r\n",
        );
        assert_eq!(code, 250);
    }
    assert_eq!(c.cmd("MAIL FROM:<a@example.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<nobody@example.test>").0, 550);
    assert_eq!(c.cmd("QUIT").0, 221);
    // Too big: the library answers 552 5.3.4, counted as 5xx.
    let mut big = d.connect();
    let (code, text) = big.send(
        "a@example.test",
        &["bob@example.test"],
        &format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(3000)),
    );
    assert_eq!(code, 552, "{text}");
    assert_eq!(big.cmd("QUIT").0, 221);
    // A client that goes away inside DATA: no reply, nothing counted.
    let mut gone = d.connect();
    gone.cmd("EHLO client.test");
    gone.cmd("MAIL FROM:<a@example.test>");
    gone.cmd("RCPT TO:<bob@example.test>");
    assert_eq!(gone.cmd("DATA").0, 354);
    gone.send_raw(b"Subject: half\r\n");
    drop(gone);
    let ended = |body: &str| {
        sample(
            body,
            "smtp_sessions_total{listener=\"loopback\",outcome=\"no_mail\"}",
        )
        .is_some_and(|n| n >= 2.0)
            && sample(
                body,
                "smtp_sessions_total{listener=\"loopback\",outcome=\"mail\"}",
            ) == Some(1.0)
    };
    assert!(
        wait_until(Duration::from_secs(10), || ended(&get(mport, "/metrics").1)),
        "{}",
        get(mport, "/metrics").1
    );
    let (head, body) = get(mport, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    let want = [
        (
            "smtp_messages_total{listener=\"loopback\",class=\"2xx\"}",
            2.0,
        ),
        (
            "smtp_deliveries_total{destination=\"local\",outcome=\"delivered\"}",
            4.0,
        ),
        (
            "smtp_messages_total{listener=\"loopback\",class=\"5xx\"}",
            1.0,
        ),
        ("smtp_recipients_refused_total{class=\"5xx\"}", 1.0),
        ("smtp_queue_entries", 0.0),
    ];
    // Series exist from the start, at zero until their first event (for rate()).
    for series in [
        "smtp_messages_total{listener=\"loopback\",class=\"4xx\"}",
        "smtp_deliveries_total{destination=\"mx\",outcome=\"bounced\"}",
        "smtp_outbound_tls_total{destination=\"mx\",tls=\"yes\"}",
        "smtp_recipients_refused_total{class=\"4xx\"}",
    ] {
        assert_eq!(sample(&body, series), Some(0.0), "{series}\n{body}");
    }
    for (series, v) in want {
        assert_eq!(sample(&body, series), Some(v), "{series}\n{body}");
    }
    let bytes = sample(&body, "smtp_received_bytes_total").unwrap();
    assert!(
        bytes >= 2.0 * "Subject: x\r\n\r\nhello\r\n".len() as f64,
        "{bytes}"
    );
    // Every sample line is `name{labels} value` with a HELP and TYPE for its family.
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = l.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{l}");
        let name = series.split('{').next().unwrap();
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(body.contains(&format!("# TYPE {family} ")), "{l}");
    }
    let (head, _) = get(mport, "/other");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

#[test]
fn expired_and_returned_recipients_count_as_bounced() {
    // Nothing listens at the smarthost: every attempt is deferred. One daemon whose queue
    // lifetime is over within seconds (expiry), one whose entry the admin returns with
    // `queue bounce`: both recipients failed for good, as a 5yz would have.
    for case in ["expired", "returned"] {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("mail");
        let lifetime = if case == "expired" { "2s" } else { "5d" };
        let (d, [mport]) = Daemon::start_ports(&spool, "127.0.0.1:1".parse().unwrap(), |[p]| {
            daemon_util::strings(&[
                "--metrics-listen",
                &format!("127.0.0.1:{p}"),
                "--relay-host",
                "127.0.0.1:1",
                "--retry-base",
                "1s",
                "--queue-lifetime",
                lifetime,
            ])
        });
        let m = format!("127.0.0.1:{mport}");
        assert!(wait_until(Duration::from_secs(10), || TcpStream::connect(
            &m
        )
        .is_ok()));
        let (code, text) = d.connect().send(
            "a@example.test",
            &["far@remote.test"],
            "Subject: x\r\n\r\nhello\r\n",
        );
        assert_eq!(code, 250, "{text}");
        let id = text.rsplit(' ').next().unwrap().to_owned();
        let series = |outcome: &str| {
            sample(
                &get(mport, "/metrics").1,
                &format!(
                    "smtp_deliveries_total{{destination=\"smarthost\",outcome=\"{outcome}\"}}"
                ),
            )
            .unwrap_or(-1.0)
        };
        assert!(wait_until(Duration::from_secs(20), || series("deferred") >= 1.0));
        if case == "returned" {
            let out = std::process::Command::new(daemon_util::BIN)
                .args(["queue", "-d", spool.to_str().unwrap(), "bounce", &id])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        assert!(
            wait_until(Duration::from_secs(20), || daemon_util::queued(&spool) == 0),
            "{case}: {}",
            d.log()
        );
        // The report went to the local sender.
        assert!(wait_until(Duration::from_secs(10), || !d
            .spool_messages("a")
            .is_empty()));
        assert_eq!(
            series("bounced"),
            1.0,
            "{case}: {}",
            get(mport, "/metrics").1
        );
    }
}
