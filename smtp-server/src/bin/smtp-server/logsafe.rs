//! Log lines that text from the network cannot forge or garble.
//!
//! Addresses, EHLO names and next hops' replies reach the log through many fields, in the
//! daemon and in the libraries. Rather than trusting each of them to be escaped where it is
//! logged, every log line is escaped once, where it is written: [`LogWriter`] is the log's
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
//! as it is. With `--log-format json` the same characters become JSON `\uXXXX` escapes, so each
//! line stays one valid JSON object.
//!
//! The fmt layer writes each event with one `write_all` of the whole formatted line, so each
//! `write` call is one line. `--log-file` is a [`LogFile`], reopened at its path on SIGHUP
//! (after logrotate moved it away); on stderr (and so in the journal under systemd) nothing
//! needs reopening.
//!
//! `--syslog [SOCKET]` sends each line as one datagram to the local syslog socket
//! (`/dev/log`: rsyslog's, or journald's, which files it in the journal with its priority),
//! in the form glibc's `syslog(3)` uses there: `<PRI>Mmm dd hh:mm:ss smtp-server[PID]: line`,
//! facility `mail` (so it lands in `/var/log/mail.log` with Debian's rsyslog rules), severity
//! from the event's level (error 3, warn 4, info 6, debug and trace 7). A line the socket
//! refuses (no syslog daemon, a full buffer) goes to stderr instead.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing_subscriber::fmt::MakeWriter;

/// True for a character that must not reach a log line (or a header) raw.
pub fn is_unsafe(c: char) -> bool {
    // One list for the client's texts, the logs and the headers.
    smtp_client::text::is_unsafe_char(c)
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

/// Escapes one JSON log line (`--log-format json`): the JSON formatter escapes C0 controls
/// itself; every other unsafe character becomes a JSON `\uXXXX` escape, so the line stays
/// valid JSON (such characters only occur inside strings: the structure is ASCII).
fn escape_json_line(buf: &[u8]) -> String {
    use std::fmt::Write as _;
    let text = String::from_utf8_lossy(buf);
    let (body, newline) = match text.strip_suffix('\n') {
        Some(b) => (b, true),
        None => (&*text, false),
    };
    let mut out = String::with_capacity(text.len() + 2);
    for c in body.chars() {
        if is_unsafe(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{:04x}", u);
            }
        } else {
            out.push(c);
        }
    }
    if newline {
        out.push('\n');
    }
    out
}

/// A log file that can be reopened at its path (after logrotate moved it away: SIGHUP).
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

/// Opens `path` for appending; a new file is made readable by its owner and group only
/// (0640, as syslog daemons make mail logs: addresses and subjects' traces are personal data).
fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

impl LogFile {
    /// Opens (creates, appends to) `path`.
    pub fn open(path: &Path) -> io::Result<Arc<LogFile>> {
        Ok(Arc::new(LogFile {
            path: path.to_path_buf(),
            file: Mutex::new(open_append(path)?),
        }))
    }

    /// Opens the path again and writes there from now on; on failure the old file stays.
    pub fn reopen(&self) -> io::Result<()> {
        let new = open_append(&self.path)?;
        *self.lock() = new;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, File> {
        self.file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Where the log goes, and in which form, for [`LogWriter`].
#[derive(Debug, Clone)]
pub enum Target {
    /// Standard error (under systemd: the journal).
    Stderr,
    /// `--log-file`.
    File(Arc<LogFile>),
    /// `--syslog`.
    Syslog(Arc<Syslog>),
}

/// The local syslog socket (`--syslog`).
#[derive(Debug)]
pub struct Syslog {
    socket: std::os::unix::net::UnixDatagram,
    pid: u32,
}

/// Syslog's `mail` facility (RFC 5424 §6.2.1: 2), times 8.
const FACILITY_MAIL: u8 = 2 << 3;

impl Syslog {
    /// Connects to the syslog socket at `path` (usually `/dev/log`).
    pub fn open(path: &Path) -> io::Result<Arc<Syslog>> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        socket.connect(path)?;
        Ok(Arc::new(Syslog {
            socket,
            pid: std::process::id(),
        }))
    }

    /// One datagram for `line` (escaped, without its newline) at `level`.
    fn send(&self, level: tracing::Level, line: &str) -> io::Result<()> {
        let severity = match level {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        let stamp =
            time::OffsetDateTime::now_local().unwrap_or_else(|_| time::OffsetDateTime::now_utc());
        let format = time::macros::format_description!(
            "[month repr:short] [day padding:space] [hour]:[minute]:[second]"
        );
        let stamp = stamp.format(&format).unwrap_or_default();
        let datagram = format!(
            "<{}>{stamp} smtp-server[{}]: {}",
            FACILITY_MAIL | severity,
            self.pid,
            // Without a time stamp the formatter begins with the padded level (" INFO").
            line.trim_start()
        );
        self.socket.send(datagram.as_bytes()).map(|_| ())
    }
}

/// The daemon's log writer: each line escaped for its format (text, or JSON-safe), written
/// to stderr or to a reopenable file.
#[derive(Debug, Clone)]
pub struct LogWriter {
    /// Where.
    pub target: Target,
    /// Lines are JSON objects (`--log-format json`).
    pub json: bool,
}

/// One line's writer from [`LogWriter`].
pub struct LogLine<'a> {
    out: LogOut<'a>,
    json: bool,
}

enum LogOut<'a> {
    Stderr(io::Stderr),
    File(MutexGuard<'a, File>),
    Syslog(&'a Syslog, tracing::Level),
}

impl Write for LogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let line = if self.json {
            escape_json_line(buf)
        } else {
            escape_line(buf)
        };
        match &mut self.out {
            LogOut::Stderr(e) => e.write_all(line.as_bytes())?,
            LogOut::File(f) => f.write_all(line.as_bytes())?,
            LogOut::Syslog(s, level) => {
                if s.send(*level, line.trim_end_matches('\n')).is_err() {
                    io::stderr().write_all(line.as_bytes())?;
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.out {
            LogOut::Stderr(e) => e.flush(),
            LogOut::File(f) => f.flush(),
            LogOut::Syslog(..) => Ok(()),
        }
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        self.line(tracing::Level::INFO)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        self.line(*meta.level())
    }
}

impl LogWriter {
    /// The writer of one line at `level` (the syslog severity).
    fn line(&self, level: tracing::Level) -> LogLine<'_> {
        let out = match &self.target {
            Target::Stderr => LogOut::Stderr(io::stderr()),
            Target::File(f) => LogOut::File(f.lock()),
            Target::Syslog(s) => LogOut::Syslog(s, level),
        };
        LogLine {
            out,
            json: self.json,
        }
    }
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

    #[test]
    fn json_lines_stay_json() {
        let line = "{\"msg\":\"a\u{202e}b\u{85}c\u{feff}\\u0007\"}\n";
        let out = escape_json_line(line.as_bytes());
        assert_eq!(out, "{\"msg\":\"a\\u202eb\\u0085c\\ufeff\\u0007\"}\n");
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap_or_default();
        assert_eq!(v["msg"], "a\u{202e}b\u{85}c\u{feff}\u{7}");
    }
}
