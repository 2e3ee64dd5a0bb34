//! API keys kept encrypted in the configuration file, sealed with
//! `kira_core::seal` (ChaCha20-Poly1305 under `KIRA_SECRET_KEY`) with the
//! field's name as associated data. `kira secret keygen` makes a master
//! key; `kira secret encrypt --provider NAME` seals a key read from stdin
//! and prints the line for `[providers.NAME]`.

pub use kira_core::seal::{MASTER_KEY_ENV, MasterKey};

/// The associated data of a provider's sealed key.
pub fn provider_field(name: &str) -> String {
    format!("providers.{name}.api_key_encrypted")
}
