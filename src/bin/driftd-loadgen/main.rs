//! `driftd-loadgen`: drives a driftd daemon with synthetic columnar batches
//! over gRPC and reports throughput, acknowledgement latency and what the
//! load cost the daemon (CPU seconds and resident memory from `/proc`); and
//! `driftd-loadgen baseline`, a decode-only server with the same gRPC
//! service, the ceiling driftd is measured against in the same run.
//!
//! It is a measuring tool, not part of the daemon: nothing in the library
//! depends on it, and it uses only the library's generated protobuf types.
#![forbid(unsafe_code)]

mod baseline;
mod data;
mod fill;
mod procfs;
mod run;
mod wire;

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

/// Load generator and decode-only baseline server for driftd.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send load to a daemon (started here when a command follows `--`)
    /// and report throughput, latency and the daemon's CPU and memory.
    Run(Box<RunArgs>),
    /// Serve the driftd.v1.Driftd service, decoding every batch and
    /// discarding it: the ceiling driftd is compared with.
    Baseline(BaselineArgs),
    /// Write a store as driftd would have left it after SPAN of traffic
    /// (an in-process daemon on a simulated clock), for start-up timing.
    Fill(FillArgs),
}

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

#[derive(clap::Args)]
struct RunArgs {
    /// The daemon's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:7700")]
    addr: String,
    /// stream: client-streaming Ingest calls; unary: one IngestBatch per
    /// batch (for latency).
    #[arg(long, value_enum, default_value = "stream")]
    mode: run::Mode,
    /// Concurrent workers, each on its own HTTP/2 connection.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Batches per Ingest call in stream mode (one acknowledgement each).
    #[arg(long, default_value_t = 100)]
    stream_batches: u64,
    /// Rows per batch.
    #[arg(long, default_value_t = 1000)]
    rows: usize,
    /// Numeric features per batch.
    #[arg(long, default_value_t = 50)]
    features: usize,
    /// Categorical features per batch, on top of the numeric ones.
    #[arg(long, default_value_t = 0)]
    categorical: usize,
    /// Distinct categories per categorical feature.
    #[arg(long, default_value_t = 20)]
    categories: usize,
    /// Models (model-000, model-001, ...), fed in turn.
    #[arg(long, default_value_t = 1)]
    models: usize,
    /// Model version of every batch.
    #[arg(long, default_value = "v1")]
    version: String,
    /// Target records per second over all workers; 0: full speed.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Load sent before the measurement starts, not counted.
    #[arg(long, value_parser = duration, default_value = "5s")]
    warmup: Duration,
    /// Measured load; 0s with a command: only time the daemon's start-up.
    #[arg(long, value_parser = duration, default_value = "30s")]
    duration: Duration,
    /// Interval of progress lines on standard error.
    #[arg(long, value_parser = duration, default_value = "10s")]
    report_every: Duration,
    /// Distinct pre-encoded batches per model and drift state.
    #[arg(long, default_value_t = 4)]
    pool: usize,
    /// Start of drift, from the start of the run (warm-up included); none
    /// by default.
    #[arg(long, value_parser = duration)]
    drift_after: Option<Duration>,
    /// Length of each drift period; until the end by default.
    #[arg(long, value_parser = duration)]
    drift_for: Option<Duration>,
    /// Repeat the drift period this often.
    #[arg(long, value_parser = duration)]
    drift_every: Option<Duration>,
    /// Features that drift (the first ones, numeric before categorical).
    #[arg(long, default_value_t = 5)]
    drift_features: usize,
    /// Shift of a drifting numeric feature's mean, in standard deviations.
    #[arg(long, default_value_t = 1.0)]
    drift_shift: f64,
    /// Report the CPU time and memory of this process (the daemon).
    #[arg(long)]
    daemon_pid: Option<u32>,
    /// Readiness URL (e.g. http://127.0.0.1:9700/readyz) polled after
    /// starting the daemon; default: the first successful gRPC connection.
    #[arg(long)]
    ready_url: Option<String>,
    /// Longest wait for the started daemon to become ready.
    #[arg(long, value_parser = duration, default_value = "60s")]
    ready_timeout: Duration,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Free text carried into the report.
    #[arg(long, default_value = "")]
    label: String,
    /// A daemon to start before the load and stop (SIGTERM) after it, e.g.
    /// `-- driftd` or `-- driftd-loadgen baseline`; its pid is measured.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(clap::Args)]
struct BaselineArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    addr: SocketAddr,
    /// Largest decoded message, as driftd's server.max_message_bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_message_bytes: usize,
}

#[derive(clap::Args)]
struct FillArgs {
    /// The data directory to fill (DRIFTD_* variables configure the rest).
    #[arg(long)]
    store: std::path::PathBuf,
    /// Simulated traffic, ending now.
    #[arg(long, value_parser = duration, default_value = "1h")]
    span: Duration,
    /// Simulated records per second over all models.
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,
    /// Rows per batch.
    #[arg(long, default_value_t = 1000)]
    rows: usize,
    /// Numeric features per batch.
    #[arg(long, default_value_t = 50)]
    features: usize,
    /// Models.
    #[arg(long, default_value_t = 10)]
    models: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(error) => {
            eprintln!("driftd-loadgen: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let res = runtime.block_on(async {
        match cli.command {
            Cmd::Baseline(a) => baseline::serve(a.addr, a.max_message_bytes).await,
            Cmd::Fill(a) => {
                fill::fill(fill::Settings {
                    store: a.store,
                    span: a.span,
                    rate: a.rate,
                    shape: data::Shape {
                        models: a.models.max(1),
                        version: "v1".into(),
                        rows: a.rows.max(1),
                        features: a.features,
                        categorical: 0,
                        categories: 0,
                        pool: 4,
                        drift_features: 0,
                        drift_shift: 0.0,
                    },
                })
                .await
            }
            Cmd::Run(a) => {
                let json = a.json;
                let report = run::run(settings(*a)).await?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    run::print(&report);
                }
                Ok(())
            }
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("driftd-loadgen: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn settings(a: RunArgs) -> run::Settings {
    run::Settings {
        addr: a.addr,
        mode: a.mode,
        streams: a.streams.max(1),
        stream_batches: a.stream_batches,
        rate: (a.rate > 0.0).then_some(a.rate),
        warmup: a.warmup,
        duration: a.duration,
        report_every: a.report_every,
        shape: data::Shape {
            models: a.models.max(1),
            version: a.version,
            rows: a.rows.max(1),
            features: a.features,
            categorical: a.categorical,
            categories: a.categories,
            pool: a.pool,
            drift_features: a.drift_features,
            drift_shift: a.drift_shift,
        },
        drift: data::Schedule {
            after: a.drift_after,
            length: a.drift_for,
            every: a.drift_every,
        },
        daemon_pid: a.daemon_pid,
        ready_url: a.ready_url,
        ready_timeout: a.ready_timeout,
        command: a.command,
        label: a.label,
    }
}
