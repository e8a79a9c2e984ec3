//! Fuzz target for the AUTH exchange of the session (`smtp_proto::session` with
//! `smtp_proto::sasl`): challenges, responses, cancels, bad base64, long lines.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run auth`. The checks are in `../checks.rs`
//! (`drive_auth`), shared with the corpus replay tests.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../checks.rs");

fuzz_target!(|data: &[u8]| {
    drive_auth(data);
});
