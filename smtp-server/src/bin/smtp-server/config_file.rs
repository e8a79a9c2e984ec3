//! `--config FILE`: the daemon's options in a TOML file, under the long option names.
//!
//! ```toml
//! spool-dir = "/var/spool/mail"
//! domain = ["example.org", "example.net"]   # a repeatable option takes a list (or one value)
//! hostname = "mail.example.org"
//! no-public = false                         # a flag: true gives it, false leaves it out
//! syslog = true                             # an optional value: true gives it without one
//! max-message-size = 52428800
//! queue-lifetime = "5d"
//! mailbox-mode = 0o2770                     # a mode: a string of octal digits or 0o...
//! ```
//!
//! How it works: the file is checked entry by entry ([`load`]): each key must be a long
//! option of the daemon, each value of the right kind, and each value is parsed by that
//! option's own clap value parser, so a value means in the file exactly what it means on the
//! command line; any problem is one line `FILE:LINE: KEY: what is wrong`. Two entries that
//! cannot be used together are an error naming both. The checked entries become command-line
//! options placed before the real ones ([`expand`]).
//!
//! The command line wins: an option given there replaces the file's entry of that name as a
//! whole (a list is replaced, not extended), and also drops the file's entries it cannot be
//! used with (`--auth-dovecot` drops a `passwd-file`, `--syslog` a `log-file`, `--spf-reject`
//! a `no-email-auth`). A flag the file sets is turned off with `--FLAG=false` (`--FLAG=true`
//! is `--FLAG`), which works without a file too. `check-config` shows each value's source and
//! the dropped entries ([`effective`]). The annotated example is `contrib/smtp-server.toml`.

use std::ffi::OsString;
use std::path::Path;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, ArgAction, CommandFactory, FromArgMatches};
use toml::de::{DeTable, DeValue};

use crate::config::{Cli, Config};

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

/// One checked entry of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key: a long option of the daemon.
    pub key: String,
    /// Its 1-based line.
    pub line: usize,
    /// The values as command-line text: one for a single option, each item of a list, none
    /// for a flag or for `true` of an optional-value option.
    pub values: Vec<String>,
    /// Whether the option is given at all (`false` of a flag is not).
    pub given: bool,
    /// Given without a value (`true` of a flag or of an optional-value option).
    pub bare: bool,
}

impl Entry {
    /// The entry as command-line arguments.
    fn args(&self) -> Vec<OsString> {
        if !self.given {
            Vec::new()
        } else if self.bare {
            vec![OsString::from(format!("--{}", self.key))]
        } else {
            let key = &self.key;
            self.values
                .iter()
                .map(|v| OsString::from(format!("--{key}={v}")))
                .collect()
        }
    }
}

/// What `check-config` needs to know besides the parsed options: which came from the file,
/// which flags the command line turned off, and which file entries it dropped.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// Keys whose value is the file's.
    file: Vec<String>,
    /// Flags turned off on the command line (`--FLAG=false`).
    off: Vec<String>,
    /// File entries dropped for a command-line option they cannot be used with: the entry
    /// and that option's long name.
    dropped: Vec<(Entry, String)>,
}

/// The daemon's option with long name `key`, if it may appear in a file.
fn option<'a>(cmd: &'a clap::Command, key: &str) -> Option<&'a Arg> {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(key) && !a.is_hide_set())
}

/// A flag (`--no-public`): no value.
fn is_flag(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

/// An option whose value may be left out (`--syslog [SOCKET]`).
fn optional_value(arg: &Arg) -> bool {
    !is_flag(arg) && arg.get_num_args().is_some_and(|n| n.min_values() == 0)
}

/// A file mode in octal (`--mailbox-mode OCTAL`).
fn is_mode(arg: &Arg) -> bool {
    arg.get_value_names()
        .is_some_and(|n| n.iter().any(|n| n.as_str() == "OCTAL"))
}

/// Whether options `a` and `b` cannot be used together (clap's `conflicts_with`, either way).
fn conflict(cmd: &clap::Command, a: &Arg, b: &Arg) -> bool {
    let one = |x: &Arg, y: &Arg| {
        cmd.get_arg_conflicts_with(x)
            .iter()
            .any(|c| c.get_id() == y.get_id())
    };
    one(a, b) || one(b, a)
}

/// The 1-based line of byte offset `at` in `text`.
fn line_at(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// Reads and checks the configuration file `path` (see the module documentation): its
/// entries in file order. This is all the checking a file gets without a command line; the
/// queue tool uses it as is.
///
/// # Errors
/// The file cannot be read or is not valid TOML, or an entry is not a daemon option, has a
/// value of the wrong kind or an invalid value, or cannot be used with another entry: one
/// line naming the file, the line and the key.
pub fn load(path: &Path) -> Result<Vec<Entry>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config: {}: {e}", path.display()))?;
    parse(&text, path)
}

fn parse(text: &str, path: &Path) -> Result<Vec<Entry>, String> {
    let origin = path.display();
    let table = DeTable::parse(text).map_err(|e| match e.span() {
        Some(s) => {
            let line = line_at(text, s.start);
            let at = text.get(s.clone()).unwrap_or("").trim();
            if e.message() == "duplicate key" && !at.is_empty() {
                format!("--config: {origin}:{line}: {at}: duplicate key")
            } else {
                format!("--config: {origin}:{line}: {}", e.message())
            }
        }
        None => format!("--config: {origin}: {}", e.message()),
    })?;
    let mut items: Vec<_> = table.get_ref().iter().collect();
    items.sort_by_key(|(k, _)| k.span().start);
    let cmd = Cli::command();
    let mut entries: Vec<(Entry, &Arg)> = Vec::new();
    for (key, value) in items {
        let key_line = line_at(text, key.span().start);
        let key = key.get_ref().as_ref();
        let err = |line: usize, what: &str| format!("--config: {origin}:{line}: {key}: {what}");
        let Some(arg) = option(&cmd, key) else {
            return Err(err(
                key_line,
                "not an option of the daemon (see smtp-server --help)",
            ));
        };
        if matches!(key, "config" | "help" | "version") {
            return Err(err(key_line, "not allowed in a configuration file"));
        }
        let mut entry = Entry {
            key: key.to_owned(),
            line: key_line,
            values: Vec::new(),
            given: true,
            bare: false,
        };
        let many = matches!(arg.get_action(), ArgAction::Append);
        match value.get_ref() {
            DeValue::Boolean(b) if is_flag(arg) || optional_value(arg) => {
                (entry.given, entry.bare) = (*b, true);
            }
            _ if is_flag(arg) => return Err(err(key_line, "expected true or false")),
            DeValue::Array(list) if many => {
                if list.is_empty() {
                    return Err(err(
                        key_line,
                        "an empty list; remove the key for the default",
                    ));
                }
                for v in list {
                    let line = line_at(text, v.span().start);
                    let s = scalar(arg, v.get_ref()).map_err(|e| err(line, &e))?;
                    check_value(arg, &s).map_err(|e| err(line, &e))?;
                    entry.values.push(s);
                }
            }
            DeValue::Array(_) => {
                return Err(err(key_line, "a list where the option takes one value"))
            }
            DeValue::Table(_) => {
                return Err(err(key_line, "a table where an option value belongs"))
            }
            // An optional value (a socket path): true, false or a string, never a number.
            DeValue::Integer(_) | DeValue::Float(_) | DeValue::Datetime(_)
                if optional_value(arg) =>
            {
                return Err(err(key_line, "expected true, false or a string"));
            }
            v => {
                let line = line_at(text, value.span().start);
                let s = scalar(arg, v).map_err(|e| err(line, &e))?;
                check_value(arg, &s).map_err(|e| err(line, &e))?;
                entry.values.push(s);
            }
        }
        // Two entries of the file that cannot be used together.
        if entry.given {
            if let Some((other, _)) = entries
                .iter()
                .find(|(e, a)| e.given && conflict(&cmd, a, arg))
            {
                return Err(err(
                    key_line,
                    &format!("cannot be used with {} (line {})", other.key, other.line),
                ));
            }
        }
        entries.push((entry, arg));
    }
    Ok(entries.into_iter().map(|(e, _)| e).collect())
}

/// A single TOML value as the command-line text of option `arg`.
fn scalar(arg: &Arg, v: &DeValue<'_>) -> Result<String, String> {
    match v {
        DeValue::String(s) => Ok(s.to_string()),
        DeValue::Integer(i) => {
            let n = i128::from_str_radix(i.as_str(), i.radix()).map_err(|e| format!("{i}: {e}"))?;
            if !is_mode(arg) || n < 0 {
                Ok(n.to_string())
            } else if i.radix() == 10 {
                // `2770` would be 0o5322; the admin meant octal digits.
                Err(format!(
                    "{i}: a decimal number; write the mode in octal: 0o{i} or \"{i}\""
                ))
            } else {
                Ok(format!("{n:o}"))
            }
        }
        DeValue::Float(f) => Err(format!("{f}: not a whole number")),
        DeValue::Boolean(_) => Err("a flag value where the option takes a value".into()),
        DeValue::Array(_) => Err("a list inside a list".into()),
        DeValue::Table(_) => Err("a table where an option value belongs".into()),
        DeValue::Datetime(_) => Err("expected a string or a number".into()),
    }
}

/// Parses `value` with the value parser of option `arg`, as the command line would: what is
/// wrong with it, in one short phrase.
fn check_value(arg: &Arg, value: &str) -> Result<(), String> {
    let long = arg.get_long().unwrap_or("value");
    // The option alone: a missing companion (`requires`) is not this value's problem.
    match Cli::command()
        .try_get_matches_from(["smtp-server".to_owned(), format!("--{long}={value}")])
    {
        Err(e)
            if !matches!(
                e.kind(),
                ErrorKind::MissingRequiredArgument | ErrorKind::ArgumentConflict
            ) =>
        {
            Err(clap_detail(&e, value))
        }
        _ => Ok(()),
    }
}

/// What a clap value error says about `value`, without clap's `error:`, option and usage.
fn clap_detail(e: &clap::Error, value: &str) -> String {
    let quoted = format!("{value:?}");
    if let Some(source) = std::error::Error::source(e) {
        let s = source.to_string();
        return if s.contains(&quoted) {
            s
        } else {
            format!("{quoted}: {s}")
        };
    }
    if value.is_empty() {
        return "an empty value".into();
    }
    if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
        if !valid.is_empty() {
            return format!("{quoted}: expected one of {}", valid.join(", "));
        }
    }
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("invalid value");
    format!("{quoted}: {}", first.trim_start_matches("error: "))
}

/// `argv` with the options of the `--config` file it names (if any) inserted before its own
/// options, and `--FLAG=false` / `--FLAG=true` on the command line resolved. `argv[0]` is the
/// program; a leading `check-config` subcommand is kept in front; other subcommands are left
/// alone (the queue tool reads the file itself, with [`load`]).
///
/// # Errors
/// As [`load`]; also a file entry that needs an option given neither in the file nor on the
/// command line (`tls-cert` without `tls-key`).
pub fn expand(argv: Vec<OsString>) -> Result<(Vec<OsString>, Origins), String> {
    let argv = check_config_first(argv);
    let skip = match argv.get(1).and_then(|a| a.to_str()) {
        Some("check-config") => 2,
        Some(s) if !s.starts_with('-') => return Ok((argv, Origins::default())),
        _ => 1,
    };
    let cmd = Cli::command();
    let cli = scan(&cmd, &argv[skip.min(argv.len())..]);
    let mut origins = Origins {
        off: cli.off.clone(),
        ..Origins::default()
    };
    let mut out: Vec<OsString> = argv[..skip.min(argv.len())].to_vec();
    let Some(path) = config_path(&cli.args) else {
        out.extend(cli.args);
        return Ok((out, origins));
    };
    let entries = load(&path)?;
    let mut used = Vec::new();
    for entry in entries {
        if cli.given.contains(&entry.key) || cli.off.contains(&entry.key) {
            continue; // the command line replaces the file's entry
        }
        let arg = option(&cmd, &entry.key).ok_or("an entry was checked")?;
        let by = cli.given.iter().find(|c| {
            entry.given && option(&cmd, c).is_some_and(|other| conflict(&cmd, arg, other))
        });
        if let Some(by) = by {
            origins.dropped.push((entry, by.clone()));
            continue;
        }
        out.extend(entry.args());
        origins.file.push(entry.key.clone());
        used.push(entry);
    }
    out.extend(cli.args);
    needs(&cmd, &out, &used, &path)?;
    Ok((out, origins))
}

/// `smtp-server --config FILE check-config`: `check-config` after daemon options moves in
/// front of them. It takes the same options, so nothing changes but that the file's entries
/// are then expanded after it (before, clap refused the subcommand and named every option
/// the file had put in front of it, options the user never typed). A `check-config` that is
/// an option's value (`--hostname check-config`) stays where it is.
fn check_config_first(mut argv: Vec<OsString>) -> Vec<OsString> {
    let cmd = Cli::command();
    // Whether an option written as `a` takes the next argument as its value.
    let takes_next = |a: &str| -> bool {
        let arg = if let Some(long) = a.strip_prefix("--") {
            if long.contains('=') {
                return false;
            }
            cmd.get_arguments().find(|x| x.get_long() == Some(long))
        } else {
            let mut c = a.chars().skip(1);
            match (c.next(), c.next()) {
                (Some(short), None) => cmd.get_arguments().find(|x| x.get_short() == Some(short)),
                _ => return false,
            }
        };
        arg.is_some_and(|x| {
            x.get_action().takes_values() && x.get_num_args().is_none_or(|n| n.min_values() > 0)
        })
    };
    let mut i = 1;
    while let Some(a) = argv.get(i).and_then(|a| a.to_str()) {
        if a == "check-config" {
            let sub = argv.remove(i);
            argv.insert(1, sub);
            break;
        }
        if a == "--" || !a.starts_with('-') {
            break;
        }
        i += if takes_next(a) { 2 } else { 1 };
    }
    argv
}

/// A file entry that requires an option nobody gave: the error naming it. Any other problem
/// of the command line is left to clap's own parse and message.
fn needs(
    cmd: &clap::Command,
    argv: &[OsString],
    used: &[Entry],
    path: &Path,
) -> Result<(), String> {
    let missing = |argv: &[OsString]| -> Vec<String> {
        match cmd.clone().try_get_matches_from(argv) {
            Err(e) if e.kind() == ErrorKind::MissingRequiredArgument => {
                match e.get(ContextKind::InvalidArg) {
                    Some(ContextValue::Strings(v)) => v
                        .iter()
                        .filter_map(|s| s.strip_prefix("--"))
                        .map(|s| s.split([' ', '=']).next().unwrap_or(s).to_owned())
                        .collect(),
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        }
    };
    let all = missing(argv);
    if all.is_empty() {
        return Ok(());
    }
    let bin = argv[..1].to_vec();
    for entry in used {
        let alone: Vec<OsString> = bin.iter().cloned().chain(entry.args()).collect();
        let alone = missing(&alone);
        // In the order of --help.
        let m: Vec<&str> = cmd
            .get_arguments()
            .filter_map(Arg::get_long)
            .filter(|l| alone.iter().any(|m| m == l) && all.iter().any(|m| m == l))
            .collect();
        if !m.is_empty() {
            return Err(format!(
                "--config: {}:{}: {}: needs {} (in the file or on the command line)",
                path.display(),
                entry.line,
                entry.key,
                m.join(" and ")
            ));
        }
    }
    Ok(())
}

/// The command line, looked at before clap parses it.
struct Scanned {
    /// The arguments, with `--FLAG=true` as `--FLAG` and `--FLAG=false` removed.
    args: Vec<OsString>,
    /// The long names of the options given.
    given: Vec<String>,
    /// The flags turned off with `--FLAG=false`.
    off: Vec<String>,
}

/// Which options `cli` gives (by long name), skipping option values, up to `--`.
fn scan(cmd: &clap::Command, cli: &[OsString]) -> Scanned {
    let mut s = Scanned {
        args: Vec::new(),
        given: Vec::new(),
        off: Vec::new(),
    };
    // Whether option `arg`, given without an attached value, takes the next argument.
    let takes_next = |arg: &Arg, next: Option<&&OsString>| {
        if is_flag(arg) {
            false
        } else if optional_value(arg) {
            next.and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('-'))
        } else {
            true
        }
    };
    let mut it = cli.iter().peekable();
    while let Some(a) = it.next() {
        let Some(text) = a.to_str() else {
            s.args.push(a.clone());
            continue;
        };
        if text == "--" {
            s.args.push(a.clone());
            s.args.extend(it.cloned());
            break;
        }
        if let Some(body) = text.strip_prefix("--") {
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(arg) = cmd.get_arguments().find(|x| x.get_long() == Some(name)) else {
                s.args.push(a.clone());
                continue;
            };
            if is_flag(arg) || optional_value(arg) {
                match value {
                    Some("false") => {
                        s.off.push(name.to_owned());
                        continue;
                    }
                    Some("true") => {
                        s.given.push(name.to_owned());
                        s.args.push(OsString::from(format!("--{name}")));
                        continue;
                    }
                    _ => {}
                }
            }
            s.given.push(name.to_owned());
            s.args.push(a.clone());
            if value.is_none() && takes_next(arg, it.peek()) {
                s.args.extend(it.next().cloned());
            }
            continue;
        }
        s.args.push(a.clone());
        let Some(shorts) = text.strip_prefix('-').filter(|b| !b.is_empty()) else {
            continue;
        };
        for (i, c) in shorts.char_indices() {
            let Some(arg) = cmd.get_arguments().find(|x| x.get_short() == Some(c)) else {
                break;
            };
            s.given.extend(arg.get_long().map(str::to_owned));
            if is_flag(arg) {
                continue;
            }
            if i + c.len_utf8() == shorts.len() && takes_next(arg, it.peek()) {
                s.args.extend(it.next().cloned());
            }
            break;
        }
    }
    s
}

/// The value of `--config FILE` / `--config=FILE` in the command-line arguments `cli`.
fn config_path(cli: &[OsString]) -> Option<std::path::PathBuf> {
    let mut it = cli.iter();
    while let Some(a) = it.next() {
        let Some(s) = a.to_str() else { continue };
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

/// For `check-config`: every daemon option with its effective value and where it came from,
/// as TOML lines (a configuration file with exactly this content would give this
/// configuration). Options with a computed default (the host name, the listeners, the queue
/// directory) show the value the daemon would use; options that are off or unset are
/// comments, and so are the file's entries the command line dropped.
pub fn effective(argv: &[OsString], origins: &Origins) -> Result<String, String> {
    let cmd = Cli::command();
    let sub = cmd
        .find_subcommand("check-config")
        .ok_or("no check-config subcommand")?
        .clone();
    let matches = sub
        .clone()
        .try_get_matches_from(argv.iter().skip(1))
        .map_err(|e| e.to_string())?;
    let cfg = Config::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    let mut out = String::new();
    for arg in sub.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if arg.is_hide_set() || matches!(long, "config" | "help" | "version") {
            continue;
        }
        let id = arg.get_id().as_str();
        let source = if origins.file.iter().any(|k| k == long) {
            Source::File
        } else if origins.off.iter().any(|k| k == long)
            || matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
        {
            Source::CommandLine
        } else {
            Source::Default
        };
        let mut note = match source {
            Source::File => "# from the file",
            Source::CommandLine => "# from the command line",
            Source::Default => "# default",
        }
        .to_owned();
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let list = |items: &[String]| {
            let items: Vec<String> = items.iter().map(|v| toml_value(arg, v)).collect();
            format!("[{}]", items.join(", "))
        };
        let value = if is_flag(arg) {
            Some(matches.get_flag(id).to_string())
        } else if !raw.is_empty() {
            Some(if matches!(arg.get_action(), ArgAction::Append) {
                list(&raw)
            } else {
                toml_value(arg, &raw[0])
            })
        } else {
            let (value, why) = computed_default(long, &cfg);
            if let Some(why) = why {
                note.push_str(&format!(" ({why})"));
            }
            value.map(|v| match v {
                Computed::One(v) => toml_value(arg, &v),
                Computed::List(v) => list(&v),
                Computed::Off => "false".to_owned(),
            })
        };
        match value {
            Some(v) => out.push_str(&format!("{long} = {v}  {note}\n")),
            None => {
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                let hint = help
                    .split_once("[default: ")
                    .and_then(|(_, d)| d.split_once(']'))
                    .map(|(d, _)| {
                        format!(" ({})", d.split_whitespace().collect::<Vec<_>>().join(" "))
                    })
                    .unwrap_or_default();
                out.push_str(&format!("# {long}: not set{hint}  {note}\n"));
            }
        }
        for (entry, by) in origins.dropped.iter().filter(|(e, _)| e.key == long) {
            let v = if entry.bare || !entry.given {
                entry.given.to_string()
            } else if matches!(arg.get_action(), ArgAction::Append) {
                list(&entry.values)
            } else {
                toml_value(arg, &entry.values[0])
            };
            out.push_str(&format!(
                "# {long} = {v}  # from the file, dropped: --{by} on the command line\n"
            ));
        }
    }
    Ok(out)
}

/// The value of a computed default.
enum Computed {
    One(String),
    List(Vec<String>),
    /// An optional-value option not given (`syslog = false`).
    Off,
}

/// The effective value of option `long` when nothing sets it and clap has no default value
/// for it, as the daemon computes it; and a note on where it comes from.
fn computed_default(long: &str, cfg: &Config) -> (Option<Computed>, Option<&'static str>) {
    let addrs =
        |v: Vec<std::net::SocketAddr>| Computed::List(v.iter().map(ToString::to_string).collect());
    match long {
        "hostname" => (
            Some(Computed::One(cfg.hostname())),
            Some("the machine's host name"),
        ),
        "domain" => (Some(Computed::List(cfg.domains())), Some("the host name")),
        "local-listen" => (Some(addrs(cfg.local_listen())), None),
        "public-listen" => {
            let mut c = cfg.clone();
            c.no_public = false;
            let why = cfg.no_public.then_some("unused: no-public");
            (Some(addrs(c.public_listen())), why)
        }
        "queue-dir" => (
            Some(Computed::One(
                cfg.queue_dir().to_string_lossy().into_owned(),
            )),
            Some("<spool-dir>/.queue"),
        ),
        "syslog" => (Some(Computed::Off), None),
        _ => (None, None),
    }
}

/// A value of option `arg` as TOML: a plain decimal number as a number, anything else (and
/// any mode, whose digits are octal) as a string; either reads back the same.
fn toml_value(arg: &Arg, s: &str) -> String {
    let number = !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit());
    // (Not `0700`: TOML numbers have no leading zeros.)
    if number && !is_mode(arg) && (s == "0" || !s.starts_with('0')) {
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

    #[test]
    fn check_config_after_options_moves_first() {
        let moved = |v: &[&str]| check_config_first(os(v));
        assert_eq!(
            moved(&["s", "--config", "c.toml", "check-config"]),
            os(&["s", "check-config", "--config", "c.toml"])
        );
        assert_eq!(
            moved(&[
                "s",
                "-d",
                "x",
                "--no-public",
                "check-config",
                "-s",
                "a.test"
            ]),
            os(&[
                "s",
                "check-config",
                "-d",
                "x",
                "--no-public",
                "-s",
                "a.test"
            ])
        );
        // As a value it stays; so do other subcommands and what follows them.
        for v in [
            &["s", "--hostname", "check-config"][..],
            &["s", "--config=c.toml", "queue", "check-config"][..],
            &["s", "check-config", "--config", "c.toml"][..],
        ] {
            assert_eq!(moved(v), os(v), "{v:?}");
        }
    }

    /// The file's entries as arguments, in file order.
    fn args(text: &str) -> Result<Vec<String>, String> {
        parse(text, Path::new("f.toml")).map(|entries| {
            entries
                .iter()
                .flat_map(Entry::args)
                .map(|s| s.to_string_lossy().into_owned())
                .collect()
        })
    }

    #[test]
    fn entries_become_options_in_file_order() {
        let text = "spool-dir = \"/srv/mail\"\ndomain = [\"a.test\", \"b.test\"]\nno-public = true\nmax-recipients = 50\nsyslog = true\nmailbox-mode = 0o2770\nqueue-lifetime = 90\n";
        assert_eq!(
            args(text).unwrap(),
            [
                "--spool-dir=/srv/mail",
                "--domain=a.test",
                "--domain=b.test",
                "--no-public",
                "--max-recipients=50",
                "--syslog",
                "--mailbox-mode=2770",
                "--queue-lifetime=90",
            ]
        );
        assert_eq!(
            args("no-public = false\nsyslog = false\n").unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            args("syslog = \"/run/log\"\n").unwrap(),
            ["--syslog=/run/log"]
        );
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        for (text, want) in [
            (
                "spool-dir = \"x\"\n\nspool_dir = \"y\"\n",
                "3: spool_dir: not an option of the daemon (see smtp-server --help)",
            ),
            ("hostname = [\"a\", \"b\"]\n", "1: hostname: a list where the option takes one value"),
            ("no-public = \"yes\"\n", "1: no-public: expected true or false"),
            ("hostname = true\n", "1: hostname: a flag value where the option takes a value"),
            ("config = \"other.toml\"\n", "1: config: not allowed in a configuration file"),
            ("x = 1\n[listen]\nx = 1\n", "1: x: not an option of the daemon (see smtp-server --help)"),
            ("\n[listen]\nx = 1\n", "2: listen: not an option of the daemon (see smtp-server --help)"),
            ("\n[hostname]\nx = 1\n", "2: hostname: a table where an option value belongs"),
            ("hostname = \"a.test\"\nhostname = \"b.test\"\n", "2: hostname: duplicate key"),
            ("max-recipients = \"ten\"\n", "1: max-recipients: \"ten\": invalid digit found in string"),
            ("max-recipients = 10.5\n", "1: max-recipients: 10.5: not a whole number"),
            ("max-recipients = 0\n", "1: max-recipients: \"0\": 0 is not in 1..=4294967295"),
            (
                "queue-lifetime = \"5 days\"\n",
                "1: queue-lifetime: \"5 days\": unknown unit ' ' (use s, m, h, d or w)",
            ),
            ("format = \"mbox\"\n", "1: format: \"mbox\": expected one of spool, maildir"),
            (
                "domain = [\n  \"a.test\",\n  \"b..test\",\n]\n",
                "3: domain: \"b..test\": empty label (two dots in a row, or a leading dot)",
            ),
            ("local-listen = []\n", "1: local-listen: an empty list; remove the key for the default"),
            ("domain = []\n", "1: domain: an empty list; remove the key for the default"),
            ("spool-dir = \"\"\n", "1: spool-dir: an empty value"),
            (
                "mailbox-mode = 2770\n",
                "1: mailbox-mode: 2770: a decimal number; write the mode in octal: 0o2770 or \"2770\"",
            ),
            (
                "mailbox-mode = 0o600\n",
                "1: mailbox-mode: \"600\": the owner needs rwx (0700) on mailbox directories",
            ),
            (
                "passwd-file = \"p\"\nlog-level = \"info\"\nauth-dovecot = \"s\"\n",
                "3: auth-dovecot: cannot be used with passwd-file (line 1)",
            ),
            (
                "no-email-auth = true\nspf-reject = true\n",
                "2: spf-reject: cannot be used with no-email-auth (line 1)",
            ),
        ] {
            assert_eq!(
                args(text).unwrap_err(),
                format!("--config: f.toml:{want}"),
                "{text:?}"
            );
        }
        // A flag that is false gives nothing to conflict with.
        assert!(args("no-email-auth = false\nspf-reject = true\n").is_ok());
        let e = args("hostname = \n").unwrap_err();
        assert!(e.starts_with("--config: f.toml:1: "), "{e}");
    }

    #[test]
    fn the_command_line_is_scanned_for_options_and_flag_values() {
        let cmd = Cli::command();
        let s = scan(
            &cmd,
            &os(&[
                "-s",
                "a.test",
                "-dX",
                "--hostname",
                "-weird",
                "--no-public=false",
                "--spf-reject=true",
                "--syslog",
                "--log-level=debug",
                "--",
                "--no-public",
            ]),
        );
        assert_eq!(
            s.given,
            [
                "domain",
                "spool-dir",
                "hostname",
                "spf-reject",
                "syslog",
                "log-level"
            ]
        );
        assert_eq!(s.off, ["no-public"]);
        assert_eq!(
            s.args,
            os(&[
                "-s",
                "a.test",
                "-dX",
                "--hostname",
                "-weird",
                "--spf-reject",
                "--syslog",
                "--log-level=debug",
                "--",
                "--no-public",
            ])
        );
        let s = scan(&cmd, &os(&["--syslog", "/run/log", "--config", "c.toml"]));
        assert_eq!(s.given, ["syslog", "config"]);
    }

    #[test]
    fn config_path_is_found_in_both_spellings() {
        assert_eq!(
            config_path(&os(&["-d", "m", "--config", "c.toml"])),
            Some("c.toml".into())
        );
        assert_eq!(
            config_path(&os(&["--config=c.toml"])),
            Some("c.toml".into())
        );
        assert_eq!(config_path(&os(&["-d", "m"])), None);
    }
}
