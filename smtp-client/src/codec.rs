//! The wire format on the client side, without I/O: replies in, commands and message data out.
//!
//! [`ReplyDecoder`] is a [`tokio_util::codec::Decoder`] over smtp-proto's [`parse_reply`]: an
//! incomplete reply means "read more", a malformed one is a [`ReplyError`] that carries the
//! offending line. The connection keeps its own read buffer (rather than a `Framed`) because
//! STARTTLS has to look at, and drop, whatever is buffered when the handshake starts.
//!
//! # Bounds on what a peer can make the client hold
//!
//! - **Reading.** A reply is refused (a [`ReplyError`], the connection is then unusable) as
//!   soon as a line exceeds [`MAX_REPLY_LINE_LEN`] octets, or the reply exceeds
//!   [`MAX_REPLY_LINES`] lines or [`MAX_REPLY_LEN`] octets: endless continuation lines end in
//!   an error after at most 64 KiB, not in unbounded memory. [`ReplyDecoder`] remembers how far
//!   it has checked the buffered continuation lines, so a reply trickling in byte by byte is
//!   scanned once (linear time), not re-parsed from its start on every read; the whole reply
//!   is parsed (and so validated, every line) once, when its last line is in.
//! - **Keeping.** What the client keeps of a reply for its results ([`bound_reply`]) is at most
//!   [`KEPT_REPLY_LINES`] lines and [`KEPT_REPLY_TEXT`] octets of text; a longer reply is cut
//!   and its last kept line ends with [`TRUNCATED_MARK`]. The rest is read and checked, then
//!   dropped, so the session stays in step. Results hold one reply per recipient, so a peer
//!   answering 1000 recipients with 900-line replies costs at most ~2 MiB, not ~60 MiB. The
//!   EHLO reply is the exception: it is parsed whole into the server's capabilities (one per
//!   connection, within the reading bounds above).
//!
//! [`MAX_REPLY_LINE_LEN`]: smtp_proto::reply::MAX_REPLY_LINE_LEN
//! [`MAX_REPLY_LINES`]: smtp_proto::reply::MAX_REPLY_LINES
//! [`MAX_REPLY_LEN`]: smtp_proto::reply::MAX_REPLY_LEN

use bytes::{Buf, BytesMut};
use smtp_proto::reply::{
    parse_reply, Reply, ReplyError, MAX_REPLY_LEN, MAX_REPLY_LINES, MAX_REPLY_LINE_LEN,
};
use tokio_util::codec::Decoder;

/// Most lines of a reply the client keeps (see [`bound_reply`]).
pub const KEPT_REPLY_LINES: usize = 10;

/// Most octets of reply text the client keeps, over all kept lines, codes not counted (see
/// [`bound_reply`]).
pub const KEPT_REPLY_TEXT: usize = 2048;

/// Appended to the last kept line of a reply that [`bound_reply`] cut.
pub const TRUNCATED_MARK: &str = " [...]";

/// Decodes SMTP replies (RFC 5321 §4.2) from a byte buffer, in linear time however the bytes
/// arrive (see the [module docs](self)).
///
/// It remembers how much of the buffer it has checked, so it must see every call for one
/// buffer, and [`reset`](Self::reset) when the buffer is cleared or replaced other than by its
/// own `decode`.
#[derive(Debug, Clone, Default)]
pub struct ReplyDecoder {
    /// Octets at the start of the buffer that are complete continuation lines (`ddd-...CRLF`)
    /// of the reply being read.
    scanned: usize,
    /// How many lines that is.
    lines: usize,
    /// The first line's code, once a line is complete.
    code: Option<[u8; 3]>,
}

impl ReplyDecoder {
    /// A decoder at the start of a reply.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets what was scanned (after the buffer was cleared).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Parses the buffer from its start with smtp-proto's parser, which validates every line.
    fn parse_whole(&mut self, src: &mut BytesMut) -> Result<Option<Reply>, CodecError> {
        match parse_reply(src) {
            Ok(Some((reply, used))) => {
                src.advance(used);
                self.reset();
                Ok(Some(reply))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.reset();
                Err(e.into())
            }
        }
    }

    /// Whether `line` (with its LF) is a continuation line this decoder can skip for now: a
    /// valid code, the same as the first line's, `-`, text without CR, CRLF.
    fn is_continuation(&self, line: &[u8]) -> bool {
        let Some(content) = line.strip_suffix(b"\n").and_then(|l| l.strip_suffix(b"\r")) else {
            return false;
        };
        content.len() >= 4
            && valid_code(&content[..3])
            && self.code_matches(&content[..3])
            && content[3] == b'-'
            && !content[4..].contains(&b'\r')
    }

    /// Whether `code` is the first line's code (or no line is complete yet).
    fn code_matches(&self, code: &[u8]) -> bool {
        match self.code {
            Some(first) => code == first,
            None => true,
        }
    }

    /// Whether an incomplete line can still become a valid one (smtp-proto's parser reports
    /// an invalid beginning at once, and so must this decoder).
    fn plausible_start(&self, partial: &[u8]) -> bool {
        let head = &partial[..partial.len().min(4)];
        let digits_ok = head.iter().take(3).enumerate().all(|(i, &b)| match i {
            0 => (b'2'..=b'5').contains(&b),
            1 => (b'0'..=b'5').contains(&b),
            _ => b.is_ascii_digit(),
        });
        let code_ok = head.len() < 3 || self.code_matches(&head[..3]);
        let sep_ok = matches!(head.get(3), None | Some(b'-' | b' ' | b'\r'));
        digits_ok && code_ok && sep_ok
    }
}

fn valid_code(code: &[u8]) -> bool {
    matches!(code, [a, b, c] if (b'2'..=b'5').contains(a) && (b'0'..=b'5').contains(b) && c.is_ascii_digit())
}

impl Decoder for ReplyDecoder {
    type Item = Reply;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Reply>, CodecError> {
        if self.scanned > src.len() {
            // The buffer was cleared behind our back.
            self.reset();
        }
        loop {
            let rest = &src[self.scanned..];
            let window = &rest[..rest.len().min(MAX_REPLY_LINE_LEN)];
            let Some(nl) = memchr_lf(window) else {
                if rest.len() >= MAX_REPLY_LINE_LEN || !self.plausible_start(rest) {
                    return self.parse_whole(src);
                }
                return Ok(None);
            };
            let line = &rest[..=nl];
            // As smtp-proto's parser: the line after MAX_REPLY_LINES, or one ending past
            // MAX_REPLY_LEN, makes the reply too long.
            let end = self.scanned + line.len();
            let within_bounds = self.lines < MAX_REPLY_LINES && end <= MAX_REPLY_LEN;
            if within_bounds && self.is_continuation(line) {
                if self.code.is_none() {
                    self.code = Some([line[0], line[1], line[2]]);
                }
                self.scanned = end;
                self.lines += 1;
                continue;
            }
            // The last line, a bad line, or a bound reached: the parser decides.
            return self.parse_whole(src);
        }
    }
}

fn memchr_lf(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// Decodes SMTP replies (RFC 5321 §4.2) from a byte buffer, without state: each call parses the
/// buffer from its start. Fine for a buffer that holds whole replies; for a socket's buffer use
/// [`ReplyDecoder`], which does not re-parse what it has already checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplyCodec;

impl Decoder for ReplyCodec {
    type Item = Reply;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Reply>, CodecError> {
        ReplyDecoder::new().parse_whole(src)
    }
}

/// What the client keeps of a reply: at most [`KEPT_REPLY_LINES`] lines and
/// [`KEPT_REPLY_TEXT`] octets of text (a line cut at a character boundary); when anything was
/// dropped, the last kept line ends with [`TRUNCATED_MARK`]. Code and enhanced code are kept.
/// A reply within the bounds is returned as it is.
pub fn bound_reply(reply: Reply) -> Reply {
    reply.truncated(KEPT_REPLY_LINES, KEPT_REPLY_TEXT, TRUNCATED_MARK)
}

/// A decoding failure: a malformed reply, or an I/O error (required by [`Decoder`]).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The server sent something that is not a reply; the error holds the raw line.
    #[error("malformed reply: {0}")]
    Malformed(#[from] ReplyError),
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Whether `message` has an octet above 127, so it needs `BODY=8BITMIME` (RFC 6152).
pub fn has_8bit(message: &[u8]) -> bool {
    !message.is_ascii()
}

/// The size of `message` as it is transmitted, without dot-stuffing and end marker: every bare
/// CR or LF counted as CRLF, and a final CRLF added when the message does not end with a line
/// break. This is the number the `SIZE=` parameter declares (RFC 1870 §3).
pub fn wire_size(message: &[u8]) -> u64 {
    let mut scan = MessageScan::new();
    scan.feed(message);
    scan.size()
}

/// [`wire_size`] and [`has_8bit`] over a message that arrives in chunks of any size (a file
/// read piece by piece): the result is the same as for the chunks joined.
#[derive(Debug, Clone, Default)]
pub struct MessageScan {
    size: u64,
    eight_bit: bool,
    after_cr: bool,
    ends_with_break: bool,
    empty: bool,
}

impl MessageScan {
    /// A scan at the start of a message.
    pub fn new() -> Self {
        Self {
            empty: true,
            ..Self::default()
        }
    }

    /// Takes the next chunk.
    pub fn feed(&mut self, chunk: &[u8]) {
        let Some(&first) = chunk.first() else {
            return;
        };
        self.empty = false;
        self.eight_bit |= !chunk.is_ascii();
        let mut rest = chunk;
        if std::mem::take(&mut self.after_cr) && first == b'\n' {
            // The LF of a CRLF split across chunks: counted with its CR.
            rest = &rest[1..];
        }
        // Line by line: the octets before each break count one each, the break (CRLF, or a
        // bare CR or LF, sent as CRLF) two.
        while let Some(at) = memchr::memchr2(b'\r', b'\n', rest) {
            self.size += at as u64 + 2;
            self.ends_with_break = true;
            let cr = rest[at] == b'\r';
            rest = &rest[at + 1..];
            if cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        if !rest.is_empty() {
            self.size += rest.len() as u64;
            self.ends_with_break = false;
        }
    }

    /// Whether an octet above 127 was seen.
    pub fn has_8bit(&self) -> bool {
        self.eight_bit
    }

    /// The wire size of everything fed so far, as [`wire_size`] counts it.
    pub fn size(&self) -> u64 {
        if self.empty || self.ends_with_break {
            self.size
        } else {
            self.size + 2
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use smtp_proto::data::normalize_line_endings;

    #[test]
    fn decodes_replies_one_by_one_and_waits_for_more() {
        let mut buf = BytesMut::from(&b"250-a\r\n250 b\r\n354 go\r\n55"[..]);
        let mut codec = ReplyDecoder::new();
        let first = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(first.code(), 250);
        assert_eq!(first.lines().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().code(), 354);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert_eq!(&buf[..], b"55");
    }

    #[test]
    fn malformed_reply_keeps_the_line() {
        let mut buf = BytesMut::from(&b"hello there\r\n"[..]);
        let err = ReplyCodec.decode(&mut buf).unwrap_err();
        assert!(err.to_string().contains("hello there"), "{err}");
    }

    /// Feeds `input` to a decoder `step` octets at a time: every reply, the first error's kind,
    /// and how much was left buffered.
    fn decode_in_steps(input: &[u8], step: usize) -> (Vec<Reply>, Option<String>, usize) {
        decode_in_steps_with(ReplyDecoder::new(), input, step)
    }

    fn decode_in_steps_with(
        mut decoder: impl Decoder<Item = Reply, Error = CodecError>,
        input: &[u8],
        step: usize,
    ) -> (Vec<Reply>, Option<String>, usize) {
        let mut buf = BytesMut::new();
        let mut replies = Vec::new();
        for chunk in input.chunks(step.max(1)) {
            buf.extend_from_slice(chunk);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(reply)) => replies.push(reply),
                    Ok(None) => break,
                    Err(CodecError::Malformed(e)) => {
                        return (replies, Some(e.kind().to_string()), buf.len())
                    }
                    Err(e) => return (replies, Some(e.to_string()), buf.len()),
                }
            }
        }
        (replies, None, buf.len())
    }

    #[test]
    fn a_900_line_reply_is_read_whole_and_kept_bounded() {
        let mut input = Vec::new();
        for i in 0..899 {
            input.extend_from_slice(format!("452-4.5.3 line {i} of a long refusal\r\n").as_bytes());
        }
        input.extend_from_slice(b"452 4.5.3 last\r\n250 2.1.5 next reply\r\n");
        for step in [1, 7, 4096, input.len()] {
            let (replies, error, left) = decode_in_steps(&input, step);
            assert_eq!(error, None);
            assert_eq!(left, 0);
            assert_eq!(replies.len(), 2, "step {step}");
            assert_eq!(replies[0].line_count(), 900);
            // The session stays in step: the next reply is read as the next reply.
            assert_eq!(replies[1].code(), 250);
            assert_eq!(replies[1].lines().collect::<Vec<_>>(), ["next reply"]);

            let kept = bound_reply(replies[0].clone());
            assert_eq!(kept.code(), 452);
            assert_eq!(kept.enhanced().unwrap().to_string(), "4.5.3");
            assert_eq!(kept.line_count(), KEPT_REPLY_LINES);
            assert_eq!(kept.lines().next().unwrap(), "line 0 of a long refusal");
            assert!(kept.lines().nth(9).unwrap().ends_with(TRUNCATED_MARK));
        }
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let line = "é".repeat(3000); // 6000 octets
        let reply = Reply::multiline(550, None, [line.as_str(), "second"]).unwrap();
        let kept = bound_reply(reply);
        assert_eq!(kept.line_count(), 1);
        let text = kept
            .lines()
            .next()
            .unwrap()
            .strip_suffix(TRUNCATED_MARK)
            .unwrap();
        assert_eq!(text.len(), KEPT_REPLY_TEXT);
        assert!(text.chars().all(|c| c == 'é'));
        let short = Reply::new(250, None, "ok").unwrap();
        assert_eq!(bound_reply(short.clone()), short);
    }

    #[test]
    fn endless_continuation_lines_end_in_an_error() {
        // A peer that never sends the last line: the decoder gives up after the reply bound,
        // having buffered no more than that.
        let line = b"250-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n";
        let input: Vec<u8> = line.iter().copied().cycle().take(200 * 1024).collect();
        for step in [1, 1000, 64 * 1024] {
            let (replies, error, left) = decode_in_steps(&input, step);
            assert!(replies.is_empty());
            let error = error.expect("an error");
            assert!(error.contains("reply too long"), "{error}");
            assert!(left <= MAX_REPLY_LEN + 64 * 1024, "{left}");
        }
        // Many short lines hit the line-count bound first.
        let input: Vec<u8> = b"250-\r\n".iter().copied().cycle().take(20_000).collect();
        let (_, error, _) = decode_in_steps(&input, 3);
        assert!(error.unwrap().contains("reply too long"));
        // One endless line.
        let input: Vec<u8> = b"250-".iter().copied().chain([b'x'; 10_000]).collect();
        let (_, error, _) = decode_in_steps(&input, 100);
        assert!(error.unwrap().contains("too long"));
    }

    #[test]
    fn bad_input_is_reported_at_once() {
        for input in [
            &b"hello"[..],
            b"250-ok\r\n251 other code\r\n",
            b"250-a\nb\r\n",
            b"2x",
        ] {
            let (_, error, _) = decode_in_steps(input, 1);
            assert!(error.is_some(), "{input:?}");
        }
        let (replies, error, _) = decode_in_steps(b"250-a\r\n25", 1);
        assert!(replies.is_empty() && error.is_none());
    }

    #[test]
    fn wire_size_examples() {
        let cases: &[(&[u8], u64)] = &[
            (b"", 0),
            (b"a", 3),
            (b"a\r\n", 3),
            (b"a\n", 3),
            (b"a\r", 3),
            (b"a\n\nb", 8),
            (b"\r\n\r\n", 4),
        ];
        for (input, expected) in cases {
            assert_eq!(wire_size(input), *expected, "{input:?}");
        }
    }

    proptest! {
        /// The incremental decoder, fed in any pieces, says what smtp-proto's parser says when
        /// it re-parses the buffer after every piece (the stateless `ReplyCodec`), reply by
        /// reply and error for error.
        #[test]
        fn decoder_in_pieces_matches_the_parser(
            lines in proptest::collection::vec(prop_oneof![
                Just(&b"250-a\r\n"[..]), Just(&b"250 b\r\n"[..]), Just(&b"250-2.1.0 c\r\n"[..]),
                Just(&b"452 4.5.3 d\r\n"[..]), Just(&b"452-e\r\n"[..]), Just(&b"354\r\n"[..]),
                Just(&b"250-x\ry\r\n"[..]), Just(&b"25"[..]), Just(&b"0 f\n"[..]), Just(&b"\r\n"[..]),
                Just(&b"999 bad\r\n"[..]),
            ], 0..12),
            step in 1usize..20,
        ) {
            let input: Vec<u8> = lines.concat();
            let expected = decode_in_steps_with(ReplyCodec, &input, step);
            prop_assert_eq!(decode_in_steps(&input, step), expected);
        }

        #[test]
        fn wire_size_matches_normalisation(body in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()], 0..200)) {
            prop_assert_eq!(wire_size(&body), normalize_line_endings(&body).len() as u64);
        }

        #[test]
        fn scan_in_chunks_matches_whole(body in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(0x80u8), b'a'..=b'c'], 0..200),
            cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..6)) {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
            cuts.sort_unstable();
            let mut scan = MessageScan::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([body.len()]) {
                scan.feed(&body[from..cut]);
                from = cut;
            }
            prop_assert_eq!(scan.size(), wire_size(&body));
            prop_assert_eq!(scan.size(), normalize_line_endings(&body).len() as u64);
            prop_assert_eq!(scan.has_8bit(), has_8bit(&body));
        }
    }
}
