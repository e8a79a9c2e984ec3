//! `BDAT` (RFC 3030, CHUNKING).
use nom::bytes::complete::take_while_m_n;
use nom::IResult;

use super::{Command, CommandErrorKind};

const HINT: &str = "Syntax: BDAT size [LAST]";

/// `chunk-size = 1*DIGIT` (at most 20 digits, the value must fit in 64 bits)
fn chunk_size(i: &[u8]) -> IResult<&[u8], &[u8]> {
    take_while_m_n(1, 20, |b: u8| b.is_ascii_digit())(i)
}

/// `bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ] CRLF`, `end-marker = "LAST"`
pub(super) fn bdat(args: Option<&[u8]>) -> Result<Command<'static>, CommandErrorKind> {
    let a = args.ok_or(CommandErrorKind::Syntax(HINT))?;
    let (rest, digits) = chunk_size(a).map_err(|_| CommandErrorKind::Syntax(HINT))?;
    let mut size: u64 = 0;
    for &d in digits {
        size = size
            .checked_mul(10)
            .and_then(|s| s.checked_add(u64::from(d - b'0')))
            .ok_or(CommandErrorKind::Syntax(HINT))?;
    }
    let last = match rest.split_first() {
        None => false,
        Some((b' ', r)) if super::skip_spaces(r).eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return Err(CommandErrorKind::Syntax(HINT)),
    };
    Ok(Command::Bdat { size, last })
}
