//! The `kira` binary: `kira serve` runs the server (`kira worker` the
//! engine alone); `kira bench` runs the benchmarks of `kira-bench` in
//! process and `kira secret` seals keys locally; every other command is a
//! client of the server's HTTP API.

mod agents;
mod cli;
mod client;
mod commands;
mod config;
mod models;
mod output;
mod secrets;
mod serve;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};
use crate::client::ApiError;
use crate::config::ConfigError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => report(&e),
    }
}

/// Prints the error the way the user should read it and picks the exit
/// status: 2 for a refused configuration (like clap's usage errors), 1 for
/// everything else.
fn report(e: &anyhow::Error) -> ExitCode {
    if let Some(c) = e.downcast_ref::<ConfigError>() {
        eprintln!("error: {c}");
        return ExitCode::from(2);
    }
    if let Some(api) = e.downcast_ref::<ApiError>() {
        eprintln!("error: {api}");
        return ExitCode::FAILURE;
    }
    eprintln!("error: {}", chain_message(e));
    ExitCode::FAILURE
}

/// The error and its causes joined with ": ", skipping a cause whose text
/// the message already holds (errors that print their source too).
fn chain_message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg
}

/// The configuration of `serve` and `worker`: flags, env, file, defaults.
fn load_config(
    args: cli::ServeArgs,
    data_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<config::Config> {
    let flags = config::Flags {
        listen: args.listen,
        database_url: args.database_url,
        app_database_url: args.app_database_url,
        data_dir,
        max_body_bytes: args.max_body_bytes,
        config: args.config,
        log: args.log,
    };
    Ok(config::Config::load(
        &flags,
        &|k| std::env::var(k).ok(),
        std::path::Path::new(config::DEFAULT_CONFIG_FILE),
    )?)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let Cli {
        url,
        token,
        data_dir,
        json,
        command,
    } = cli;
    let ctx = || commands::Ctx::new(&url, token.as_deref(), data_dir.clone(), json);
    match command {
        Command::Serve(args) => {
            serve::run(load_config(args, data_dir)?).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker(args) => {
            serve::worker(load_config(args, data_dir)?).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Company(cmd) => {
            commands::company::check(&cmd)?;
            commands::company::run(&ctx()?, cmd).await
        }
        Command::Admin(cmd) => commands::admin::run(&ctx()?, cmd).await,
        Command::Audit(cmd) => commands::audit::run(&ctx()?, cmd).await,
        Command::Task(cmd) => commands::task::run(&ctx()?, cmd).await,
        Command::Review(cmd) => commands::review::run(&ctx()?, cmd).await,
        Command::Budget(cmd) => commands::budget::run(&ctx()?, cmd).await,
        Command::Memory(cmd) => commands::memory::run(&ctx()?, cmd).await,
        Command::Context(args) => commands::memory::context(&ctx()?, args).await,
        Command::Knowledge(cmd) => commands::knowledge::run(&ctx()?, cmd).await,
        Command::Sharing(cmd) => commands::sharing::run_sharing(&ctx()?, cmd).await,
        Command::Agents(cmd) => commands::agents::run(&ctx()?, cmd).await,
        Command::Metrics(cmd) => commands::metrics::run(&ctx()?, cmd).await,
        Command::Dashboard(cmd) => commands::dashboard::run(&ctx()?, cmd).await,
        Command::Alerts(cmd) => commands::alerts::run(&ctx()?, cmd).await,
        Command::Tools(cmd) => commands::tools::run(&ctx()?, cmd).await,
        Command::Credentials(cmd) => commands::credentials::run(&ctx()?, cmd).await,
        Command::Conflicts(cmd) => commands::sharing::run_conflicts(&ctx()?, cmd).await,
        Command::Demo(args) => commands::demo::run(&ctx()?, args).await,
        Command::Secret(cmd) => commands::secret::run(cmd),
        Command::Whoami => commands::whoami(&ctx()?).await,
        Command::Bench(cmd) => {
            // A benchmark logs only when asked (`RUST_LOG`): the engine's
            // debug lines (a scheduling pass's claims) explain its figures.
            if let Some(filter) = std::env::var("RUST_LOG").ok().filter(|f| !f.is_empty()) {
                serve::init_logging(&filter);
            }
            Ok(kira_bench::run(cmd, json).await?)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "kira", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_not_repeated() {
        #[derive(Debug)]
        struct Echo(std::io::Error);
        impl std::fmt::Display for Echo {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "database: {}", self.0)
            }
        }
        impl std::error::Error for Echo {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = anyhow::Error::new(Echo(std::io::Error::other("unable to open")))
            .context("cannot open the database");
        assert_eq!(
            chain_message(&e),
            "cannot open the database: database: unable to open"
        );
    }
}
