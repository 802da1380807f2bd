//! Run a function natively, in `cargo test`, against an in-memory host.
//!
//! ```ignore
//! use runnel_guest::{Guest, testing::{TestHost, message}};
//!
//! #[test]
//! fn mails_the_list() {
//!     let mut host = TestHost::new().config("distribution-list", "a@example.com");
//!     host.run(|| MyFunction::handle(message(r#"{"storeName": "S1"}"#))).unwrap();
//!     assert_eq!(host.mails[0].subject, "Store Alert: S1");
//! }
//! ```
//!
//! Documents are kept per collection as JSON values. `find` matches
//! top-level fields by equality (what unit tests need); `update_many` is
//! recorded in [`TestHost::updates`] and answered with
//! [`TestHost::update_result`], and so is `update_each` (each of its
//! updates recorded, one answer for all). Collections outside
//! [`TestHost::grant`]s, when any are given, are `not-permitted`, as are
//! mails unless [`TestHost::allow_mail`].

use std::{cell::RefCell, collections::HashMap};

use serde_json::Value;

use crate::{
    Message,
    wit::{
        documents::{DocumentError, UpdateResult, UpdateStatement},
        logging::Level,
        mail,
    },
};

/// An in-memory stand-in for the host's capabilities; see the module docs.
#[derive(Debug, Clone)]
pub struct TestHost {
    pub config: HashMap<String, String>,
    pub collections: HashMap<String, Vec<Value>>,
    pub mails: Vec<mail::Message>,
    pub logs: Vec<(Level, String)>,
    /// What `clock::now_ms` answers.
    pub now_ms: i64,
    /// `update_many` calls and `update_each`'s updates: collection, filter,
    /// update, array filters.
    pub updates: Vec<(String, Value, Value, Vec<Value>)>,
    pub update_result: UpdateResult,
    /// Collections the function may use; empty: all.
    pub grants: Vec<String>,
    pub mail_allowed: bool,
    next_id: u64,
}

impl Default for TestHost {
    fn default() -> Self {
        TestHost {
            config: HashMap::new(),
            collections: HashMap::new(),
            mails: Vec::new(),
            logs: Vec::new(),
            now_ms: 1_700_000_000_000,
            updates: Vec::new(),
            update_result: UpdateResult { matched: 0, modified: 0 },
            grants: Vec::new(),
            mail_allowed: true,
            next_id: 0,
        }
    }
}

thread_local! {
    static HOST: RefCell<Option<TestHost>> = const { RefCell::new(None) };
}

/// Calls `f` with the host of this thread's [`TestHost::run`].
pub(crate) fn with_host<R>(f: impl FnOnce(&mut TestHost) -> R) -> R {
    HOST.with(|cell| {
        let mut host = cell.borrow_mut();
        let host = host.as_mut().expect("a capability was called outside TestHost::run");
        f(host)
    })
}

impl TestHost {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the configuration value `name`.
    pub fn config(mut self, name: &str, value: &str) -> Self {
        self.config.insert(name.into(), value.into());
        self
    }

    /// Grants `collection` (once any is granted, the others are refused).
    pub fn grant(mut self, collection: &str) -> Self {
        self.grants.push(collection.into());
        self
    }

    /// Refuses mail (`not-permitted`), as a manifest without it would.
    pub fn deny_mail(mut self) -> Self {
        self.mail_allowed = false;
        self
    }

    /// Runs `f` (usually `MyFunction::handle(message)`) with this host
    /// answering its capability calls.
    pub fn run<R>(&mut self, f: impl FnOnce() -> R) -> R {
        HOST.with(|cell| *cell.borrow_mut() = Some(std::mem::take(self)));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        *self = HOST.with(|cell| cell.borrow_mut().take()).unwrap_or_default();
        result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    fn check(&self, collection: &str) -> Result<(), DocumentError> {
        if self.grants.is_empty() || self.grants.iter().any(|g| g == collection) {
            Ok(())
        } else {
            Err(DocumentError::NotPermitted(format!("collection '{collection}' is not granted")))
        }
    }

    pub(crate) fn insert_one(&mut self, collection: &str, document: &str) -> Result<String, DocumentError> {
        self.check(collection)?;
        let mut doc: Value = serde_json::from_str(document).map_err(|e| DocumentError::Invalid(e.to_string()))?;
        let Some(object) = doc.as_object_mut() else {
            return Err(DocumentError::Invalid("a document is a JSON object".into()));
        };
        let id = match object.get("_id") {
            Some(Value::String(id)) => id.clone(),
            Some(other) => other.to_string(),
            None => {
                self.next_id += 1;
                let id = format!("test-{}", self.next_id);
                object.insert("_id".into(), Value::String(id.clone()));
                id
            }
        };
        let docs = self.collections.entry(collection.into()).or_default();
        if docs.iter().any(|d| d.get("_id") == doc.get("_id")) {
            return Err(DocumentError::Conflict(format!("_id {id} exists")));
        }
        docs.push(doc);
        Ok(id)
    }

    pub(crate) fn find(&mut self, collection: &str, filter: &str, limit: u32) -> Result<Vec<String>, DocumentError> {
        self.check(collection)?;
        let filter: Value = serde_json::from_str(filter).map_err(|e| DocumentError::Invalid(e.to_string()))?;
        let wanted = filter.as_object().cloned().unwrap_or_default();
        Ok(self
            .collections
            .get(collection)
            .into_iter()
            .flatten()
            .filter(|d| wanted.iter().all(|(k, v)| d.get(k) == Some(v)))
            .take(limit as usize)
            .map(Value::to_string)
            .collect())
    }

    pub(crate) fn update_many(
        &mut self,
        collection: &str,
        filter: &str,
        update: &str,
        array_filters: &[String],
    ) -> Result<UpdateResult, DocumentError> {
        self.check(collection)?;
        let parse = |text: &str| serde_json::from_str::<Value>(text).map_err(|e| DocumentError::Invalid(e.to_string()));
        let array_filters = array_filters.iter().map(|f| parse(f)).collect::<Result<_, _>>()?;
        self.updates.push((collection.into(), parse(filter)?, parse(update)?, array_filters));
        Ok(self.update_result)
    }

    pub(crate) fn update_each(&mut self, collection: &str, updates: &[UpdateStatement]) -> Result<UpdateResult, DocumentError> {
        self.check(collection)?;
        for u in updates {
            self.update_many(collection, &u.filter, &u.update, &u.array_filters)?;
        }
        Ok(self.update_result)
    }

    pub(crate) fn send(&mut self, message: &mail::Message) -> Result<(), mail::MailError> {
        if !self.mail_allowed {
            return Err(mail::MailError::NotPermitted("mail is not granted".into()));
        }
        if message.to.is_empty() || message.to.iter().any(|a| !a.contains('@')) {
            return Err(mail::MailError::Invalid(format!("bad recipients {:?}", message.to)));
        }
        self.mails.push(message.clone());
        Ok(())
    }
}

/// A record on topic `test` with `payload`, no key and no headers.
pub fn message(payload: impl Into<Vec<u8>>) -> Message {
    Message {
        topic: "test".into(),
        partition: 0,
        offset: 0,
        key: None,
        payload: payload.into(),
        headers: Vec::new(),
        timestamp_ms: None,
    }
}
