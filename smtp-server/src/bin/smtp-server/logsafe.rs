//! Log lines that text from the network cannot forge or garble.
//!
//! Addresses, EHLO names and next hops' replies reach the log through many fields, in the
//! daemon and in the libraries. Rather than trusting each of them to be escaped where it is
//! logged, every log line is escaped once, where it is written: [`SafeWriter`] wraps the log's
//! writer and replaces, in each formatted line, every character that could end the line early,
//! move the cursor, drive a terminal or reorder the text on screen:
//!
//! - C0 controls (NUL, CR, LF inside the line, ESC, ...) and DEL: `\x00`, `\r`, `\n`, `\t`,
//!   `\x1b`, `\x7f`;
//! - C1 controls (U+0080..U+009F, among them U+0085 NEXT LINE), the line and paragraph
//!   separators U+2028 and U+2029, the bidirectional controls (U+061C, U+200E, U+200F,
//!   U+202A..U+202E, U+2066..U+2069) and U+FEFF: `\u{2028}` and so on.
//!
//! The final newline of each line is kept. Everything else (printable UTF-8, SMTPUTF8
//! addresses included, and backslashes: the formatter's own `Debug` output has them) is written
//! as it is.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// True for a character that must not reach a log line (or a header) raw.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// Appends `s` to `out` with every unsafe character (see the module doc) escaped.
pub fn escape_into(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    for c in s.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && is_unsafe(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// `s` escaped (see [`escape_into`]).
#[cfg(test)]
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s);
    out
}

/// Escapes one formatted log line: everything but its final newline.
fn escape_line(buf: &[u8]) -> String {
    let text = String::from_utf8_lossy(buf);
    let (body, newline) = match text.strip_suffix('\n') {
        Some(b) => (b, true),
        None => (&*text, false),
    };
    let mut out = String::with_capacity(text.len() + 2);
    escape_into(&mut out, body);
    if newline {
        out.push('\n');
    }
    out
}

/// A [`MakeWriter`] that escapes each log line (see the module doc) before it reaches `W`.
///
/// The fmt layer writes each event with one `write_all` of the whole formatted line, so each
/// `write` call here is one line (or, if a writer upstream splits it, a part of one: then a
/// newline in the middle could be kept only at a part's end, which still ends no line early
/// since the fmt layer's line does end there).
pub struct SafeWriter<M>(pub M);

/// The writer [`SafeWriter`] makes.
pub struct SafeLine<W>(W);

impl<W: Write> Write for SafeLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(escape_line(buf).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for SafeWriter<M> {
    type Writer = SafeLine<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        SafeLine(self.0.make_writer())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_separators_and_bidi_are_escaped() {
        assert_eq!(
            escape("a\0b\x1b[31mc\r\nd\te\x7f\\"),
            "a\\x00b\\x1b[31mc\\r\\nd\\te\\x7f\\"
        );
        assert_eq!(
            escape("x\u{85}y\u{2028}z\u{2029}\u{202e}rtl\u{2066}\u{200f}\u{61c}\u{feff}"),
            "x\\u{0085}y\\u{2028}z\\u{2029}\\u{202e}rtl\\u{2066}\\u{200f}\\u{061c}\\u{feff}"
        );
        // Printable UTF-8 stays as it is.
        assert_eq!(escape("jörg@bücher.example Ω"), "jörg@bücher.example Ω");
        assert_eq!(escape_line(b"one\nline\n"), "one\\nline\n");
        assert_eq!(escape_line(b"no newline"), "no newline");
    }
}
