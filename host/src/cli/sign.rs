//! `runnel keygen` and `runnel sign`: a key pair for signing functions, and
//! the signature of a built function (see
//! [`crate::platform::deployments::signing`]).

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, bail};
use ed25519_dalek::{
    SigningKey,
    pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding},
};

use crate::platform::deployments::signing;

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the private key (PKCS#8 PEM, readable by you only);
    /// never overwritten.
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// A function crate's folder (with runnel.toml), or a manifest file.
    pub path: PathBuf,
    /// The component; default: found as `runnel deploy` finds it.
    #[arg(long)]
    pub component: Option<PathBuf>,
    /// The private key: `runnel keygen`'s, or an ed25519 key from
    /// `openssl genpkey -algorithm ed25519`.
    #[arg(long, env = "RUNNEL_SIGNING_KEY")]
    pub key: PathBuf,
}

/// Makes a key pair: the private key to `out`, the public key printed in
/// the form `RUNNEL_TRUSTED_KEYS` takes.
pub fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let pem = key.to_pkcs8_pem(LineEnding::LF).context("cannot encode the key")?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&args.out).with_context(|| {
        format!("'{}': cannot create it (an existing key is never overwritten)", args.out.display())
    })?;
    file.write_all(pem.as_bytes()).with_context(|| format!("'{}'", args.out.display()))?;
    println!("private key written to {}", args.out.display());
    println!("public key (for RUNNEL_TRUSTED_KEYS): {}", signing::public_key(&key));
    Ok(ExitCode::SUCCESS)
}

/// Reads a private key file.
pub fn read_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("'{}': cannot read the key", path.display()))?;
    SigningKey::from_pkcs8_pem(&text)
        .map_err(|e| anyhow::anyhow!("'{}': not an ed25519 private key in PKCS#8 PEM ({e})", path.display()))
}

/// Signs a built function: writes `<component>.sig` beside the component
/// (`runnel deploy` sends it along).
pub fn sign(args: SignArgs) -> anyhow::Result<ExitCode> {
    let key = read_key(&args.key)?;
    let (manifest_path, component_path) = super::client::locate(&args.path, args.component.as_deref(), false)?;
    let manifest = std::fs::read_to_string(&manifest_path).with_context(|| format!("'{}'", manifest_path.display()))?;
    crate::platform::deployments::Manifest::parse(&manifest).map_err(|e| anyhow::anyhow!("'{}': {e}", manifest_path.display()))?;
    let component = std::fs::read(&component_path)
        .with_context(|| format!("'{}' (build the function first)", component_path.display()))?;
    if !component.starts_with(b"\0asm") {
        bail!("'{}' is not a WebAssembly file", component_path.display());
    }
    let out = signature_path(&component_path);
    std::fs::write(&out, signing::sign(&key, manifest.as_bytes(), &component)).with_context(|| format!("'{}'", out.display()))?;
    println!("signed {} and {} with key {}: {}", manifest_path.display(), component_path.display(), signing::public_key(&key), out.display());
    Ok(ExitCode::SUCCESS)
}

/// Where a component's signature is kept: beside it, `.sig` for `.wasm`.
pub fn signature_path(component: &Path) -> PathBuf {
    component.with_extension("sig")
}
