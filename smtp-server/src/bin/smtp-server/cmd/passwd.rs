//! `smtp-server passwd USER [--scheme S]`: prints `user:{SCHEME}hash` for `--passwd-file`.
//!
//! The password comes from standard input: on a terminal it is asked twice with echo off;
//! otherwise the first line is the password (without its line end), so that
//! `read -rs PW; printf '%s\n' "$PW" | smtp-server passwd alice@example.org` works in scripts.
//! The user is printed in lower case (logins are compared in lower case, and Dovecot looks
//! up the lower-cased name exactly).

use std::io::{BufRead, Write};
use std::process::ExitCode;

use smtp_proto::sasl::{Secret, MAX_SECRET};

use crate::config::PasswdArgs;

/// Runs the subcommand.
pub fn run(args: &PasswdArgs) -> ExitCode {
    match line(args) {
        Ok(l) => {
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{l}").and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&format!("cannot write the line: {e}")),
            }
        }
        Err(e) => fail(&e),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("smtp-server passwd: {msg}");
    ExitCode::from(2)
}

fn line(args: &PasswdArgs) -> Result<String, String> {
    let user = crate::auth::canonical_login(&args.user).ok_or_else(|| {
        format!(
            "{:?}: not a usable login name (empty, over 255 octets, `:` or a control character)",
            args.user
        )
    })?;
    let password = read_password()?;
    if password.expose().is_empty() {
        return Err("empty password".into());
    }
    if password.expose().contains(&0) {
        return Err("the password contains a NUL byte, which SMTP AUTH cannot carry".into());
    }
    if password.expose().len() > MAX_SECRET {
        return Err(format!("password longer than {MAX_SECRET} bytes"));
    }
    let hash = args.scheme.hash(password.expose())?;
    Ok(format!("{user}:{hash}"))
}

/// The password from standard input (see the module doc).
fn read_password() -> Result<Secret, String> {
    let stdin = std::io::stdin();
    if rustix::termios::isatty(&stdin) {
        let first = prompt("Password: ")?;
        let again = prompt("Retype password: ")?;
        if first != again {
            return Err("the passwords do not match".into());
        }
        Ok(first)
    } else {
        let mut buf = Vec::new();
        // One byte over the limit is enough to refuse a too long password.
        let limit = (MAX_SECRET + 3) as u64;
        std::io::Read::take(stdin.lock(), limit)
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        Ok(Secret::new(strip_line_end(buf)))
    }
}

fn strip_line_end(mut buf: Vec<u8>) -> Vec<u8> {
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    buf
}

/// Prompts on stderr and reads one line from the terminal with echo off; the terminal's
/// settings are put back even when reading fails.
fn prompt(text: &str) -> Result<Secret, String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let stdin = std::io::stdin();
    eprint!("{text}");
    let saved = tcgetattr(&stdin).map_err(|e| format!("cannot read the terminal's mode: {e}"))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&stdin, OptionalActions::Flush, &quiet)
        .map_err(|e| format!("cannot turn off the terminal's echo: {e}"))?;
    let mut buf = Vec::new();
    let read = stdin.lock().read_until(b'\n', &mut buf);
    let restored = tcsetattr(&stdin, OptionalActions::Flush, &saved);
    read.map_err(|e| format!("cannot read the password: {e}"))?;
    restored.map_err(|e| format!("cannot restore the terminal's echo: {e}"))?;
    Ok(Secret::new(strip_line_end(buf)))
}
