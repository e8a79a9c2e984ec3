//! The daemon's subcommands (`smtp-server <COMMAND>`), one module each; see
//! [`crate::config::Command`]. Each `run` returns the process's exit code: 0, or 2 with one
//! line on stderr, as the daemon does for a bad configuration (`queue` adds 1 for an unknown
//! entry and 75 for one being delivered: see `cmd::queue`).

pub mod dkim;
pub mod passwd;
pub mod queue;
