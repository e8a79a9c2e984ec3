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

/// `initial-response = base64 / "="`, taken here as any run of visible ASCII: whether it is
/// base64 is the session's question (`501 5.5.2`, RFC 4954 §4), not a syntax error.
fn initial_response(i: &[u8]) -> IResult<&[u8], &[u8]> {
    take_while1(|b: u8| b.is_ascii_graphic())(i)
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
            if !super::skip_spaces(end).is_empty() {
                return Err(CommandErrorKind::Syntax(HINT));
            }
            Some(super::Word::checked(ascii(resp, line)?))
        }
        Some(_) => return Err(CommandErrorKind::Syntax(HINT)),
    };
    Ok(Command::Auth {
        mechanism: super::Word::checked(ascii(mech, line)?),
        initial_response: initial,
    })
}

fn ascii<'a>(s: &'a [u8], line: &'a str) -> Result<&'a str, CommandErrorKind> {
    crate::address::sub(line, s).ok_or(CommandErrorKind::Syntax(HINT))
}
