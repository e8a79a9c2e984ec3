//! Benchmarks live in `benches/`; `examples/command_instructions.rs` counts instructions.
//! This library holds what they share.

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
