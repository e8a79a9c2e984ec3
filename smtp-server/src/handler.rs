//! The user's side of the server: a [`Handler`] accepts connections and makes one
//! [`SessionHandler`] per connection, whose hooks decide each step of the SMTP dialogue.
//!
//! Every hook has a default that accepts, except [`SessionHandler::data`], which must consume
//! (or at least judge) the message. A refusal is a [`Refusal`], a 4yz or 5yz reply by
//! construction (a hook cannot accept by returning `Err` with a 2yz by mistake); the session has already checked
//! syntax, command order and the configured limits before a hook is called, so hooks only make
//! policy decisions.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use smtp_proto::address::{ForwardPath, ReversePath};
use smtp_proto::param::{MailParams, RcptParams};
use smtp_proto::{EnhancedCode, Refusal, Reply};

use crate::auth::{AuthFailure, Credentials};

pub use crate::connection::{BodyError, BodyReader, BodyStream};

/// What is known about a connection when it is accepted.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The server's address the client connected to.
    pub local: SocketAddr,
    /// The name of the listener that accepted the connection (see
    /// [`crate::ServerBuilder::listen_named`]; by default the listen address).
    pub listener: Arc<str>,
    /// Set for implicit-TLS listeners (the handshake has already happened).
    pub tls: Option<TlsInfo>,
    /// A number unique to this connection within the process, also in the log span.
    pub session_id: u64,
    /// The listener speaks LMTP (RFC 2033): [`DataOutcome::per_recipient`] gives each
    /// recipient its own reply.
    pub lmtp: bool,
}

/// The negotiated TLS parameters of an encrypted session: the protocol crate's type, the
/// client's as well. Here [`TlsInfo::protocol`] is named as OpenSSL does (`TLSv1.3`),
/// [`TlsInfo::verified`] is false (the server asks for no client certificate) and
/// [`TlsInfo::resumed`] says whether the client resumed an earlier session.
pub use smtp_proto::envelope::TlsInfo;

/// The envelope of a message: everything said before its content.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The name the client gave in EHLO/HELO.
    pub helo: String,
    /// The sender (`MAIL FROM`).
    pub from: ReversePath,
    /// The parameters of `MAIL FROM`.
    pub mail_params: MailParams,
    /// The accepted recipients with their parameters, in the order received.
    pub rcpts: Vec<(ForwardPath, RcptParams)>,
    /// The TLS parameters, if the session is encrypted.
    pub tls: Option<TlsInfo>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The server's address the client connected to.
    pub local: SocketAddr,
    /// The identity [`SessionHandler::authenticate`] returned, when the client logged in
    /// with AUTH (forgotten at STARTTLS, kept across transactions).
    pub authenticated: Option<String>,
}

impl Envelope {
    /// The transaction as the shared envelope type (sender, recipients and their DSN
    /// parameters): what the client sends on, and the queue stores. Parameters that are not
    /// part of it (SIZE, BODY, SMTPUTF8, AUTH, unknown ones) stay in
    /// [`mail_params`](Self::mail_params) and [`rcpts`](Self::rcpts); see
    /// [`smtp_proto::envelope`].
    pub fn transaction(&self) -> smtp_proto::envelope::Envelope {
        let mut env = smtp_proto::envelope::Envelope::from_mail(&self.from, &self.mail_params);
        env.rcpts = self
            .rcpts
            .iter()
            .map(|(to, params)| smtp_proto::envelope::Recipient::from_rcpt(to, params))
            .collect();
        env
    }

    pub(crate) fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        Self {
            helo: String::new(),
            from: ReversePath::Null,
            mail_params: MailParams::default(),
            rcpts: Vec::new(),
            tls: None,
            peer,
            local,
            authenticated: None,
        }
    }

    /// Forgets the transaction (sender and recipients), keeping the session's data.
    pub(crate) fn clear_transaction(&mut self) {
        self.from = ReversePath::Null;
        self.mail_params = MailParams::default();
        self.rcpts.clear();
        if self.rcpts.capacity() > 16 {
            self.rcpts.shrink_to(16);
        }
    }
}

/// The answer to a message: accepted with a 2yz reply, or refused with a [`Refusal`].
///
/// One reply for the whole transaction (SMTP). The fields are private so that an outcome
/// built as "accepted" always carries a positive reply; a per-recipient answer (LMTP) can be
/// added without breaking callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOutcome {
    reply: Reply,
    /// One reply per accepted recipient ([`DataOutcome::per_recipient`]), else empty.
    per_recipient: Vec<Reply>,
}

const ACCEPTED: Reply = Reply::fixed(250, Some(EnhancedCode::fixed(2, 0, 0)), "Message accepted");
const TEMPORARY: Refusal = Refusal::fixed(
    451,
    Some(EnhancedCode::fixed(4, 3, 0)),
    "Temporary failure, try again later",
);
const NOT_IMPLEMENTED: Reply = Reply::fixed(
    502,
    Some(EnhancedCode::fixed(5, 5, 1)),
    "Command not implemented",
);
const REJECTED: Refusal =
    Refusal::fixed(554, Some(EnhancedCode::fixed(5, 6, 0)), "Message refused");

impl DataOutcome {
    /// `250 2.0.0 <text>`: the message is accepted (for a server that stores mail: it is on
    /// disk).
    pub fn accepted(text: impl Into<String>) -> Self {
        Self {
            reply: ACCEPTED.with_text(text),
            per_recipient: Vec::new(),
        }
    }

    /// Accepted with a reply of the caller's (another 2yz code or enhanced code).
    ///
    /// # Errors
    /// The reply itself when it is not 2yz.
    pub fn accepted_with(reply: Reply) -> Result<Self, Reply> {
        if reply.is_positive_completion() {
            Ok(Self {
                reply,
                per_recipient: Vec::new(),
            })
        } else {
            Err(reply)
        }
    }

    /// `451 4.3.0 <text>`: a temporary failure; the client will retry later.
    pub fn temporary_failure(text: impl Into<String>) -> Self {
        TEMPORARY.with_text(text).into()
    }

    /// `554 5.6.0 <text>`: the message is refused for good.
    pub fn rejected(text: impl Into<String>) -> Self {
        REJECTED.with_text(text).into()
    }

    /// One outcome per accepted recipient, in the order of [`Envelope::rcpts`]: on an LMTP
    /// listener ([`ConnectionInfo::lmtp`]) each recipient gets its own reply (RFC 2033
    /// §4.2; recipients without one get `451 4.3.0`). Over SMTP one reply must do for all:
    /// it is chosen by [`combine_replies`](smtp_proto::session::combine_replies) so that no
    /// recipient's mail is lost (all accepted: the first reply; any temporary failure: that
    /// one, and the client retries the message for everyone).
    pub fn per_recipient(outcomes: impl IntoIterator<Item = DataOutcome>) -> Self {
        let per_recipient: Vec<Reply> = outcomes.into_iter().map(|o| o.reply).collect();
        Self {
            reply: smtp_proto::session::combine_replies(&per_recipient),
            per_recipient,
        }
    }

    /// The replies per recipient, when made by [`DataOutcome::per_recipient`].
    pub fn recipient_replies(&self) -> &[Reply] {
        &self.per_recipient
    }

    /// Whether the message was accepted (the reply is 2yz; with per-recipient outcomes:
    /// for every recipient).
    pub fn is_accepted(&self) -> bool {
        self.reply.is_positive_completion()
    }

    /// The reply sent to the client.
    pub fn reply(&self) -> &Reply {
        &self.reply
    }

    /// The one reply, and the replies per recipient (empty unless made by
    /// [`DataOutcome::per_recipient`]).
    pub(crate) fn into_replies(self) -> (Reply, Vec<Reply>) {
        (self.reply, self.per_recipient)
    }
}

impl From<Refusal> for DataOutcome {
    /// The message is refused with this reply.
    fn from(r: Refusal) -> Self {
        Self {
            reply: r.into_reply(),
            per_recipient: Vec::new(),
        }
    }
}

/// Decides whether to talk to a client at all, and makes the per-connection handler.
///
/// One value serves every listener and connection, so it is shared (`&self`); put shared
/// state (a mail store, a user list) behind an `Arc` or a lock inside it.
pub trait Handler: Send + Sync + 'static {
    /// The per-connection part of the handler.
    type Session: SessionHandler;

    /// Called once per connection, before the greeting. `Ok` greets the client with `220`;
    /// `Err(refusal)` refuses the connection with that reply (e.g. `554 5.7.1` or `421 4.7.0`)
    /// and closes it.
    fn connect(
        &self,
        info: &ConnectionInfo,
    ) -> impl Future<Output = Result<Self::Session, Refusal>> + Send;
}

/// The hooks of one SMTP session, called in protocol order. Hooks returning a `Result`
/// accept with `Ok(())` (the server sends the standard positive reply) and refuse with
/// `Err(refusal)`.
pub trait SessionHandler: Send + 'static {
    /// `EHLO` (`extended`) or `HELO` with the client's name. Any open transaction was aborted
    /// (and [`SessionHandler::reset`] called) before.
    fn hello(
        &mut self,
        domain: &str,
        extended: bool,
    ) -> impl Future<Output = Result<(), Refusal>> + Send {
        let _ = (domain, extended);
        async { Ok(()) }
    }

    /// The TLS handshake after `STARTTLS` succeeded; the client must now say EHLO again.
    fn tls_started(&mut self, info: &TlsInfo) {
        let _ = info;
    }

    /// `MAIL FROM`, already checked for syntax, order, parameters and declared size.
    fn mail(
        &mut self,
        from: &ReversePath,
        params: &MailParams,
    ) -> impl Future<Output = Result<(), Refusal>> + Send {
        let _ = (from, params);
        async { Ok(()) }
    }

    /// Each `RCPT TO`, already checked for syntax, order and the recipient limit.
    ///
    /// The default accepts every recipient: right for a sink, a test server or a catch-all
    /// store, and an open relay for a handler whose [`data`](Self::data) passes mail on. A
    /// handler that forwards or relays must override this and refuse what it may not take
    /// (the daemon refuses non-local domains from unauthenticated network clients with
    /// `554 5.7.1 Relay access denied`, as Postfix's `reject_unauth_destination`).
    fn rcpt(
        &mut self,
        to: &ForwardPath,
        params: &RcptParams,
    ) -> impl Future<Output = Result<(), Refusal>> + Send {
        let _ = (to, params);
        async { Ok(()) }
    }

    /// The message (after `DATA` or the first `BDAT`). Pull its content with
    /// [`BodyStream::chunk`] until it returns `Ok(None)`; the returned outcome is the reply.
    ///
    /// If `chunk` returns an error, the message is lost (too big, bare line endings, the
    /// client went away or was too slow, RSET during BDAT): the session has replied already
    /// and the returned outcome is ignored, so return any outcome and discard what was
    /// stored. If this returns before the content ended, the server reads and discards the
    /// rest before it sends the reply.
    fn data(
        &mut self,
        envelope: &Envelope,
        body: &mut BodyStream<'_>,
    ) -> impl Future<Output = DataOutcome> + Send;

    /// Whether AUTH is offered on this connection, when the server has mechanisms
    /// ([`crate::ServerBuilder::auth`]). Asked once, after [`Handler::connect`]; default
    /// `true`. A server whose port-25 listener must not offer AUTH says `false` there.
    fn auth_offered(&self) -> bool {
        true
    }

    /// The credentials a client presented with AUTH, after the SASL exchange. `Ok(identity)`
    /// logs it in (`235 2.7.0`; the identity is then [`Envelope::authenticated`]),
    /// `Err(failure)` refuses with its reply. The server delays failure replies and limits
    /// failures per session and per address (see [`crate::auth`]). Default: every login is
    /// refused.
    ///
    /// Checking a password hash is slow on purpose: do it off the async workers
    /// (`tokio::task::spawn_blocking`).
    fn authenticate(
        &mut self,
        credentials: &Credentials,
    ) -> impl Future<Output = Result<String, AuthFailure>> + Send {
        let _ = credentials;
        async { Err(AuthFailure::Invalid) }
    }

    /// A command with a verb registered with [`crate::ServerBuilder::extension`] (XCLIENT,
    /// ETRN, your own): `verb` as sent, `args` the rest of the line (printable text, no
    /// control characters). The returned reply is sent as it is (a `421` closes the
    /// connection); the session's state does not change. Default: `502 5.5.1 Command not
    /// implemented`.
    fn extension(&mut self, verb: &str, args: Option<&str>) -> impl Future<Output = Reply> + Send {
        let _ = (verb, args);
        async { NOT_IMPLEMENTED }
    }

    /// An open transaction (an accepted `MAIL`) ended without a reply from
    /// [`SessionHandler::data`]: `RSET`, a new `EHLO`, `STARTTLS`, a message the session
    /// refused (size, bare line endings), or the connection ending mid-transaction.
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use smtp_proto::address::{parse_forward_path, parse_reverse_path};
    use smtp_proto::param::Ret;

    #[test]
    fn transaction_keeps_the_dsn_parameters() {
        let addr = "127.0.0.1:25".parse().unwrap();
        let mut e = Envelope::new(addr, addr);
        e.from = parse_reverse_path("<a@example.org>").unwrap().into_owned();
        e.mail_params = MailParams::parse("SIZE=10 RET=HDRS ENVID=x+2By")
            .unwrap()
            .into_owned();
        e.rcpts.push((
            parse_forward_path("<b@example.net>").unwrap().into_owned(),
            RcptParams::parse("NOTIFY=FAILURE ORCPT=rfc822;b@example.net X-FOO=1")
                .unwrap()
                .into_owned(),
        ));
        e.rcpts
            .push((ForwardPath::Postmaster, RcptParams::default()));
        let t = e.transaction();
        assert_eq!(t.ret, Some(Ret::Hdrs));
        // Only the DSN parameters are part of the shared envelope.
        assert_eq!(
            t.to_text(),
            "MAIL FROM:<a@example.org> RET=HDRS ENVID=x+2By\r\n\
             RCPT TO:<b@example.net> NOTIFY=FAILURE ORCPT=rfc822;b@example.net\r\n\
             RCPT TO:<Postmaster>\r\n"
        );
    }
}
