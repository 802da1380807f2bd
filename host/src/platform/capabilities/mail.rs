//! `mail`: plain-text e-mail through the host's SMTP relay (lettre). The
//! sender is always the host's configured address.
//!
//! ```toml
//! [capabilities.mail]
//! enabled = true
//! ```

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
};
use serde::Deserialize;
use wasmtime::component::{HasSelf, Linker};

use super::Capability;
use crate::platform::runtime::bindings::runnel::function::mail as wit;

/// The service: a connection pool to one SMTP relay, and the sender.
#[derive(Clone)]
pub struct Mail {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
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
            .with_context(|| format!("RUNNEL_SMTP_URL: cannot use '{url}'"))?
            .timeout(Some(Duration::from_secs(10)))
            .build();
        let from = from.parse().with_context(|| format!("RUNNEL_MAIL_FROM: '{from}' is not an e-mail address"))?;
        Ok(Mail { transport, from })
    }

    pub async fn send(&self, to: &[String], subject: &str, body: &str) -> Result<(), MailError> {
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
        let message =
            builder.header(ContentType::TEXT_PLAIN).body(body.to_string()).map_err(|e| MailError::Invalid(e.to_string()))?;
        self.transport.send(message).await.map(drop).map_err(|e| {
            if e.is_permanent() {
                MailError::Invalid(format!("the SMTP server refused the message: {e}"))
            } else {
                MailError::Unavailable(format!("cannot send mail: {e}"))
            }
        })
    }
}

impl Capability for Mail {
    type Grant = Grant;
    type Resolved = Resolved;
    type State = State;

    fn resolve(&self, _: &str, grant: &Grant, _: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Resolved> {
        Ok(Resolved { enabled: grant.enabled })
    }

    fn instance(&self, function: &Arc<str>, resolved: &Arc<Resolved>) -> State {
        State { function: function.clone(), enabled: resolved.enabled, mail: self.clone() }
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
        self.mail.send(&message.to, &message.subject, &message.body).await.map_err(|e| match e {
            MailError::Invalid(m) => wit::MailError::Invalid(m),
            MailError::Unavailable(m) => wit::MailError::Unavailable(m),
        })
    }
}
