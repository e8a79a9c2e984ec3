//! Fuzz target for the server session state machine (`smtp_proto::session::Session`).
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run session`. See `../drive_session.rs` for
//! the input format and the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../drive_session.rs");

fuzz_target!(|data: &[u8]| drive_session(data));
