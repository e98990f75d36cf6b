//! `driftd-loadgen fill`: writes a store as a daemon would have left it
//! after `--span` of traffic, without waiting that long. It runs driftd's
//! own `app::run` in this process on loopback ports with a simulated clock
//! that starts `--span` ago, sends every model one batch per step over
//! gRPC (unary, acknowledged, so each batch lands at its simulated time),
//! advances the clock, and shuts the daemon down cleanly at "now". A real
//! daemon started on the directory afterwards finds every window full.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use driftd::{
    app,
    config::{self, Clock},
};

use crate::{
    data::{Batches, Shape},
    wire,
};

/// What to fill.
pub struct Settings {
    /// The data directory (created when missing).
    pub store: PathBuf,
    /// Simulated traffic before now.
    pub span: Duration,
    /// Records per second over all models.
    pub rate: f64,
    /// The batches.
    pub shape: Shape,
}

/// Fills the store; prints what it wrote.
///
/// # Errors
/// The configuration (from `DRIFTD_*` variables) is invalid, the daemon
/// could not run, or a batch was refused.
pub async fn fill(s: Settings) -> anyhow::Result<()> {
    let (_, mut cfg) = config::load(None, std::env::vars()).context("loading DRIFTD_* settings")?;
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    };
    let span_ms = s.span.as_millis() as i64;
    let clock = Arc::new(AtomicI64::new(now_ms() - span_ms));
    let c = clock.clone();
    cfg.engine.clock = Clock::from_fn(move || c.load(Ordering::SeqCst));
    cfg.store.path = s.store.clone();
    let listeners = app::Listeners {
        grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        http: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    };
    let addr = format!("http://{}", listeners.grpc.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(app::run(cfg, listeners, async {
        let _ = stop_rx.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(addr.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to the in-process daemon at {addr}"))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    let batches = Batches::generate(&s.shape, false);
    // One batch per model per step: the step that gives the rate.
    let step_ms =
        ((s.shape.rows * s.shape.models) as f64 / s.rate.max(1e-9) * 1000.0).max(1.0) as i64;
    let steps = span_ms / step_ms;
    let started = Instant::now();
    let mut records = 0u64;
    for k in 0..steps {
        clock.store(now_ms() - span_ms + k * step_ms, Ordering::SeqCst);
        for m in 0..s.shape.models {
            let r = wire::ingest_batch(&mut grpc, batches.get(m, k as u64, false))
                .await
                .with_context(|| format!("batch {k} of model {m}"))?;
            records += r.records;
        }
        if k % 1000 == 999 {
            eprintln!(
                "driftd-loadgen fill: {:.0}% ({} records, {:.0} s)",
                (k + 1) as f64 * 100.0 / steps as f64,
                records,
                started.elapsed().as_secs_f64()
            );
        }
    }
    clock.store(now_ms(), Ordering::SeqCst);
    let stopping = Instant::now();
    let _ = stop_tx.send(());
    daemon.await.context("the in-process daemon panicked")??;
    println!(
        "filled {} with {:?} of traffic: {} models x {} features, {} records ({} per model), {:.0} records/s simulated, in {:.1} s (its clean shutdown: {:.0} ms)",
        s.store.display(),
        s.span,
        s.shape.models,
        s.shape.features + s.shape.categorical,
        records,
        records / s.shape.models as u64,
        s.rate,
        started.elapsed().as_secs_f64(),
        stopping.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}
