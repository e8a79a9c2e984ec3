//! TODO

pub mod resolve;
pub use resolve::{AddressOrder, MxHost, ResolveError, Resolver};

#[cfg(feature = "test-dns")]
pub mod testdns;
