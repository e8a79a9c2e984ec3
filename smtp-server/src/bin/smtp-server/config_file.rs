//! `--config FILE`: the daemon's options in a TOML file, under the long option names.
//!
//! ```toml
//! spool-dir = "/var/spool/mail"
//! domain = ["example.org", "example.net"]   # a repeatable option takes a list (or one value)
//! hostname = "mail.example.org"
//! no-public = false                         # a flag: true gives it, false leaves it out
//! max-message-size = 52428800
//! queue-lifetime = "5d"
//! ```
//!
//! How it works: the file's entries become command-line options placed before the real ones,
//! and the whole is parsed by the same clap definitions, so a value means in the file exactly
//! what it means on the command line (same checks, same error messages). An option given on
//! the command line overrides the file's entry of that name as a whole (a list is replaced,
//! not extended). A key that is not a long option of the daemon, a table, a value of the wrong
//! kind (a list for a single option, a boolean for an option that takes a value) are errors
//! naming the key and its line. `config` itself may not appear in the file. The annotated
//! example is `contrib/smtp-server.toml`; `smtp-server check-config --config FILE` checks a
//! file and prints the effective configuration.

use std::ffi::OsString;
use std::path::Path;

use clap::{ArgAction, CommandFactory};

use crate::config::Cli;

/// Where each effective option came from, for `check-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The configuration file.
    File,
    /// The command line.
    CommandLine,
    /// The built-in default.
    Default,
}

/// `argv` with the options of the `--config` file it names (if any) inserted before its own
/// options. `argv[0]` is the program; a leading `check-config` subcommand is kept in front.
///
/// # Errors
/// The file cannot be read or is not valid TOML, or an entry is not a daemon option or has a
/// value of the wrong kind: one line naming the file, the line and the key.
pub fn expand(argv: Vec<OsString>) -> Result<(Vec<OsString>, Vec<String>), String> {
    let Some(path) = config_path(&argv) else {
        return Ok((argv, Vec::new()));
    };
    // Subcommands other than check-config take no daemon options.
    let skip = match argv.get(1).and_then(|a| a.to_str()) {
        Some("check-config") => 2,
        Some(s) if !s.starts_with('-') => return Ok((argv, Vec::new())),
        _ => 1,
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("--config: {}: {e}", path.display()))?;
    let (file_args, keys) = to_args(&text, &path, &argv[skip..])?;
    let mut out: Vec<OsString> = argv[..skip].to_vec();
    out.extend(file_args);
    out.extend(argv[skip..].iter().cloned());
    Ok((out, keys))
}

/// The value of `--config FILE` / `--config=FILE` in `argv`.
fn config_path(argv: &[OsString]) -> Option<std::path::PathBuf> {
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_str()?;
        if s == "--" {
            return None;
        }
        if s == "--config" {
            return it.next().map(std::path::PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(v.into());
        }
    }
    None
}

/// Whether the command line `cli` gives option `long` (or its short form).
fn given(cli: &[OsString], long: &str, short: Option<char>) -> bool {
    cli.iter().filter_map(|a| a.to_str()).any(|a| {
        a == format!("--{long}")
            || a.starts_with(&format!("--{long}="))
            || short.is_some_and(|c| {
                a.len() >= 2 && a.starts_with('-') && !a.starts_with("--") && a[1..].starts_with(c)
            })
    })
}

/// The 1-based line where `key` is defined in `text` (for error messages), or 0.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let rest = l
                .strip_prefix(key)
                .or_else(|| l.strip_prefix(&format!("\"{key}\"")));
            rest.is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
}

fn to_args(
    text: &str,
    path: &Path,
    cli: &[OsString],
) -> Result<(Vec<OsString>, Vec<String>), String> {
    let origin = path.display();
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        match at {
            Some(line) => format!("--config: {origin}:{line}: {}", e.message()),
            None => format!("--config: {origin}: {}", e.message()),
        }
    })?;
    let cmd = Cli::command();
    let mut args = Vec::new();
    let mut keys = Vec::new();
    for (key, value) in &table {
        let err = |what: &str| format!("--config: {origin}:{}: {key}: {what}", line_of(text, key));
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && !a.is_hide_set())
        else {
            return Err(err("not an option of the daemon (see smtp-server --help)"));
        };
        if key == "config" || key == "help" || key == "version" {
            return Err(err("not allowed in a configuration file"));
        }
        if given(cli, key, arg.get_short()) {
            continue; // the command line overrides the file
        }
        let flag = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
        let many = matches!(arg.get_action(), ArgAction::Append);
        let scalar = |v: &toml::Value| -> Result<String, String> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                toml::Value::Boolean(_) => Err(err("a flag value where the option takes a value")),
                _ => Err(err("expected a string or a number")),
            }
        };
        match value {
            toml::Value::Boolean(b) if flag => {
                if *b {
                    args.push(OsString::from(format!("--{key}")));
                }
            }
            _ if flag => return Err(err("expected true or false")),
            toml::Value::Array(items) if many => {
                for v in items {
                    args.push(OsString::from(format!("--{key}={}", scalar(v)?)));
                }
            }
            toml::Value::Array(_) => return Err(err("a list where the option takes one value")),
            toml::Value::Table(_) => return Err(err("a table where an option value belongs")),
            v => args.push(OsString::from(format!("--{key}={}", scalar(v)?))),
        }
        keys.push(key.clone());
    }
    Ok((args, keys))
}

/// For `check-config`: every daemon option with its effective value and where it came from,
/// as TOML lines (a configuration file with exactly this content would give this
/// configuration).
pub fn effective(argv: &[OsString], from_file: &[String]) -> Result<String, String> {
    let cmd = Cli::command();
    let sub = cmd
        .find_subcommand("check-config")
        .ok_or("no check-config subcommand")?
        .clone();
    let matches = sub
        .clone()
        .try_get_matches_from(argv.iter().skip(1))
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    for arg in sub.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if arg.is_hide_set() || matches!(long, "config" | "help" | "version") {
            continue;
        }
        let id = arg.get_id().as_str();
        let source = if from_file.iter().any(|k| k == long) {
            Source::File
        } else {
            match matches.value_source(id) {
                Some(clap::parser::ValueSource::CommandLine) => Source::CommandLine,
                _ => Source::Default,
            }
        };
        let note = match source {
            Source::File => "# from the file",
            Source::CommandLine => "# from the command line",
            Source::Default => "# default",
        };
        let flag = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let value = if flag {
            matches.get_flag(id).to_string()
        } else if raw.is_empty() {
            out.push_str(&format!(
                "# {long}: not set (the daemon's default, see --help)\n"
            ));
            continue;
        } else if matches!(arg.get_action(), ArgAction::Append) {
            let items: Vec<String> = raw.iter().map(|v| toml_string(v)).collect();
            format!("[{}]", items.join(", "))
        } else {
            toml_string(&raw[0])
        };
        out.push_str(&format!("{long} = {value}  {note}\n"));
    }
    Ok(out)
}

/// A value as TOML: a plain decimal number as a number, anything else as a string (either
/// reads back the same, see [`expand`]).
fn toml_string(s: &str) -> String {
    let number = !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit());
    // (Not `0700`: TOML numbers have no leading zeros, and a mode is octal anyway.)
    if number && (s == "0" || !s.starts_with('0')) {
        return s.to_owned();
    }
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn args(text: &str, cli: &[&str]) -> Result<Vec<String>, String> {
        to_args(text, Path::new("f.toml"), &os(cli)).map(|(a, _)| {
            a.into_iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect()
        })
    }

    #[test]
    fn entries_become_options_and_the_command_line_wins() {
        let text = "spool-dir = \"/srv/mail\"\ndomain = [\"a.test\", \"b.test\"]\nno-public = true\nmax-recipients = 50\n";
        // In key order (the file's order does not matter: each option is given once).
        let a = args(text, &[]).unwrap();
        assert_eq!(
            a,
            [
                "--domain=a.test",
                "--domain=b.test",
                "--max-recipients=50",
                "--no-public",
                "--spool-dir=/srv/mail",
            ]
        );
        let a = args(text, &["-s", "c.test", "--max-recipients=9"]).unwrap();
        assert_eq!(a, ["--no-public", "--spool-dir=/srv/mail"]);
        assert_eq!(
            args("no-public = false\n", &[]).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let e = args("spool-dir = \"x\"\n\nspool_dir = \"y\"\n", &[]).unwrap_err();
        assert_eq!(
            e,
            "--config: f.toml:3: spool_dir: not an option of the daemon (see smtp-server --help)"
        );
        let e = args("hostname = [\"a\", \"b\"]\n", &[]).unwrap_err();
        assert!(e.contains(":1: hostname: a list"), "{e}");
        let e = args("no-public = \"yes\"\n", &[]).unwrap_err();
        assert!(e.contains("no-public: expected true or false"), "{e}");
        let e = args("hostname = true\n", &[]).unwrap_err();
        assert!(e.contains("hostname: a flag value"), "{e}");
        let e = args("config = \"other.toml\"\n", &[]).unwrap_err();
        assert!(e.contains("config: not allowed"), "{e}");
        let e = args("[listen]\nx = 1\n", &[]).unwrap_err();
        assert!(e.contains("listen: not an option"), "{e}");
        let e = args("hostname = \n", &[]).unwrap_err();
        assert!(e.starts_with("--config: f.toml:1: "), "{e}");
    }

    #[test]
    fn config_path_is_found_in_both_spellings() {
        assert_eq!(
            config_path(&os(&["x", "-d", "m", "--config", "c.toml"])),
            Some("c.toml".into())
        );
        assert_eq!(
            config_path(&os(&["x", "--config=c.toml"])),
            Some("c.toml".into())
        );
        assert_eq!(config_path(&os(&["x", "-d", "m"])), None);
    }
}
