//! Sans-IO SMTP protocol core (crate docs are written as the modules land).
#![forbid(unsafe_code)]

pub mod address;
pub mod command;
pub mod data;
pub mod ehlo;
pub mod param;
pub mod reply;
