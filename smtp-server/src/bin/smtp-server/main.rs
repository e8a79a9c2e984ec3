//! The `smtp-server` mail daemon (being written).

mod bounce;
mod config;
mod headers;
mod local;
mod policy;

use clap::Parser;

fn main() {
    let _cfg = config::Config::parse();
    eprintln!("smtp-server: the daemon is not built yet");
    std::process::exit(2);
}
