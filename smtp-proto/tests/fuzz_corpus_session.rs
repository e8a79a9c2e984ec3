//! Replays every file of `fuzz/corpus/session/` through the session driver of the `session`
//! fuzz target, so a crash found once by fuzzing stays fixed.
#![allow(clippy::unwrap_used)]

use std::path::Path;

include!("../../fuzz/drive_session.rs");

#[test]
fn session_corpus_replays_without_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/session");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        drive_session(&std::fs::read(&path).unwrap());
        files += 1;
    }
    assert!(files >= 8, "expected the seed corpus in {}", dir.display());
}
