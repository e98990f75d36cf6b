//! The composition root: opens the store, restores the engine, starts the
//! gRPC and HTTP servers on listeners the caller bound, and runs the
//! shutdown sequence. Tests call [`run`] with port-0 listeners and their own
//! shutdown future.

use std::future::Future;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::service::interceptor::InterceptedService;

use crate::{
    auth,
    config::{Config, OnCorruption, StoreConfig},
    engine,
    metrics::Metrics,
    proto,
    server::{admin, grpc, kserve},
    store::{Store, StoredVersion},
    tls, webhook,
};

/// The bound sockets driftd serves on.
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// HTTP admin and JSON API.
    pub http: TcpListener,
}

impl Listeners {
    /// Binds both configured addresses.
    ///
    /// # Errors
    /// Names the address that could not be bound.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let grpc = TcpListener::bind(config.grpc_addr).await.with_context(|| {
            format!(
                "binding gRPC address {} (server.grpc_addr)",
                config.grpc_addr
            )
        })?;
        let http = TcpListener::bind(config.http_addr).await.with_context(|| {
            format!(
                "binding HTTP address {} (server.http_addr)",
                config.http_addr
            )
        })?;
        Ok(Self { grpc, http })
    }
}

/// Opens the store; an unreadable one is refused with a message naming the
/// way out, or quarantined (renamed aside, counted) when configured so.
fn open_store(cfg: &StoreConfig, metrics: &Metrics) -> anyhow::Result<(Store, Vec<StoredVersion>)> {
    let path = cfg.path.display().to_string();
    match Store::open_and_load(cfg) {
        Ok(x) => Ok(x),
        Err(error) if error.is_corruption() && cfg.on_corruption == OnCorruption::Quarantine => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let aside = format!("{path}.corrupt-{secs}");
            std::fs::rename(&cfg.path, &aside)
                .with_context(|| format!("quarantining the unreadable store {path} to {aside}"))?;
            metrics.store_quarantined.inc();
            tracing::error!(path = %path, moved_to = %aside, error = %error, "Store unreadable; moved aside, starting empty");
            Store::open_and_load(cfg).with_context(|| format!("opening a fresh store at {path}"))
        }
        Err(error) if error.is_corruption() => Err(anyhow::Error::new(error).context(format!(
            "the store at {path} is unreadable; move it aside (mv {path} {path}.corrupt) and restart, \
             or set store.on_corruption = \"quarantine\" to do that automatically and start empty"
        ))),
        Err(error) => Err(anyhow::Error::new(error).context(format!("opening store at {path}"))),
    }
}

/// Runs driftd until `shutdown` resolves, then drains: not ready, stop
/// accepting, finish in-flight RPCs, let the engine empty its queue and
/// flush the store, all within `config.grace_period`.
///
/// # Errors
/// Fails when the store cannot be opened, a server stops unexpectedly or the
/// drain exceeds the grace period.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let store_cfg = config.store.clone();
    let m = metrics.clone();
    let (store, loaded) = tokio::task::spawn_blocking(move || open_store(&store_cfg, &m))
        .await
        .context("opening store")??;
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    tracker.spawn(store.clone().keep_marking(cancel.clone()));
    let webhooks = webhook::Outbox::start(
        config.webhook.clone(),
        store.clone(),
        metrics.clone(),
        &tracker,
        cancel.clone(),
    )
    .context("building webhook client")?;
    let engine = engine::start(
        config.engine.clone(),
        config.queue_capacity,
        store.clone(),
        loaded,
        metrics.clone(),
        webhooks,
        &tracker,
        cancel.clone(),
    )
    .context("starting the engine")?;
    load_file_references(&config.engine, &engine).await?;

    let grpc_addr = listeners.grpc.local_addr()?;
    let http_addr = listeners.http.local_addr()?;
    let guard =
        auth::Guard::new(&config.auth, metrics.clone()).context("reading auth.tokens_file")?;
    tracker.spawn(guard.clone().watch(cancel.clone()));
    let loopback_only = grpc_addr.ip().is_loopback() && http_addr.ip().is_loopback();
    if !guard.enabled() && !loopback_only {
        tracing::warn!(
            grpc_addr = %grpc_addr,
            http_addr = %http_addr,
            "Authentication is off while listening beyond loopback; anyone who can connect may ingest and read; set auth.tokens_file or DRIFTD_TOKENS"
        );
    }
    let tls = match &config.tls {
        Some(cfg) => {
            let t = tls::Tls::new(cfg.clone(), metrics.clone()).context("loading TLS files")?;
            tracker.spawn(t.clone().watch(cancel.clone()));
            Some(t)
        }
        None => None,
    };
    let guard_enabled = guard.enabled();
    let health_auth = grpc::authenticate(guard.clone(), guard.protects_health());

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building gRPC reflection")?;
    let driftd_service = proto::driftd_server::DriftdServer::new(grpc::Service::new(
        engine.clone(),
        metrics.clone(),
        config.max_reference_records,
        config.engine.limits.names.clone(),
    ))
    .max_decoding_message_size(config.max_message_bytes)
    .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    health_reporter
        .set_serving::<proto::driftd_server::DriftdServer<grpc::Service>>()
        .await;

    let limits = &config.connections;
    // The edge layer runs outside the routes, so it sees the codec's
    // refusals of every call; HTTP/2 tells clients how many streams one
    // connection may carry, and they queue the rest.
    let grpc_server = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_streams_per_connection)
        .layer(grpc::EdgeLayer::new(
            metrics.clone(),
            limits.stream_idle_timeout,
            config.max_message_bytes,
        ))
        .add_service(InterceptedService::new(health_service, health_auth.clone()))
        .add_service(InterceptedService::new(reflection, health_auth))
        .add_service(InterceptedService::new(
            driftd_service,
            grpc::authenticate(guard.clone(), true),
        ));
    let grpc_stop = cancel.clone().cancelled_owned();
    let (max_conns, idle) = (limits.max_connections, limits.stream_idle_timeout);
    let mut grpc_task = match &tls {
        Some(t) => tokio::spawn(
            grpc_server.serve_with_incoming_shutdown(
                grpc::limit_connections(
                    t.incoming(listeners.grpc, tls::Proto::Grpc, cancel.clone())
                        .into_stream(),
                    max_conns,
                    idle,
                    metrics.clone(),
                ),
                grpc_stop,
            ),
        ),
        None => tokio::spawn(grpc_server.serve_with_incoming_shutdown(
            grpc::limit_connections(
                no_delay(TcpListenerStream::new(listeners.grpc)),
                max_conns,
                idle,
                metrics.clone(),
            ),
            grpc_stop,
        )),
    };
    let ready = admin::Readiness::default();
    let kserve = kserve::Kserve::new(engine.clone(), metrics.clone(), config.inference.clone());
    tracker.spawn(kserve.clone().run_expiry(cancel.clone()));
    let router = admin::protect(
        admin::router(metrics.clone(), engine.reader(), ready.clone()).merge(kserve.router()),
        guard,
    );
    let http_stop = cancel.clone().cancelled_owned();
    let mut http_task = match tls.as_ref().filter(|t| t.on_http()) {
        Some(t) => {
            let incoming = t.incoming(listeners.http, tls::Proto::Http, cancel.clone());
            tokio::spawn(async move {
                axum::serve(incoming, router)
                    .with_graceful_shutdown(http_stop)
                    .await
            })
        }
        None => tokio::spawn(async move {
            axum::serve(listeners.http, router)
                .with_graceful_shutdown(http_stop)
                .await
        }),
    };
    // The gRPC service owns the engine handle from here on; once the server
    // stops, the writer sees its queue close and drains it.
    drop(engine);
    let http_tls = tls.as_ref().is_some_and(|t| t.on_http());
    tracing::info!(addr = %grpc_addr, tls = tls.is_some(), auth = guard_enabled, "gRPC server listening");
    tracing::info!(addr = %http_addr, tls = http_tls, auth = guard_enabled, "HTTP server listening");
    ready.set(true);

    let early = tokio::select! {
        _ = shutdown => None,
        res = &mut grpc_task => Some(format!("gRPC server stopped: {res:?}")),
        res = &mut http_task => Some(format!("HTTP server stopped: {res:?}")),
        // Only a new process can open the store again: exit non-zero so
        // that systemd or Kubernetes restarts driftd at once.
        () = store.until_wedged() => Some(store.wedged().map_or_else(String::new, |e| e.to_string())),
    };
    if let Some(reason) = &early {
        tracing::error!(error = %reason, "Shutting down after a fatal error");
    }

    tracing::info!("Draining");
    ready.set(false);
    health_reporter
        .set_not_serving::<proto::driftd_server::DriftdServer<grpc::Service>>()
        .await;
    cancel.cancel();
    let drain = async {
        if !grpc_task.is_finished() {
            let _ = grpc_task.await;
        }
        if !http_task.is_finished() {
            let _ = http_task.await;
        }
        tracker.close();
        tracker.wait().await;
    };
    let drained = tokio::time::timeout(config.grace_period, drain).await;
    if let Err(error) = store.flush().await {
        tracing::error!(error = %error, "Final store flush failed");
    }
    let marking = store.clone();
    if let Ok(Err(error)) = tokio::task::spawn_blocking(move || marking.mark_durable()).await {
        tracing::warn!(error = %error, "Recording the store's durable mark failed");
    }
    // sled records a snapshot of its log only while it opens: without one
    // the next start replays everything written since this one.
    if drained.is_ok() && early.is_none() {
        let checkpointing = store.clone();
        let min = config.store.checkpoint_after_bytes;
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || checkpointing.checkpoint(min)).await {
            Ok(Ok(true)) => tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "Store reopened so that the next start replays no log"
            ),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "Reopening the store at shutdown failed");
            }
            Err(error) => tracing::warn!(error = %error, "The store's checkpoint panicked"),
        }
    }
    if drained.is_err() {
        anyhow::bail!(
            "graceful shutdown did not complete in {:?}, terminating now",
            config.grace_period
        );
    }
    if let Some(reason) = early {
        anyhow::bail!(reason);
    }
    tracing::info!("Shutdown complete");
    Ok(())
}

/// Accepted connections with TCP_NODELAY: an acknowledgement is a few
/// small HTTP/2 frames (headers, data, trailers), and under Nagle's
/// algorithm the later ones wait for the client's delayed ACK, about 40 ms
/// on Linux, which would dominate a unary ingest's latency.
fn no_delay(
    incoming: TcpListenerStream,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    incoming.map(|conn| {
        if let Ok(tcp) = &conn {
            let _ = tcp.set_nodelay(true);
        }
        conn
    })
}

/// Compiles the CSV references named in `reference.sources` and hands them
/// to the engine, which keeps its windows when the content is unchanged.
async fn load_file_references(
    cfg: &crate::config::EngineConfig,
    engine: &engine::Handle,
) -> anyhow::Result<()> {
    for s in &cfg.reference_sources {
        let crate::config::SourceKind::File { path, outputs } = &s.kind else {
            continue;
        };
        let key = crate::domain::ModelKey {
            model: s.model.clone(),
            version: s.version.clone(),
        };
        let (p, k, o) = (path.clone(), key.clone(), outputs.clone());
        let names = cfg.limits.names.clone();
        let batches = tokio::task::spawn_blocking(move || {
            crate::refcsv::read(&p, &k, &o, usize::MAX, &names)
        })
        .await
        .context("reading a reference file")?
        .with_context(|| format!("reference file of {key}"))?;
        let ack = engine
            .set_reference(key.clone(), batches, crate::reference::Source::File)
            .await
            .with_context(|| format!("installing the reference file of {key}"))?;
        tracing::info!(model = %key.model, version = %key.version, path = %path.display(), n_records = ack.records, "Reference file loaded");
    }
    Ok(())
}
