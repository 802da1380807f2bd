//! `mail`: plain-text e-mail through the host's SMTP relay (lettre). The
//! sender is always the host's configured address.
//!
//! ```toml
//! [capabilities.mail]
//! enabled = true
//! ```
//!
//! Every send is journaled (see [`crate::platform::journal`]): a record
//! delivered again does not mail again. Each message's `Message-ID` is
//! derived from the record and the call, the same on every delivery, so that
//! a receiver can drop the duplicate left by the one window the journal
//! cannot close (the server accepted the message, the host died before
//! journaling it). A send that gets no answer within the capability timeout
//! returns `unavailable` (lettre's own timeout does not fire against a
//! server that accepted the connection and then hung).

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
};
use serde::Deserialize;
use wasmtime::component::{HasSelf, Linker};

use super::Capability;
use crate::platform::{journal::Calls, runtime::bindings::runnel::function::mail as wit, trace::TraceContext};

/// The service: a connection pool to one SMTP relay, the sender, and the
/// bound on one send.
#[derive(Clone)]
pub struct Mail {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    #[serde(default)]
    pub enabled: bool,
}

#[derive(Debug)]
pub struct Resolved {
    enabled: bool,
}

pub struct State {
    function: Arc<str>,
    enabled: bool,
    mail: Mail,
    calls: Calls,
}

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// A malformed address or a message the relay refused for good.
    #[error("{0}")]
    Invalid(String),
    /// The relay could not be reached or failed for now.
    #[error("{0}")]
    Unavailable(String),
}

impl Mail {
    /// `url` is lettre's form: `smtp://user:pass@host:port`, `smtps://…`, or
    /// `smtp://…?tls=required` for STARTTLS. Errors name the setting at fault.
    pub fn new(url: &str, from: &str) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .with_context(|| format!("RUNNEL_SMTP_URL: cannot use '{}'", crate::platform::redact::url(url)))?
            .timeout(Some(Duration::from_secs(10)))
            .build();
        let from = from.parse().with_context(|| format!("RUNNEL_MAIL_FROM: '{from}' is not an e-mail address"))?;
        Ok(Mail { transport, from, timeout: Duration::from_secs(10) })
    }

    /// The same relay, with sends bounded by `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends one plain-text message; `id` (hex digits) makes its Message-ID,
    /// otherwise a random one is made; `trace` (the record's) its
    /// `Traceparent`. Gives up after the service's timeout.
    pub async fn send(&self, to: &[String], subject: &str, body: &str, id: Option<&str>, trace: Option<TraceContext>) -> Result<(), MailError> {
        if to.is_empty() {
            return Err(MailError::Invalid("a message needs at least one recipient".into()));
        }
        let mut builder = Message::builder().from(self.from.clone()).subject(subject);
        for address in to {
            let mailbox: Mailbox = address
                .parse()
                .map_err(|e| MailError::Invalid(format!("'{address}' is not an e-mail address: {e}")))?;
            builder = builder.to(mailbox);
        }
        let message_id = id.map(|id| format!("<{id}.runnel@{}>", self.from.email.domain()));
        if let Some(trace) = trace {
            builder = builder.header(Traceparent(trace.header()));
        }
        let message = builder
            .message_id(message_id)
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_string())
            .map_err(|e| MailError::Invalid(e.to_string()))?;
        match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.is_permanent() => Err(MailError::Invalid(format!("the SMTP server refused the message: {e}"))),
            Ok(Err(e)) => Err(MailError::Unavailable(format!("cannot send mail: {e}"))),
            Err(_) => Err(MailError::Unavailable(format!("the SMTP server did not answer within {:?}", self.timeout))),
        }
    }
}

/// The `Traceparent` header of a message: the trace of the record whose
/// handling sent it.
#[derive(Clone)]
struct Traceparent(String);

impl lettre::message::header::Header for Traceparent {
    fn name() -> lettre::message::header::HeaderName {
        lettre::message::header::HeaderName::new_from_ascii_str("Traceparent")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Traceparent(s.to_string()))
    }

    fn display(&self) -> lettre::message::header::HeaderValue {
        lettre::message::header::HeaderValue::new(Self::name(), self.0.clone())
    }
}

impl Capability for Mail {
    type Grant = Grant;
    type Resolved = Resolved;
    type State = State;

    fn resolve(&self, _: &str, grant: &Grant, _: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Resolved> {
        Ok(Resolved { enabled: grant.enabled })
    }

    fn instance(&self, function: &Arc<str>, resolved: &Arc<Resolved>, calls: &Calls) -> State {
        State { function: function.clone(), enabled: resolved.enabled, mail: self.clone(), calls: calls.clone() }
    }

    fn renew(&self, state: &mut State, _: &Arc<str>, _: &Arc<Resolved>, calls: &Calls) {
        state.calls.clone_from(calls);
    }

    fn link<T: Send + 'static>(linker: &mut Linker<T>, get: fn(&mut T) -> &mut State) -> anyhow::Result<()> {
        wit::add_to_linker::<T, HasSelf<State>>(linker, get)?;
        Ok(())
    }
}

impl wit::Host for State {
    async fn send(&mut self, message: wit::Message) -> Result<(), wit::MailError> {
        if !self.enabled {
            tracing::warn!(function = %self.function, "mail refused: not granted");
            return Err(wit::MailError::NotPermitted("mail is not granted to this function".into()));
        }
        let mail = &self.mail;
        let keep = |r: &Result<(), wit::MailError>| !matches!(r, Err(wit::MailError::Unavailable(_)));
        let args = (&message.to, &message.subject, &message.body);
        // The trace of the record being handled: its own in a batch, else
        // the one the call runs in.
        let trace = self.calls.trace().or_else(crate::platform::trace::current);
        self.calls
            .run("mail.send", true, &args, keep, |call| async move {
                mail.send(args.0, args.1, args.2, call.hex(), trace).await.map_err(|e| match e {
                    MailError::Invalid(m) => wit::MailError::Invalid(m),
                    MailError::Unavailable(m) => wit::MailError::Unavailable(m),
                })
            })
            .await
            .unwrap_or_else(|e| Err(wit::MailError::Unavailable(e.to_string())))
    }
}
