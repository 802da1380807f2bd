//! Capabilities: everything a function can reach, one self-contained module
//! each.
//!
//! A capability implements [`Capability`], which keeps in one place:
//! - its section of the manifest, `[capabilities.<name>]` ([`Capability::Grant`]);
//! - the check of that grant, resolved once when a version is deployed
//!   ([`Capability::resolve`], kept as [`Capability::Resolved`]);
//! - the service behind it, shared by every function (the capability value);
//! - the state one instance sees ([`Capability::State`]): the WIT interface's
//!   host trait is implemented on it, so a host call can only touch its own
//!   capability's state (the projection wasmtime-wasi calls a `…View`).
//!
//! This module only lists them (the `capabilities!` line below): adding a
//! capability is its module, its WIT interface, and that line. A manifest
//! that names a capability that does not exist is refused, with its line.

pub mod clock;
pub mod config;
pub mod documents;
pub mod logging;
pub mod mail;

use std::{fmt::Debug, sync::Arc};

use anyhow::Context as _;
use serde::de::DeserializeOwned;

use super::{journal::Calls, sandbox::Sandbox};
use wasmtime::component::Linker;

/// How a capability plugs into the host; see the module documentation.
pub trait Capability: Send + Sync + 'static {
    /// Its manifest section; absent means `Default` (usually: nothing granted).
    type Grant: DeserializeOwned + Default + Clone + Debug + Send + Sync + 'static;
    /// The grant once checked and resolved against this host.
    type Resolved: Debug + Send + Sync + 'static;
    /// What one instance of a function holds of this capability.
    type State: Send + 'static;

    /// Checks `grant` for `function` and resolves it (e.g. reads the
    /// environment variables it names); the error says what is wrong.
    fn resolve(&self, function: &str, grant: &Self::Grant, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self::Resolved>;

    /// The state of a new instance, handling the record whose journal is
    /// `calls` (a capability whose calls have effects, or whose answers can
    /// differ between deliveries, runs them through it).
    fn instance(&self, function: &Arc<str>, resolved: &Arc<Self::Resolved>, calls: &Calls) -> Self::State;

    /// Readies `state`, which [`Capability::instance`] made for the same
    /// function and grant, for the next record its instance handles (a
    /// reused instance's next record, or the next record of a batch), whose
    /// journal is `calls`. By default a new state; a capability whose state
    /// holds more than what is the record's keeps the rest, which costs
    /// less on every record.
    fn renew(&self, state: &mut Self::State, function: &Arc<str>, resolved: &Arc<Self::Resolved>, calls: &Calls) {
        *state = self.instance(function, resolved, calls);
    }

    /// Adds the capability's WIT interface to `linker`, reaching its state
    /// through `get`.
    fn link<T: Send + 'static>(linker: &mut Linker<T>, get: fn(&mut T) -> &mut Self::State) -> anyhow::Result<()>;
}

macro_rules! capabilities {
    ($($name:ident: $ty:ty),* $(,)?) => {
        /// The `[capabilities]` table of a manifest: one optional section per
        /// capability. Any other key is an error naming it.
        #[derive(Debug, Clone, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct ManifestGrants {
            $( #[serde(default)] pub $name: <$ty as Capability>::Grant, )*
        }

        /// The services behind the capabilities: one set per host.
        pub struct Services {
            $( pub $name: $ty, )*
        }

        /// A deployment's grants, resolved once, shared by its instances.
        #[derive(Debug, Clone)]
        pub struct Grants {
            $( pub $name: Arc<<$ty as Capability>::Resolved>, )*
        }

        /// The state of one instance: one projection per capability, and
        /// the store's resource limits.
        pub struct InstanceState {
            $( pub $name: <$ty as Capability>::State, )*
            pub(crate) limits: crate::platform::runtime::Metered,
            /// The locked-down WASI every instance has (not a capability:
            /// it grants nothing).
            pub(crate) sandbox: Sandbox,
            /// When the call in progress started (its deadline counts from it).
            pub(crate) call_started: std::time::Instant,
            /// The journals of the records of the batch being handled, when
            /// the call is a `handle-batch`.
            pub(crate) batch: Option<Box<crate::platform::runtime::BatchCalls>>,
        }

        /// The names of the capabilities, as manifests and WIT name them.
        pub const NAMES: &[&str] = &[$(stringify!($name)),*];

        impl Services {
            /// Resolves every section of `grants` for `function`.
            pub fn resolve(
                &self,
                function: &str,
                grants: &ManifestGrants,
                env: &dyn Fn(&str) -> Option<String>,
            ) -> anyhow::Result<Grants> {
                Ok(Grants {
                    $( $name: Arc::new(
                        self.$name
                            .resolve(function, &grants.$name, env)
                            .with_context(|| format!("capabilities.{}", stringify!($name)))?,
                    ), )*
                })
            }

            /// The state of a new instance of `function`, journaled in `calls`.
            pub fn instance(
                &self,
                function: &Arc<str>,
                grants: &Grants,
                limits: crate::platform::runtime::Metered,
                calls: &Calls,
                started: std::time::Instant,
            ) -> InstanceState {
                InstanceState {
                    $( $name: self.$name.instance(function, &grants.$name, calls), )*
                    limits,
                    sandbox: Sandbox::new(),
                    call_started: started,
                    batch: None,
                }
            }
        }

        impl InstanceState {
            /// Readies a reused instance for the next record, whose call
            /// starts at `started`: every capability's state is new
            /// (journaled in `calls`); the sandbox and the limits stay.
            pub fn renew(&mut self, services: &Services, function: &Arc<str>, grants: &Grants, calls: &Calls, started: std::time::Instant) {
                self.renew_capabilities(services, function, grants, calls);
                self.call_started = started;
            }

            /// Readies the capabilities for the next record of the call
            /// going on (a batch's): the call's deadline stays.
            pub fn renew_capabilities(&mut self, services: &Services, function: &Arc<str>, grants: &Grants, calls: &Calls) {
                $( services.$name.renew(&mut self.$name, function, &grants.$name, calls); )*
            }
        }

        /// Links every capability's interface, and the sandbox's WASI.
        pub fn link(linker: &mut Linker<InstanceState>) -> anyhow::Result<()> {
            $( <$ty as Capability>::link(linker, |state: &mut InstanceState| &mut state.$name)?; )*
            super::sandbox::link(linker)
        }
    };
}

capabilities! {
    documents: documents::Documents,
    mail: mail::Mail,
    config: config::Config,
    logging: logging::Logging,
    clock: clock::Clock,
}

impl Services {
    /// The host's services: the database behind `documents`, the relay
    /// behind `mail`; the other capabilities need none. A call to a service
    /// that does not answer within `call_timeout` returns `unavailable`.
    pub fn new(database: mongodb::Database, mail: mail::Mail, call_timeout: std::time::Duration) -> Self {
        Services {
            documents: documents::Documents { database, timeout: call_timeout },
            mail: mail.with_timeout(call_timeout),
            config: config::Config,
            logging: logging::Logging,
            clock: clock::Clock,
        }
    }
}

/// The manifest section of a capability every function has and that takes
/// no settings: present or not, it grants the same.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}
