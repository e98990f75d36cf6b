//! The `driftd` binary: parses the command line, loads the configuration
//! without binding anything, sets up logging, then runs the daemon or a
//! subcommand. The offline `compare` subcommand runs before any of that: it
//! reads no configuration and sets up no logging. All logic lives in the
//! library.
#![forbid(unsafe_code)]

use std::{io::Write, num::NonZeroUsize, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use driftd::{
    compare,
    config::{self, LogFormat},
};

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
    /// Compare two CSV files column by column, offline, and print the drift
    /// statistics and a verdict per column. Ignores the configuration.
    Compare(CompareArgs),
    /// Manage the references of a running daemon.
    #[command(subcommand)]
    Reference(ReferenceCommand),
}

#[derive(Subcommand)]
enum ReferenceCommand {
    /// Send a CSV file (header row of feature names) to a running daemon as
    /// the reference of a model version (the SetReference RPC).
    Import(ImportArgs),
}

#[derive(clap::Args)]
struct ImportArgs {
    /// Model name.
    #[arg(long)]
    model: String,
    /// Model version.
    #[arg(long)]
    version: String,
    /// A column that is a model output (repeatable); the rest are inputs.
    #[arg(long, value_name = "COL")]
    output: Vec<String>,
    /// The daemon's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:7700")]
    addr: String,
    /// Most rows read from the file.
    #[arg(long, default_value_t = 1_000_000)]
    max_rows: usize,
    /// The CSV file.
    file: PathBuf,
}

/// Arguments of `driftd compare`; see the `driftd::compare` documentation.
#[derive(clap::Args)]
struct CompareArgs {
    /// Reference CSV file (with a header row); its columns are compared.
    #[arg(long, value_name = "REF.csv")]
    reference: PathBuf,
    /// Current CSV file (with a header row).
    #[arg(long, value_name = "CUR.csv")]
    current: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// Treat this column as categorical even if all its values are numbers
    /// (repeatable).
    #[arg(long, value_name = "COL")]
    categorical: Vec<String>,
    /// Number of reference quantile bins for numeric columns.
    #[arg(long, value_name = "B", default_value_t = NonZeroUsize::new(driftd::stats::DEFAULT_BINS).unwrap_or(NonZeroUsize::MIN))]
    bins: NonZeroUsize,
    /// PSI's replacement for empty-bin proportions (finite, > 0).
    #[arg(long, value_name = "E", default_value_t = driftd::stats::DEFAULT_EPSILON, value_parser = positive_finite)]
    epsilon: f64,
    /// Minimum non-missing values on each side for a verdict other than
    /// insufficient_data.
    #[arg(long, value_name = "N", default_value_t = compare::DEFAULT_MIN_SAMPLES)]
    min_samples: usize,
}

/// Output formats of `driftd compare`.
#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// `{"features": {"<column>": {...}}}`, pretty-printed.
    Json,
    /// An aligned table for people.
    Table,
}

fn positive_finite(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("{s:?} is not a finite number > 0")),
    }
}

/// jemalloc rather than the system allocator: the windows free and
/// reallocate sample vectors of many sizes all day. With the options built
/// into it (the `background_threads` feature and `.cargo/config.toml`;
/// `_RJEM_MALLOC_CONF` overrides them at run time) its background thread
/// hands freed pages back to the kernel after about a second, off the
/// writer's thread. In the sizing scenario mimalloc kept ~100-130 MiB more
/// resident, glibc's malloc more still (BENCHMARKS.md, memory).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `compare` is offline: dispatch it before the configuration is loaded so
    // that a broken daemon configuration cannot stop it.
    let command = match cli.command {
        Some(Command::Compare(args)) => return run_compare(args),
        Some(Command::Reference(ReferenceCommand::Import(args))) => return run_import(args),
        other => other,
    };
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
    match command.unwrap_or(Command::Run) {
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
        // Dispatched above, before the configuration is loaded.
        Command::Compare(args) => run_compare(args),
        Command::Reference(ReferenceCommand::Import(args)) => run_import(args),
    }
}

/// Runs `driftd reference import`: reads the file, streams it to the
/// daemon, prints the daemon's answer. Exit 65 (EX_DATAERR) for a bad file,
/// 69 (EX_UNAVAILABLE) when the daemon cannot be reached, 1 when it refuses.
fn run_import(args: ImportArgs) -> ExitCode {
    let key = driftd::domain::ModelKey {
        model: args.model,
        version: args.version,
    };
    for (what, name) in [("--model", &key.model), ("--version", &key.version)] {
        if let Err(e) = driftd::domain::validate_name(name) {
            eprintln!("driftd reference import: {what} {name:?}: {e}");
            return ExitCode::from(EX_USAGE);
        }
    }
    let batches = match driftd::refcsv::read(
        &args.file,
        &key,
        &args.output,
        args.max_rows,
        &Default::default(),
    ) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("driftd reference import: {e}");
            return ExitCode::from(65);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("driftd reference import: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(driftd::client::import_reference(&args.addr, &key, batches)) {
        Ok(r) => {
            println!(
                "{}@{}: reference of {} records and {} features in force",
                r.model, r.version, r.records, r.features
            );
            ExitCode::SUCCESS
        }
        Err(e @ driftd::client::Error::Connect { .. }) => {
            eprintln!("driftd reference import: {e}");
            ExitCode::from(69)
        }
        Err(e) => {
            eprintln!("driftd reference import: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `driftd compare`: the report on stdout, or `driftd compare:
/// <message>` on stderr with the error's exit code.
fn run_compare(args: CompareArgs) -> ExitCode {
    let lib_args = compare::Args {
        reference: args.reference,
        current: args.current,
        categorical: args.categorical,
        bins: args.bins,
        epsilon: args.epsilon,
        min_samples: args.min_samples,
    };
    let report = match compare::run(&lib_args) {
        Ok(r) => r,
        Err(error) => {
            let code = error.exit_code();
            eprintln!("driftd compare: {:#}", anyhow::Error::from(error));
            return ExitCode::from(code);
        }
    };
    let text = match args.format {
        Format::Table => compare::render_table(&report),
        Format::Json => match serde_json::to_string_pretty(&report) {
            Ok(mut json) => {
                json.push('\n');
                json
            }
            Err(error) => {
                eprintln!("driftd compare: cannot encode the report: {error}");
                return ExitCode::FAILURE;
            }
        },
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("driftd compare: cannot write the report: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: config::Config) -> ExitCode {
    driftd::telemetry::init(&config.log, config.log_format);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "Starting driftd");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
