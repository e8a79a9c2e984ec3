//! Replays `fuzz/corpus/data` through the same checks as the `data` fuzz target, so a crash
//! found once stays fixed.
#![allow(clippy::unwrap_used)]

use smtp_proto::data::{encode_data, BareLineEnding, DataConfig, DataDecoder, DataStatus};

type Decoded = Option<(Vec<u8>, usize, bool)>;

fn decode(config: DataConfig, input: &[u8], step: usize) -> Decoded {
    let mut dec = DataDecoder::with_config(config);
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while start < input.len() {
        let len = if step == 0 {
            input.len()
        } else {
            1 + usize::from(input[i % input.len()]) % step
        };
        i += 1;
        let end = (start + len).min(input.len());
        match dec.decode(&input[start..end], &mut out) {
            DataStatus::NeedMore => start = end,
            DataStatus::End { consumed, result } => {
                assert!(consumed <= end - start);
                return Some((out, start + consumed, result.is_ok()));
            }
        }
    }
    None
}

/// Returns whether the input held a complete, accepted message.
fn check(data: &[u8]) -> bool {
    let Some((&sel, input)) = data.split_first() else {
        return false;
    };
    let config = DataConfig {
        bare_line_ending: if sel & 1 == 0 {
            BareLineEnding::Reject
        } else {
            BareLineEnding::Normalize
        },
        max_line_len: (sel & 2 != 0).then_some(78),
        max_size: None,
    };
    let whole = decode(config, input, 0);
    let chunked = decode(config, input, usize::from(sel >> 2) + 1);
    assert_eq!(whole, chunked);
    if let Some((body, _, true)) = whole {
        let mut wire = Vec::new();
        encode_data(&body, &mut wire);
        let plain = DataConfig {
            max_line_len: None,
            ..config
        };
        assert_eq!(decode(plain, &wire, 0), Some((body, wire.len(), true)));
        return true;
    }
    false
}

#[test]
fn replay_data_corpus() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/data");
    let (mut n, mut accepted) = (0, 0);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        eprintln!("{}", path.display());
        accepted += usize::from(check(&data));
        n += 1;
    }
    assert!(n >= 12, "only {n} corpus files in {dir}");
    // The seeds exercise both outcomes, so the round trip above really runs.
    assert!(accepted > 0 && accepted < n, "{accepted} of {n} accepted");
}
