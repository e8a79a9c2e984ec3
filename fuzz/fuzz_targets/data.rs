//! Fuzz target for the DATA decoder (`smtp_proto::data::DataDecoder`).
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run data` (the toolchain here is stable;
//! `RUSTC_BOOTSTRAP=1` lets cargo-fuzz use its nightly-only flags). The checks beyond "does not
//! panic" are in `../checks.rs`, shared with the corpus replay tests.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../checks.rs");

fuzz_target!(|data: &[u8]| {
    let _ = check_data(data);
});
