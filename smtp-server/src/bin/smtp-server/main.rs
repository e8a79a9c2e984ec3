//! The `smtp-server` mail daemon (being written).

fn main() {
    eprintln!("smtp-server: the daemon is not built yet");
    std::process::exit(2);
}
