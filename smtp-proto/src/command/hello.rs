//! `EHLO` and `HELO`.
use super::CommandErrorKind;

/// One word of visible characters (ASCII `!`..`~` or UTF-8 non-ASCII).
fn word<'a>(
    args: Option<&'a [u8]>,
    text: &'a str,
    hint: &'static str,
) -> Result<&'a str, CommandErrorKind> {
    let a = args
        .filter(|a| !a.is_empty())
        .ok_or(CommandErrorKind::Syntax(hint))?;
    // Without an early exit the loop vectorises; the argument is short either way.
    if !super::arg::is_word(a) {
        return Err(CommandErrorKind::Syntax(hint));
    }
    crate::address::sub(text, a).ok_or(CommandErrorKind::Syntax(hint))
}

/// `ehlo = "EHLO" SP ( Domain / address-literal ) CRLF`
///
/// The argument is returned as sent, not checked to be a domain (see the module docs).
pub(super) fn ehlo<'a>(args: Option<&'a [u8]>, text: &'a str) -> Result<&'a str, CommandErrorKind> {
    word(args, text, "Syntax: EHLO hostname")
}

/// `helo = "HELO" SP Domain CRLF`
pub(super) fn helo<'a>(args: Option<&'a [u8]>, text: &'a str) -> Result<&'a str, CommandErrorKind> {
    word(args, text, "Syntax: HELO hostname")
}
