//! Function registry: reads deployments (`<name>.wasm` beside its manifest
//! `<name>.toml`) from `RUNNEL_FUNCTIONS_DIR`, checks them, compiles them,
//! and keeps what is deployed and how each function is doing.

pub mod manifest;
pub mod registry;

pub use manifest::Manifest;
pub use registry::{Deployment, FunctionState, Registry, load_dir};
