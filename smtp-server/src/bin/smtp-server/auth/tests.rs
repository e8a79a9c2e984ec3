//! The passwd-file (every scheme, with hashes made by Dovecot's `doveadm pw`), its reloading,
//! and the Dovecot client against a real Dovecot started here (skipped without one).
#![allow(clippy::unwrap_used)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smtp_proto::sasl::Secret;

use super::passwd::Users;
use super::*;

/// `doveadm pw -s <scheme> -p secret` (Dovecot 2.3.19.1), and two with other costs.
const DOVEADM: &[(&str, &str)] = &[
    ("ARGON2ID", "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$DRpYh/QEAF/kI5fXphS4pw$PUY8hcanctEBEzFjjZ7i+XNFxqMhXBld+3kl117RcP4"),
    ("ARGON2I", "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$93zbBDgroc3PBimD6HfjLA$/FaFhr9aIYFkUSQRmFaClLiCdmZyO7up7W5p2IHLUec"),
    ("BLF-CRYPT", "{BLF-CRYPT}$2y$05$oxpqj5VIhNA2UTopVqXEqeC1M1b8ObFTaWGpKA09Jtcsn0oEx3Kbu"),
    ("SHA512-CRYPT", "{SHA512-CRYPT}$6$mR6Z1OM9TSwABFpS$vCXM1kIXsh6EQ1KTIiNtDQOPZ7gs.EfENWM1hT7pj.gkmlADDiXsksrnAyT60xp3Zz15L64xYxUMPqocoZl2s."),
    ("SHA512-CRYPT rounds", "{SHA512-CRYPT}$6$rounds=10000$vO82v.hamV3Wy1Z/$QN.qhz3VxoOKHOsT7ff8VetT03d8NfDeTN9yKr0edpXtY9Is7S1fR6Mjnm8zLAK2S6fqRl21kpi5rLrJa82XT/"),
    ("SHA256-CRYPT", "{SHA256-CRYPT}$5$c.h25xVCv4SbXxYz$MyJNdBQOi2IILMYq0uD6asz6J2Ka18T0UWdmD6sR2A4"),
    ("CRYPT", "{CRYPT}$2y$05$6D6rkwbR9jon3veNd3cEeuf3lv82cqIcOcmZJd3QlcdQjRz9rKhD6"),
    ("bare crypt", "$2y$05$6D6rkwbR9jon3veNd3cEeuf3lv82cqIcOcmZJd3QlcdQjRz9rKhD6"),
    ("PLAIN", "{PLAIN}secret"),
    ("plain, lower case", "{plain}secret"),
];

/// `doveadm pw -s ... -p 'pässwörd'`: a non-ASCII password.
const UTF8: &[&str] = &[
    "{BLF-CRYPT}$2y$08$iktUngFOMkkiCtNdqIDdnOQe56AEOWrn0Y.IcMuMEqrLZPU8mvExC",
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$WU65VEdfjMaoLy0OQu9/iQ$U/SEfOWrGZPB7/Mtb+HxHidq3D5oFrNmOS5to+ivSdg",
];

fn client() -> Client {
    Client {
        peer: "192.0.2.7:40000".parse().unwrap(),
        local: "127.0.0.1:587".parse().unwrap(),
        secured: true,
    }
}

fn ok(user: &str) -> Verdict {
    Verdict::Ok { user: user.into() }
}

#[test]
fn every_scheme_made_by_doveadm() {
    for (name, hash) in DOVEADM {
        let users = Users::parse(&format!("alice@example.org:{hash}\n"), "t").unwrap();
        let c = client();
        assert_eq!(
            users.check("alice@example.org", b"secret", &c),
            ok("alice@example.org"),
            "{name}"
        );
        assert_eq!(
            users.check("alice@example.org", b"Secret", &c),
            Verdict::Invalid,
            "{name}"
        );
        assert_eq!(users.check("alice@example.org", b"", &c), Verdict::Invalid);
    }
    for hash in UTF8 {
        let users = Users::parse(&format!("bob:{hash}"), "t").unwrap();
        let c = client();
        assert_eq!(users.check("bob", "pässwörd".as_bytes(), &c), ok("bob"));
        assert_eq!(
            users.check("bob", "passwort".as_bytes(), &c),
            Verdict::Invalid
        );
    }
}

#[test]
fn our_own_hashes_verify() {
    for scheme in [
        Scheme::Argon2id,
        Scheme::BlfCrypt,
        Scheme::Sha512Crypt,
        Scheme::Sha256Crypt,
    ] {
        let line = format!("carol:{}", scheme.hash(b"hunter2").unwrap());
        assert!(
            line.starts_with(&format!("carol:{{{}}}$", scheme.name())),
            "{line}"
        );
        let users = Users::parse(&line, "t").unwrap();
        assert_eq!(users.check("carol", b"hunter2", &client()), ok("carol"));
        assert_eq!(
            users.check("carol", b"hunter3", &client()),
            Verdict::Invalid
        );
    }
}

#[test]
fn file_format() {
    let text = "\
# a comment
   # an indented comment

Alice@Example.ORG:{PLAIN}a:1000:1000:Alice:/home/alice:/bin/sh
bob@example.org:{PLAIN}b::::::allow_nets=192.0.2.0/24,::1 userdb_quota_rule=*:storage=1G
carol@example.org:{PLAIN}c::::::nologin reason=gone
dave@example.org::1000:1000::/home/dave::
erin@example.org:{PLAIN}e::::::allow_nets=local,10.0.0.1\r
";
    let u = Users::parse(text, "users").unwrap();
    assert_eq!(u.len(), 5);
    let c = client();
    // Names are compared in lower case; the canonical name is the lower-cased one.
    for login in [
        "alice@example.org",
        "ALICE@example.org",
        "Alice@Example.ORG",
    ] {
        assert_eq!(u.check(login, b"a", &c), ok("alice@example.org"), "{login}");
    }
    // Passwords are not.
    assert_eq!(u.check("alice@example.org", b"A", &c), Verdict::Invalid);
    assert_eq!(u.check("bob@example.org", b"b", &c), ok("bob@example.org"));
    let mut far = c;
    far.peer = "198.51.100.1:1".parse().unwrap();
    assert_eq!(u.check("bob@example.org", b"b", &far), Verdict::Invalid);
    far.peer = "[::1]:1".parse().unwrap();
    assert_eq!(
        u.check("bob@example.org", b"b", &far),
        ok("bob@example.org")
    );
    far.peer = "[::ffff:192.0.2.200]:1".parse().unwrap();
    assert_eq!(
        u.check("bob@example.org", b"b", &far),
        ok("bob@example.org")
    );
    assert_eq!(u.check("carol@example.org", b"c", &c), Verdict::Invalid);
    assert_eq!(u.check("dave@example.org", b"", &c), Verdict::Invalid);
    assert_eq!(u.check("erin@example.org", b"e", &c), Verdict::Invalid);
    assert_eq!(u.check("nobody@example.org", b"a", &c), Verdict::Invalid);
    for bad_login in ["", "alice@example.org\n", "a\tb", "a:b", &"a".repeat(256)] {
        assert_eq!(
            u.check(bad_login, b"a", &c),
            Verdict::Invalid,
            "{bad_login:?}"
        );
    }
}

#[test]
fn load_errors_name_the_line_and_never_the_hash() {
    for (text, line, what) in [
        ("a:{MD5}xyz", 1, "unsupported password scheme {MD5}"),
        ("# c\n\na:{SSHA512}xyz", 3, "unsupported password scheme"),
        ("a:{PLAIN}x\nb:{ARGON2ID}$argon2i$v=19$m=32768,t=4,p=1$93zbBDgroc3PBimD6HfjLA$/FaFhr9aIYFkUSQRmFaClLiCdmZyO7up7W5p2IHLUec", 2, "the scheme says argon2id"),
        ("a:{ARGON2ID}nonsense", 1, "not an Argon2 PHC string"),
        ("a:{BLF-CRYPT}$2y$05$short", 1, "not a bcrypt hash"),
        ("a:{SHA512-CRYPT}$5$c.h25xVCv4SbXxYz$MyJNdBQOi2IILMYq0uD6asz6J2Ka18T0UWdmD6sR2A4", 1, "not a SHA512-CRYPT hash"),
        ("a:{SHA256-CRYPT}$5$salt$tooshort", 1, "not a SHA256-CRYPT hash"),
        ("a:{SHA512-CRYPT}$6$rounds=10$salt$x", 1, "rounds must be"),
        ("a:abDES.crypt", 1, "CRYPT: only"),
        ("a:$1$md5$crypt", 1, "CRYPT: only"),
        ("a:{PLAIN}x\nA:{PLAIN}y", 2, "also on line 1"),
        ("just-a-name", 1, "expected user:"),
        (":{PLAIN}x", 1, "empty or unusable user name"),
        ("a:{PLAIN}x::::::nopassword", 1, "`nopassword` is not supported"),
        ("a:{PLAIN}x::::::allow_nets=10.0.0.0/33", 1, "bad prefix length"),
        ("a:{PLAIN}x::::::allow_nets=somewhere", 1, "not an address"),
        ("a:{ARGON2ID}$argon2id$v=19$m=4194304,t=3,p=1$DRpYh/QEAF/kI5fXphS4pw$PUY8hcanctEBEzFjjZ7i+XNFxqMhXBld+3kl117RcP4", 1, "over 1 GiB"),
    ] {
        let e = Users::parse(text, "/etc/users").err().unwrap_or_else(|| panic!("{text:?} loaded"));
        assert!(e.starts_with(&format!("/etc/users:{line}: ")), "{text:?}: {e}");
        assert!(e.contains(what), "{text:?}: {e}");
        assert!(!e.contains("PUY8hc") && !e.contains("MyJNdB"), "{e}");
    }
}

#[tokio::test]
async fn the_file_is_reloaded_when_it_changes_and_fails_closed_when_broken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users");
    std::fs::write(&path, "alice:{PLAIN}one\n").unwrap();
    let auth = Authenticator::passwd_file(path.clone()).unwrap();
    assert!(auth.describe().contains("(1 users)"), "{}", auth.describe());
    let c = client();
    let check = |login: &'static str, pw: &'static str| {
        let auth = auth.clone();
        async move { auth.verify(login, &Secret::from(pw), &c).await.unwrap() }
    };
    let temporary = |login: &'static str, pw: &'static str| {
        let auth = auth.clone();
        async move { auth.verify(login, &Secret::from(pw), &c).await.is_err() }
    };
    assert_eq!(check("alice", "one").await, ok("alice"));

    // A new file put in place with rename, as editors and scripts do (a new inode).
    let tmp = dir.path().join("users.new");
    std::fs::write(&tmp, "alice:{PLAIN}two\nbob:{PLAIN}three\n").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert_eq!(check("alice", "one").await, Verdict::Invalid);
    assert_eq!(check("alice", "two").await, ok("alice"));
    assert_eq!(check("bob", "three").await, ok("bob"));

    // Rewritten in place, same size: the mtime/ctime tell.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&path, "alice:{PLAIN}TWO\nbob:{PLAIN}three\n").unwrap();
    assert_eq!(check("alice", "TWO").await, ok("alice"));

    // Locked the usual ways: nobody gets in with any password.
    std::fs::write(
        &path,
        "alice:!{PLAIN}TWO\nbob:{PLAIN}!three\ncarol:*\ndave:{PLAIN}\nerin:{PLAIN}x\n",
    )
    .unwrap();
    for (login, pw) in [
        ("alice", "TWO"),
        ("alice", "!{PLAIN}TWO"),
        ("bob", "three"),
        ("bob", "!three"),
        ("carol", "*"),
        ("dave", ""),
    ] {
        assert_eq!(check(login, pw).await, Verdict::Invalid, "{login} {pw:?}");
    }
    assert_eq!(check("erin", "x").await, ok("erin"));
    // Broken, then gone: fails closed (a temporary failure for everyone, never the users of
    // the version before, whom the admin may just have locked or deleted).
    std::fs::write(&path, "erin:{PLAIN}x\nbob:{NOSUCH}x\n").unwrap();
    assert!(temporary("erin", "x").await);
    std::fs::remove_file(&path).unwrap();
    assert!(temporary("erin", "x").await);
    assert!(temporary("bob", "three").await);
    // And fixed again.
    std::fs::write(&path, "alice:{PLAIN}five\n").unwrap();
    assert_eq!(check("alice", "five").await, ok("alice"));
    assert_eq!(check("bob", "three").await, Verdict::Invalid);

    let e = Authenticator::passwd_file(dir.path().join("missing")).unwrap_err();
    assert!(e.contains("missing"), "{e}");
}

#[tokio::test]
async fn checks_run_concurrently_off_the_async_workers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users");
    let (_, hash) = DOVEADM[2]; // BLF-CRYPT, cost 5: quick
    std::fs::write(&path, format!("alice:{hash}\n")).unwrap();
    let auth = Authenticator::passwd_file(path).unwrap();
    let c = client();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let auth = auth.clone();
            tokio::spawn(async move {
                let pw = if i % 2 == 0 { "secret" } else { "wrong" };
                auth.verify("alice", &Secret::from(pw), &c).await
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let want = if i % 2 == 0 {
            ok("alice")
        } else {
            Verdict::Invalid
        };
        assert_eq!(t.await.unwrap().unwrap(), want);
    }
}

// --- Dovecot -------------------------------------------------------------------------------

/// A Dovecot (master and auth service only) running in a temporary directory, stopped when
/// dropped.
struct Dovecot {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Dovecot {
    /// `None` (with a message) when dovecot is not installed.
    fn start(users: &str) -> Option<Dovecot> {
        let bin = ["/usr/sbin/dovecot", "/usr/local/sbin/dovecot"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // The auth process runs as the internal user and must reach the users file.
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::write(d.join("users"), users).unwrap();
        let (user, group) = if rustix::process::geteuid().is_root() {
            ("nobody".to_owned(), nobody_group())
        } else {
            // Unprivileged: everything runs as ourselves.
            let name = std::env::var("USER").unwrap_or_else(|_| "nobody".into());
            (name.clone(), name)
        };
        let conf = format!(
            "# Only the auth service: no protocols, nothing outside this directory.
protocols =
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
ssl = no
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
auth_mechanisms = plain login
auth_failure_delay = 0
auth_verbose = yes
passdb {{
  driver = passwd-file
  args = {dir}/users
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home=/nonexistent
}}
service auth {{
  unix_listener auth-client {{
    path = {dir}/auth-client
    mode = 0666
  }}
}}
",
            dir = d.display()
        );
        let conf_path = d.join("dovecot.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(bin)
            .arg("-F")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            // A group of its own, so that stopping it stops its auth process too.
            .process_group(0)
            .spawn()
            .unwrap();
        let dovecot = Dovecot {
            child: Some(child),
            dir,
        };
        let socket = dovecot.socket();
        let deadline = Instant::now() + Duration::from_secs(20);
        // The socket's file appears at bind(), before Dovecot listens on it: wait until a
        // connection is taken, not until the file exists (CI saw ECONNREFUSED in between).
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "dovecot did not start: {}",
                std::fs::read_to_string(dovecot.dir.path().join("dovecot.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(dovecot)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("auth-client")
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM to its process group: the auth process would otherwise go on serving
            // the connections it has (Dovecot lets them finish) after the master is gone.
            let pid = rustix::process::Pid::from_raw(child.id() as i32);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

fn nobody_group() -> String {
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    ["nogroup", "nobody"]
        .into_iter()
        .find(|g| groups.lines().any(|l| l.starts_with(&format!("{g}:"))))
        .unwrap_or("nogroup")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_dovecot_auth_service() {
    let (_, argon) = DOVEADM[0];
    let users = format!(
        "alice@example.org:{{PLAIN}}secret\nbob@example.org:{argon}\ncarol@example.org:{{PLAIN}}x::::::nologin\n"
    );
    let Some(mut dovecot) = tokio::task::block_in_place(|| Dovecot::start(&users)) else {
        println!("SKIPPED a_real_dovecot_auth_service: dovecot is not installed (apt-get install dovecot-core)");
        return;
    };
    let auth = Authenticator::dovecot(Endpoint::Unix(dovecot.socket()));
    assert!(auth.describe().contains("auth-client"));
    // Dovecot slows repeated failures from one address (anvil's auth penalty): each check
    // comes from an address of its own.
    let from = |n: u8| Client {
        peer: std::net::SocketAddr::from(([192, 0, 2, n], 40000)),
        ..client()
    };
    let c = from(1);
    let counter = std::sync::atomic::AtomicU8::new(10);
    let v = |login: &'static str, pw: &'static str| {
        let auth = auth.clone();
        let c = from(counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        async move { auth.verify(login, &Secret::from(pw), &c).await }
    };
    // Dovecot lower-cases (auth_username_format = %Lu) and returns the canonical name.
    assert_eq!(
        v("Alice@Example.ORG", "secret").await,
        Ok(ok("alice@example.org"))
    );
    assert_eq!(
        v("alice@example.org", "secret").await,
        Ok(ok("alice@example.org"))
    );
    assert_eq!(
        v("bob@example.org", "secret").await,
        Ok(ok("bob@example.org"))
    );
    assert_eq!(v("alice@example.org", "wrong").await, Ok(Verdict::Invalid));
    assert_eq!(
        v("nobody@example.org", "secret").await,
        Ok(Verdict::Invalid)
    );
    assert_eq!(v("carol@example.org", "x").await, Ok(Verdict::Invalid));
    // Never sent: a tab or newline in a login.
    assert_eq!(
        v("alice@example.org\tx", "secret").await,
        Ok(Verdict::Invalid)
    );
    // Several at once share the idle connections.
    let many: Vec<_> = (0..6)
        .map(|_| tokio::spawn(v("alice@example.org", "secret")))
        .collect();
    for t in many {
        assert_eq!(t.await.unwrap(), Ok(ok("alice@example.org")));
    }

    // Stopped: the idle connections are closed, a new one is refused.
    tokio::task::block_in_place(|| dovecot.stop());
    let t = v("alice@example.org", "secret").await;
    assert!(
        matches!(&t, Err(Temporary(why)) if why.contains("auth-client")),
        "{t:?}"
    );

    // Nothing listening at all: temporary too, at once.
    let none = Authenticator::dovecot(Endpoint::Unix(dovecot.dir.path().join("nothing")));
    let t = none.verify("a", &Secret::from("b"), &c).await;
    assert!(matches!(t, Err(Temporary(_))), "{t:?}");
}
