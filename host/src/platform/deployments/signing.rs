//! Signed functions: with trusted ed25519 public keys configured
//! (`RUNNEL_TRUSTED_KEYS`), a version runs only if it carries a signature,
//! by one of them, over its manifest and its component.
//!
//! A signature is a small JSON document (`<name>.sig` next to the
//! component, the `signature` part of a deploy):
//!
//! ```json
//! {"algorithm": "ed25519", "key": "<public key, base64>", "signature": "<base64>"}
//! ```
//!
//! signing `runnel-function-signature-v1\0`, then the SHA-256 of the
//! manifest, then the SHA-256 of the component. `runnel sign` writes one;
//! `runnel keygen` makes a key pair.

use base64::{Engine, engine::general_purpose::STANDARD};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const CONTEXT: &[u8] = b"runnel-function-signature-v1\0";

/// The bytes a signature covers.
fn message(manifest: &[u8], component: &[u8]) -> Vec<u8> {
    let mut message = CONTEXT.to_vec();
    message.extend_from_slice(&Sha256::digest(manifest));
    message.extend_from_slice(&Sha256::digest(component));
    message
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    algorithm: String,
    key: String,
    signature: String,
}

/// Signs a version: the JSON document to deploy with it.
pub fn sign(key: &SigningKey, manifest: &[u8], component: &[u8]) -> String {
    let signature = key.sign(&message(manifest, component));
    let document = Document {
        algorithm: "ed25519".into(),
        key: STANDARD.encode(key.verifying_key().as_bytes()),
        signature: STANDARD.encode(signature.to_bytes()),
    };
    serde_json::to_string_pretty(&document).expect("a signature serializes") + "\n"
}

/// A key's public half, as `RUNNEL_TRUSTED_KEYS` takes it.
pub fn public_key(key: &SigningKey) -> String {
    STANDARD.encode(key.verifying_key().as_bytes())
}

/// A short name for a key: the first 16 hex digits of its SHA-256.
fn fingerprint(key: &VerifyingKey) -> String {
    Sha256::digest(key.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// One trusted key, and the name the versions listing shows for it.
#[derive(Clone)]
struct Trusted {
    name: String,
    key: VerifyingKey,
}

/// The keys whose signatures are accepted.
#[derive(Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<Trusted>,
}

impl std::fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| &k.name)).finish()
    }
}

/// Why a version's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the version is not signed, and RUNNEL_TRUSTED_KEYS requires a signature by one of its keys")]
    Unsigned,
    #[error("the signature is not a signature document ({0})")]
    Malformed(String),
    #[error("the signature is by key {0}, which is not in RUNNEL_TRUSTED_KEYS")]
    Untrusted(String),
    #[error("the signature by {0} does not match this manifest and component")]
    Mismatch(String),
}

impl TrustedKeys {
    /// Reads `RUNNEL_TRUSTED_KEYS`: comma-separated public keys (base64 of
    /// the 32 bytes), each optionally named: `alice=<key>`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, encoded) = match entry.split_once('=') {
                // A base64 key may end with '=': a name has no '+' or '/' and comes first.
                Some((name, rest)) if !rest.is_empty() && !name.is_empty() && !name.contains(['+', '/']) && name.len() < 43 => {
                    (Some(name.trim()), rest.trim())
                }
                _ => (None, entry),
            };
            let key = decode_key(encoded).map_err(|e| format!("'{}': {e}", shorten(entry)))?;
            let name = name.map_or_else(|| fingerprint(&key), str::to_string);
            if keys.iter().any(|k: &Trusted| k.key == key) {
                return Err(format!("key {name} is listed twice"));
            }
            keys.push(Trusted { name, key });
        }
        if keys.is_empty() {
            return Err("lists no key".into());
        }
        Ok(TrustedKeys { keys })
    }

    /// The signer's name if `signature` (the document) is by a trusted key
    /// over exactly this manifest and component.
    pub fn verify(&self, manifest: &[u8], component: &[u8], signature: Option<&str>) -> Result<String, SignatureError> {
        let text = signature.filter(|s| !s.trim().is_empty()).ok_or(SignatureError::Unsigned)?;
        let document: Document = serde_json::from_str(text).map_err(|e| SignatureError::Malformed(e.to_string()))?;
        if document.algorithm != "ed25519" {
            return Err(SignatureError::Malformed(format!("algorithm '{}' is not ed25519", shorten(&document.algorithm))));
        }
        let key = decode_key(&document.key).map_err(|e| SignatureError::Malformed(format!("key: {e}")))?;
        let bytes: [u8; 64] = STANDARD
            .decode(document.signature.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| SignatureError::Malformed("signature: not 64 bytes of base64".into()))?;
        let trusted = self.keys.iter().find(|t| t.key == key).ok_or_else(|| SignatureError::Untrusted(fingerprint(&key)))?;
        trusted
            .key
            .verify_strict(&message(manifest, component), &Signature::from_bytes(&bytes))
            .map_err(|_| SignatureError::Mismatch(trusted.name.clone()))?;
        Ok(trusted.name.clone())
    }
}

fn decode_key(encoded: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = STANDARD
        .decode(encoded.trim())
        .map_err(|_| "not base64".to_string())?
        .try_into()
        .map_err(|_| "not a 32-byte ed25519 public key".to_string())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid ed25519 public key".to_string())
}

/// Untrusted text, cut short for an error message.
fn shorten(text: &str) -> String {
    let mut short: String = text.chars().filter(|c| !c.is_control()).take(60).collect();
    if text.chars().count() > 60 {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_trusted_signature_over_these_bytes_verifies_and_nothing_else_does() {
        let (alice, mallory) = (key(1), key(2));
        let trusted = TrustedKeys::parse(&format!("alice={}, {}", public_key(&alice), public_key(&key(3)))).unwrap();
        let signed = sign(&alice, b"name = 'f'", b"\0asm");
        assert_eq!(trusted.verify(b"name = 'f'", b"\0asm", Some(&signed)), Ok("alice".to_string()));
        assert_eq!(trusted.verify(b"name = 'g'", b"\0asm", Some(&signed)), Err(SignatureError::Mismatch("alice".into())));
        assert_eq!(trusted.verify(b"name = 'f'", b"\0asm!", Some(&signed)), Err(SignatureError::Mismatch("alice".into())));
        assert_eq!(trusted.verify(b"m", b"c", None), Err(SignatureError::Unsigned));
        let untrusted = trusted.verify(b"m", b"c", Some(&sign(&mallory, b"m", b"c"))).unwrap_err();
        assert!(matches!(untrusted, SignatureError::Untrusted(_)), "{untrusted}");
        // Mallory's signature presented under Alice's key does not verify.
        let mut forged: Document = serde_json::from_str(&signed).unwrap();
        forged.signature = serde_json::from_str::<Document>(&sign(&mallory, b"name = 'f'", b"\0asm")).unwrap().signature;
        let forged = serde_json::to_string(&forged).unwrap();
        assert_eq!(trusted.verify(b"name = 'f'", b"\0asm", Some(&forged)), Err(SignatureError::Mismatch("alice".into())));
        for bad in ["", "{}", "not json", r#"{"algorithm":"rsa","key":"","signature":""}"#] {
            assert!(trusted.verify(b"m", b"c", Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn trusted_keys_are_checked_when_read() {
        assert!(TrustedKeys::parse("").is_err());
        assert!(TrustedKeys::parse("bob=not-base64").unwrap_err().contains("not base64"));
        assert!(TrustedKeys::parse("AAAA").unwrap_err().contains("32-byte"));
        let k = public_key(&key(1));
        assert!(TrustedKeys::parse(&format!("{k},{k}")).unwrap_err().contains("twice"));
        let unnamed = TrustedKeys::parse(&k).unwrap();
        assert_eq!(format!("{unnamed:?}"), format!("[{:?}]", fingerprint(&key(1).verifying_key())));
    }
}
