//! `AUTH` (RFC 4954).
use nom::bytes::complete::{take_while1, take_while_m_n};
use nom::IResult;

use super::{Command, CommandErrorKind};

const HINT: &str = "Syntax: AUTH mechanism [initial-response]";

/// `sasl-mech = 1*20mech-char`, `mech-char = UPPER-ALPHA / DIGIT / HYPHEN / UNDERSCORE`
/// (RFC 4422; lower case accepted too, mechanism names are case-insensitive)
fn sasl_mech(i: &[u8]) -> IResult<&[u8], &[u8]> {
    take_while_m_n(1, 20, |b: u8| {
        b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
    })(i)
}

/// `initial-response = base64 / "="`
fn initial_response(i: &[u8]) -> IResult<&[u8], &[u8]> {
    take_while1(|b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')(i)
}

/// `auth-command = "AUTH" SP sasl-mech [SP initial-response] *(CRLF [base64]) [CRLF cancel-response] CRLF`
///
/// Only the command line is parsed here; the continuation lines are the session's business.
pub(super) fn auth<'a>(
    args: Option<&'a [u8]>,
    line: &'a str,
) -> Result<Command<'a>, CommandErrorKind> {
    let a = args.ok_or(CommandErrorKind::Syntax(HINT))?;
    let (rest, mech) = sasl_mech(a).map_err(|_| CommandErrorKind::Syntax(HINT))?;
    let initial = match rest.split_first() {
        None => None,
        Some((b' ', r)) => {
            let r = super::skip_spaces(r);
            let (end, resp) = initial_response(r).map_err(|_| CommandErrorKind::Syntax(HINT))?;
            if !end.is_empty() || !valid_base64(resp) {
                return Err(CommandErrorKind::Syntax(HINT));
            }
            Some(if resp == b"=" { "" } else { ascii(resp, line)? })
        }
        Some(_) => return Err(CommandErrorKind::Syntax(HINT)),
    };
    Ok(Command::Auth {
        mechanism: ascii(mech, line)?,
        initial_response: initial,
    })
}

/// `=` alone, or base64 with padding only at the end (at most two `=`) and a length that
/// is a multiple of four.
fn valid_base64(s: &[u8]) -> bool {
    if s == b"=" {
        return true;
    }
    let body = s.iter().rposition(|&b| b != b'=').map_or(0, |p| p + 1);
    let pad = s.len() - body;
    s.len() & 3 == 0 && pad <= 2 && !s[..body].contains(&b'=')
}

fn ascii<'a>(s: &'a [u8], line: &'a str) -> Result<&'a str, CommandErrorKind> {
    crate::address::sub(line, s).ok_or(CommandErrorKind::Syntax(HINT))
}
