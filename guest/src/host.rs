//! Where the capabilities come from: the component's imports on wasm32, or
//! the [`testing`](crate::testing) host of the calling thread natively.

use crate::wit::{documents, logging::Level, mail};

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::*;
    use crate::wit;

    pub fn insert_one(c: &str, d: &str) -> Result<String, documents::DocumentError> {
        wit::documents::insert_one(c, d)
    }
    pub fn find(c: &str, f: &str, limit: u32) -> Result<Vec<String>, documents::DocumentError> {
        wit::documents::find(c, f, limit)
    }
    pub fn update_many(c: &str, f: &str, u: &str, a: &[String]) -> Result<documents::UpdateResult, documents::DocumentError> {
        wit::documents::update_many(c, f, u, a)
    }
    pub fn update_each(c: &str, u: &[documents::UpdateStatement]) -> Result<documents::UpdateResult, documents::DocumentError> {
        wit::documents::update_each(c, u)
    }
    pub fn send(m: &mail::Message) -> Result<(), mail::MailError> {
        wit::mail::send(m)
    }
    pub fn config_get(name: &str) -> Option<String> {
        wit::config::get(name)
    }
    pub fn log(level: Level, message: &str) {
        wit::logging::log(level, message)
    }
    pub fn now_ms() -> i64 {
        wit::clock::now_ms()
    }
    pub fn begin(index: u32) {
        wit::batch::begin(index)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::*;
    use crate::testing::with_host;

    pub fn insert_one(c: &str, d: &str) -> Result<String, documents::DocumentError> {
        with_host(|h| h.insert_one(c, d))
    }
    pub fn find(c: &str, f: &str, limit: u32) -> Result<Vec<String>, documents::DocumentError> {
        with_host(|h| h.find(c, f, limit))
    }
    pub fn update_many(c: &str, f: &str, u: &str, a: &[String]) -> Result<documents::UpdateResult, documents::DocumentError> {
        with_host(|h| h.update_many(c, f, u, a))
    }
    pub fn update_each(c: &str, u: &[documents::UpdateStatement]) -> Result<documents::UpdateResult, documents::DocumentError> {
        with_host(|h| h.update_each(c, u))
    }
    pub fn send(m: &mail::Message) -> Result<(), mail::MailError> {
        with_host(|h| h.send(m))
    }
    pub fn config_get(name: &str) -> Option<String> {
        with_host(|h| h.config.get(name).cloned())
    }
    pub fn log(level: Level, message: &str) {
        with_host(|h| h.logs.push((level, message.to_string())))
    }
    pub fn now_ms() -> i64 {
        with_host(|h| h.now_ms)
    }
    /// Natively, a batch is only a loop: the test host keeps no journal.
    pub fn begin(_index: u32) {}
}

pub use imp::*;
