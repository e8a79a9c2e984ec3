//! AUTH (RFC 4954) in the session: every reply a client can get, byte for byte.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use smtp_proto::sasl::{encode_base64, Mechanism};
use smtp_proto::session::{Event, Session, SessionConfig};
use smtp_proto::Reply;

/// The one valid login.
const USER: &str = "alice@example.org";
const PASS: &str = "s3cret";

fn config(tls: bool) -> SessionConfig {
    let mut c = SessionConfig::new("mx.test");
    c.auth_mechanisms = vec![Mechanism::Plain, Mechanism::Login];
    c.tls_active = tls;
    c
}

/// A driver whose policy knows one user; records what it saw.
#[derive(Default)]
struct Driver {
    logins: Vec<String>,
    mail_auth: Vec<Option<String>>,
    closed: bool,
    /// Reply for the next Auth event instead of checking the password.
    answer: Option<Reply>,
}

impl Driver {
    fn pump(&mut self, s: &mut Session) -> String {
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::Auth { credentials } => {
                    self.logins.push(credentials.authcid().to_owned());
                    if let Some(r) = self.answer.take() {
                        s.respond(r);
                    } else if credentials.authcid() == USER
                        && credentials.secret().expose() == PASS.as_bytes()
                    {
                        s.accept();
                    } else {
                        s.respond(
                            Reply::new(535, "5.7.8".parse().ok(), "Authentication failed").unwrap(),
                        );
                    }
                }
                Event::Mail { params, .. } => {
                    self.mail_auth
                        .push(params.auth.as_ref().map(|a| a.to_string()));
                    s.accept();
                }
                Event::Closed | Event::Quit => self.closed = true,
                e if e.needs_decision() => s.accept(),
                _ => {}
            }
        }
        let out = String::from_utf8_lossy(s.output()).into_owned();
        s.clear_output();
        out
    }

    /// One round trip: the client sends `input` and waits for the reply.
    fn talk(&mut self, s: &mut Session, input: &str) -> String {
        s.feed(input.as_bytes());
        self.pump(s)
    }
}

/// A session past its greeting and EHLO; returns the EHLO reply.
fn greeted(config: SessionConfig) -> (Session, Driver, String) {
    let mut s = Session::new(config);
    let mut d = Driver::default();
    assert!(d.pump(&mut s).starts_with("220 "));
    let ehlo = d.talk(&mut s, "EHLO client.test\r\n");
    (s, d, ehlo)
}

fn plain(user: &str, pass: &str) -> String {
    encode_base64(format!("\0{user}\0{pass}").as_bytes())
}

#[test]
fn not_configured_is_502_and_not_advertised() {
    let (mut s, mut d, ehlo) = greeted(SessionConfig::new("mx.test"));
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    let r = d.talk(&mut s, &format!("AUTH PLAIN {}\r\n", plain(USER, PASS)));
    assert_eq!(r, "502 5.5.1 AUTH not available\r\n");
    assert_eq!(
        d.talk(&mut s, "MAIL FROM:<a@b.test> AUTH=<>\r\n"),
        "555 5.5.4 Unsupported parameter AUTH\r\n"
    );
}

#[test]
fn before_tls_not_advertised_and_538() {
    let (mut s, mut d, ehlo) = greeted(config(false));
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    let r = d.talk(&mut s, &format!("AUTH PLAIN {}\r\n", plain(USER, PASS)));
    assert_eq!(
        r,
        "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    );
    assert!(
        d.logins.is_empty(),
        "credentials sent in clear were looked at"
    );
    // Once TLS is up, AUTH is offered.
    let mut c = config(false);
    c.starttls = true;
    let (mut s, mut d, _) = greeted(c);
    assert_eq!(
        d.talk(&mut s, "STARTTLS\r\n"),
        "220 2.0.0 Ready to start TLS\r\n"
    );
    s.tls_established();
    let ehlo = d.talk(&mut s, "EHLO client.test\r\n");
    assert!(ehlo.contains("250 AUTH PLAIN LOGIN\r\n"), "{ehlo}");
}

#[test]
fn plain_with_initial_response() {
    let (mut s, mut d, ehlo) = greeted(config(true));
    assert!(ehlo.contains("250 AUTH PLAIN LOGIN\r\n"), "{ehlo}");
    let r = d.talk(&mut s, &format!("AUTH PLAIN {}\r\n", plain(USER, PASS)));
    assert_eq!(r, "235 2.7.0 Authentication successful\r\n");
    assert!(s.is_authenticated());
    assert_eq!(d.logins, [USER]);
    let again = d.talk(&mut s, &format!("AUTH PLAIN {}\r\n", plain(USER, PASS)));
    assert_eq!(again, "503 5.5.1 Already authenticated\r\n");
    // A new EHLO keeps the authentication (RFC 4954 forgets it only with STARTTLS).
    d.talk(&mut s, "EHLO client.test\r\n");
    assert!(s.is_authenticated());
    assert_eq!(
        d.talk(
            &mut s,
            "MAIL FROM:<alice@example.org> AUTH=alice+40example.org\r\n"
        ),
        "250 2.1.0 Sender OK\r\n"
    );
    assert_eq!(d.mail_auth, [Some("alice@example.org".to_owned())]);
}

#[test]
fn plain_and_login_by_challenges() {
    let (mut s, mut d, _) = greeted(config(true));
    assert_eq!(d.talk(&mut s, "AUTH PLAIN\r\n"), "334 \r\n");
    let r = d.talk(&mut s, &format!("{}\r\n", plain(USER, PASS)));
    assert_eq!(r, "235 2.7.0 Authentication successful\r\n");

    let (mut s, mut d, _) = greeted(config(true));
    assert_eq!(d.talk(&mut s, "auth login\r\n"), "334 VXNlcm5hbWU6\r\n");
    let r = d.talk(&mut s, &format!("{}\r\n", encode_base64(USER.as_bytes())));
    assert_eq!(r, "334 UGFzc3dvcmQ6\r\n");
    let r = d.talk(&mut s, &format!("{}\r\n", encode_base64(PASS.as_bytes())));
    assert_eq!(r, "235 2.7.0 Authentication successful\r\n");
    assert_eq!(d.logins, [USER]);

    // LOGIN with the user name as initial response.
    let (mut s, mut d, _) = greeted(config(true));
    let r = d.talk(
        &mut s,
        &format!("AUTH LOGIN {}\r\n", encode_base64(USER.as_bytes())),
    );
    assert_eq!(r, "334 UGFzc3dvcmQ6\r\n");
    let r = d.talk(&mut s, &format!("{}\r\n", encode_base64(PASS.as_bytes())));
    assert_eq!(r, "235 2.7.0 Authentication successful\r\n");
}

#[test]
fn cancel_bad_base64_and_unknown_mechanism() {
    let (mut s, mut d, _) = greeted(config(true));
    d.talk(&mut s, "AUTH LOGIN\r\n");
    assert_eq!(
        d.talk(&mut s, "*\r\n"),
        "501 5.7.0 Authentication cancelled\r\n"
    );
    d.talk(&mut s, "AUTH LOGIN\r\n");
    assert_eq!(
        d.talk(&mut s, "not base64!\r\n"),
        "501 5.5.2 Cannot decode response\r\n"
    );
    assert_eq!(
        d.talk(&mut s, "AUTH PLAIN AGFsaWNl=AHB3\r\n"),
        "501 5.5.2 Cannot decode response\r\n"
    );
    assert_eq!(
        d.talk(&mut s, "AUTH CRAM-MD5\r\n"),
        "504 5.5.4 Unrecognized authentication type\r\n"
    );
    // Afterwards the session takes commands as before, and AUTH still works.
    let r = d.talk(&mut s, &format!("AUTH PLAIN {}\r\n", plain(USER, PASS)));
    assert_eq!(r, "235 2.7.0 Authentication successful\r\n");
    assert!(d.logins == [USER], "{:?}", d.logins);
}

#[test]
fn malformed_plain_is_535() {
    let (mut s, mut d, _) = greeted(config(true));
    let r = d.talk(
        &mut s,
        &format!("AUTH PLAIN {}\r\n", encode_base64(b"alice")),
    );
    assert_eq!(r, "535 5.7.8 Authentication credentials invalid\r\n");
    assert!(d.logins.is_empty());
}

#[test]
fn sequence_errors_are_503() {
    let mut s = Session::new(config(true));
    let mut d = Driver::default();
    d.pump(&mut s);
    let r = d.talk(&mut s, &format!("AUTH PLAIN {}\r\n", plain(USER, PASS)));
    assert_eq!(r, "503 5.5.1 Send EHLO first\r\n");
    d.talk(&mut s, "HELO client.test\r\n");
    let r = d.talk(&mut s, &format!("AUTH PLAIN {}\r\n", plain(USER, PASS)));
    assert_eq!(r, "503 5.5.1 Send EHLO first\r\n");
    d.talk(&mut s, "EHLO client.test\r\n");
    d.talk(&mut s, "MAIL FROM:<a@b.test>\r\n");
    let r = d.talk(&mut s, &format!("AUTH PLAIN {}\r\n", plain(USER, PASS)));
    assert_eq!(
        r,
        "503 5.5.1 AUTH not allowed during a mail transaction\r\n"
    );
    assert!(d.logins.is_empty());
}

#[test]
fn failures_close_the_session_at_the_limit() {
    let (mut s, mut d, _) = greeted(config(true));
    for _ in 0..2 {
        let r = d.talk(&mut s, &format!("AUTH PLAIN {}\r\n", plain(USER, "wrong")));
        assert_eq!(r, "535 5.7.8 Authentication failed\r\n");
        assert!(!s.is_closed());
    }
    let r = d.talk(&mut s, &format!("AUTH PLAIN {}\r\n", plain(USER, "wrong")));
    assert_eq!(
        r,
        "535 5.7.8 Authentication failed\r\n\
         421 4.7.0 mx.test Error: too many failed authentication attempts\r\n"
    );
    assert!(s.is_closed() && d.closed);
    // Nothing more is read.
    assert_eq!(d.talk(&mut s, "NOOP\r\n"), "");
}

#[test]
fn a_421_from_the_driver_closes() {
    let (mut s, mut d, _) = greeted(config(true));
    d.answer = Some(Reply::new(421, "4.7.0".parse().ok(), "mx.test Too many failures").unwrap());
    let r = d.talk(&mut s, &format!("AUTH PLAIN {}\r\n", plain(USER, PASS)));
    assert_eq!(r, "421 4.7.0 mx.test Too many failures\r\n");
    assert!(s.is_closed() && d.closed);
}

#[test]
fn a_454_counts_and_does_not_authenticate() {
    let (mut s, mut d, _) = greeted(config(true));
    d.answer = Some(
        Reply::new(
            454,
            "4.7.0".parse().ok(),
            "Temporary authentication failure",
        )
        .unwrap(),
    );
    let r = d.talk(&mut s, &format!("AUTH PLAIN {}\r\n", plain(USER, PASS)));
    assert_eq!(r, "454 4.7.0 Temporary authentication failure\r\n");
    assert!(!s.is_authenticated());
    // Temporary failures do not use up the session's attempts: the right password, after
    // three 454s, still logs in.
    for _ in 0..3 {
        d.answer = Some(
            Reply::new(
                454,
                "4.7.0".parse().ok(),
                "Temporary authentication failure",
            )
            .unwrap(),
        );
        d.talk(&mut s, &format!("AUTH PLAIN {}\r\n", plain(USER, PASS)));
    }
    assert!(!s.is_closed());
    let r = d.talk(&mut s, &format!("AUTH PLAIN {}\r\n", plain(USER, PASS)));
    assert_eq!(r, "235 2.7.0 Authentication successful\r\n");
}

#[test]
fn cancels_count_as_errors() {
    let (mut s, mut d, _) = greeted(config(true));
    for _ in 0..9 {
        d.talk(&mut s, "AUTH LOGIN\r\n");
        assert_eq!(
            d.talk(&mut s, "*\r\n"),
            "501 5.7.0 Authentication cancelled\r\n"
        );
    }
    d.talk(&mut s, "AUTH LOGIN\r\n");
    let r = d.talk(&mut s, "*\r\n");
    assert!(
        r.starts_with("501 5.7.0 Authentication cancelled\r\n421 4.7.0 "),
        "{r}"
    );
    assert!(s.is_closed());
}

#[test]
fn auth_param_only_where_auth_is_offered() {
    // Configured, but not offered before TLS: AUTH= is an unadvertised parameter there.
    let (mut s, mut d, _) = greeted(config(false));
    assert_eq!(
        d.talk(&mut s, "MAIL FROM:<a@b.test> AUTH=<>\r\n"),
        "555 5.5.4 Unsupported parameter AUTH\r\n"
    );
}

#[test]
fn long_lines() {
    let (mut s, mut d, _) = greeted(config(true));
    // An AUTH line may be longer than an ordinary command line (RFC 4954 §4: 12288).
    let long = encode_base64(format!("\0{USER}\0{}", "x".repeat(900)).as_bytes());
    assert!(long.len() > 512);
    let r = d.talk(&mut s, &format!("AUTH PLAIN {long}\r\n"));
    assert_eq!(r, "535 5.7.8 Authentication failed\r\n");
    // A response line over 12288 octets is refused and dropped to its end.
    d.talk(&mut s, "AUTH PLAIN\r\n");
    let r = d.talk(&mut s, &format!("{}\r\n", "A".repeat(13000)));
    assert_eq!(r, "500 5.5.6 Authentication Exchange line is too long\r\n");
    assert_eq!(d.talk(&mut s, "NOOP\r\n"), "250 2.0.0 OK\r\n");
}

#[test]
fn bare_line_feed_in_a_response_closes() {
    let (mut s, mut d, _) = greeted(config(true));
    d.talk(&mut s, "AUTH LOGIN\r\n");
    let r = d.talk(&mut s, "YWxpY2U=\nMAIL FROM:<a@b.test>\r\n");
    assert_eq!(r, "550 5.5.2 mx.test Error: bare <LF> received\r\n");
    assert!(s.is_closed());
}

#[test]
fn starttls_forgets_the_authentication() {
    let mut c = config(false);
    c.auth_requires_tls = false;
    c.starttls = true;
    let (mut s, mut d, ehlo) = greeted(c);
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    d.talk(&mut s, &format!("AUTH PLAIN {}\r\n", plain(USER, PASS)));
    assert!(s.is_authenticated());
    d.talk(&mut s, "STARTTLS\r\n");
    s.tls_established();
    assert!(!s.is_authenticated());
}

#[test]
fn disable_auth_per_session() {
    let mut s = Session::new(config(true));
    s.disable_auth();
    let mut d = Driver::default();
    d.pump(&mut s);
    let ehlo = d.talk(&mut s, "EHLO client.test\r\n");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    let r = d.talk(&mut s, &format!("AUTH PLAIN {}\r\n", plain(USER, PASS)));
    assert_eq!(r, "502 5.5.1 AUTH not available\r\n");
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let (mut s, _, _) = greeted(config(true));
    s.feed(format!("AUTH PLAIN {}\r\n", plain(USER, PASS)).as_bytes());
    let ev = format!("{:?}", s.poll_event().unwrap());
    let shown = format!("{ev} {s:?}");
    assert!(!shown.contains(PASS), "{shown}");
}

/// The round trips of the AUTH exchanges above.
fn exchanges() -> Vec<Vec<String>> {
    let b = |s: &str| encode_base64(s.as_bytes());
    vec![
        vec![format!("AUTH PLAIN {}\r\n", plain(USER, PASS))],
        vec![
            "AUTH PLAIN\r\n".into(),
            format!("{}\r\n", plain(USER, PASS)),
        ],
        vec![
            "AUTH LOGIN\r\n".into(),
            format!("{}\r\n", b(USER)),
            format!("{}\r\n", b("wrong")),
        ],
        vec!["AUTH LOGIN\r\n".into(), "*\r\n".into()],
        vec!["AUTH LOGIN\r\n".into(), "!!\r\n".into()],
        vec![format!("AUTH PLAIN {}\r\n", plain(USER, "x"))],
    ]
}

proptest! {
    /// Every exchange gives the same replies however its lines are split across reads.
    #[test]
    fn split_anywhere_same_replies(which in 0usize..6, cut in proptest::collection::vec(0usize..200, 3)) {
        let rounds = &exchanges()[which];
        let whole = {
            let (mut s, mut d, _) = greeted(config(true));
            rounds.iter().map(|r| d.talk(&mut s, r)).collect::<Vec<_>>()
        };
        let (mut s, mut d, _) = greeted(config(true));
        let mut split = Vec::new();
        for (i, r) in rounds.iter().enumerate() {
            let at = cut[i % cut.len()] % (r.len() + 1);
            let mut out = d.talk(&mut s, &r[..at]);
            out.push_str(&d.talk(&mut s, &r[at..]));
            split.push(out);
        }
        prop_assert_eq!(whole, split);
    }
}

/// Every exchange, each round split at every byte (two reads), gives the replies of the
/// unsplit exchange.
#[test]
fn split_at_every_byte_same_replies() {
    for rounds in exchanges() {
        let whole = {
            let (mut s, mut d, _) = greeted(config(true));
            rounds.iter().map(|r| d.talk(&mut s, r)).collect::<Vec<_>>()
        };
        for (i, round) in rounds.iter().enumerate() {
            for at in 0..=round.len() {
                let (mut s, mut d, _) = greeted(config(true));
                let mut got = Vec::new();
                for (j, r) in rounds.iter().enumerate() {
                    if j == i {
                        let mut out = d.talk(&mut s, &r[..at]);
                        out.push_str(&d.talk(&mut s, &r[at..]));
                        got.push(out);
                    } else {
                        got.push(d.talk(&mut s, r));
                    }
                }
                assert_eq!(got, whole, "{rounds:?} round {i} split at {at}");
            }
        }
    }
}
