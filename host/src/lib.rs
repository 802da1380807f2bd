//! Runnel: serverless-style stream functions on a WebAssembly host.
//!
//! The tree shows two things apart:
//! - [`platform`]: the runtime, the capabilities, the Kafka trigger, the
//!   deployments and the admin API; it knows nothing of the application;
//! - [`app`]: the resources, their routes and the events they produce.
//!
//! [`serve`] wires them together; [`cli`] is the `runnel` command.

pub mod app;
pub mod cli;
pub mod config;
pub mod platform;
pub mod serve;
