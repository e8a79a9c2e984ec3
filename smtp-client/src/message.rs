//! The message to send: bytes in memory, or a file streamed from disk.
//!
//! A [`Message`] can be read any number of times ([`Deliverer`](crate::Deliverer) may try
//! several hosts), and a file body is never held in memory whole: it is read once to find its
//! size and whether it has 8-bit octets ([`Message::scan`]), then once per transaction in
//! chunks of 64 KiB, each dot-stuffed and written before the next is read.

use std::io;
use std::path::Path;

use crate::codec::MessageScan;

/// Octets read (and written) at a time.
pub(crate) const CHUNK: usize = 64 * 1024;

/// Where the message content comes from.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// Held in memory.
    Bytes(&'a [u8]),
    /// A file, read from the start each time the message is sent. It must not change while a
    /// send or a delivery using it runs (the size declared with `SIZE=` is measured first).
    File(&'a Path),
    /// The part of a file from an offset to its end (a queue file whose header comes
    /// first), read as [`Body::File`] is.
    FileFrom(&'a Path, u64),
}

/// A message: optional header lines sent before the body (a relay's `Received:` or
/// `Message-ID:`, so the stored body need not be copied to add them), then the body.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// Sent first, as if it were the body's beginning (typically whole header lines, CRLF
    /// ended); may be empty.
    pub prefix: &'a [u8],
    /// The rest.
    pub body: Body<'a>,
}

/// What MAIL needs to know about a message before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageInfo {
    /// The size on the wire, as [`wire_size`](crate::codec::wire_size) counts it (`SIZE=`).
    pub size: u64,
    /// Whether it has an octet above 127 (`BODY=8BITMIME`).
    pub eight_bit: bool,
}

impl<'a> Message<'a> {
    /// A message held in memory.
    pub fn bytes(message: &'a [u8]) -> Self {
        Self {
            prefix: b"",
            body: Body::Bytes(message),
        }
    }

    /// `prefix` followed by the content of the file at `path`.
    pub fn file(prefix: &'a [u8], path: &'a Path) -> Self {
        Self {
            prefix,
            body: Body::File(path),
        }
    }

    /// `prefix` followed by the content of the file at `path` from octet `offset` on.
    pub fn file_from(prefix: &'a [u8], path: &'a Path, offset: u64) -> Self {
        Self {
            prefix,
            body: Body::FileFrom(path, offset),
        }
    }

    /// Reads the message once (a file in 64 KiB chunks, on the blocking pool in one go) to
    /// measure its wire size and look for 8-bit octets. Dropping the future does not stop a
    /// file's reading, which runs to its end on the blocking pool.
    ///
    /// # Errors
    ///
    /// Opening or reading the file failed.
    pub async fn scan(&self) -> io::Result<MessageInfo> {
        let mut scan = MessageScan::new();
        scan.feed(self.prefix);
        let (path, offset) = match self.body {
            Body::Bytes(b) => {
                scan.feed(b);
                return Ok(info(&scan));
            }
            Body::File(path) => (path.to_path_buf(), 0),
            Body::FileFrom(path, offset) => (path.to_path_buf(), offset),
        };
        // One trip to the blocking pool for the whole file, not one per chunk.
        let scan = blocking(move || scan_file(scan, &path, offset)).await?;
        Ok(info(&scan))
    }
}

/// Opens the file at `path` for reading from octet `offset` on.
fn open_at(path: &Path, offset: u64) -> io::Result<std::fs::File> {
    use std::io::Seek;
    let mut file = std::fs::File::open(path)?;
    if offset > 0 {
        file.seek(io::SeekFrom::Start(offset))?;
    }
    Ok(file)
}

/// What [`Message::scan`] reports from a finished scan.
fn info(scan: &MessageScan) -> MessageInfo {
    MessageInfo {
        size: scan.size(),
        eight_bit: scan.has_8bit(),
    }
}

/// Feeds the file at `path` from octet `offset` on to `scan`, in chunks of [`CHUNK`] octets.
fn scan_file(mut scan: MessageScan, path: &Path, offset: u64) -> io::Result<MessageScan> {
    let (mut file, mut buf) = (Some(open_at(path, offset)?), Vec::new());
    while let Some(open) = file {
        buf.resize(CHUNK, 0);
        (file, buf) = fill(open, buf)?;
        scan.feed(&buf);
    }
    Ok(scan)
}

/// Reads a [`Message`] from its start in chunks of at most [`CHUNK`] octets.
///
/// A file is read on the blocking pool: opening it reads the first chunk in the same trip,
/// and a chunk that does not fill its buffer is known to be the last, so a message shorter
/// than a chunk costs one trip to the blocking pool (not one each to open, seek, read and
/// find the end).
pub(crate) struct MessageReader<'a> {
    prefix: &'a [u8],
    body: Source<'a>,
}

enum Source<'a> {
    Bytes(&'a [u8]),
    File {
        /// `None` once its end was read.
        file: Option<std::fs::File>,
        /// The chunk read ahead.
        buf: Vec<u8>,
        /// `buf` holds a chunk not handed out yet.
        fresh: bool,
    },
}

impl<'a> MessageReader<'a> {
    /// Opens the message (the file, for a file body, and reads its first chunk).
    pub(crate) async fn open(message: &Message<'a>) -> io::Result<Self> {
        let (path, offset) = match message.body {
            Body::Bytes(b) => {
                return Ok(Self {
                    prefix: message.prefix,
                    body: Source::Bytes(b),
                })
            }
            Body::File(path) => (path.to_path_buf(), 0),
            Body::FileFrom(path, offset) => (path.to_path_buf(), offset),
        };
        let (file, buf) = blocking(move || {
            let file = open_at(&path, offset)?;
            // Sized to what is left (and one more octet, to see the end), at most a chunk.
            let left = file.metadata()?.len().saturating_sub(offset);
            let size = usize::try_from(left.saturating_add(1)).map_or(CHUNK, |n| n.min(CHUNK));
            fill(file, vec![0; size])
        })
        .await?;
        Ok(Self {
            prefix: message.prefix,
            body: Source::File {
                file,
                buf,
                fresh: true,
            },
        })
    }

    /// The next chunk, or `None` at the end.
    pub(crate) async fn next(&mut self) -> io::Result<Option<&[u8]>> {
        if !self.prefix.is_empty() {
            let (chunk, rest) = self.prefix.split_at(self.prefix.len().min(CHUNK));
            self.prefix = rest;
            return Ok(Some(chunk));
        }
        match &mut self.body {
            Source::Bytes(b) => {
                let all: &'a [u8] = b;
                if all.is_empty() {
                    return Ok(None);
                }
                let (chunk, rest) = all.split_at(all.len().min(CHUNK));
                *b = rest;
                Ok(Some(chunk))
            }
            Source::File { file, buf, fresh } => {
                if !std::mem::take(fresh) {
                    let Some(open) = file.take() else {
                        return Ok(None);
                    };
                    let mut next = std::mem::take(buf);
                    next.resize(CHUNK, 0);
                    (*file, *buf) = blocking(move || fill(open, next)).await?;
                }
                Ok((!buf.is_empty()).then_some(&buf[..]))
            }
        }
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

/// Reads from `file` until `buf` is full or the file ends; returns the file (`None` if it
/// ended) and `buf` cut to what was read.
fn fill(mut file: std::fs::File, mut buf: Vec<u8>) -> io::Result<(Option<std::fs::File>, Vec<u8>)> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => {
                buf.truncate(n);
                return Ok((None, buf));
            }
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((Some(file), buf))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::codec::{has_8bit, wire_size};

    #[tokio::test]
    async fn file_and_prefix_read_as_the_bytes_joined() {
        let dir = std::env::temp_dir().join(format!("smtp-client-msg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("body");
        // Over two chunks, a CRLF split across the chunk boundary, an 8-bit octet at the end.
        let mut body = vec![b'a'; CHUNK - 1];
        body.extend_from_slice(b"\r\n.dot\nmore\xe9");
        std::fs::write(&path, &body).unwrap();
        let prefix = b"Message-ID: <x@y>\r\n";
        let message = Message::file(prefix, &path);

        let mut read = Vec::new();
        let mut reader = MessageReader::open(&message).await.unwrap();
        while let Some(chunk) = reader.next().await.unwrap() {
            assert!(chunk.len() <= CHUNK);
            read.extend_from_slice(chunk);
        }
        let mut joined = prefix.to_vec();
        joined.extend_from_slice(&body);
        assert_eq!(read, joined);
        let info = message.scan().await.unwrap();
        assert_eq!(
            info,
            MessageInfo {
                size: wire_size(&joined),
                eight_bit: has_8bit(&joined)
            }
        );
        assert!(info.eight_bit);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn file_from_an_offset() {
        let dir = std::env::temp_dir().join(format!("smtp-client-from-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("entry");
        std::fs::write(&path, b"header\nend\nSubject: s\r\n\r\nbody\r\n").unwrap();
        let message = Message::file_from(b"X: 1\r\n", &path, 11);
        let mut read = Vec::new();
        let mut reader = MessageReader::open(&message).await.unwrap();
        while let Some(chunk) = reader.next().await.unwrap() {
            read.extend_from_slice(chunk);
        }
        assert_eq!(read, b"X: 1\r\nSubject: s\r\n\r\nbody\r\n");
        // The scan starts at the offset too: the bare LFs before it are not counted.
        assert_eq!(
            message.scan().await.unwrap(),
            MessageInfo {
                size: wire_size(&read),
                eight_bit: false
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn files_of_every_size_around_a_chunk_read_whole() {
        let dir = std::env::temp_dir().join(format!("smtp-client-sizes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("body");
        for len in [
            0,
            1,
            2,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            2 * CHUNK,
            2 * CHUNK + 3,
        ] {
            let body: Vec<u8> = (0..len).map(|i| b"abc\r\n"[i % 5]).collect();
            std::fs::write(&path, &body).unwrap();
            for offset in [0, 1, 7] {
                let message = Message::file_from(b"P: 1\r\n", &path, offset as u64);
                let mut reader = MessageReader::open(&message).await.unwrap();
                let mut read = Vec::new();
                while let Some(chunk) = reader.next().await.unwrap() {
                    assert!(!chunk.is_empty() && chunk.len() <= CHUNK);
                    read.extend_from_slice(chunk);
                }
                assert!(reader.next().await.unwrap().is_none(), "stays at the end");
                let mut expected = b"P: 1\r\n".to_vec();
                expected.extend_from_slice(body.get(offset..).unwrap_or_default());
                assert_eq!(read, expected, "{len} octets from {offset}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn missing_file_is_an_error() {
        let message = Message::file(b"", Path::new("/nonexistent/smtp-client/body"));
        let err = message.scan().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
