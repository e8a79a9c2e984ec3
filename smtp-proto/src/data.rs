//! The DATA section codec (RFC 5321 §4.5.2 transparency, §4.1.1.4 end of data).
//!
//! [`DataDecoder`] (server side) takes the bytes after the `354` reply in chunks of any size,
//! removes dot-stuffing, appends the message to a caller's buffer and stops exactly after the
//! end marker `CRLF . CRLF`, leaving any pipelined bytes behind it unconsumed.
//! [`DataEncoder`] / [`encode_data`] (client side) does the inverse.
//!
//! # Rules
//!
//! - The message starts as if preceded by CRLF: a first line of `.` ends an empty message.
//! - Only `CRLF . CRLF` ends the message, wherever chunk boundaries fall. Bare LF and bare CR
//!   never end it (`LF . LF`, `CRLF . LF`, `LF . CRLF`, `CR . CR` are message content): this is
//!   the 2023 "SMTP smuggling" defence.
//! - A line starting with `.` loses that dot. Only a line started by CRLF counts; after a bare
//!   LF or CR a dot is kept as is.
//! - [`BareLineEnding::Reject`] (default): the decoder reads on to the real end marker and then
//!   reports [`DataError::BareLineEnding`], which the server answers with
//!   `550 5.5.2` as Postfix does ([`DataError::reply`]). [`BareLineEnding::Normalize`] turns each
//!   bare LF and bare CR into CRLF instead, so the stored message never holds one.
//! - Lines over [`DataConfig::max_line_len`] octets (counted on the wire, CRLF included; 1000 by
//!   default as RFC 5321 §4.5.3.1.6 says) are reported at the end ([`DataError::LineTooLong`]).
//! - Once the decoded size passes [`DataConfig::max_size`], nothing more is appended to the
//!   output (it holds exactly the first `max_size` octets); the decoder still reads to the end
//!   marker, then reports [`DataError::SizeExceeded`].
//!
//! Scanning uses `memchr` to jump from one CR/LF to the next and copies whole runs of lines at
//! once, so the common case costs one search per line and one copy per chunk.

use crate::reply::Reply;

/// What to do with a bare LF or a bare CR (one not part of a CRLF pair) in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum BareLineEnding {
    /// Read to the end marker, then refuse the message with [`DataError::BareLineEnding`].
    #[default]
    Reject,
    /// Replace each bare LF and bare CR with CRLF.
    Normalize,
}

/// Limits and policies of a [`DataDecoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct DataConfig {
    /// Policy for bare CR and bare LF.
    pub bare_line_ending: BareLineEnding,
    /// Longest allowed text line in octets including CRLF (on the wire, so a stuffed dot
    /// counts); `None` for no check.
    pub max_line_len: Option<usize>,
    /// Largest allowed message in octets after removing dot-stuffing; `None` for no limit.
    pub max_size: Option<u64>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl DataConfig {
    /// The defaults: bare line endings refused, text lines of at most 1000 octets (RFC 5321
    /// §4.5.3.1.6), no size limit. A `const fn`, as are the `with_` setters, so a
    /// configuration can be a constant.
    pub const fn new() -> Self {
        Self {
            bare_line_ending: BareLineEnding::Reject,
            max_line_len: Some(1000),
            max_size: None,
        }
    }

    /// Sets [`DataConfig::bare_line_ending`].
    #[must_use]
    pub const fn with_bare_line_ending(mut self, policy: BareLineEnding) -> Self {
        self.bare_line_ending = policy;
        self
    }

    /// Sets [`DataConfig::max_line_len`].
    #[must_use]
    pub const fn with_max_line_len(mut self, max: Option<usize>) -> Self {
        self.max_line_len = max;
        self
    }

    /// Sets [`DataConfig::max_size`].
    #[must_use]
    pub const fn with_max_size(mut self, max: Option<u64>) -> Self {
        self.max_size = max;
        self
    }
}

/// Why a message that reached its end marker is refused. Several problems may occur in one
/// message: the first of size, bare line ending, long line is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The message is larger than [`DataConfig::max_size`]; the output holds only its first
    /// `max` octets.
    #[error("message size exceeds the limit of {max} octets")]
    SizeExceeded {
        /// The configured limit.
        max: u64,
    },
    /// The message contains a bare LF or bare CR (policy [`BareLineEnding::Reject`]).
    #[error("message contains a bare CR or LF")]
    BareLineEnding,
    /// A text line is longer than [`DataConfig::max_line_len`].
    #[error("message contains a line longer than {max} octets")]
    LineTooLong {
        /// The configured limit.
        max: usize,
    },
}

impl DataError {
    /// The reply a server sends after the end marker: `552 5.3.4` for size (RFC 1870),
    /// `550 5.5.2` for bare line endings (as Postfix answers), `550 5.6.0` for long lines.
    pub fn reply(&self) -> Reply {
        let (code, enhanced, text) = match self {
            Self::SizeExceeded { .. } => (552, (5, 3, 4), self.to_string()),
            Self::BareLineEnding => (
                550,
                (5, 5, 2),
                "Message contains bare CR or LF; lines must end with CRLF".to_owned(),
            ),
            Self::LineTooLong { .. } => (550, (5, 6, 0), self.to_string()),
        };
        let enhanced = crate::reply::EnhancedCode::new(enhanced.0, enhanced.1, enhanced.2);
        Reply::known(code, enhanced, text)
    }
}

/// The result of one [`DataDecoder::decode`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum DataStatus {
    /// All input was consumed and the end marker has not been seen yet: feed more.
    NeedMore,
    /// The end marker ends `consumed` octets into this input; the rest of the input belongs to
    /// the next command. `result` says whether the message may be accepted.
    End {
        /// Octets of this input that belonged to the message (marker included).
        consumed: usize,
        /// `Ok` when the message may be accepted; the refusal otherwise.
        result: Result<(), DataError>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Just after CRLF (or at the start): a `.` here is special.
    LineStart,
    /// After CRLF `.` (the dot is dropped).
    Dot,
    /// After CRLF `.` CR; the CR is held back.
    DotCr,
    /// Inside a line.
    Text,
    /// After a CR that ended the previous chunk; the CR is held back.
    Cr,
    /// The end marker was seen.
    Done,
}

/// Streaming decoder for one DATA section; see the module docs for the rules.
///
/// ```
/// use smtp_proto::data::{DataDecoder, DataStatus};
/// let mut dec = DataDecoder::new();
/// let mut body = Vec::new();
/// assert_eq!(dec.decode(b"Subject: hi\r\n\r\n..dot\r\n.", &mut body), DataStatus::NeedMore);
/// let status = dec.decode(b"\r\nQUIT\r\n", &mut body);
/// assert_eq!(status, DataStatus::End { consumed: 2, result: Ok(()) });
/// assert_eq!(body, b"Subject: hi\r\n\r\n.dot\r\n");
/// ```
#[derive(Debug, Clone)]
pub struct DataDecoder {
    config: DataConfig,
    state: State,
    /// Wire octets of the current line so far.
    line_len: usize,
    /// Decoded octets so far (also those not stored after the size limit).
    size: u64,
    bare: bool,
    long_line: bool,
    oversize: bool,
}

impl Default for DataDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl DataDecoder {
    /// A decoder with [`DataConfig::default`].
    pub fn new() -> Self {
        Self::with_config(DataConfig::default())
    }

    /// A decoder with the given limits and policies.
    pub fn with_config(config: DataConfig) -> Self {
        Self {
            config,
            state: State::LineStart,
            line_len: 0,
            size: 0,
            bare: false,
            long_line: false,
            oversize: false,
        }
    }

    /// Decoded message octets seen so far, including any not stored past the size limit.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the end marker has been reached.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The verdict on the message so far (final once [`DataDecoder::is_done`]).
    ///
    /// # Errors
    /// The first problem seen, of size, bare line ending and long line (see [`DataError`]).
    pub fn result(&self) -> Result<(), DataError> {
        if self.oversize {
            Err(DataError::SizeExceeded {
                max: self.config.max_size.unwrap_or(u64::MAX),
            })
        } else if self.bare {
            Err(DataError::BareLineEnding)
        } else if self.long_line {
            Err(DataError::LineTooLong {
                max: self.config.max_line_len.unwrap_or(usize::MAX),
            })
        } else {
            Ok(())
        }
    }

    /// Resets the decoder for the next message, keeping its configuration.
    pub fn reset(&mut self) {
        *self = Self::with_config(self.config);
    }

    /// Decodes the next chunk, appending message octets to `out`.
    ///
    /// Returns [`DataStatus::NeedMore`] when the whole chunk was consumed, or
    /// [`DataStatus::End`] with the number of octets up to and including the end marker. Once
    /// done, further calls consume nothing and return `End` again.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> DataStatus {
        let mut i = 0;
        // input[span..i] is decoded text not yet copied to `out`.
        let mut span = 0;
        while i < input.len() {
            match self.state {
                State::Text => {
                    let Some(off) = memchr::memchr2(b'\r', b'\n', &input[i..]) else {
                        self.line_len += input.len() - i;
                        i = input.len();
                        break;
                    };
                    let p = i + off;
                    self.line_len += off;
                    if input[p] == b'\n' {
                        // LF without CR before it (a CR before it would have been seen).
                        self.end_line(1);
                        self.bare_ending(input, &mut span, p, out);
                        i = p + 1;
                    } else if p + 1 == input.len() {
                        self.emit(&input[span..p], out);
                        span = input.len();
                        i = input.len();
                        self.state = State::Cr;
                    } else if input[p + 1] == b'\n' {
                        self.end_line(2);
                        i = p + 2;
                        self.state = State::LineStart;
                    } else {
                        self.end_line(1);
                        self.bare_ending(input, &mut span, p, out);
                        i = p + 1;
                    }
                }
                State::LineStart => {
                    if input[i] == b'.' {
                        self.emit(&input[span..i], out);
                        self.line_len = 1;
                        i += 1;
                        span = i;
                        self.state = State::Dot;
                    } else {
                        self.state = State::Text;
                    }
                }
                State::Dot => {
                    if input[i] == b'\r' {
                        i += 1;
                        span = i;
                        self.state = State::DotCr;
                    } else {
                        self.state = State::Text;
                    }
                }
                State::DotCr => {
                    if input[i] == b'\n' {
                        i += 1;
                        self.state = State::Done;
                        self.line_len = 0;
                        return DataStatus::End {
                            consumed: i,
                            result: self.result(),
                        };
                    }
                    // `.` CR x: the dot was stuffing, the CR is bare.
                    self.end_line(1);
                    self.held_bare_cr(out);
                    self.state = State::Text;
                }
                State::Cr => {
                    if input[i] == b'\n' {
                        self.end_line(2);
                        self.emit(b"\r\n", out);
                        i += 1;
                        span = i;
                        self.state = State::LineStart;
                    } else {
                        self.end_line(1);
                        self.held_bare_cr(out);
                        self.state = State::Text;
                    }
                }
                State::Done => {
                    return DataStatus::End {
                        consumed: 0,
                        result: self.result(),
                    }
                }
            }
        }
        self.emit(&input[span..i], out);
        if self.state == State::Done {
            DataStatus::End {
                consumed: 0,
                result: self.result(),
            }
        } else {
            DataStatus::NeedMore
        }
    }

    /// Ends the current line, `term` being the octets of its line ending.
    #[inline]
    fn end_line(&mut self, term: usize) {
        if let Some(max) = self.config.max_line_len {
            if self.line_len + term > max {
                self.long_line = true;
            }
        }
        self.line_len = 0;
    }

    /// A bare CR or LF at `input[p]`, inside the pending span.
    fn bare_ending(&mut self, input: &[u8], span: &mut usize, p: usize, out: &mut Vec<u8>) {
        match self.config.bare_line_ending {
            // The message will be refused: keep the octet in the span as it is.
            BareLineEnding::Reject => self.bare = true,
            BareLineEnding::Normalize => {
                self.emit(&input[*span..p], out);
                self.emit(b"\r\n", out);
                *span = p + 1;
            }
        }
    }

    /// A bare CR that was held back across a chunk boundary or after a dot.
    fn held_bare_cr(&mut self, out: &mut Vec<u8>) {
        match self.config.bare_line_ending {
            BareLineEnding::Reject => {
                self.bare = true;
                self.emit(b"\r", out);
            }
            BareLineEnding::Normalize => self.emit(b"\r\n", out),
        }
    }

    #[inline]
    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let before = self.size;
        self.size = before.saturating_add(bytes.len() as u64);
        match self.config.max_size {
            Some(max) if self.size > max => {
                // Store exactly the first `max` octets, whatever the chunking was.
                self.oversize = true;
                let room = usize::try_from(max.saturating_sub(before)).unwrap_or(usize::MAX);
                out.extend_from_slice(&bytes[..room.min(bytes.len())]);
            }
            _ => out.extend_from_slice(bytes),
        }
    }
}

/// Streaming encoder for the client side: dot-stuffs lines starting with `.`, turns bare LF and
/// bare CR into CRLF, and [`DataEncoder::finish`] ends the body with CRLF (if it does not end
/// with a line break already) and the end marker `.` CRLF.
#[derive(Debug, Clone)]
pub struct DataEncoder {
    at_line_start: bool,
    after_cr: bool,
}

impl Default for DataEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl DataEncoder {
    /// An encoder at the start of a message.
    pub fn new() -> Self {
        Self {
            at_line_start: true,
            after_cr: false,
        }
    }

    /// Encodes the next chunk of the message body.
    pub fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        out.reserve(chunk.len() + chunk.len() / 64 + 4);
        let Some(&first) = chunk.first() else {
            return;
        };
        let mut i = 0;
        if std::mem::take(&mut self.after_cr) && first == b'\n' {
            // The LF of a CRLF split across chunks: already written.
            i = 1;
        }
        while i < chunk.len() {
            if self.at_line_start && chunk[i] == b'.' {
                out.push(b'.');
            }
            self.at_line_start = false;
            let Some(off) = memchr::memchr2(b'\r', b'\n', &chunk[i..]) else {
                out.extend_from_slice(&chunk[i..]);
                return;
            };
            let p = i + off;
            out.extend_from_slice(&chunk[i..p]);
            out.extend_from_slice(b"\r\n");
            self.at_line_start = true;
            i = p + 1;
            if chunk[p] == b'\r' {
                match chunk.get(i) {
                    Some(b'\n') => i += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
    }

    /// Ends the body: CRLF if the last line is unterminated, then `.` CRLF.
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// Encodes a whole message body for the DATA section, end marker included.
pub fn encode_data(body: &[u8], out: &mut Vec<u8>) {
    let mut enc = DataEncoder::new();
    enc.encode(body, out);
    enc.finish(out);
}

/// The body as [`encode_data`] and a [`BareLineEnding::Normalize`] decoder see it: every bare
/// LF and bare CR becomes CRLF and a non-empty body ends with CRLF.
pub fn normalize_line_endings(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if body.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}
