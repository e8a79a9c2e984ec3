//! Fuzz target for `smtp_proto::command::parse_command`.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run command` (the toolchain here is stable;
//! `RUSTC_BOOTSTRAP=1` lets it use the nightly-only sanitizer flags). Beyond not panicking,
//! it checks that a parsed command re-encodes to a line that parses to the same command, and
//! that an error always tells the caller to skip at least one byte and at most the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_proto::command::{parse_command, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    match parse_command(data, &limits) {
        Ok(Some((cmd, used))) => {
            assert!(used > 0 && used <= data.len());
            let wire = cmd.to_string();
            let roomy = Limits { max_command_line: 1 << 16, ..Limits::default() };
            let again = parse_command(wire.as_bytes(), &roomy);
            assert_eq!(again, Ok(Some((cmd, wire.len()))), "re-encoded: {wire:?}");
        }
        Ok(None) => assert!(data.len() < limits.max_command_line && !data.contains(&b'\n')),
        Err(e) => assert!(e.consumed > 0 && e.consumed <= data.len()),
    }
});
