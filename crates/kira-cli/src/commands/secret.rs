//! `kira secret`: a master key for encrypted API keys, and sealing a key
//! for `[providers.NAME] api_key_encrypted` (see `crate::secrets`).

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::secrets::{MASTER_KEY_ENV, MasterKey, provider_field};

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Print a new random master key (64 hex characters): keep it in the
    /// environment as KIRA_SECRET_KEY (or a secret manager), never in the
    /// configuration file.
    Keygen,
    /// Seal an API key read from stdin (never from the command line, so it
    /// stays out of shell history) under KIRA_SECRET_KEY, and print the
    /// line for [providers.NAME].
    Encrypt {
        /// The provider the key is for: it only opens there.
        #[arg(long)]
        provider: String,
    },
}

pub fn run(cmd: SecretCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SecretCommand::Keygen => {
            println!("{}", MasterKey::generate());
        }
        SecretCommand::Encrypt { provider } => {
            if provider.is_empty()
                || !provider
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                bail!("--provider must be a provider's name (letters, digits, '_', '-')");
            }
            let env = |k: &str| std::env::var(k).ok();
            let key = MasterKey::from_env(&env)?;
            let mut secret = String::new();
            std::io::stdin()
                .read_to_string(&mut secret)
                .context("reading the key from stdin")?;
            let secret = secret.trim();
            if secret.is_empty() {
                bail!(
                    "no key on stdin: pipe it in, e.g. `printf %s \"$OPENAI_API_KEY\" | kira secret encrypt --provider {provider}`"
                );
            }
            let sealed = key.seal(&provider_field(&provider), secret);
            eprintln!("# under [providers.{provider}]; kira opens it with {MASTER_KEY_ENV}");
            println!("api_key_encrypted = \"{sealed}\"");
        }
    }
    Ok(ExitCode::SUCCESS)
}
