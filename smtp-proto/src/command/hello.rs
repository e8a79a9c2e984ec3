//! `EHLO` and `HELO`.
use super::CommandErrorKind;

/// One word of visible characters (ASCII `!`..`~` or UTF-8 non-ASCII).
fn word<'a>(args: Option<&'a [u8]>, hint: &'static str) -> Result<&'a str, CommandErrorKind> {
    let a = args
        .filter(|a| !a.is_empty())
        .ok_or(CommandErrorKind::Syntax(hint))?;
    if !a.iter().all(|&b| (b'!'..=b'~').contains(&b) || b >= 0x80) {
        return Err(CommandErrorKind::Syntax(hint));
    }
    std::str::from_utf8(a).map_err(|_| CommandErrorKind::Syntax(hint))
}

/// `ehlo = "EHLO" SP ( Domain / address-literal ) CRLF`
///
/// The argument is returned as sent, not checked to be a domain (see the module docs).
pub(super) fn ehlo(args: Option<&[u8]>) -> Result<&str, CommandErrorKind> {
    word(args, "Syntax: EHLO hostname")
}

/// `helo = "HELO" SP Domain CRLF`
pub(super) fn helo(args: Option<&[u8]>) -> Result<&str, CommandErrorKind> {
    word(args, "Syntax: HELO hostname")
}
