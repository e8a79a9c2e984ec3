//! SASL mechanisms for SMTP AUTH (RFC 4954), both sides, sans-IO.
//!
//! The server side is a [`ServerExchange`]: started with the client's mechanism and optional
//! initial response, it is given each further client response and answers with a
//! [`Step`]: a challenge to send (`334`), the decoded [`Credentials`] for the caller to check,
//! or a malformed exchange. [`crate::session::Session`] drives it; a driver of its own can too.
//! The client side, [`ClientExchange`], produces the initial response and the answers to the
//! server's challenges.
//!
//! Both work on decoded bytes; base64 (RFC 4648, with padding, no line breaks) is
//! [`encode_base64`] / [`decode_base64`].
//!
//! Mechanisms: `PLAIN` (RFC 4616) and `LOGIN` (the de-facto mechanism of
//! draft-murchison-sasl-login, still the only one some clients offer). Both send the password
//! itself, so they belong on encrypted connections only; the session does not offer them
//! before TLS unless told to. [`Mechanism`] is `#[non_exhaustive]`: a challenge-response
//! mechanism (SCRAM) or a token mechanism (XOAUTH2) is a new variant and new states of the
//! exchange, not a new state machine in the session, which only moves challenges and
//! responses.
//!
//! ```
//! use smtp_proto::sasl::{ClientExchange, Mechanism, ServerExchange, Step};
//!
//! // The client starts PLAIN with an initial response; the server decodes it.
//! let mut client = ClientExchange::new(Mechanism::Plain, "alice@example.org", "s3cret");
//! let initial = client.initial_response();
//! let (_server, step) = ServerExchange::start(Mechanism::Plain, initial.as_deref());
//! let Step::Done(creds) = step else { panic!("PLAIN with an initial response is one step") };
//! assert_eq!(creds.authcid(), "alice@example.org");
//! assert_eq!(creds.secret().expose(), b"s3cret");
//! // The secret never shows in logs.
//! assert!(!format!("{creds:?}").contains("s3cret"));
//! ```

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Longest decoded identity accepted from a client (authorisation or authentication id).
pub const MAX_IDENTITY: usize = 255;
/// Longest decoded secret accepted from a client.
pub const MAX_SECRET: usize = 1024;

/// A SASL mechanism this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Mechanism {
    /// `PLAIN` (RFC 4616): authorisation id, authentication id and password in one message.
    Plain,
    /// `LOGIN`: user name and password, each after a challenge.
    Login,
}

impl Mechanism {
    /// Every mechanism, strongest first (the order a client prefers them in).
    pub const ALL: &'static [Mechanism] = &[Mechanism::Plain, Mechanism::Login];

    /// The registered name, upper case.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }

    /// The mechanism named `name` (case-insensitive), if implemented.
    pub fn from_name(name: &str) -> Option<Mechanism> {
        Self::ALL
            .iter()
            .copied()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// Whether the mechanism sends the password itself (then it needs an encrypted channel).
    pub fn sends_password(self) -> bool {
        matches!(self, Mechanism::Plain | Mechanism::Login)
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A password or other secret. Its `Debug` and `Display` never show it; read it with
/// [`Secret::expose`]. The bytes are overwritten when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// A secret holding `bytes`.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    /// The secret's bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as UTF-8, if it is.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s.as_bytes())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret::new(s.into_bytes())
    }
}

/// What a client presented: who it is, as whom it wants to act, and its secret. The caller
/// checks them (a password database, Dovecot's auth service) and decides.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    mechanism: Mechanism,
    authzid: Option<String>,
    authcid: String,
    secret: Secret,
}

impl Credentials {
    /// Credentials as a mechanism decoded them. `authzid` `None` (or empty) means "act as
    /// myself".
    pub fn new(
        mechanism: Mechanism,
        authzid: Option<String>,
        authcid: impl Into<String>,
        secret: Secret,
    ) -> Self {
        Credentials {
            mechanism,
            authzid: authzid.filter(|a| !a.is_empty()),
            authcid: authcid.into(),
            secret,
        }
    }

    /// The mechanism that produced them.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The authorisation identity, when the client asked to act as someone other than
    /// [`Credentials::authcid`] (PLAIN only). Most servers refuse any that differs.
    pub fn authzid(&self) -> Option<&str> {
        self.authzid.as_deref()
    }

    /// The authentication identity: the login name.
    pub fn authcid(&self) -> &str {
        &self.authcid
    }

    /// The secret (the password, for PLAIN and LOGIN).
    pub fn secret(&self) -> &Secret {
        &self.secret
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("mechanism", &self.mechanism)
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .field("secret", &self.secret)
            .finish()
    }
}

/// What the server does next in an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Send this challenge (decoded; it goes out base64-encoded after `334 `) and wait for
    /// the client's response.
    Challenge(Vec<u8>),
    /// The client presented these credentials: check them.
    Done(Credentials),
    /// The client's message is not what the mechanism defines (missing separators, not
    /// UTF-8, too long): the exchange failed.
    Malformed(&'static str),
}

/// The server side of one SASL exchange.
#[derive(Debug)]
pub struct ServerExchange {
    mechanism: Mechanism,
    state: ServerState,
}

#[derive(Debug)]
enum ServerState {
    /// PLAIN without an initial response: the empty challenge was sent.
    PlainWaiting,
    /// LOGIN: `Username:` was sent.
    LoginUser,
    /// LOGIN: `Password:` was sent for this user.
    LoginPassword(String),
    /// Finished (done or failed); further responses are malformed.
    Over,
}

impl ServerExchange {
    /// Starts an exchange for `mechanism`, with the client's initial response if it sent one
    /// (decoded; `Some(b"")` for the empty response `=`).
    pub fn start(mechanism: Mechanism, initial: Option<&[u8]>) -> (ServerExchange, Step) {
        let mut x = ServerExchange {
            mechanism,
            state: ServerState::Over,
        };
        let step = match (mechanism, initial) {
            (Mechanism::Plain, None) => {
                x.state = ServerState::PlainWaiting;
                Step::Challenge(Vec::new())
            }
            (Mechanism::Plain, Some(r)) => plain(r),
            (Mechanism::Login, None) => {
                x.state = ServerState::LoginUser;
                Step::Challenge(b"Username:".to_vec())
            }
            // An initial response to LOGIN is the user name (as Postfix/Cyrus accept it).
            (Mechanism::Login, Some(r)) => x.login_user(r),
        };
        (x, step)
    }

    /// The mechanism of this exchange.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The client's (decoded) response to the last challenge.
    pub fn respond(&mut self, response: &[u8]) -> Step {
        match std::mem::replace(&mut self.state, ServerState::Over) {
            ServerState::PlainWaiting => plain(response),
            ServerState::LoginUser => self.login_user(response),
            ServerState::LoginPassword(user) => match secret(response) {
                Ok(s) => Step::Done(Credentials::new(Mechanism::Login, None, user, s)),
                Err(e) => Step::Malformed(e),
            },
            ServerState::Over => Step::Malformed("the exchange is over"),
        }
    }

    fn login_user(&mut self, response: &[u8]) -> Step {
        match identity(response) {
            Ok(user) if !user.is_empty() => {
                self.state = ServerState::LoginPassword(user);
                Step::Challenge(b"Password:".to_vec())
            }
            Ok(_) => Step::Malformed("empty user name"),
            Err(e) => Step::Malformed(e),
        }
    }
}

/// `message = [authzid] UTF8NUL authcid UTF8NUL passwd` (RFC 4616 §2).
fn plain(message: &[u8]) -> Step {
    let mut parts = message.splitn(3, |&b| b == 0);
    let (Some(authzid), Some(authcid), Some(passwd)) = (parts.next(), parts.next(), parts.next())
    else {
        return Step::Malformed("PLAIN needs authzid NUL authcid NUL password");
    };
    if passwd.contains(&0) {
        return Step::Malformed("NUL in the password");
    }
    let parsed = (|| {
        let authzid = identity(authzid)?;
        let authcid = identity(authcid)?;
        if authcid.is_empty() {
            return Err("empty authentication identity");
        }
        Ok(Credentials::new(
            Mechanism::Plain,
            Some(authzid),
            authcid,
            secret(passwd)?,
        ))
    })();
    match parsed {
        Ok(c) => Step::Done(c),
        Err(e) => Step::Malformed(e),
    }
}

/// An identity: UTF-8 without controls, at most [`MAX_IDENTITY`] octets.
fn identity(b: &[u8]) -> Result<String, &'static str> {
    if b.len() > MAX_IDENTITY {
        return Err("identity too long");
    }
    let s = std::str::from_utf8(b).map_err(|_| "identity is not UTF-8")?;
    if s.chars().any(char::is_control) {
        return Err("control character in an identity");
    }
    Ok(s.to_owned())
}

fn secret(b: &[u8]) -> Result<Secret, &'static str> {
    if b.len() > MAX_SECRET {
        return Err("secret too long");
    }
    if b.contains(&0) {
        return Err("NUL in the secret");
    }
    Ok(Secret::new(b))
}

/// The client side of one SASL exchange.
#[derive(Debug)]
pub struct ClientExchange {
    mechanism: Mechanism,
    user: String,
    secret: Secret,
    /// Challenges answered so far.
    round: u8,
}

/// A challenge the client cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected SASL challenge for {mechanism} (round {round})")]
pub struct ChallengeError {
    /// The mechanism.
    pub mechanism: Mechanism,
    /// Which challenge (1 for the first).
    pub round: u8,
}

impl ClientExchange {
    /// An exchange logging in as `user` with `secret`.
    pub fn new(mechanism: Mechanism, user: impl Into<String>, secret: impl Into<Secret>) -> Self {
        ClientExchange {
            mechanism,
            user: user.into(),
            secret: secret.into(),
            round: 0,
        }
    }

    /// The mechanism of this exchange.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The initial response to send with `AUTH` (decoded), if the mechanism has one: PLAIN's
    /// whole message. LOGIN waits for its challenges.
    pub fn initial_response(&mut self) -> Option<Vec<u8>> {
        match self.mechanism {
            Mechanism::Plain => {
                self.round = 1;
                Some(self.plain_message())
            }
            Mechanism::Login => None,
        }
    }

    /// The answer to a (decoded) `334` challenge.
    ///
    /// # Errors
    /// A [`ChallengeError`] when the mechanism has no answer for it (more rounds than it
    /// has); the caller then cancels the exchange with `*`.
    pub fn answer(&mut self, challenge: &[u8]) -> Result<Vec<u8>, ChallengeError> {
        let _ = challenge;
        self.round = self.round.saturating_add(1);
        match (self.mechanism, self.round) {
            // A server that ignored the initial response, or got none, asks with an
            // empty challenge.
            (Mechanism::Plain, 1) => Ok(self.plain_message()),
            (Mechanism::Login, 1) => Ok(self.user.as_bytes().to_vec()),
            (Mechanism::Login, 2) => Ok(self.secret.expose().to_vec()),
            (mechanism, round) => Err(ChallengeError { mechanism, round }),
        }
    }

    fn plain_message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.user.len() + self.secret.expose().len() + 2);
        m.push(0);
        m.extend_from_slice(self.user.as_bytes());
        m.push(0);
        m.extend_from_slice(self.secret.expose());
        m
    }
}

/// Standard base64 with padding (RFC 4648 §4), as SMTP AUTH uses it.
pub fn encode_base64(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Decodes standard base64 with padding; `None` for anything else (RFC 4954 §4: such a
/// response gets `501 5.5.2`).
pub fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn done(step: Step) -> Credentials {
        match step {
            Step::Done(c) => c,
            other => panic!("expected credentials, got {other:?}"),
        }
    }

    #[test]
    fn plain_with_and_without_initial_response() {
        let c = done(ServerExchange::start(Mechanism::Plain, Some(b"\0bob\0pw")).1);
        assert_eq!((c.authzid(), c.authcid()), (None, "bob"));
        let c = done(ServerExchange::start(Mechanism::Plain, Some(b"admin\0bob\0p\xffw")).1);
        assert_eq!(c.authzid(), Some("admin"));
        assert_eq!(c.secret().expose(), b"p\xffw");
        let (mut x, step) = ServerExchange::start(Mechanism::Plain, None);
        assert_eq!(step, Step::Challenge(Vec::new()));
        assert_eq!(done(x.respond(b"\0bob\0pw")).authcid(), "bob");
        assert!(matches!(x.respond(b"\0bob\0pw"), Step::Malformed(_)));
    }

    #[test]
    fn plain_malformed() {
        for bad in [
            &b""[..],
            b"bob",
            b"\0bob",
            b"\0\0pw",
            b"\0bob\0p\0w",
            b"\0b\xffb\0pw",
            b"\0b\rb\0pw",
        ] {
            let step = ServerExchange::start(Mechanism::Plain, Some(bad)).1;
            assert!(matches!(step, Step::Malformed(_)), "{bad:?}: {step:?}");
        }
        let long = [b"\0".as_slice(), &[b'a'; 256], b"\0pw"].concat();
        assert!(matches!(
            ServerExchange::start(Mechanism::Plain, Some(&long)).1,
            Step::Malformed(_)
        ));
    }

    #[test]
    fn login_two_challenges() {
        let (mut x, step) = ServerExchange::start(Mechanism::Login, None);
        assert_eq!(step, Step::Challenge(b"Username:".to_vec()));
        assert_eq!(x.respond(b"bob"), Step::Challenge(b"Password:".to_vec()));
        let c = done(x.respond(b"pw"));
        assert_eq!((c.mechanism(), c.authcid()), (Mechanism::Login, "bob"));
        let (mut x, step) = ServerExchange::start(Mechanism::Login, Some(b"bob"));
        assert_eq!(step, Step::Challenge(b"Password:".to_vec()));
        assert_eq!(done(x.respond(b"pw")).secret().expose(), b"pw");
        assert!(matches!(
            ServerExchange::start(Mechanism::Login, Some(b"")).1,
            Step::Malformed(_)
        ));
    }

    #[test]
    fn names_and_redaction() {
        assert_eq!(Mechanism::from_name("plain"), Some(Mechanism::Plain));
        assert_eq!(Mechanism::from_name("Login"), Some(Mechanism::Login));
        assert_eq!(Mechanism::from_name("CRAM-MD5"), None);
        let c = Credentials::new(Mechanism::Plain, None, "u", Secret::from("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(decode_base64(b"AGJvYgBwdw==").unwrap(), b"\0bob\0pw");
        assert_eq!(decode_base64(b"AGJvYgBwdw"), None);
        assert_eq!(decode_base64(b"AGJv YgBwdw=="), None);
        assert_eq!(decode_base64(b"").unwrap(), b"");
    }

    proptest! {
        /// Whatever the client side sends, the server side decodes to the same login, for
        /// both mechanisms, through base64 as on the wire.
        #[test]
        fn client_and_server_agree(
            user in "[^\\x00-\\x1f\\x7f]{1,60}",
            pass in proptest::collection::vec(1u8..=255, 0..100),
            mech in prop_oneof![Just(Mechanism::Plain), Just(Mechanism::Login)],
        ) {
            prop_assume!(!user.chars().any(char::is_control) && user.len() <= MAX_IDENTITY);
            let mut client = ClientExchange::new(mech, user.clone(), Secret::new(pass.clone()));
            let wire = |b: Vec<u8>| decode_base64(encode_base64(&b).as_bytes()).unwrap();
            let initial = client.initial_response().map(wire);
            let (mut server, mut step) = ServerExchange::start(mech, initial.as_deref());
            let mut rounds = 0;
            let creds = loop {
                match step {
                    Step::Challenge(c) => {
                        let c = wire(c);
                        let answer = wire(client.answer(&c).unwrap());
                        step = server.respond(&answer);
                    }
                    Step::Done(c) => break c,
                    Step::Malformed(e) => {
                        // An empty LOGIN password is fine; only a NUL is malformed.
                        prop_assert!(false, "malformed: {}", e);
                        unreachable!()
                    }
                }
                rounds += 1;
                prop_assert!(rounds < 4);
            };
            prop_assert_eq!(creds.authcid(), user.as_str());
            prop_assert_eq!(creds.secret().expose(), pass.as_slice());
        }

        /// base64 both ways.
        #[test]
        fn base64_round_trip(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(decode_base64(encode_base64(&data).as_bytes()), Some(data));
        }
    }
}
