//! `smtp-server dkim-keygen` (a signing key for `--dkim-key` and the TXT record that publishes
//! it) and `smtp-server dns-records` (the SPF, DMARC and DKIM records a domain owner publishes
//! for mail sent through this server). Both print zone-file lines on standard output, with
//! `;` comments around them; see DAEMON.md, "DKIM, SPF and DMARC for your domain".

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::dkim::{check_selector, load_key, parse_key, KeySpec};

/// `--dkim-key`, shown in `--help`.
pub const DKIM_KEY_HELP: &str = "DKIM-sign (RFC 6376) mail whose From: domain is DOMAIN \
with the private key in KEYFILE, published as SELECTOR._domainkey.DOMAIN. Repeatable: one \
or more keys per domain (an RSA and an Ed25519 selector give two signatures).\n\
KEYFILE is PEM: PKCS#8 (BEGIN PRIVATE KEY: RSA or Ed25519, RFC 8463) or PKCS#1 (BEGIN RSA \
PRIVATE KEY); RSA keys have at least 1024 bits (2048 advised). Make one with \
`smtp-server dkim-keygen`, which also prints the DNS record. The file should be readable by \
the daemon's user only (chmod 600): a warning is logged otherwise. An unreadable or invalid key \
stops the daemon at start (exit 2).\n\
Signed: mail with remote recipients from the loopback listener or a logged-in submission user \
whose header section has exactly one From: address, in DOMAIN exactly (not a subdomain). The \
signature covers the bytes sent (our Received:, Message-ID: and Date: included), is computed \
once before the message is queued (retries send the same bytes), relaxed/relaxed, with From, \
Reply-To, Subject, Date, To and Cc oversigned. Header sections over 1 MiB are refused (552 \
5.3.4); the body is hashed as it is read, whatever its size.";

/// The key algorithm for `dkim-keygen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Algorithm {
    /// RSA, 2048 bits (`rsa-sha256`): every verifier knows it.
    Rsa,
    /// Ed25519 (`ed25519-sha256`, RFC 8463): short, but not every verifier knows it yet; sign
    /// with an RSA key as well.
    Ed25519,
}

/// `smtp-server dkim-keygen`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "The key file is created with mode 0600 and never overwritten. \
The record goes to standard output as a zone-file line (comments start with `;`):\n  \
smtp-server dkim-keygen --domain example.org --selector s2026 --key-out /etc/smtp-server/example.org.s2026.pem\n\
then publish the TXT record and add to the daemon's options:\n  \
--dkim-key example.org:s2026:/etc/smtp-server/example.org.s2026.pem\n\
Check the record with `dig +short TXT s2026._domainkey.example.org`."
)]
pub struct KeygenArgs {
    /// The domain that signs (d=): the domain of the From: addresses.
    #[arg(long, value_name = "DOMAIN", value_parser = crate::config::parse_domain)]
    pub domain: String,
    /// The selector (s=): the record's name is SELECTOR._domainkey.DOMAIN.
    #[arg(long, value_name = "SELECTOR", value_parser = parse_selector)]
    pub selector: String,
    /// Where to write the private key (PEM, PKCS#8); must not exist yet.
    #[arg(long, value_name = "FILE")]
    pub key_out: PathBuf,
    /// Key algorithm.
    #[arg(long, value_enum, ignore_case = true, default_value_t = Algorithm::Rsa)]
    pub algorithm: Algorithm,
}

/// DMARC's requested policy (`p=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    /// Monitor only: receivers deliver as before and send reports.
    None,
    /// Failing mail goes to the spam folder.
    Quarantine,
    /// Failing mail is refused.
    Reject,
}

/// `smtp-server dns-records`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Example:\n  \
smtp-server dns-records --domain example.org --hostname mx.example.org \\\n    \
--dkim-key example.org:s2026:/etc/smtp-server/example.org.s2026.pem\n\
Publish each record in the domain's zone, then check them: \
`dig +short TXT example.org`, `dig +short TXT _dmarc.example.org`, \
`dig +short TXT s2026._domainkey.example.org`, and send a message to a checking service \
(see DAEMON.md).")]
pub struct RecordsArgs {
    /// The domain of the From: addresses mail is sent as.
    #[arg(long, value_name = "DOMAIN", value_parser = crate::config::parse_domain)]
    pub domain: String,
    /// This server's name (its A/AAAA records are the addresses it sends from) [default: the
    /// machine's hostname].
    #[arg(long, value_name = "NAME", value_parser = crate::config::parse_domain)]
    pub hostname: Option<String>,
    /// The addresses this server sends from (repeatable); SPF then lists them (ip4:/ip6:)
    /// instead of the host name (a:).
    #[arg(long, value_name = "ADDR")]
    pub ip: Vec<IpAddr>,
    /// A key given to the daemon (repeatable): its DKIM record is printed too.
    #[arg(long = "dkim-key", value_name = "DOMAIN:SELECTOR:KEYFILE",
          value_parser = crate::dkim::parse_key_spec)]
    pub dkim_keys: Vec<KeySpec>,
    /// DMARC policy for mail that fails: start with none (reports only), then quarantine or
    /// reject once the reports show all your mail passes.
    #[arg(long, value_enum, ignore_case = true, default_value_t = Policy::None)]
    pub dmarc_policy: Policy,
    /// Where receivers send DMARC aggregate reports [default: postmaster@DOMAIN].
    #[arg(long, value_name = "ADDRESS")]
    pub report_to: Option<String>,
}

fn parse_selector(s: &str) -> Result<String, String> {
    check_selector(s)?;
    Ok(s.to_ascii_lowercase())
}

fn fail(cmd: &str, msg: &str) -> ExitCode {
    eprintln!("smtp-server {cmd}: {msg}");
    ExitCode::from(2)
}

fn print(cmd: &str, text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(cmd, &format!("cannot write the records: {e}")),
    }
}

/// A zone-file TXT line: the text cut into character-strings of at most 255 octets (a
/// 2048-bit key's record is longer; resolvers join them again, RFC 6376 §3.6.2.2).
pub fn txt_line(name: &str, text: &str) -> String {
    let parts: Vec<String> = text
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("{name}. IN TXT {}\n", parts.join(" "))
}

/// Runs `dkim-keygen`.
pub fn keygen(args: &KeygenArgs) -> ExitCode {
    const CMD: &str = "dkim-keygen";
    let domain = args.domain.trim_end_matches('.').to_ascii_lowercase();
    let pem = match generate(args.algorithm) {
        Ok(p) => p,
        Err(e) => return fail(CMD, &format!("cannot make the key: {e}")),
    };
    let key = match parse_key(pem.as_bytes()) {
        Ok(k) => k,
        Err(e) => return fail(CMD, &format!("the new key does not load: {e}")),
    };
    if let Err(e) = write_new(&args.key_out, pem.as_bytes()) {
        return fail(CMD, &format!("--key-out {}: {e}", args.key_out.display()));
    }
    let name = format!("{}._domainkey.{domain}", args.selector);
    let text = format!(
        "; DKIM key for {domain} ({}), written to {}\n\
         ; Publish this TXT record, then give the daemon\n\
         ;   --dkim-key {domain}:{}:{}\n{}",
        key.kind,
        args.key_out.display(),
        args.selector,
        args.key_out.display(),
        txt_line(&name, &key.record())
    );
    print(CMD, &text)
}

/// A new private key, PEM (PKCS#8).
pub(crate) fn generate(algorithm: Algorithm) -> Result<String, String> {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    match algorithm {
        Algorithm::Rsa => {
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .map_err(|e| e.to_string())?;
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| e.to_string())?;
            Ok(pem.to_string())
        }
        Algorithm::Ed25519 => {
            let der = mail_auth::common::crypto::Ed25519Key::generate_pkcs8()
                .map_err(|e| e.to_string())?;
            rsa::pkcs8::der::pem::encode_string("PRIVATE KEY", LineEnding::LF, &der)
                .map_err(|e| e.to_string())
        }
    }
}

/// Creates `path` (never over an existing file) with mode 0600 and `bytes`, synced.
fn write_new(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A `--report-to` address as it may go in a `rua=mailto:` URI of a TXT record: a leading
/// `mailto:` dropped, a dot-atom local part of letters, digits, `_`, `+` and `-` (no `!`,
/// which RFC 7489 §6.2 reads as the size limit, nor URI syntax) and a host name of two
/// labels or more of letters, digits and `-` (a mail domain, RFC 5321 §4.1.2: no `_`), the
/// top one not numeric; `None` for anything else (lists, tags, quotes, literals), which
/// would break the record or smuggle tags into it.
fn report_address(a: &str) -> Option<String> {
    let a = a.trim();
    let a = match a.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("mailto:") => &a[7..],
        _ => a,
    };
    let (local, domain) = a.rsplit_once('@')?;
    // Only what a URI needs no escaping for (RFC 6068: `?`, `#`, `%` would start a query,
    // a fragment, an escape).
    let local_ok = local.split('.').all(|w| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-'))
    });
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    let domain_ok =
        domain.contains('.') && !domain.contains('_') && crate::from_field::is_host_name(domain);
    (local_ok && domain_ok).then(|| format!("{local}@{}", domain.to_ascii_lowercase()))
}

/// Runs `dns-records`.
pub fn records(args: &RecordsArgs) -> ExitCode {
    const CMD: &str = "dns-records";
    let domain = args.domain.trim_end_matches('.').to_ascii_lowercase();
    let host = args
        .hostname
        .clone()
        .unwrap_or_else(crate::config::machine_hostname)
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let mut out = String::new();
    let senders = if args.ip.is_empty() {
        format!("a:{host}")
    } else {
        args.ip
            .iter()
            .map(|ip| match ip {
                IpAddr::V4(a) => format!("ip4:{a}"),
                IpAddr::V6(a) => format!("ip6:{a}"),
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    out.push_str(&format!(
        "; SPF (RFC 7208): the hosts that send mail as @{domain}; -all: no others.\n\
         ; Add the mechanisms of any other service that sends as {domain} (one SPF record per name).\n{}",
        txt_line(&domain, &format!("v=spf1 {senders} -all"))
    ));
    let report_to = match &args.report_to {
        Some(a) => match report_address(a) {
            Some(a) => a,
            None => {
                return fail(
                    CMD,
                    &format!(
                        "--report-to {a:?}: not a plain address (local@example.org: letters, digits and . _ + - in the local part, no !, quotes or lists)"
                    ),
                )
            }
        },
        None => format!("postmaster@{domain}"),
    };
    let policy = match args.dmarc_policy {
        Policy::None => "none",
        Policy::Quarantine => "quarantine",
        Policy::Reject => "reject",
    };
    out.push_str(&format!(
        "; DMARC (RFC 7489): what receivers do with mail From: @{domain} that passes neither an\n\
         ; aligned SPF nor an aligned DKIM check, and where they report (make {report_to} exist).\n{}",
        txt_line(
            &format!("_dmarc.{domain}"),
            &format!("v=DMARC1; p={policy}; rua=mailto:{report_to}; adkim=r; aspf=r")
        )
    ));
    // Reports to another domain are sent only if that domain agrees (RFC 7489 §7.1).
    // (Already lower case and without a final dot, as report_address gives it.)
    if let Some((_, report_domain)) = report_to.rsplit_once('@') {
        if report_domain != domain && !report_domain.ends_with(&format!(".{domain}")) {
            out.push_str(&format!(
                "; {report_domain} must agree to receive {domain}'s reports (RFC 7489 7.1): in ITS zone,
{}",
                txt_line(
                    &format!("{domain}._report._dmarc.{report_domain}"),
                    "v=DMARC1"
                )
            ));
        }
    }
    if args.dkim_keys.is_empty() {
        out.push_str(&format!(
            "; DKIM: make a key with `smtp-server dkim-keygen --domain {domain} --selector S --key-out FILE`\n\
             ; (or give --dkim-key here to print its record again).\n"
        ));
    }
    for spec in &args.dkim_keys {
        let key = match load_key(&spec.path) {
            Ok((k, _)) => k,
            Err(e) => return fail(CMD, &format!("--dkim-key: {e}")),
        };
        if spec.domain != domain {
            out.push_str(&format!(
                "; Note: this key is {}'s, not {domain}'s: publish it in {}'s zone.
",
                spec.domain, spec.domain
            ));
        }
        out.push_str(&format!(
            "; DKIM (RFC 6376): the public key of {} ({}).\n{}",
            spec.path.display(),
            key.kind,
            txt_line(
                &format!("{}._domainkey.{}", spec.selector, spec.domain),
                &key.record()
            )
        ));
    }
    out.push_str(&format!(
        "; Reverse DNS: the PTR record of each address {host} sends from names {host}, and\n\
         ; {host} resolves back to it (A/AAAA); large receivers refuse mail from addresses without.\n"
    ));
    print(CMD, &out)
}
