//! The fields of a text log line, as `key=value` pairs a script can split (logfmt).
//!
//! Each line is `TIME LEVEL span{fields}: target: message key=value key=value ...`. A value
//! is written as it is when it is one word; a value holding a space, `"`, `=` or `\`, or an
//! empty one, is written in double quotes with `"` and `\` escaped by a backslash:
//! `reply="250 2.0.0 Ok: queued as 1.2.3"`, `to=<bob@example.org>`. The message itself (the
//! words after the target) is not quoted. Control characters are escaped afterwards for the
//! whole line (see [`crate::logsafe`]), so a value cannot end its line either.
//!
//! `--log-format json` does not use this: there each field is a JSON string.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// The field formatter of text log lines (see the module doc).
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyValue;

impl<'w> FormatFields<'w> for KeyValue {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = Visitor {
            writer: &mut writer,
            result: Ok(()),
            first: true,
        };
        fields.record(&mut v);
        v.result
    }
}

struct Visitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    result: fmt::Result,
    first: bool,
}

impl Visitor<'_, '_> {
    fn write(&mut self, field: &Field, value: &str) {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let sep = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.result = if name == "message" {
            write!(self.writer, "{sep}{value}")
        } else {
            write!(self.writer, "{sep}{name}={}", Quoted(value))
        };
    }
}

impl Visit for Visitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &format!("{value:?}"));
    }
}

/// A value as logfmt writes it: bare when it is one word, else quoted.
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        let bare = !v.is_empty()
            && !v
                .chars()
                .any(|c| c == ' ' || c == '"' || c == '=' || c == '\\');
        if bare {
            return f.write_str(v);
        }
        f.write_str("\"")?;
        for c in v.chars() {
            if c == '"' || c == '\\' {
                f.write_str("\\")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("\"")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .fmt_fields(KeyValue)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn one_word_values_are_bare_others_quoted() {
        let reply = "250 2.0.0 Ok: queued as 1.2.3";
        let line = logged(|| {
            let span = tracing::info_span!("session", id = 7, peer = %"127.0.0.1:5000");
            let _g = span.enter();
            tracing::info!(queue_id = %"1.2.3", to = %"<bob@example.org>", reply = %reply,
                           empty = "", quote = %r#"say "hi" \o/"#, eq = %"a=b", n = 3,
                           "delivered to the next hop");
        });
        assert_eq!(
            line,
            " INFO session{id=7 peer=127.0.0.1:5000}: delivered to the next hop \
             queue_id=1.2.3 to=<bob@example.org> reply=\"250 2.0.0 Ok: queued as 1.2.3\" \
             empty=\"\" quote=\"say \\\"hi\\\" \\\\o/\" eq=\"a=b\" n=3\n"
        );
    }

    #[test]
    fn quoted_values_split_back() {
        // What a script does with a line: split at spaces outside quotes, unescape.
        fn split(s: &str) -> Vec<String> {
            let (mut out, mut cur, mut quoted, mut esc) = (Vec::new(), String::new(), false, false);
            for c in s.chars() {
                match (esc, quoted, c) {
                    (true, _, c) => {
                        cur.push(c);
                        esc = false;
                    }
                    (false, true, '\\') => esc = true,
                    (false, _, '"') => quoted = !quoted,
                    (false, false, ' ') => out.push(std::mem::take(&mut cur)),
                    (false, _, c) => cur.push(c),
                }
            }
            out.push(cur);
            out
        }
        for v in [
            "plain",
            "two words",
            "",
            "a\"b",
            "back\\slash",
            "k=v",
            " lead",
        ] {
            let text = format!("x={}", Quoted(v));
            assert_eq!(split(&text), [format!("x={v}")], "{text}");
        }
    }
}
