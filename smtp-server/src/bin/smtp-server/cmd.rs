//! The daemon's subcommands (`smtp-server <COMMAND>`), one module each; see
//! [`crate::config::Command`]. Each `run` returns the process's exit code: 0, or 2 with one
//! line on stderr, as the daemon does for a bad configuration.

pub mod dkim;
pub mod passwd;
