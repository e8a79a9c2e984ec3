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
