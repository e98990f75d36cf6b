//! Shared test harness: an in-process daemon, a webhook receiver, data
//! generators and bounded polling.
#![allow(dead_code)]

pub mod prom;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use driftd::proto::{self as pb, driftd_client::DriftdClient};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

/// A daemon running in this process on ephemeral loopback ports.
pub struct TestDaemon {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    access: Access,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// How the harness reaches a daemon's HTTP server: the client (with the CA
/// and client certificate of a TLS test), the scheme and a bearer token.
#[derive(Clone, Default)]
pub struct Access {
    pub client: reqwest::Client,
    pub https: bool,
    pub token: Option<String>,
}

impl Access {
    /// A GET with the token, if any.
    pub fn get(&self, url: &str) -> reqwest::RequestBuilder {
        let req = self.client.get(url);
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }
}

/// Configuration for tests: fast evaluations, small windows, the given
/// data directory, plus `extra` overrides in environment-variable form.
pub fn test_config(dir: &std::path::Path, extra: &[(&str, String)]) -> driftd::config::Config {
    let mut env: Vec<(String, String)> = vec![
        ("DRIFTD_STORE__PATH".into(), dir.display().to_string()),
        ("DRIFTD_EVALUATION__INTERVAL".into(), "100ms".into()),
        ("DRIFTD_SERVER__GRACE_PERIOD".into(), "10s".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    driftd::config::load(None, env)
        .expect("valid test config")
        .1
}

/// Like [`test_config`], with a TOML file holding `toml` as well.
pub fn test_config_with_file(
    dir: &std::path::Path,
    toml: &str,
    extra: &[(&str, String)],
) -> driftd::config::Config {
    let file = dir.join("driftd-test.toml");
    std::fs::write(&file, toml).unwrap();
    let mut env: Vec<(String, String)> = vec![
        (
            "DRIFTD_STORE__PATH".into(),
            dir.join("data").display().to_string(),
        ),
        ("DRIFTD_EVALUATION__INTERVAL".into(), "100ms".into()),
        ("DRIFTD_SERVER__GRACE_PERIOD".into(), "10s".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    driftd::config::load(Some(&file), env)
        .expect("valid test config")
        .1
}

/// The JSON status of `model` (all versions), or None while unknown.
pub async fn status_json(d: &TestDaemon, model: &str) -> Option<serde_json::Value> {
    let resp = reqwest::get(d.url(&format!("/api/v1/models/{model}/status")))
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

/// The status of one version, waiting until it has `records` records.
pub async fn wait_records(
    d: &TestDaemon,
    model: &str,
    version: &str,
    records: u64,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(s) = status_json(d, model).await {
            if let Some(v) = s["versions"]
                .as_array()
                .and_then(|vs| vs.iter().find(|v| v["version"] == version))
            {
                if v["records_ingested"].as_u64() == Some(records) {
                    return v.clone();
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for {model}@{version} to reach {records} records: {:?}",
                status_json(d, model).await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl TestDaemon {
    pub async fn start(config: driftd::config::Config) -> Self {
        Self::start_with(config, Access::default()).await
    }

    /// Starts a daemon that the harness reaches through `access`.
    pub async fn start_with(config: driftd::config::Config, access: Access) -> Self {
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc.local_addr().unwrap();
        let http_addr = http.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(driftd::app::run(
            config,
            driftd::app::Listeners { grpc, http },
            async {
                let _ = rx.await;
            },
        ));
        let d = Self {
            grpc_addr,
            http_addr,
            access: access.clone(),
            stop: Some(tx),
            task: Some(task),
        };
        let url = d.url("/readyz");
        wait_until("daemon ready", Duration::from_secs(10), || {
            let req = access.get(&url);
            async move {
                req.send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
        })
        .await;
        d
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.access.https { "https" } else { "http" };
        format!("{scheme}://{}{}", self.http_addr, path)
    }

    pub async fn client(&self) -> DriftdClient<Channel> {
        DriftdClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .expect("connect to gRPC")
    }

    pub async fn scrape(&self) -> String {
        self.access
            .get(&self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Starts the graceful shutdown, as SIGTERM does, without waiting for
    /// it; [`TestDaemon::stop`] then waits.
    pub fn signal(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Graceful shutdown; returns `app::run`'s result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("daemon stops within 20 s")
            .expect("daemon task does not panic")
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Polls `check` every 50 ms until it returns true; panics after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replaces `path` with `contents` atomically (a new file renamed over the
/// old one), as certificate managers and Kubernetes Secrets do, so a
/// watcher never reads a half-written file.
pub fn replace_file(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("tmp-replace");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Deterministic normal samples (Box-Muller), so failures reproduce.
pub fn normal(rng: &mut StdRng, n: usize, mean: f64, sd: f64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            mean + sd * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        })
        .collect()
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn numeric(name: &str, role: pb::ColumnRole, values: Vec<f64>) -> pb::Column {
    pb::Column {
        name: name.into(),
        role: role as i32,
        values: Some(pb::column::Values::Numeric(pb::NumericValues { values })),
    }
}

pub fn categorical(name: &str, values: Vec<String>) -> pb::Column {
    pb::Column {
        name: name.into(),
        role: pb::ColumnRole::Input as i32,
        values: Some(pb::column::Values::Categorical(pb::CategoricalValues {
            values,
        })),
    }
}

pub fn batch(model: &str, version: &str, columns: Vec<pb::Column>) -> pb::IngestRequest {
    pb::IngestRequest {
        batch: Some(pb::RecordBatch {
            model: model.into(),
            version: version.into(),
            columns,
            ..Default::default()
        }),
    }
}

/// The value of the first sample of `metric` whose labels contain every
/// `label="value"` pair in `labels`.
pub fn sample(scrape: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(metric)
                && matches!(l.as_bytes().get(metric.len()), Some(b'{') | Some(b' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// An HTTP server on 127.0.0.1 that records every JSON body POSTed to it.
#[derive(Clone)]
pub struct WebhookReceiver {
    pub url: String,
    pub bodies: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        let bodies: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let b = bodies.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
                let b = b.clone();
                async move {
                    b.lock().unwrap().push(v);
                    "ok"
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}/hook"),
            bodies,
        }
    }

    pub fn events(&self, kind: &str) -> Vec<serde_json::Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["event"] == kind)
            .cloned()
            .collect()
    }
}
