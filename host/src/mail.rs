//! Mail: sends plain-text e-mail through an SMTP relay (lettre), on behalf of
//! functions granted the mail capability. The sender is always the host's
//! configured address.

use std::time::Duration;

use anyhow::Context;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
};

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

/// A connection pool to one SMTP relay and the sender address.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// `url` is lettre's form: `smtp://user:pass@host:port`, `smtps://…`, or
    /// `smtp://…?tls=required` for STARTTLS. Errors name the setting at fault.
    pub fn new(url: &str, from: &str) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .with_context(|| format!("RUNNEL_SMTP_URL: cannot use '{url}'"))?
            .timeout(Some(Duration::from_secs(10)))
            .build();
        let from = from
            .parse()
            .with_context(|| format!("RUNNEL_MAIL_FROM: '{from}' is not an e-mail address"))?;
        Ok(Mailer { transport, from })
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
        let message = builder
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_string())
            .map_err(|e| MailError::Invalid(e.to_string()))?;
        self.transport.send(message).await.map(drop).map_err(|e| {
            if e.is_permanent() {
                MailError::Invalid(format!("the SMTP server refused the message: {e}"))
            } else {
                MailError::Unavailable(format!("cannot send mail: {e}"))
            }
        })
    }
}
