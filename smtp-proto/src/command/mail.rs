//! `MAIL` and `RCPT`.
use nom::IResult;

use super::{done, Command, CommandErrorKind, Limits, Parsed};
use crate::address;
use crate::param::{mail_parameters, rcpt_parameters};

const MAIL_HINT: &str = "Syntax: MAIL FROM:<address> [parameters]";
const RCPT_HINT: &str = "Syntax: RCPT TO:<address> [parameters]";

/// `"FROM:"` or `"TO:"` (`upper`, any case), then (leniently) any spaces.
#[inline(always)]
fn keyword<'a, const N: usize>(
    upper: &'static [u8; N],
) -> impl Fn(&'a [u8]) -> IResult<&'a [u8], &'a [u8]> {
    move |i: &'a [u8]| match i.get(..N) {
        // Exact for every byte: letters compare without case, `:` exactly.
        Some(k) if crate::address::eq_upper(k, upper) => Ok((super::skip_spaces(&i[N..]), k)),
        _ => Err(nom::Err::Error(nom::error::Error::new(
            i,
            nom::error::ErrorKind::Tag,
        ))),
    }
}

/// What follows the path: nothing, or `SP` and the parameters.
fn after_path(rest: &[u8]) -> Option<&[u8]> {
    match rest.split_first() {
        None => Some(rest),
        Some((b' ', r)) => Some(r),
        Some(_) => None,
    }
}

/// [`mail`], as [`super::parse_command`] returns it: a call kept out of line so that the
/// general parser, rarely needed since [`super::fast`] takes the common lines, does not
/// grow `parse_command` (inlining it costs ~110 instructions per command mix).
#[inline(never)]
pub(super) fn mail_line<'a>(
    args: Option<&'a [u8]>,
    text: &'a str,
    limits: &Limits,
    consumed: usize,
) -> Parsed<'a> {
    done(mail(args, text, limits), consumed)
}

/// [`rcpt`], as [`super::parse_command`] returns it (out of line, as [`mail_line`]).
#[inline(never)]
pub(super) fn rcpt_line<'a>(
    args: Option<&'a [u8]>,
    text: &'a str,
    limits: &Limits,
    consumed: usize,
) -> Parsed<'a> {
    done(rcpt(args, text, limits), consumed)
}

/// `mail = "MAIL FROM:" Reverse-path [SP Mail-parameters] CRLF`
#[inline(always)]
pub(super) fn mail<'a>(
    args: Option<&'a [u8]>,
    text: &'a str,
    limits: &Limits,
) -> Result<Command<'a>, CommandErrorKind> {
    let a = args.ok_or(CommandErrorKind::Syntax(MAIL_HINT))?;
    let (p, _) = keyword(b"FROM:")(a).map_err(|_| CommandErrorKind::Syntax(MAIL_HINT))?;
    if p.is_empty() {
        return Err(CommandErrorKind::Syntax(MAIL_HINT));
    }
    let (rest, from) =
        address::reverse_path(p, text, limits).map_err(CommandErrorKind::BadSender)?;
    let params =
        after_path(rest).ok_or(CommandErrorKind::BadSender(address::AddressError::Syntax))?;
    let params = mail_parameters(params, text).map_err(CommandErrorKind::Parameter)?;
    Ok(Command::Mail { from, params })
}

/// `rcpt = "RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" / Forward-path )
/// [SP Rcpt-parameters] CRLF`
#[inline(always)]
pub(super) fn rcpt<'a>(
    args: Option<&'a [u8]>,
    text: &'a str,
    limits: &Limits,
) -> Result<Command<'a>, CommandErrorKind> {
    let a = args.ok_or(CommandErrorKind::Syntax(RCPT_HINT))?;
    let (p, _) = keyword(b"TO:")(a).map_err(|_| CommandErrorKind::Syntax(RCPT_HINT))?;
    if p.is_empty() {
        return Err(CommandErrorKind::Syntax(RCPT_HINT));
    }
    let (rest, to) =
        address::forward_path(p, text, limits).map_err(CommandErrorKind::BadRecipient)?;
    let params = after_path(rest).ok_or(CommandErrorKind::BadRecipient(
        address::AddressError::Syntax,
    ))?;
    let params = rcpt_parameters(params, text).map_err(CommandErrorKind::Parameter)?;
    Ok(Command::Rcpt { to, params })
}
