//! Benchmarks live in `benches/`; `examples/command_instructions.rs` counts instructions.
//! This library holds what they share.

use std::hint::black_box;

use smtp_proto::command::{parse_command, Limits};
use stalwart_smtp_proto::Request;

/// The command mix both parsers are measured on: one pipelined transaction with EHLO, MAIL
/// FROM with SIZE and BODY, several RCPT with NOTIFY, DATA, then RSET, a null-sender MAIL,
/// RCPT, NOOP, QUIT (12 lines).
pub const MIX: &[u8] = b"EHLO client.example.org\r\n\
MAIL FROM:<alice.sender@example.org> SIZE=123456 BODY=8BITMIME\r\n\
RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE\r\n\
RCPT TO:<carol.jones@mail.example.net> NOTIFY=NEVER\r\n\
RCPT TO:<dave+lists@example.com> NOTIFY=FAILURE,DELAY\r\n\
RCPT TO:<erin@sub.example.co.uk>\r\n\
DATA\r\n\
RSET\r\n\
MAIL FROM:<> BODY=7BIT\r\n\
RCPT TO:<postmaster@example.org>\r\n\
NOOP\r\n\
QUIT\r\n";

/// Number of command lines in [`MIX`].
pub const MIX_LINES: usize = 12;

/// Parses every line of `input` with this workspace's `parse_command`; returns the number of
/// commands. Not inlined, so the bench and the instruction count run the same code.
#[inline(never)]
pub fn parse_ours(input: &[u8], limits: &Limits) -> usize {
    let mut rest = input;
    let mut n = 0;
    while let Ok(Some((cmd, used))) = parse_command(rest, limits) {
        black_box(&cmd);
        rest = &rest[used..];
        n += 1;
    }
    n
}

/// Parses every line of `input` with Stalwart's parser; returns the number of commands.
#[inline(never)]
pub fn parse_stalwart(input: &[u8]) -> usize {
    let mut it = input.iter();
    let mut n = 0;
    while it.len() > 0 {
        match Request::parse(&mut it) {
            Ok(req) => {
                black_box(&req);
                n += 1;
            }
            Err(_) => break,
        }
    }
    n
}

/// The rounds a pipelining client sends for one session of `transactions` messages (RFC 2920
/// groups: EHLO alone; MAIL, the RCPTs and DATA together; the content with its end marker;
/// QUIT), each message to `recipients` recipients with a body of about `body_len` octets.
///
/// The sender carries `SIZE` and `BODY=8BITMIME`. With `dsn`, the sender also carries
/// `RET`/`ENVID` and every recipient `NOTIFY` and `ORCPT` (what Postfix relays for a message
/// that asked for notifications); without, one recipient in two carries `NOTIFY` alone and
/// the others nothing (what most clients send). Addresses vary in length and shape
/// (dots, `+` tags, subdomains).
pub fn session_rounds(
    transactions: usize,
    recipients: usize,
    body_len: usize,
    dsn: bool,
) -> Vec<Vec<u8>> {
    use std::fmt::Write as _;
    const USERS: [&str; 6] = [
        "bob",
        "carol.jones",
        "dave+lists",
        "erin",
        "frank.o-neil",
        "grace_hopper",
    ];
    const DOMAINS: [&str; 4] = [
        "example.net",
        "mail.example.org",
        "sub.example.co.uk",
        "example.com",
    ];
    let mut body = String::from(
        "From: Alice Sender <alice.sender@example.org>\r\nTo: bob@example.net\r\n\
         Subject: weekly report\r\nMessage-ID: <20240101.1234@example.org>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
    );
    while body.len() < body_len {
        body.push_str("The quick brown fox jumps over the lazy dog, again and again.\r\n");
    }
    body.push_str(".\r\n");
    let mut rounds = vec![b"EHLO client.example.org\r\n".to_vec()];
    for t in 0..transactions {
        let mut cmds = format!(
            "MAIL FROM:<alice.sender@example.org> SIZE={} BODY=8BITMIME",
            body.len()
        );
        if dsn {
            let _ = write!(cmds, " RET=HDRS ENVID=QQ{t:06}");
        }
        cmds.push_str("\r\n");
        for r in 0..recipients {
            let k = t * recipients + r;
            let (user, domain) = (USERS[k % USERS.len()], DOMAINS[k % DOMAINS.len()]);
            let _ = write!(cmds, "RCPT TO:<{user}@{domain}>");
            if dsn {
                let _ = write!(
                    cmds,
                    " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;{}@{domain}",
                    user.replace('+', "+2B")
                );
            } else if k & 1 == 0 {
                cmds.push_str(" NOTIFY=FAILURE,DELAY");
            }
            cmds.push_str("\r\n");
        }
        cmds.push_str("DATA\r\n");
        rounds.push(cmds.into_bytes());
        rounds.push(body.clone().into_bytes());
    }
    rounds.push(b"QUIT\r\n".to_vec());
    rounds
}

/// Runs one server session through `rounds` (see [`session_rounds`]), accepting every
/// decision, as a driver with no policy would; returns the number of messages accepted.
/// The body and the replies are looked at (`black_box`), not stored.
#[inline(never)]
pub fn run_session(rounds: &[Vec<u8>], config: &smtp_proto::session::SessionConfig) -> usize {
    use smtp_proto::session::{Event, Session};
    let mut s = Session::new(config.clone());
    let mut messages = 0;
    // The Connect event and the greeting, before the client sends anything.
    let pending = std::iter::once(&[][..]).chain(rounds.iter().map(Vec::as_slice));
    for round in pending {
        s.feed(round);
        while let Some(event) = s.poll_event() {
            let decide = event.needs_decision();
            match event {
                Event::Body(chunk) => {
                    black_box(chunk);
                }
                Event::DataEnd { .. } => messages += 1,
                e => {
                    black_box(&e);
                }
            }
            if decide {
                s.accept();
            }
        }
        black_box(s.output());
        s.clear_output();
    }
    assert!(s.is_closed(), "the session ended with QUIT");
    messages
}
