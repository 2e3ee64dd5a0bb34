//! Sealing secrets: ChaCha20-Poly1305 under a master key that is never
//! stored with what it seals (`KIRA_SECRET_KEY`, 64 hex characters, from
//! the environment or a secret manager), with associated data naming where
//! the value belongs (a configuration field; a company and a tool), so a
//! sealed value only opens where it was sealed for. The `kira` binary
//! seals provider keys in its configuration file with it, the engine the
//! companies' tool credentials. No I/O: the caller hands the environment
//! in.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};

/// The environment variable holding the master key.
pub const MASTER_KEY_ENV: &str = "KIRA_SECRET_KEY";
/// What a sealed value starts with (the format's version).
pub const PREFIX: &str = "kira-sealed-v1:";
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error(
        "{MASTER_KEY_ENV} is not set: it holds the master key that opens encrypted keys (make one with `kira secret keygen`)"
    )]
    NoMasterKey,
    #[error(
        "{MASTER_KEY_ENV} must be 64 hex characters (32 bytes; `kira secret keygen` makes one)"
    )]
    BadMasterKey,
    #[error("is not a sealed value (it starts with {PREFIX}, then hex)")]
    Malformed,
    #[error("does not open with this master key (a different key, or sealed for another field)")]
    WrongKey,
}

/// A 32-byte master key.
pub struct MasterKey([u8; 32]);

impl MasterKey {
    /// From its hex form.
    pub fn parse(hex_key: &str) -> Result<MasterKey, SecretError> {
        let bytes = hex::decode(hex_key.trim()).map_err(|_| SecretError::BadMasterKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| SecretError::BadMasterKey)?;
        Ok(MasterKey(key))
    }

    /// From `KIRA_SECRET_KEY` in `env`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<MasterKey, SecretError> {
        let v = env(MASTER_KEY_ENV)
            .filter(|v| !v.trim().is_empty())
            .ok_or(SecretError::NoMasterKey)?;
        MasterKey::parse(&v)
    }

    /// A new random key, in hex.
    pub fn generate() -> String {
        hex::encode(rand::random::<[u8; 32]>())
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&self.0.into())
    }

    /// Seals `secret` for the field `aad` (e.g. `providers.openai.api_key`).
    pub fn seal(&self, aad: &str, secret: &str) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .cipher()
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .unwrap_or_default();
        format!("{PREFIX}{}{}", hex::encode(nonce), hex::encode(sealed))
    }

    /// Opens a value sealed for the field `aad`.
    pub fn open(&self, aad: &str, sealed: &str) -> Result<String, SecretError> {
        let body = sealed
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(SecretError::Malformed)?;
        let bytes = hex::decode(body).map_err(|_| SecretError::Malformed)?;
        if bytes.len() <= NONCE_LEN {
            return Err(SecretError::Malformed);
        }
        let (nonce, ct) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SecretError::Malformed)?;
        let plain = self
            .cipher()
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SecretError::WrongKey)?;
        String::from_utf8(plain).map_err(|_| SecretError::WrongKey)
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::parse(&"ab".repeat(32)).expect("key")
    }

    #[test]
    fn a_sealed_key_opens_for_its_field_only() {
        let k = key();
        let sealed = k.seal("providers.openai.api_key_encrypted", "sk-live-123");
        assert!(sealed.starts_with(PREFIX));
        assert!(!sealed.contains("sk-live-123"));
        assert_eq!(
            k.open("providers.openai.api_key_encrypted", &sealed),
            Ok("sk-live-123".into())
        );
        assert_eq!(
            k.open("providers.other.api_key_encrypted", &sealed),
            Err(SecretError::WrongKey),
            "moved to another provider, it does not open"
        );
        let other = MasterKey::parse(&"cd".repeat(32)).expect("key");
        assert_eq!(
            other.open("providers.openai.api_key_encrypted", &sealed),
            Err(SecretError::WrongKey)
        );
        assert_ne!(
            sealed,
            k.seal("providers.openai.api_key_encrypted", "sk-live-123"),
            "a fresh nonce every time"
        );
    }

    #[test]
    fn tampered_or_malformed_values_are_refused() {
        let k = key();
        let sealed = k.seal("f", "secret");
        let mut tampered = sealed.clone();
        let last = tampered.pop().expect("char");
        tampered.push(if last == '0' { '1' } else { '0' });
        assert_eq!(k.open("f", &tampered), Err(SecretError::WrongKey));
        for bad in [
            "",
            "secret",
            "kira-sealed-v1:",
            "kira-sealed-v1:zz",
            "kira-sealed-v1:00ff",
        ] {
            assert_eq!(k.open("f", bad), Err(SecretError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn master_keys_are_64_hex_characters_from_the_environment() {
        assert!(MasterKey::parse(&MasterKey::generate()).is_ok());
        assert_eq!(
            MasterKey::parse("abcd").err(),
            Some(SecretError::BadMasterKey)
        );
        assert_eq!(
            MasterKey::parse(&"zz".repeat(32)).err(),
            Some(SecretError::BadMasterKey)
        );
        assert_eq!(
            MasterKey::from_env(&|_| None).err(),
            Some(SecretError::NoMasterKey)
        );
        let hexkey = "ab".repeat(32);
        assert!(MasterKey::from_env(&|v| (v == MASTER_KEY_ENV).then(|| hexkey.clone())).is_ok());
        assert_eq!(format!("{:?}", key()), "MasterKey(..)", "never printed");
    }
}
