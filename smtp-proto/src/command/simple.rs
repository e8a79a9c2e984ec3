//! Commands with no argument or a free-text one: DATA, RSET, QUIT, STARTTLS, NOOP, VRFY,
//! EXPN, HELP.
use super::{Command, CommandErrorKind};

/// `data = "DATA" CRLF`, `rset = "RSET" CRLF`, `quit = "QUIT" CRLF`,
/// `starttls = "STARTTLS" CRLF`
pub(super) fn no_args<'a>(
    args: Option<&[u8]>,
    cmd: Command<'a>,
    hint: &'static str,
) -> Result<Command<'a>, CommandErrorKind> {
    match args {
        None | Some([]) => Ok(cmd),
        Some(_) => Err(CommandErrorKind::Syntax(hint)),
    }
}

/// Free text: printable ASCII, space, tab or UTF-8 non-ASCII, no control characters.
fn text<'a>(a: &'a [u8], line: &'a str) -> Option<&'a str> {
    if super::arg::is_text(a) {
        crate::address::sub(line, a)
    } else {
        None
    }
}

/// `noop = "NOOP" [ SP String ] CRLF` (the string is ignored, but must be text)
pub(super) fn noop(args: Option<&[u8]>, line: &str) -> Result<Command<'static>, CommandErrorKind> {
    match args {
        Some(a) if text(a, line).is_none() => Err(CommandErrorKind::Syntax("Syntax: NOOP [text]")),
        _ => Ok(Command::Noop),
    }
}

/// `vrfy = "VRFY" SP String CRLF`, `expn = "EXPN" SP String CRLF`
///
/// The rest of the line is taken as the string, since clients send `VRFY <a@b>` too.
pub(super) fn string<'a>(
    args: Option<&'a [u8]>,
    line: &'a str,
    hint: &'static str,
) -> Result<&'a str, CommandErrorKind> {
    match args {
        Some(a) if !a.is_empty() => text(a, line).ok_or(CommandErrorKind::Syntax(hint)),
        _ => Err(CommandErrorKind::Syntax(hint)),
    }
}

/// `help = "HELP" [ SP String ] CRLF`
pub(super) fn help<'a>(
    args: Option<&'a [u8]>,
    line: &'a str,
) -> Result<Command<'a>, CommandErrorKind> {
    match args {
        None | Some([]) => Ok(Command::Help(None)),
        Some(a) => text(a, line)
            .map(|s| Command::Help(Some(super::Text::checked(s))))
            .ok_or(CommandErrorKind::Syntax("Syntax: HELP [topic]")),
    }
}
