//! The `driftd` binary: parses the command line, loads the configuration
//! without binding anything, sets up logging, then runs the daemon or a
//! subcommand. All logic lives in the library.
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use driftd::config::{self, LogFormat};

/// Exit status for an invalid configuration or command line (EX_USAGE).
const EX_USAGE: u8 = 64;

/// driftd watches ML models in production for data and prediction drift.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file; embedded defaults and DRIFTD_* environment
    /// variables apply without one.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log format; overrides the `log_format` key.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the configuration and print the effective configuration.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (raw, mut config) = match config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(error) => {
            eprintln!("driftd: {error}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if let Some(format) = cli.log_format {
        config.log_format = format;
    }
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => match raw.to_toml() {
            Ok(text) => {
                println!("# configuration is valid; effective values:\n{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("driftd: cannot print configuration: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Run => run(config),
    }
}

fn run(config: config::Config) -> ExitCode {
    driftd::telemetry::init(&config.log, config.log_format);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "Starting driftd");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("driftd: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let res = runtime.block_on(async {
        let listeners = driftd::app::Listeners::bind(&config).await?;
        driftd::app::run(config, listeners, async {
            if let Err(error) = driftd::shutdown::signal().await {
                tracing::error!(error = %error, "Cannot install signal handlers");
                std::future::pending::<()>().await;
            }
        })
        .await
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "driftd failed");
            eprintln!("driftd: {error:#}");
            ExitCode::FAILURE
        }
    }
}
