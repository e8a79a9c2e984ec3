//! Sans-IO SMTP protocol core (crate docs are written as the modules land).
#![forbid(unsafe_code)]

pub mod address;
pub mod command;
pub mod data;
pub mod ehlo;
pub mod param;
pub mod reply;
pub mod session;

pub use data::{
    encode_data, BareLineEnding, DataConfig, DataDecoder, DataEncoder, DataError, DataStatus,
};
pub use ehlo::{parse_ehlo, Capability, EhloError, EhloReply};
pub use reply::{parse_reply, EnhancedCode, Reply, ReplyError, Severity};
