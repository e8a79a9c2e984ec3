//! Replays every file of `fuzz/corpus/command/` through the command parser, with the same
//! checks as the fuzz target, so a crash found once by fuzzing stays fixed.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use smtp_proto::command::{parse_command, Limits};

#[test]
fn command_corpus_replays_without_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/command");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let limits = Limits::default();
        // Walk the whole file as a pipelined stream, skipping refused lines.
        let mut rest = &data[..];
        while !rest.is_empty() {
            match parse_command(rest, &limits) {
                Ok(Some((cmd, used))) => {
                    let wire = cmd.to_string();
                    let roomy = Limits {
                        max_command_line: 1 << 16,
                        ..Limits::default()
                    };
                    assert_eq!(
                        parse_command(wire.as_bytes(), &roomy),
                        Ok(Some((cmd, wire.len()))),
                        "{}",
                        path.display()
                    );
                    rest = &rest[used..];
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(
                        e.consumed > 0 && e.consumed <= rest.len(),
                        "{}",
                        path.display()
                    );
                    rest = &rest[e.consumed..];
                }
            }
        }
        files += 1;
    }
    assert!(files >= 12, "expected the seed corpus in {}", dir.display());
}
