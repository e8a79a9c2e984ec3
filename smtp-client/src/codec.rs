//! The wire format on the client side, without I/O: replies in, commands and message data out.
//!
//! [`ReplyCodec`] is a [`tokio_util::codec::Decoder`] over smtp-proto's incremental
//! [`parse_reply`]: an incomplete reply means "read more", a malformed one is a
//! [`ReplyError`] that carries the offending line. The connection keeps its own read buffer
//! (rather than a `Framed`) because STARTTLS has to look at, and drop, whatever is buffered
//! when the handshake starts.

use bytes::{Buf, BytesMut};
use smtp_proto::reply::{parse_reply, Reply, ReplyError};
use tokio_util::codec::Decoder;

/// Decodes SMTP replies (RFC 5321 §4.2) from a byte buffer.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplyCodec;

impl Decoder for ReplyCodec {
    type Item = Reply;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Reply>, CodecError> {
        match parse_reply(src)? {
            Some((reply, used)) => {
                src.advance(used);
                Ok(Some(reply))
            }
            None => Ok(None),
        }
    }
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
        let mut i = 0;
        if std::mem::take(&mut self.after_cr) && first == b'\n' {
            // The LF of a CRLF split across chunks: counted with its CR.
            i = 1;
        }
        while i < chunk.len() {
            match chunk[i] {
                b'\r' => {
                    self.size += 2;
                    self.ends_with_break = true;
                    match chunk.get(i + 1) {
                        Some(b'\n') => i += 1,
                        Some(_) => {}
                        None => self.after_cr = true,
                    }
                }
                b'\n' => {
                    self.size += 2;
                    self.ends_with_break = true;
                }
                _ => {
                    self.size += 1;
                    self.ends_with_break = false;
                }
            }
            i += 1;
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
        let mut codec = ReplyCodec;
        let first = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(first.code(), 250);
        assert_eq!(first.lines(), ["a", "b"]);
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
