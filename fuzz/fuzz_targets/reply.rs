//! Reply parser: never panics; whatever parses re-encodes to a reply that parses back equal.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run reply` in `fuzz/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_proto::reply::{parse_reply, ReplyErrorKind};

fuzz_target!(|data: &[u8]| {
    let Ok(Some((reply, consumed))) = parse_reply(data) else {
        return;
    };
    assert!(consumed > 0 && consumed <= data.len());
    let wire = reply.to_bytes();
    match parse_reply(&wire) {
        Ok(Some((again, n))) => {
            assert_eq!(n, wire.len());
            assert_eq!(again, reply);
        }
        // Re-encoding may grow a reply past the parser's bounds (the enhanced code repeated on
        // every line, U+FFFD for invalid UTF-8); anything else is a bug.
        Err(e)
            if matches!(
                e.kind(),
                ReplyErrorKind::LineTooLong | ReplyErrorKind::ReplyTooLong
            ) =>
        {
            assert!(wire.len() > consumed);
        }
        other => panic!("re-encoded reply {wire:?} parsed as {other:?}"),
    }
});
