//! Fuzz target for the server session state machine (`smtp_proto::session::Session`).
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run session` (the toolchain here is stable;
//! `RUSTC_BOOTSTRAP=1` lets cargo-fuzz use its nightly-only flags). The checks beyond "does not
//! panic" are in `../checks.rs`, shared with the corpus replay tests.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../checks.rs");

fuzz_target!(|data: &[u8]| {
    drive_session(data);
});
