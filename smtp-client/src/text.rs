//! Peer text made safe for logs and bounces.
//!
//! A server's reply text is whatever the peer chose to send: besides CR and LF (which the
//! reply parser never lets into a line) it may hold NUL, ESC (terminal control sequences),
//! C1 controls, the Unicode line and paragraph separators, or bidirectional controls that make
//! a log line or a bounce read differently from what it says ("Trojan source"). This client
//! keeps the text as received in [`Reply`] values (callers that compare or relay replies need
//! the real text), and escapes it wherever it turns peer text into a message for people:
//! [`Failure::text`](crate::Failure::text), [`Attempt::error`](crate::Attempt::error), the
//! [`Display`](std::fmt::Display) of [`ClientError`](crate::ClientError) and of
//! [`DeliveryError`](crate::DeliveryError), and its own log lines.
//!
//! [`escape_controls`] is the rule, for any other text from the network; [`SafeReply`] shows a
//! reply on one line with it applied, e.g. for a queue's log line or a bounce's
//! `Diagnostic-Code`.
//!
//! # What is escaped
//!
//! Every character of Unicode category Cc (C0 controls `U+0000`–`U+001F`, DEL `U+007F`, C1
//! controls `U+0080`–`U+009F`, which include NEL `U+0085`), the line and paragraph separators
//! `U+2028` and `U+2029`, the bidirectional controls (`U+061C`, `U+200E`, `U+200F`,
//! `U+202A`–`U+202E`, `U+2066`–`U+2069`), and the invisible characters that make text read
//! as other text (soft hyphen, zero-width spaces and joiners, word joiners, BOM, interlinear
//! annotation, tags; see [`is_unsafe_char`]) and noncharacters. Tab, CR and LF become `\t`, `\r`, `\n`; every other
//! one becomes `\u{…}` with its code point in lower-case hex (`\u{1b}`, `\u{202e}`). Nothing else
//! changes, a backslash included: the result is for reading, not for unescaping.

use std::borrow::Cow;
use std::fmt;

use smtp_proto::reply::Reply;

/// Whether `c` must not reach a log or a bounce as it is (see the [module docs](self)): C0
/// and C1 controls and DEL, the line and paragraph separators, the bidirectional controls,
/// the other invisible format characters (soft hyphen, zero-width spaces and joiners, word
/// joiners, BOM, interlinear annotation, tags) and noncharacters. The one list the daemon's
/// logs and generated headers use too.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FDD0}'..='\u{FDEF}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        )
        || u32::from(c) & 0xFFFE == 0xFFFE
}

/// `text` with every control, separator and bidi character escaped (see the
/// [module docs](self)); borrowed unchanged when there is none.
///
/// ```
/// use smtp_client::text::escape_controls;
/// assert_eq!(escape_controls("550 no\x1b[31m user\u{202e}"), "550 no\\u{1b}[31m user\\u{202e}");
/// assert_eq!(escape_controls("line\r\nnext"), "line\\r\\nnext");
/// assert_eq!(escape_controls("plain text, ünïcode"), "plain text, ünïcode");
/// ```
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char) {
    use fmt::Write;
    match c {
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        '\n' => out.push_str("\\n"),
        c if is_unsafe_char(c) => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
        c => out.push(c),
    }
}

/// A reply shown on one line with its text escaped: the code, the enhanced code when there is
/// one, then the lines joined by a space, e.g. `452 4.5.3 Too many recipients try later`.
/// For logs and bounce diagnostics; [`Reply`]'s own `Display` is the wire form, raw.
///
/// ```
/// use smtp_client::text::SafeReply;
/// use smtp_proto::reply::{parse_reply, Reply};
/// let (reply, _) = parse_reply(b"550-5.1.1 no such\x07 user\r\n550 5.1.1 here\r\n")
///     .unwrap()
///     .unwrap();
/// assert_eq!(SafeReply(&reply).to_string(), "550 5.1.1 no such\\u{7} user here");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SafeReply<'a>(pub &'a Reply);

impl fmt::Display for SafeReply<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.code())?;
        if let Some(enhanced) = self.0.enhanced() {
            write!(f, " {enhanced}")?;
        }
        for line in self.0.lines() {
            if !line.is_empty() {
                write!(f, " {}", escape_controls(line))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes_each_class() {
        let cases = [
            ("a\0b", "a\\u{0}b"),
            ("bell\x07", "bell\\u{7}"),
            ("tab\there", "tab\\there"),
            ("del\x7f", "del\\u{7f}"),
            ("c1\u{80}\u{9f}", "c1\\u{80}\\u{9f}"),
            ("nel\u{85}", "nel\\u{85}"),
            ("ls\u{2028}ps\u{2029}", "ls\\u{2028}ps\\u{2029}"),
            (
                "rlo\u{202E}lri\u{2067}alm\u{61C}",
                "rlo\\u{202e}lri\\u{2067}alm\\u{61c}",
            ),
            ("lrm\u{200E}rlm\u{200F}", "lrm\\u{200e}rlm\\u{200f}"),
            (
                "zw\u{200B}sp\u{200D}j\u{FEFF}bom\u{2060}wj\u{AD}shy",
                "zw\\u{200b}sp\\u{200d}j\\u{feff}bom\\u{2060}wj\\u{ad}shy",
            ),
            ("back\\slash", "back\\slash"),
            ("\u{FFFD} replacement stays", "\u{FFFD} replacement stays"),
        ];
        for (input, expected) in cases {
            assert_eq!(escape_controls(input), expected, "{input:?}");
        }
        assert!(matches!(escape_controls("clean"), Cow::Borrowed(_)));
    }

    proptest! {
        #[test]
        fn output_never_holds_an_unsafe_char(s in any::<String>()) {
            let escaped = escape_controls(&s);
            prop_assert!(!escaped.chars().any(is_unsafe_char));
            // Escaping is idempotent: the output has nothing left to escape.
            prop_assert_eq!(escape_controls(&escaped), escaped.clone());
        }
    }
}
