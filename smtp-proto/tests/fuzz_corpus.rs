//! Replays every file of `fuzz/corpus/<target>/` through the same checks as the fuzz targets
//! (`fuzz/checks.rs`), so a crash found once by fuzzing stays fixed: add the crashing input
//! to the corpus.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

include!("../../fuzz/checks.rs");

/// The corpus files of one target; at least `min` of them.
fn corpus(target: &str, min: usize) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            (path, data)
        })
        .collect();
    assert!(
        files.len() >= min,
        "expected the seed corpus in {}",
        dir.display()
    );
    files
}

#[test]
fn command_corpus() {
    for (path, data) in corpus("command", 12) {
        eprintln!("{}", path.display());
        check_command(&data);
    }
}

#[test]
fn reply_corpus() {
    for (path, data) in corpus("reply", 12) {
        eprintln!("{}", path.display());
        check_reply(&data);
    }
}

#[test]
fn data_corpus() {
    let files = corpus("data", 12);
    let n = files.len();
    let mut accepted = 0;
    for (path, data) in files {
        eprintln!("{}", path.display());
        accepted += usize::from(check_data(&data));
    }
    // The seeds exercise both outcomes, so the round trip really runs.
    assert!(accepted > 0 && accepted < n, "{accepted} of {n} accepted");
}

#[test]
fn session_corpus() {
    for (path, data) in corpus("session", 8) {
        eprintln!("{}", path.display());
        drive_session(&data);
    }
}

#[test]
fn auth_corpus() {
    for (path, data) in corpus("auth", 12) {
        eprintln!("{}", path.display());
        drive_auth(&data);
    }
}
