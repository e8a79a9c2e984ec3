//! Outbound DKIM signing (RFC 6376, Ed25519 per RFC 8463), done by the `mail-auth` crate: this
//! module only chooses what to sign, with which key, and where the signature goes.
//!
//! What is signed: a message that has remote recipients (only the queued copy: local
//! deliveries are not signed), from a sender allowed to relay (the loopback listener, or a
//! user logged in on a submission listener), whose header section has exactly one `From:`
//! field holding exactly one address, whose domain has a key (`--dkim-key`; the domain
//! exactly, not its parents or subdomains). Anything else is queued unsigned, and the log
//! says why at debug level.
//!
//! When: after the last byte of DATA and before the queue entry is committed, over the bytes
//! of the queued copy as they will go on the wire (our `Received:`, and the `Message-ID:` and
//! `Date:` we add, included). The relay sends that file as it is, so every retry sends the
//! same signed bytes.
//!
//! How, and the size limit: the queued copy is begun without its `Received:` prefix and the
//! message held in memory while it is at most [`crate::local::HOLD_IN_MEMORY`] octets; at the
//! end the prefix and the message are fed to mail-auth's streaming signer there, and the
//! copy is written once: signatures, prefix, message
//! ([`crate::local::Incoming::commit`]). A longer message is written as it arrives, then
//! read back from its temporary file for the signer, so only its header section is held in
//! memory (at most [`MAX_HEADER_SECTION`]; a longer one is refused with `552 5.3.4` when
//! signing is configured, since its `From:` cannot be found without reading it all), the body
//! hashed as it is read, whatever its size; the signatures and the prefix are then put in
//! front of the file ([`mailstore::PendingMessage::prepend`]), which copies it once more on
//! disk (a file cannot grow at its start).
//!
//! The crypto: RSA keys of 2048 bits and more sign with *ring* (rustls's crypto, already in
//! the program; three times faster than RustCrypto's `rsa` for RSA-2048), shorter RSA keys
//! and Ed25519 with mail-auth's RustCrypto keys. Signing runs on tokio's blocking pool.
//!
//! Which header fields ([`SIGNED`]): RFC 6376 §5.4.1's recommended set plus `Message-ID`,
//! `Sender`, `List-Unsubscribe-Post` (RFC 8058) and the MIME fields, each where present, every
//! occurrence; the fields a mail reader shows ([`OVERSIGNED`]: From, Reply-To, Subject, Date,
//! To, Cc) are oversigned (listed once more than they occur), so none can be added without
//! breaking the signature. Canonicalisation relaxed/relaxed, `rsa-sha256` or `ed25519-sha256`,
//! no `l=` (a signed body length lets anyone append to the body), no `x=`.
//!
//! Several keys for one domain (an RSA and an Ed25519 selector, as RFC 8463 §4 suggests while
//! not every verifier knows Ed25519) give one signature each, all from the same read.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use tokio_rustls::rustls::pki_types::PrivateKeyDer;

/// The header fields signed where present, in the order `h=` lists them.
pub const SIGNED: &[&str] = &[
    "From",
    "Sender",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-ID",
    "Content-Description",
    "Resent-Date",
    "Resent-From",
    "Resent-Sender",
    "Resent-To",
    "Resent-Cc",
    "Resent-Message-ID",
    "In-Reply-To",
    "References",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
];

/// The fields signed once more than they occur (an absent one is signed as absent).
pub const OVERSIGNED: &[&str] = &["From", "Reply-To", "Subject", "Date", "To", "Cc"];

/// The longest header section read to find `From:` (the body has no limit).
pub const MAX_HEADER_SECTION: usize = 1024 * 1024;

/// The smallest RSA key accepted (RFC 8301 §3.2: verifiers refuse smaller ones).
const MIN_RSA_BITS: usize = 1024;

/// `--dkim-key DOMAIN:SELECTOR:KEYFILE`, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// The signing domain (`d=`), in lower case, without a final dot.
    pub domain: String,
    /// The selector (`s=`): the key's record is `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// The private key, PEM.
    pub path: PathBuf,
}

/// Parses `DOMAIN:SELECTOR:KEYFILE` (the file name may hold colons; the first two end the
/// domain and the selector).
///
/// # Errors
/// A message for clap when a part is missing or not a valid name.
pub fn parse_key_spec(s: &str) -> Result<KeySpec, String> {
    let mut parts = s.splitn(3, ':');
    let (Some(domain), Some(selector), Some(path)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("{s:?}: expected DOMAIN:SELECTOR:KEYFILE"));
    };
    let domain = crate::config::parse_domain(domain)?
        .trim_end_matches('.')
        .to_ascii_lowercase();
    check_selector(selector)?;
    if path.is_empty() {
        return Err(format!("{s:?}: no key file after DOMAIN:SELECTOR:"));
    }
    Ok(KeySpec {
        domain,
        selector: selector.to_ascii_lowercase(),
        path: PathBuf::from(path),
    })
}

/// A selector is one or more DNS labels of letters, digits and hyphens (RFC 6376 §3.1).
///
/// # Errors
/// Why it is not.
pub fn check_selector(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63 * 4
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?}: a selector is DNS labels of letters, digits and '-' (e.g. s2026 or mail.rsa)"
        ))
    }
}

/// A private key, shared by every message signed with it.
#[derive(Clone)]
pub struct SharedKey(Arc<Signer>);

/// What computes a signature: mail-auth's own key types (RustCrypto), or for RSA keys of 2048
/// bits and more *ring*, which signs about three times faster (0.8 ms against 2.5 ms for
/// RSA-2048 on the benchmark machine; RSA signing was the relay's bottleneck) and is already
/// the TLS crypto of this program (rustls). *ring* refuses RSA keys under 2048 bits, which
/// mail-auth's RustCrypto signer keeps signing with.
enum Signer {
    MailAuth(DkimKey),
    RingRsa(ring::signature::RsaKeyPair, ring::rand::SystemRandom),
}

impl SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        match &*self.0 {
            Signer::MailAuth(k) => k.sign(input),
            Signer::RingRsa(pair, rng) => {
                // *ring* hashes what it signs: the canonicalised header fields, a few hundred
                // octets.
                let mut data = Vec::with_capacity(512);
                input.write(&mut data);
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    rng,
                    &data,
                    &mut signature,
                )
                .map_err(|e| {
                    mail_auth::Error::Crypto(mail_auth::common::crypto::CryptoError::Library(
                        format!("RSA signing failed: {e}"),
                    ))
                })?;
                Ok(signature)
            }
        }
    }

    fn algorithm(&self) -> mail_auth::common::crypto::Algorithm {
        match &*self.0 {
            Signer::MailAuth(k) => k.algorithm(),
            Signer::RingRsa(..) => mail_auth::common::crypto::Algorithm::RsaSha256,
        }
    }
}

/// The two key types DKIM signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// RSA (`k=rsa`, `a=rsa-sha256`), with its size in bits.
    Rsa(usize),
    /// Ed25519 (`k=ed25519`, `a=ed25519-sha256`, RFC 8463).
    Ed25519,
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyType::Rsa(bits) => write!(f, "rsa-{bits}"),
            KeyType::Ed25519 => f.write_str("ed25519"),
        }
    }
}

/// A loaded private key with what its DNS record publishes.
pub struct LoadedKey {
    /// The key, for signing.
    pub key: SharedKey,
    /// Its type.
    pub kind: KeyType,
    /// The public key as `p=` holds it: SubjectPublicKeyInfo DER for RSA, the raw 32 octets for
    /// Ed25519.
    pub public: Vec<u8>,
}

impl LoadedKey {
    /// The DNS TXT record's text: `v=DKIM1; k=...; p=...`.
    pub fn record(&self) -> String {
        let k = match self.kind {
            KeyType::Rsa(_) => "rsa",
            KeyType::Ed25519 => "ed25519",
        };
        let p = base64::engine::general_purpose::STANDARD.encode(&self.public);
        format!("v=DKIM1; k={k}; p={p}")
    }
}

/// Parses a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`, RSA or Ed25519) or PKCS#1
/// (`BEGIN RSA PRIVATE KEY`).
///
/// # Errors
/// What is wrong with it, in one line.
pub fn parse_key(pem: &[u8]) -> Result<LoadedKey, String> {
    let der = rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| format!("not a PEM private key: {e}"))?
        .ok_or(
            "no private key in the file (expected BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)",
        )?;
    let rsa = match &der {
        PrivateKeyDer::Pkcs1(d) => Some(
            rsa::RsaPrivateKey::from_pkcs1_der(d.secret_pkcs1_der())
                .map_err(|e| format!("bad RSA (PKCS#1) key: {e}"))?,
        ),
        PrivateKeyDer::Pkcs8(d) => rsa::RsaPrivateKey::from_pkcs8_der(d.secret_pkcs8_der()).ok(),
        _ => return Err("an EC (SEC1) key: DKIM signs with RSA or Ed25519 keys only".into()),
    };
    if let Some(rsa) = rsa {
        let bits = rsa.size() * 8;
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "a {bits}-bit RSA key: verifiers refuse keys under {MIN_RSA_BITS} bits (RFC 8301); make a 2048-bit one with `smtp-server dkim-keygen`"
            ));
        }
        let public = rsa
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| format!("cannot encode the public key: {e}"))?
            .into_vec();
        let ring_key = match &der {
            PrivateKeyDer::Pkcs1(d) => {
                ring::signature::RsaKeyPair::from_der(d.secret_pkcs1_der()).ok()
            }
            PrivateKeyDer::Pkcs8(d) => {
                ring::signature::RsaKeyPair::from_pkcs8(d.secret_pkcs8_der()).ok()
            }
            _ => None,
        };
        let signer = match ring_key {
            Some(pair) if bits >= 2048 => Signer::RingRsa(pair, ring::rand::SystemRandom::new()),
            _ => Signer::MailAuth(DkimKey::Rsa(
                RsaKey::<Sha256>::from_key_der(der).map_err(|e| format!("bad RSA key: {e}"))?,
            )),
        };
        return Ok(LoadedKey {
            key: SharedKey(Arc::new(signer)),
            kind: KeyType::Rsa(bits),
            public,
        });
    }
    let PrivateKeyDer::Pkcs8(d) = &der else {
        return Err("unsupported key format".into());
    };
    let key = Ed25519Key::from_pkcs8_der(d.secret_pkcs8_der())
        .map_err(|e| format!("a PKCS#8 key that is neither RSA nor Ed25519 ({e})"))?;
    let public = key.public_key();
    Ok(LoadedKey {
        key: SharedKey(Arc::new(Signer::MailAuth(DkimKey::Ed25519(key)))),
        kind: KeyType::Ed25519,
        public,
    })
}

/// Reads and parses a key file; the flag says whether its group or others may read it.
///
/// # Errors
/// The file cannot be read, or [`parse_key`]'s error.
pub fn load_key(path: &Path) -> Result<(LoadedKey, bool), String> {
    use std::os::unix::fs::PermissionsExt;
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let exposed = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o044 != 0)
        .unwrap_or(false);
    let key = parse_key(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((key, exposed))
}

/// One signing key of a domain.
struct DomainKey {
    selector: String,
    key: SharedKey,
    kind: KeyType,
}

/// The signing keys, by domain (`--dkim-key`).
#[derive(Default)]
pub struct Keys {
    by_domain: HashMap<String, Vec<DomainKey>>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut l = f.debug_list();
        for (d, keys) in &self.by_domain {
            for k in keys {
                l.entry(&format_args!("{}._domainkey.{d} ({})", k.selector, k.kind));
            }
        }
        l.finish()
    }
}

impl Keys {
    /// Adds a loaded key.
    ///
    /// # Errors
    /// The same domain and selector were given twice.
    pub fn add(&mut self, spec: &KeySpec, key: LoadedKey) -> Result<(), String> {
        let list = self.by_domain.entry(spec.domain.clone()).or_default();
        if list.iter().any(|k| k.selector == spec.selector) {
            return Err(format!("{}:{}: given twice", spec.domain, spec.selector));
        }
        list.push(DomainKey {
            selector: spec.selector.clone(),
            key: key.key,
            kind: key.kind,
        });
        Ok(())
    }

    /// Whether there is no key at all.
    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    /// `selector._domainkey.domain (type)` for each key, for the start-up log.
    pub fn describe(&self) -> String {
        format!("{self:?}")
    }
}

/// What signing did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Signed: the `DKIM-Signature:` fields (folded, each ending in CRLF), to put in front, and
    /// `domain/selector` for each, for the log.
    Signed {
        /// The fields, in the order they go in front of the message.
        fields: String,
        /// `d=` and `s=` of each.
        keys: Vec<(String, String)>,
    },
    /// Not signed, and why (for the log).
    Unsigned(&'static str),
}

/// Why a message could not be signed when it should have been.
#[derive(Debug)]
pub enum SignError {
    /// The header section is longer than [`MAX_HEADER_SECTION`] (refused: `552 5.3.4`).
    HeaderTooLong,
    /// Reading the queued copy failed (`451`).
    Io(std::io::Error),
    /// mail-auth failed to sign (`451`).
    Sign(String),
}

impl fmt::Display for SignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignError::HeaderTooLong => write!(
                f,
                "header section longer than {MAX_HEADER_SECTION} octets, too long to sign"
            ),
            SignError::Io(e) => write!(f, "cannot read the message to sign it: {e}"),
            SignError::Sign(e) => write!(f, "DKIM signing failed: {e}"),
        }
    }
}

/// The end of the header section in `buf` (the offset just after its blank line), if there.
fn header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Why a logged-in submitter's message is not signed: its `From:` address is not one the
/// login may use as its envelope sender.
pub const NOT_THE_LOGINS: &str = "the From: address is not one the login may send as";

/// Whether a logged-in submitter may have mail from `From:` address signed (the rule of
/// their envelope sender, [`crate::policy::Policy::sender_owned_by`]).
pub type FromAllowed = dyn Fn(&str) -> bool + Send + Sync;

/// Reads the message from `r` and computes its signatures (see the module doc). With
/// `from_allowed` (a logged-in submitter's message) only a `From:` address it allows is
/// signed ([`NOT_THE_LOGINS`] otherwise): a user may not get mail signed for a domain of
/// the server's they do not send as. Without it (the loopback listener's programs) any
/// `From:` of a domain with a key is.
///
/// # Errors
/// See [`SignError`].
pub fn sign(
    keys: &Keys,
    from_allowed: Option<&FromAllowed>,
    mut r: impl Read,
) -> Result<Outcome, SignError> {
    let mut head = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut eof = false;
    let header_len = loop {
        let scanned = head.len().saturating_sub(3);
        if let Some(end) = header_end(&head[scanned.min(head.len())..]) {
            break scanned + end;
        }
        if eof {
            break head.len();
        }
        if head.len() > MAX_HEADER_SECTION {
            return Err(SignError::HeaderTooLong);
        }
        let n = r.read(&mut chunk).map_err(SignError::Io)?;
        if n == 0 {
            eof = true;
        }
        let scanned = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = header_end(&head[scanned..]) {
            break scanned + end;
        }
    };
    if header_len > MAX_HEADER_SECTION {
        return Err(SignError::HeaderTooLong);
    }
    let (address, domain, names) = match choose(&head[..header_len]) {
        Ok(x) => x,
        Err(why) => return Ok(Outcome::Unsigned(why)),
    };
    if from_allowed.is_some_and(|allowed| !allowed(&address)) {
        return Ok(Outcome::Unsigned(NOT_THE_LOGINS));
    }
    let Some(domain_keys) = keys.by_domain.get(&domain) else {
        return Ok(Outcome::Unsigned("no --dkim-key for the From: domain"));
    };
    let signers: Vec<_> = domain_keys
        .iter()
        .map(|k| {
            DkimSigner::from_key(k.key.clone())
                .domain(domain.clone())
                .selector(k.selector.clone())
                .headers(names.iter().copied())
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed)
        })
        .collect();
    let mut streams: Vec<_> = signers.iter().map(DkimSigner::sign_streaming).collect();
    for s in &mut streams {
        s.write(&head);
    }
    loop {
        let n = r.read(&mut chunk).map_err(SignError::Io)?;
        if n == 0 {
            break;
        }
        for s in &mut streams {
            s.write(&chunk[..n]);
        }
    }
    let mut fields = String::new();
    let mut used = Vec::new();
    for (s, k) in streams.into_iter().zip(domain_keys) {
        let sig = s.finish().map_err(|e| SignError::Sign(e.to_string()))?;
        fields.push_str(&sig.to_header());
        used.push((domain.clone(), k.selector.clone()));
    }
    Ok(Outcome::Signed { fields, keys: used })
}

/// The `From:` address of a header section, its domain and the names for `h=` (see
/// [`SIGNED`]), or why the message is not to be signed.
fn choose(header: &[u8]) -> Result<(String, String, Vec<&'static str>), &'static str> {
    let fields = crate::from_field::header_fields(header);
    // The From: field read strictly (see `from_field`): a field parsers read differently
    // is not signed, so the address signed for is the one every reader shows.
    let values = crate::from_field::from_values(fields.iter().copied());
    let value = match values.as_slice() {
        [] => return Err("no From: field"),
        [one] => *one,
        _ => return Err("several From: fields"),
    };
    let list = crate::from_field::mailboxes(value)?;
    let mailbox = match list.as_slice() {
        [one] if one.in_group => return Err("From: is a group"),
        [one] => one,
        [] => return Err("From: holds no address"),
        _ => return Err("From: does not hold exactly one address"),
    };
    if !mailbox.has_domain_name() {
        return Err("From: address has no domain name");
    }
    let address = mailbox.address();
    let domain = mailbox.domain.clone();
    let mut names = Vec::new();
    for &name in SIGNED {
        let present = fields
            .iter()
            .any(|(n, _)| n.trim_ascii().eq_ignore_ascii_case(name.as_bytes()));
        if present {
            names.push(name);
        }
        // Once more (present or not) for the oversigned: no such field can be added.
        if OVERSIGNED.contains(&name) {
            names.push(name);
        }
    }
    Ok((address, domain, names))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    // A throwaway key made for these tests (`openssl genpkey -algorithm ed25519`).
    pub(crate) const ED25519_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEINyZr6bbFCoOufsyl/ETr9rUGLU/kZ41N7eoGdmuL1sI
-----END PRIVATE KEY-----
";

    fn keys_for(domain: &str, selector: &str, pem: &str) -> (Keys, String) {
        let key = parse_key(pem.as_bytes()).unwrap();
        let record = key.record();
        let mut keys = Keys::default();
        let spec = KeySpec {
            domain: domain.into(),
            selector: selector.into(),
            path: "k.pem".into(),
        };
        keys.add(&spec, key).unwrap();
        (keys, record)
    }

    fn tags(field: &str) -> HashMap<String, String> {
        let unfolded: String = field
            .trim_start_matches("DKIM-Signature:")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        unfolded
            .split(';')
            .filter_map(|t| t.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Verifies `message` with mail-auth against a loopback DNS that holds `record`.
    fn verify(message: &[u8], name: &str, record: &str) -> Vec<mail_auth::DkimResult> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dns = smtp_client::testdns::TestDns::builder()
                .txt(name, record)
                .start()
                .await
                .unwrap();
            let authenticator = test_authenticator(dns.addr());
            let parsed = mail_auth::AuthenticatedMessage::parse(message).unwrap();
            authenticator
                .verify_dkim(&parsed)
                .await
                .into_iter()
                .map(|o| o.result().clone())
                .collect()
        })
    }

    fn test_authenticator(addr: std::net::SocketAddr) -> mail_auth::MessageAuthenticator {
        crate::dkim::test_support::authenticator(addr)
    }

    #[test]
    fn key_specs() {
        let k = parse_key_spec("Example.ORG.:s2026:/etc/k:1.pem").unwrap();
        assert_eq!(k.domain, "example.org");
        assert_eq!(k.selector, "s2026");
        assert_eq!(k.path, PathBuf::from("/etc/k:1.pem"));
        for bad in [
            "example.org",
            "example.org:s1",
            "example.org:s1:",
            "ex..org:s:f",
            "e.org:-s:f",
            "e.org:s_1:f",
        ] {
            assert!(parse_key_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_that_are_not_usable_are_refused() {
        assert!(parse_key(b"not a key").is_err());
        assert!(
            parse_key(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err()
        );
    }

    #[test]
    fn ed25519_signature_verifies_and_oversigns_from() {
        let (keys, record) = keys_for("example.test", "ed", ED25519_PEM);
        assert!(record.starts_with("v=DKIM1; k=ed25519; p="), "{record}");
        let msg = b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n\
From: Alice <alice@Example.TEST>\r\nTo: bob@remote.test\r\nSubject: hi\r\n\r\n\
..dot line\r\n8-bit \xc3\xa9t\xc3\xa9\r\n\r\n\r\n";
        for piece in [1usize, 7, 64 * 1024] {
            struct Slow<'a>(&'a [u8], usize);
            impl Read for Slow<'_> {
                fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                    let n = self.0.len().min(self.1).min(buf.len());
                    buf[..n].copy_from_slice(&self.0[..n]);
                    self.0 = &self.0[n..];
                    Ok(n)
                }
            }
            let Outcome::Signed { fields, keys: used } =
                sign(&keys, None, Slow(msg, piece)).unwrap()
            else {
                panic!("not signed")
            };
            assert_eq!(used, [("example.test".to_owned(), "ed".to_owned())]);
            assert!(fields.starts_with("DKIM-Signature: "), "{fields}");
            assert!(fields.ends_with("\r\n"), "{fields}");
            assert_eq!(fields.matches("DKIM-Signature:").count(), 1);
            let t = tags(&fields);
            assert_eq!(t["d"], "example.test");
            assert_eq!(t["s"], "ed");
            assert_eq!(t["a"], "ed25519-sha256");
            assert_eq!(t["c"], "relaxed/relaxed");
            let h: Vec<String> = t["h"].split(':').map(str::to_ascii_lowercase).collect();
            assert_eq!(h.iter().filter(|n| *n == "from").count(), 2, "{h:?}");
            assert_eq!(h.iter().filter(|n| *n == "subject").count(), 2, "{h:?}");
            // Absent oversigned fields are listed once, absent others not at all.
            assert_eq!(h.iter().filter(|n| *n == "reply-to").count(), 1, "{h:?}");
            assert!(
                !h.iter().any(|n| n == "list-id" || n == "received"),
                "{h:?}"
            );
            assert!(!t.contains_key("l"), "no body length");
            let mut signed = fields.into_bytes();
            signed.extend_from_slice(msg);
            let results = verify(&signed, "ed._domainkey.example.test", &record);
            assert_eq!(results, [mail_auth::DkimResult::Pass], "piece {piece}");
        }
    }

    #[test]
    fn rsa_keys_from_keygen_in_pkcs8_and_pkcs1_sign_and_verify() {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::EncodePrivateKey;
        let pem = crate::cmd::dkim::generate(crate::cmd::dkim::Algorithm::Rsa).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
        let rsa = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).unwrap();
        let pkcs1 = rsa.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        // A 1024-bit key, which *ring* refuses: signed by mail-auth's RustCrypto key instead.
        let short = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024)
            .unwrap()
            .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap();
        for pem in [pem.as_str(), pkcs1.as_str(), short.as_str()] {
            let (keys, record) = keys_for("example.test", "rsa", pem);
            assert!(record.starts_with("v=DKIM1; k=rsa; p=MI"), "{record}");
            let ring = matches!(
                &*keys.by_domain["example.test"][0].key.0,
                Signer::RingRsa(..)
            );
            assert_eq!(ring, pem != short.as_str(), "RSA-2048 signs with ring");
            let msg = b"From: a@example.test\r\nTo: b@remote.test\r\n\r\nHi.\r\n";
            let Outcome::Signed { fields, .. } = sign(&keys, None, &msg[..]).unwrap() else {
                panic!("not signed")
            };
            assert_eq!(tags(&fields)["a"], "rsa-sha256");
            let mut signed = fields.into_bytes();
            signed.extend_from_slice(msg);
            assert_eq!(
                verify(&signed, "rsa._domainkey.example.test", &record),
                [mail_auth::DkimResult::Pass]
            );
            // A changed body fails.
            signed.extend_from_slice(b"more\r\n");
            assert_ne!(
                verify(&signed, "rsa._domainkey.example.test", &record),
                [mail_auth::DkimResult::Pass]
            );
        }
    }

    #[test]
    fn not_signed_without_a_single_from_with_a_key() {
        let (keys, _) = keys_for("example.test", "ed", ED25519_PEM);
        for (msg, why) in [
            (&b"To: b@r\r\n\r\nx\r\n"[..], "no From: field"),
            (
                b"From: a@example.test\r\nFrom: c@example.test\r\n\r\nx\r\n",
                "several From: fields",
            ),
            (
                b"From: a@example.test, c@example.test\r\n\r\nx\r\n",
                "From: does not hold exactly one address",
            ),
            (
                b"From: a@other.test\r\n\r\nx\r\n",
                "no --dkim-key for the From: domain",
            ),
            (
                b"From: a@sub.example.test\r\n\r\nx\r\n",
                "no --dkim-key for the From: domain",
            ),
            // Fields parsers read differently are not signed for any reading.
            (
                b"From: bob@example.test <alice@example.test>\r\n\r\nx\r\n",
                "From: has more after an address than a comma and another",
            ),
            (
                b"From: Bob <bob@example.test> <a@example.test>\r\n\r\nx\r\n",
                "From: has more after an address than a comma and another",
            ),
            (
                b"From: team: a@example.test;\r\n\r\nx\r\n",
                "From: is a group",
            ),
            (
                b"From: a@[127.0.0.1]\r\n\r\nx\r\n",
                "From: address has no domain name",
            ),
        ] {
            assert_eq!(
                sign(&keys, None, msg).unwrap(),
                Outcome::Unsigned(why),
                "{msg:?}"
            );
        }
    }

    #[test]
    fn a_huge_header_section_is_refused_a_huge_body_is_not() {
        let (keys, _) = keys_for("example.test", "ed", ED25519_PEM);
        let mut msg = b"From: a@example.test\r\n".to_vec();
        while msg.len() <= MAX_HEADER_SECTION + 10 {
            msg.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        msg.extend_from_slice(b"\r\nbody\r\n");
        assert!(matches!(
            sign(&keys, None, &msg[..]),
            Err(SignError::HeaderTooLong)
        ));
        let mut big = b"From: a@example.test\r\n\r\n".to_vec();
        big.resize(3 * MAX_HEADER_SECTION, b'x');
        assert!(matches!(
            sign(&keys, None, &big[..]),
            Ok(Outcome::Signed { .. })
        ));
    }

    #[test]
    fn a_message_without_a_body_is_signed() {
        let (keys, record) = keys_for("example.test", "ed", ED25519_PEM);
        let msg = b"From: a@example.test\r\nSubject: only headers\r\n";
        let Outcome::Signed { fields, .. } = sign(&keys, None, &msg[..]).unwrap() else {
            panic!("not signed")
        };
        let mut signed = fields.into_bytes();
        signed.extend_from_slice(msg);
        signed.extend_from_slice(b"\r\n");
        assert_eq!(
            verify(&signed, "ed._domainkey.example.test", &record),
            [mail_auth::DkimResult::Pass]
        );
    }
}

/// Helpers the tests share (unit tests here, and the daemon's own checks).
#[cfg(test)]
pub(crate) mod test_support {
    /// A mail-auth verifier whose only name server is `addr` (a loopback test DNS).
    pub fn authenticator(addr: std::net::SocketAddr) -> mail_auth::MessageAuthenticator {
        let resolver =
            smtp_client::Resolver::with_nameserver(addr).expect("a resolver on loopback");
        mail_auth::MessageAuthenticator(resolver.hickory().clone())
    }
}
