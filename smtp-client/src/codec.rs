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
    let mut size: u64 = 0;
    let mut i = 0;
    let mut ends_with_break = false;
    while i < message.len() {
        match message[i] {
            b'\r' => {
                size += 2;
                if message.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                ends_with_break = true;
            }
            b'\n' => {
                size += 2;
                ends_with_break = true;
            }
            _ => {
                size += 1;
                ends_with_break = false;
            }
        }
        i += 1;
    }
    if !message.is_empty() && !ends_with_break {
        size += 2;
    }
    size
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
    }
}
