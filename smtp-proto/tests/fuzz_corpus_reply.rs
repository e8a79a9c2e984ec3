//! Replays `fuzz/corpus/reply` through the same checks as the `reply` fuzz target, so a crash
//! found once stays fixed.
#![allow(clippy::unwrap_used)]

use smtp_proto::reply::{parse_reply, ReplyErrorKind};

fn check(data: &[u8]) {
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
}

#[test]
fn replay_reply_corpus() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/reply");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        eprintln!("{}", path.display());
        check(&data);
        n += 1;
    }
    assert!(n >= 12, "only {n} corpus files in {dir}");
}
