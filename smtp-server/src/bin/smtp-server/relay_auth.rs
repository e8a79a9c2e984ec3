//! `--relay-password-file`: the credentials the daemon logs in to its `--relay-host` with, in
//! the format of Postfix's `smtp_sasl_password_maps` source file (`sasl_passwd`).
//!
//! ```text
//! # comment lines start with '#'; blank lines are ignored
//! [smtp.example.org]:587    alice@example.org:secret
//! smtp.example.net          alice:pass word:with colons
//! [::1]:2525                test:test
//! ```
//!
//! Each line is a key, white space, and `user:password`. The key is `host`, `[host]` or
//! `[host]:port` (an IPv6 address in brackets; `host:port` without brackets is accepted
//! too). The user is everything before the first `:` of the value, the password everything
//! after it, leading and trailing white space removed (so a password may hold `:`, `#` and
//! inner spaces, but no leading or trailing space). A key with a port matches only that port
//! of the relay host; a key without one matches any port. An entry with a port wins over one
//! without; among equals, the first line. Host names are compared without case and without a
//! trailing dot.
//!
//! The file holds passwords: it is refused when other users may read or write it (mode
//! `o+r` / `o+w`; `chmod 600` or `640`), and a warning is logged when the group may read it.

use std::path::Path;

use smtp_client::Credentials;

/// One line of the file (`Debug` shows no password: [`Credentials`] redacts it).
#[derive(Debug)]
struct Entry {
    host: String,
    port: Option<u16>,
    credentials: Credentials,
}

/// The entries of a password file.
#[derive(Debug)]
pub struct PasswordFile {
    entries: Vec<Entry>,
}

/// What loading found about the file's permissions (logged by the caller, once logging is up).
pub struct Loaded {
    /// The entries.
    pub file: PasswordFile,
    /// Whether the file's group may read it (worth a warning).
    pub group_readable: bool,
}

impl PasswordFile {
    /// Reads and checks the file at `path`.
    ///
    /// # Errors
    /// A one-line message: the file cannot be read, other users may read or write it, or a
    /// line is malformed (with its number).
    pub fn load(path: &Path) -> Result<Loaded, String> {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
        let mode = meta.permissions().mode();
        if mode & 0o006 != 0 {
            return Err(format!(
                "other users may read or write it (mode {:04o}); it holds passwords: chmod 600",
                mode & 0o7777
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        Ok(Loaded {
            file: Self::parse(&text)?,
            group_readable: mode & 0o040 != 0,
        })
    }

    /// Parses the file's text.
    ///
    /// # Errors
    /// A message naming the first malformed line (never quoting its password).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = n + 1;
            let (key, value) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("line {n}: expected `host[:port] user:password`"))?;
            let (host, port) = parse_key(key).map_err(|e| format!("line {n}: {e}"))?;
            let (user, password) = value
                .trim()
                .split_once(':')
                .ok_or_else(|| format!("line {n}: expected `user:password` after the host"))?;
            let (user, password) = (user.trim(), password.trim());
            let credentials =
                Credentials::new(user, password).map_err(|e| format!("line {n}: {e}"))?;
            entries.push(Entry {
                host,
                port,
                credentials,
            });
        }
        Ok(Self { entries })
    }

    /// The credentials for the relay host `host` (as given to `--relay-host`, without
    /// brackets) on `port`, if an entry matches.
    pub fn lookup(&self, host: &str, port: u16) -> Option<Credentials> {
        let host = normalise(host);
        let matching = |with_port: bool| {
            self.entries.iter().find(|e| {
                e.host == host
                    && match e.port {
                        Some(p) => with_port && p == port,
                        None => !with_port,
                    }
            })
        };
        let entry = matching(true).or_else(|| matching(false))?;
        Some(entry.credentials.clone())
    }

    /// How many entries the file has.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

fn normalise(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// `host`, `[host]`, `[host]:port` or `host:port`.
fn parse_key(key: &str) -> Result<(String, Option<u16>), String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| "bad port (a number from 1 to 65535)".to_owned())
    };
    let (host, port) = if let Some(rest) = key.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("missing ]")?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(port(p)?)),
            None if after.is_empty() => (host, None),
            None => return Err("unexpected text after ] (want [host] or [host]:port)".into()),
        }
    } else {
        match key.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(port(p)?)),
            Some(_) => return Err("an IPv6 address must be in brackets: [::1]:587".into()),
            None => (key, None),
        }
    };
    if host.is_empty() {
        return Err("empty host".into());
    }
    Ok((normalise(host), port))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const FILE: &str = "\
# relay credentials
[smtp.example.org]:587    alice@example.org:secret

Smtp.Example.ORG.         any-port:pw
smtp.example.net          bob:pass word:with #colons
[::1]:2525                test:test
127.0.0.1:2526            local:pw
";

    fn who(f: &PasswordFile, host: &str, port: u16) -> Option<(String, Vec<u8>)> {
        f.lookup(host, port)
            .map(|c| (c.user().to_owned(), c.secret().expose().to_vec()))
    }

    #[test]
    fn lookups() {
        let f = PasswordFile::parse(FILE).unwrap();
        assert_eq!(f.len(), 5);
        // One case per line: relay host, port, expected user and password.
        type Case<'a> = (&'a str, u16, Option<(&'a str, &'a str)>);
        let cases: &[Case] = &[
            (
                "smtp.example.org",
                587,
                Some(("alice@example.org", "secret")),
            ),
            (
                "SMTP.example.org",
                587,
                Some(("alice@example.org", "secret")),
            ),
            ("smtp.example.org", 25, Some(("any-port", "pw"))),
            (
                "smtp.example.net",
                465,
                Some(("bob", "pass word:with #colons")),
            ),
            ("::1", 2525, Some(("test", "test"))),
            ("::1", 25, None),
            ("127.0.0.1", 2526, Some(("local", "pw"))),
            ("other.example", 587, None),
        ];
        for (host, port, want) in cases {
            let want = want.map(|(u, p)| (u.to_owned(), p.as_bytes().to_vec()));
            assert_eq!(who(&f, host, *port), want, "{host}:{port}");
        }
    }

    #[test]
    fn malformed_lines_are_named_without_the_password() {
        for (text, line) in [
            ("host-only\n", "line 1"),
            ("# c\nhost user-without-colon\n", "line 2"),
            ("[::1 u:p\n", "line 1"),
            ("::1:25 u:p\n", "line 1"),
            ("host:0 u:p\n", "line 1"),
            ("host :hunter2\n", "line 1"),
            ("[]:25 u:p\n", "line 1"),
        ] {
            let e = PasswordFile::parse(text).err().unwrap();
            assert!(e.starts_with(line), "{text:?}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
