//! Dovecot's passwd-file: the format, the password schemes, and the file kept up to date.
//!
//! ```text
//! # comments and blank lines are ignored
//! alice@example.org:{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdA$aGFzaA
//! bob@example.org:{BLF-CRYPT}$2y$05$...::::::allow_nets=192.0.2.0/24,::1
//! carol@example.org:{SHA512-CRYPT}$6$salt$...:1000:1000::/home/carol::nologin
//! ```
//!
//! Fields, separated by `:`: user, password, and then optionally uid, gid, gecos, home, shell
//! and extra fields (space-separated `key` or `key=value`), as Dovecot's `passwd-file`
//! driver reads them. Only the first two and the extra fields mean anything here; uid to
//! shell are Dovecot's userdb fields, kept so that one file serves both programs.
//!
//! - The user is the login name; it is compared in ASCII lower case (Dovecot lower-cases the
//!   login with its default `auth_username_format = %Lu` and then looks it up exactly, so a
//!   file meant for Dovecot has lower-case names anyway). Two lines for one name (after lower
//!   casing) are an error.
//! - The password is `{SCHEME}hash`; without `{SCHEME}` it is `CRYPT`, Dovecot's default for
//!   this driver. An empty password means the user cannot log in (a userdb-only line); so does
//!   one that starts with `!` or `*` after its scheme (`bob:!`, `bob:{SHA512-CRYPT}!$6$...`:
//!   an account locked the way `passwd -l` and `usermod -L` lock one), and a scheme with
//!   nothing after it (`{PLAIN}`): no password is ever accepted for those.
//! - Extra fields honoured: `nologin` (the user may not log in) and `allow_nets=` (a
//!   comma-separated list of addresses and `addr/prefix` networks the user may log in from).
//!   `nopassword` (any password) is refused: this daemon never accepts a login without one.
//!   Others (`userdb_*`, `proxy`, ...) are Dovecot's business and are ignored.
//!
//! Schemes (names case-insensitive):
//!
//! | scheme | hash | notes |
//! |---|---|---|
//! | `ARGON2ID`, `ARGON2I` | PHC string `$argon2id$v=19$m=..,t=..,p=..$salt$hash` | what `smtp-server passwd` makes |
//! | `BLF-CRYPT` | bcrypt `$2y$`, `$2b$`, `$2a$` | passwords past 72 bytes are cut there, as by every bcrypt |
//! | `SHA512-CRYPT`, `SHA256-CRYPT` | glibc's `$6$` / `$5$`, optional `rounds=N$` | passwords must be UTF-8 |
//! | `CRYPT` | one of `$2?$`, `$6$`, `$5$` | DES and MD5 crypt are refused |
//! | `PLAIN`, `CLEAR`, `CLEARTEXT` | the password itself | for tests only: anyone who reads the file has it |

use std::collections::HashMap;
use std::fs::Metadata;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use smtp_proto::sasl::Secret;
use tokio::sync::Semaphore;
use tracing::{error, info};

use super::{canonical_login, Client, Temporary, Verdict};

/// A scheme `smtp-server passwd` can make an entry with (`--scheme`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheme {
    /// Argon2id, Dovecot's parameters (64 MiB, 3 passes, 1 lane): the recommended one.
    #[value(name = "ARGON2ID")]
    Argon2id,
    /// bcrypt (`$2y$`), cost 12.
    #[value(name = "BLF-CRYPT")]
    BlfCrypt,
    /// glibc's SHA-512 crypt (`$6$`), 5000 rounds, for systems that know nothing else.
    #[value(name = "SHA512-CRYPT")]
    Sha512Crypt,
    /// glibc's SHA-256 crypt (`$5$`), 5000 rounds.
    #[value(name = "SHA256-CRYPT")]
    Sha256Crypt,
}

impl Scheme {
    /// The name inside `{...}`.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Argon2id => "ARGON2ID",
            Scheme::BlfCrypt => "BLF-CRYPT",
            Scheme::Sha512Crypt => "SHA512-CRYPT",
            Scheme::Sha256Crypt => "SHA256-CRYPT",
        }
    }

    /// `{SCHEME}hash` of `password`, with a random salt, for a passwd-file line.
    ///
    /// # Errors
    ///
    /// The hashing crate refused (SHA-crypt wants UTF-8; bcrypt refuses a NUL byte).
    pub fn hash(self, password: &[u8]) -> Result<String, String> {
        let hash = match self {
            Scheme::Argon2id => {
                use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
                let params = argon2::Params::new(65_536, 3, 1, None).map_err(|e| e.to_string())?;
                let argon = argon2::Argon2::new(
                    argon2::Algorithm::Argon2id,
                    argon2::Version::V0x13,
                    params,
                );
                let salt = SaltString::generate(&mut OsRng);
                argon
                    .hash_password(password, &salt)
                    .map_err(|e| e.to_string())?
                    .to_string()
            }
            Scheme::BlfCrypt => bcrypt::hash_with_result(password, 12)
                .map_err(|e| e.to_string())?
                .format_for_version(bcrypt::Version::TwoY),
            Scheme::Sha512Crypt | Scheme::Sha256Crypt => {
                let pw = std::str::from_utf8(password)
                    .map_err(|_| "SHA-crypt passwords must be UTF-8".to_owned())?;
                if self == Scheme::Sha512Crypt {
                    let p = sha_crypt::Sha512Params::new(5000).map_err(|e| format!("{e:?}"))?;
                    sha_crypt::sha512_simple(pw, &p).map_err(|e| format!("{e:?}"))?
                } else {
                    let p = sha_crypt::Sha256Params::new(5000).map_err(|e| format!("{e:?}"))?;
                    sha_crypt::sha256_simple(pw, &p).map_err(|e| format!("{e:?}"))?
                }
            }
        };
        Ok(format!("{{{}}}{hash}", self.name()))
    }
}

/// A stored password, checked at load time so that verifying can only say yes or no.
#[derive(Clone)]
enum Hash {
    /// A PHC string of argon2id or argon2i.
    Argon2(String),
    /// `$2y$...` and friends.
    Bcrypt(String),
    /// `$6$...`.
    Sha512(String),
    /// `$5$...`.
    Sha256(String),
    /// The password itself (`{PLAIN}`).
    Plain(Secret),
}

impl Hash {
    /// Parses `{SCHEME}rest` (or bare `rest`, which is `CRYPT`).
    fn parse(field: &str) -> Result<Hash, String> {
        let (scheme, rest) = match field.strip_prefix('{').and_then(|f| f.split_once('}')) {
            Some((s, r)) => (s.to_ascii_uppercase(), r),
            None => ("CRYPT".to_owned(), field),
        };
        match scheme.as_str() {
            "ARGON2ID" => argon2_hash(rest, "argon2id"),
            "ARGON2I" => argon2_hash(rest, "argon2i"),
            "BLF-CRYPT" => bcrypt_hash(rest),
            "SHA512-CRYPT" => sha_crypt_hash(rest, "6", 86).map(Hash::Sha512),
            "SHA256-CRYPT" => sha_crypt_hash(rest, "5", 43).map(Hash::Sha256),
            "PLAIN" | "CLEAR" | "CLEARTEXT" => Ok(Hash::Plain(Secret::new(rest.as_bytes()))),
            "CRYPT" => {
                if rest.starts_with("$2") {
                    bcrypt_hash(rest)
                } else if rest.starts_with("$6$") {
                    sha_crypt_hash(rest, "6", 86).map(Hash::Sha512)
                } else if rest.starts_with("$5$") {
                    sha_crypt_hash(rest, "5", 43).map(Hash::Sha256)
                } else {
                    Err(
                        "CRYPT: only the $2y$ (bcrypt), $6$ and $5$ (SHA-crypt) formats are \
                         supported (DES and MD5 crypt are too weak)"
                            .to_owned(),
                    )
                }
            }
            other => Err(format!(
                "unsupported password scheme {{{other}}} (supported: ARGON2ID, ARGON2I, \
                 BLF-CRYPT, SHA512-CRYPT, SHA256-CRYPT, CRYPT, PLAIN)"
            )),
        }
    }

    /// Whether `password` matches. Runs the full computation whatever the outcome.
    fn matches(&self, password: &[u8]) -> bool {
        match self {
            Hash::Argon2(s) => {
                use argon2::password_hash::{PasswordHash, PasswordVerifier};
                // Parsed at load time already; a failure here cannot happen, and means no.
                PasswordHash::new(s).is_ok_and(|h| {
                    argon2::Argon2::default()
                        .verify_password(password, &h)
                        .is_ok()
                })
            }
            // Truncating verify: bcrypt implementations (Dovecot's, PHP's) cut at 72 bytes.
            Hash::Bcrypt(s) => bcrypt::verify(password, s).unwrap_or(false),
            Hash::Sha512(s) | Hash::Sha256(s) => {
                // The crate takes &str; a non-UTF-8 password costs the same and fails.
                let utf8 = std::str::from_utf8(password);
                let pw = utf8.map_or_else(|_| String::from_utf8_lossy(password), Into::into);
                let ok = if matches!(self, Hash::Sha512(_)) {
                    sha_crypt::sha512_check(&pw, s).is_ok()
                } else {
                    sha_crypt::sha256_check(&pw, s).is_ok()
                };
                ok && utf8.is_ok()
            }
            Hash::Plain(p) => constant_time_eq(p.expose(), password),
        }
    }
}

fn argon2_hash(s: &str, algorithm: &str) -> Result<Hash, String> {
    let h = argon2::password_hash::PasswordHash::new(s)
        .map_err(|e| format!("not an Argon2 PHC string ({e})"))?;
    if h.algorithm.as_str() != algorithm {
        return Err(format!(
            "the hash is {}, the scheme says {algorithm}",
            h.algorithm
        ));
    }
    let params = argon2::Params::try_from(&h).map_err(|e| format!("Argon2 parameters: {e}"))?;
    // 1 GiB per check would let one line of the file exhaust the machine's memory.
    if params.m_cost() > 1 << 20 {
        return Err("Argon2 memory cost over 1 GiB (m=1048576)".to_owned());
    }
    if h.hash.is_none() {
        return Err("Argon2 PHC string without a hash".to_owned());
    }
    Ok(Hash::Argon2(s.to_owned()))
}

fn bcrypt_hash(s: &str) -> Result<Hash, String> {
    s.parse::<bcrypt::HashParts>()
        .map_err(|e| format!("not a bcrypt hash ({e})"))?;
    Ok(Hash::Bcrypt(s.to_owned()))
}

/// Checks the shape of `$<id>$[rounds=N$]salt$hash` (crypt's base-64 alphabet, a salt of at
/// most 16 characters, a hash of `len` characters), so that a typo is found at load time.
fn sha_crypt_hash(s: &str, id: &str, len: usize) -> Result<String, String> {
    let what = if id == "6" {
        "SHA512-CRYPT"
    } else {
        "SHA256-CRYPT"
    };
    let bad = |why: &str| Err(format!("not a {what} hash (${id}$...): {why}"));
    let mut parts = s.split('$');
    if parts.next() != Some("") || parts.next() != Some(id) {
        return bad("wrong prefix");
    }
    let mut fields: Vec<&str> = parts.collect();
    if let Some(r) = fields.first().and_then(|f| f.strip_prefix("rounds=")) {
        match r.parse::<u64>() {
            Ok(n) if (1000..=999_999_999).contains(&n) => {}
            _ => return bad("rounds must be from 1000 to 999999999"),
        }
        fields.remove(0);
    }
    let crypt64 = |t: &str| {
        t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
    };
    match fields.as_slice() {
        [salt, hash] if salt.len() <= 16 && crypt64(salt) && hash.len() == len && crypt64(hash) => {
            Ok(s.to_owned())
        }
        _ => bad("expected salt$hash"),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// An address or network of `allow_nets=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn parse(s: &str) -> Result<Net, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("allow_nets: {s:?} is not an address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("allow_nets: bad prefix length in {s:?}"))?
        };
        Ok(Net { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (a, b, bits) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (
                u128::from(u32::from(n)) << 96,
                u128::from(u32::from(i)) << 96,
                self.prefix,
            ),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), self.prefix),
            _ => return false,
        };
        let mask = if bits == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(bits))
        };
        a & mask == b & mask
    }
}

/// One user's line.
#[derive(Clone)]
struct Entry {
    /// The name as written, lower case.
    user: String,
    /// `None`: an empty password field, no login.
    hash: Option<Hash>,
    nologin: bool,
    allow_nets: Option<Vec<Net>>,
}

/// A parsed file.
pub(super) struct Users {
    entries: HashMap<String, Entry>,
    /// Checked for unknown logins, so that they cost what a known one does: the first
    /// entry's hash (its scheme and cost are the file's usual ones), or a built-in Argon2id
    /// hash for a file without any.
    dummy: Hash,
}

/// A fixed Argon2id hash (Dovecot's parameters) of a random password nobody knows.
const DUMMY_ARGON2ID: &str = "$argon2id$v=19$m=65536,t=3,p=1$nRcM+eyAxuhxyuE8amnsww$\
                              eAFEc9MS4NqigZ9ymAL0mdwoOCyWXPh9XJMFXDpnrGk";

impl Users {
    /// Parses the text of a passwd-file; errors name `origin:line`.
    pub(super) fn parse(text: &str, origin: &str) -> Result<Users, String> {
        let mut entries: HashMap<String, Entry> = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let mut dummy = None;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let at = |why: String| format!("{origin}:{n}: {why}");
            let entry = parse_line(line).map_err(at)?;
            if let Some(prev) = first_line.get(&entry.user) {
                return Err(at(format!(
                    "user {:?} is also on line {prev} (names are compared in lower case)",
                    entry.user
                )));
            }
            if dummy.is_none() {
                dummy = entry.hash.clone();
            }
            first_line.insert(entry.user.clone(), n);
            entries.insert(entry.user.clone(), entry);
        }
        let dummy = dummy.unwrap_or_else(|| Hash::Argon2(DUMMY_ARGON2ID.to_owned()));
        Ok(Users { entries, dummy })
    }

    /// How many users the file names.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The verdict for `login` and `password` from `client`. Always costs one hash check.
    pub(super) fn check(&self, login: &str, password: &[u8], client: &Client) -> Verdict {
        let entry = canonical_login(login).and_then(|l| self.entries.get(&l));
        let Some(entry) = entry else {
            let _ = self.dummy.matches(password);
            return Verdict::Invalid;
        };
        let Some(hash) = &entry.hash else {
            let _ = self.dummy.matches(password);
            return Verdict::Invalid;
        };
        // Checked first and the rest after, as Dovecot does: a refused user still pays.
        if !hash.matches(password) || entry.nologin {
            return Verdict::Invalid;
        }
        if let Some(nets) = &entry.allow_nets {
            if !nets.iter().any(|n| n.contains(client.peer.ip())) {
                return Verdict::Invalid;
            }
        }
        Verdict::Ok {
            user: entry.user.clone(),
        }
    }
}

/// A password field that lets nobody in: empty, a bare `{SCHEME}`, or a hash locked with a
/// leading `!` or `*` (after the scheme, if any).
fn locked(field: &str) -> bool {
    let rest = match field.strip_prefix('{').and_then(|f| f.split_once('}')) {
        Some((_, r)) => r,
        None => field,
    };
    rest.is_empty() || rest.starts_with('!') || rest.starts_with('*')
}

fn parse_line(line: &str) -> Result<Entry, String> {
    let mut fields = line.splitn(8, ':');
    let user = fields.next().unwrap_or_default();
    let Some(password) = fields.next() else {
        return Err("expected user:{SCHEME}password[:uid:gid:gecos:home:shell:extra]".to_owned());
    };
    let user = canonical_login(user)
        .ok_or("empty or unusable user name (control characters, `:`, over 255 octets)")?;
    let hash = if locked(password) {
        None
    } else {
        Some(Hash::parse(password).map_err(|e| format!("user {user:?}: {e}"))?)
    };
    let extra = fields.nth(5).unwrap_or_default();
    let mut nologin = false;
    let mut allow_nets = None;
    for field in extra.split_ascii_whitespace() {
        let (key, value) = field.split_once('=').unwrap_or((field, ""));
        match key {
            "nologin" => nologin = true,
            "allow_nets" => {
                let nets: Result<Vec<Net>, String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    // `local` is a connection without an address (a unix socket): never here.
                    .filter(|v| *v != "local")
                    .map(Net::parse)
                    .collect();
                allow_nets = Some(nets?);
            }
            "nopassword" => {
                return Err(format!(
                    "user {user:?}: `nopassword` is not supported (every login needs a password)"
                ))
            }
            _ => {}
        }
    }
    Ok(Entry {
        user,
        hash,
        nologin,
        allow_nets,
    })
}

/// What identifies one version of the file: when it changes, the file is re-read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

struct Loaded {
    /// The version last looked at (loaded, or found broken and logged).
    stamp: Option<Stamp>,
    users: Arc<Users>,
    /// Why the version last looked at could not be used: then nobody logs in (454) until
    /// the file is fixed, rather than the users of an older version (whose lines may have
    /// just been locked or deleted).
    broken: Option<String>,
}

/// A passwd-file on disk, re-read when it changes.
pub(super) struct PasswdFile {
    shared: Arc<Shared>,
    /// Hash checks at once.
    slots: Arc<Semaphore>,
}

/// What the blocking threads need.
struct Shared {
    path: PathBuf,
    state: Mutex<Loaded>,
}

/// How many password checks may run at once: one per CPU.
fn hash_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn read(path: &Path) -> Result<(Stamp, Users), String> {
    let origin = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| format!("{origin}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("{origin}: {e}"))?;
    let text = std::io::read_to_string(file).map_err(|e| format!("{origin}: {e}"))?;
    Ok((Stamp::of(&meta), Users::parse(&text, &origin)?))
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        // A panic while holding it cannot leave `Loaded` half-written (two plain stores).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The users, re-read first if the file changed (a `stat`, cheap). A file that cannot be
    /// read or parsed (deleted, half written, a line in error) fails closed: it is logged
    /// once per version and every login is a temporary failure until the file is fixed.
    /// Keeping the old contents instead would keep users in whom the admin just locked or
    /// deleted.
    fn refresh(&self) -> Result<Arc<Users>, Temporary> {
        let mut state = self.lock();
        let now = std::fs::metadata(&self.path).map(|m| Stamp::of(&m)).ok();
        if now != state.stamp {
            match read(&self.path) {
                Ok((stamp, users)) => {
                    info!(file = %self.path.display(), users = users.len(), "passwd-file reloaded");
                    state.stamp = Some(stamp);
                    state.users = Arc::new(users);
                    state.broken = None;
                }
                Err(e) => {
                    error!(error = %e, "passwd-file unusable: no one can log in until it is fixed");
                    state.stamp = now;
                    state.broken = Some(e);
                }
            }
        }
        match &state.broken {
            Some(e) => Err(Temporary(format!("passwd-file unusable: {e}"))),
            None => Ok(state.users.clone()),
        }
    }
}

impl PasswdFile {
    pub(super) fn open(path: PathBuf) -> Result<PasswdFile, String> {
        let (stamp, users) = read(&path)?;
        Ok(PasswdFile {
            shared: Arc::new(Shared {
                path,
                state: Mutex::new(Loaded {
                    stamp: Some(stamp),
                    users: Arc::new(users),
                    broken: None,
                }),
            }),
            slots: Arc::new(Semaphore::new(hash_slots())),
        })
    }

    pub(super) fn describe(&self) -> String {
        let n = self.shared.lock().users.len();
        format!("passwd-file {} ({n} users)", self.shared.path.display())
    }

    pub(super) async fn verify(
        &self,
        login: &str,
        password: &Secret,
        client: &Client,
    ) -> Result<Verdict, Temporary> {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Temporary("password checks stopped".to_owned()))?;
        let shared = self.shared.clone();
        let (login, password, client) = (login.to_owned(), password.clone(), *client);
        // The stat (and a reload) and the hash both block: neither runs on an async worker.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            shared
                .refresh()
                .map(|users| users.check(&login, password.expose(), &client))
        })
        .await
        .map_err(|e| Temporary(format!("password check failed: {e}")))?
    }
}
