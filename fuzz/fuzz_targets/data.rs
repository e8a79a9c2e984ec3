//! DATA decoder: never panics, chunk boundaries do not change the result, and an accepted body
//! re-encoded with `encode_data` decodes to the same body.
//! Input: first byte picks the policy and the chunk pattern, the rest is the DATA stream.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run data` in `fuzz/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_proto::data::{encode_data, BareLineEnding, DataConfig, DataDecoder, DataStatus};

type Decoded = Option<(Vec<u8>, usize, bool)>;

fn decode(config: DataConfig, input: &[u8], step: usize) -> Decoded {
    let mut dec = DataDecoder::with_config(config);
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while start < input.len() {
        // Chunk lengths derived from the input itself: 1..=step.
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

fuzz_target!(|data: &[u8]| {
    let Some((&sel, input)) = data.split_first() else {
        return;
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
    }
});
