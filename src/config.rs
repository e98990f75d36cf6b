//! Configuration: embedded defaults, an optional TOML file and `DRIFTD_...`
//! environment overrides, layered with the `config` crate into a
//! [`RawConfig`], then validated once into a [`Config`] whose fields are
//! ready to use (durations, socket addresses, non-zero counts).
//!
//! This is the only module that knows the `config` crate. It reads no
//! environment itself: callers pass the variables in, so tests never mutate
//! the process environment.

use std::{
    collections::HashMap,
    net::SocketAddr,
    num::NonZeroUsize,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    reference,
    rules::{Combine, Correction, Op, RoleFilter, Rule, Statistic},
    window::{self, WindowSpec},
};

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "DRIFTD";

/// Top-level sections; only `DRIFTD_<SECTION>__<KEY>` variables (and the
/// top-level keys) are read, so unrelated `DRIFTD_*` variables such as test
/// switches are not mistaken for configuration.
const SECTIONS: &[&str] = &[
    "server",
    "store",
    "ingest",
    "reference",
    "window",
    "evaluation",
    "rules",
    "webhook",
    "inference",
    "metrics",
    "auth",
    "tls",
    "limits",
];
const TOP_LEVEL_KEYS: &[&str] = &["log", "log_format"];

/// A configuration problem, named by its key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file, an environment variable or a value could not be read as the
    /// expected type, or a key is unknown.
    #[error("invalid configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value has the right type but is out of range.
    #[error("invalid configuration: {key}: {reason}")]
    Invalid {
        /// Dotted key, e.g. `server.grpc_addr`.
        key: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The configuration as written by the user, every key with its default.
/// Field docs are the reference; README.md repeats them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// tracing filter directive (env `DRIFTD_LOG`).
    pub log: String,
    /// `plain` or `json` (env `DRIFTD_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Listeners and shutdown.
    pub server: RawServer,
    /// The sled store.
    pub store: RawStore,
    /// Ingest queue and limits.
    pub ingest: RawIngest,
    /// How references are formed.
    pub reference: RawReference,
    /// The sliding window.
    pub window: RawWindow,
    /// Evaluation schedule and statistics.
    pub evaluation: RawEvaluation,
    /// Drift rules.
    pub rules: RawRules,
    /// Webhook targets.
    pub webhook: RawWebhook,
    /// KServe CloudEvents and Open Inference Protocol ingest.
    pub inference: RawInference,
    /// Metric cardinality.
    pub metrics: RawMetrics,
    /// Bearer-token authentication.
    pub auth: RawAuth,
    /// TLS and mutual TLS.
    pub tls: RawTls,
    /// What clients may send: batch shape, names, models, connections.
    pub limits: RawLimits,
}

/// `[limits]`. Other limits keep their historic sections:
/// `server.max_message_bytes`, `ingest.queue_capacity`,
/// `ingest.max_reference_records`, `window.max_categories`,
/// `metrics.max_features_per_model` and `inference.max_body_bytes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLimits {
    /// Most rows in one batch.
    pub max_rows_per_batch: usize,
    /// Most columns in one batch.
    pub max_columns_per_batch: usize,
    /// Most distinct models.
    pub max_models: usize,
    /// Most versions of one model.
    pub max_versions_per_model: usize,
    /// Most distinct features of one model version.
    pub max_features_per_model: usize,
    /// Longest model, version or feature name, in bytes.
    pub max_name_bytes: usize,
    /// ASCII punctuation allowed in names besides letters and digits.
    pub name_punctuation: String,
    /// Longest categorical value, in bytes.
    pub max_category_bytes: usize,
    /// A batch for an unknown model registers it; false: only models
    /// matching `models` are accepted.
    pub auto_register: bool,
    /// Model name globs accepted when `auto_register` is false.
    pub models: Vec<String>,
    /// Most open gRPC connections; further ones are closed at once.
    pub max_connections: usize,
    /// Most concurrent gRPC streams (calls) on one connection
    /// (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams_per_connection: u32,
    /// A call that sends nothing for this long, or a connection that sends
    /// nothing as long after it was accepted, is ended.
    pub stream_idle_timeout: String,
}

impl Default for RawLimits {
    fn default() -> Self {
        let d = crate::domain::Limits::default();
        Self {
            max_rows_per_batch: d.max_rows_per_batch,
            max_columns_per_batch: d.max_columns_per_batch,
            max_models: d.max_models,
            max_versions_per_model: d.max_versions_per_model,
            max_features_per_model: d.max_features_per_model,
            max_name_bytes: d.names.max_bytes,
            name_punctuation: d.names.punctuation,
            max_category_bytes: d.max_category_bytes,
            auto_register: d.auto_register,
            models: d.models,
            max_connections: 1_000,
            max_streams_per_connection: 100,
            stream_idle_timeout: "60s".into(),
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAuth {
    /// A file with one accepted token per line (blank lines and `#`
    /// comments ignored), reloaded when it changes; empty: none.
    pub tokens_file: PathBuf,
    /// Name of an environment variable holding comma-separated accepted
    /// tokens; empty: none. Read once, at start.
    pub tokens_env: String,
    /// Require a token for `/metrics` too.
    pub protect_metrics: bool,
    /// Require a token for `/healthz`, `/readyz` and the gRPC health and
    /// reflection services too.
    pub protect_health: bool,
    /// How often the token file is checked for changes.
    pub reload_interval: String,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            tokens_file: PathBuf::new(),
            tokens_env: "DRIFTD_TOKENS".into(),
            protect_metrics: false,
            protect_health: false,
            reload_interval: "5s".into(),
        }
    }
}

/// `[tls]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain, leaf first; with `key_file`, both listeners
    /// serve TLS. Empty: plain text.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the certificate.
    pub key_file: PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate
    /// signed by one of them (mutual TLS).
    pub client_ca_file: PathBuf,
    /// Serve the HTTP listener over TLS too; false keeps it plain text (for
    /// kubelet probes with mutual TLS, for instance).
    pub http: bool,
    /// How often the three files are checked for changes.
    pub reload_interval: String,
}

impl Default for RawTls {
    fn default() -> Self {
        Self {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            client_ca_file: PathBuf::new(),
            http: true,
            reload_interval: "5s".into(),
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawMetrics {
    /// Series budget per model version, in features: features beyond it (in
    /// name order) get no per-feature series, and are counted in
    /// `driftd_series_dropped_total`.
    pub max_features_per_model: usize,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            max_features_per_model: 200,
        }
    }
}

/// `[inference]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawInference {
    /// How long a logged request waits for its response (and vice versa)
    /// before it is ingested alone.
    pub join_ttl: String,
    /// Most unmatched events held for joining.
    pub join_capacity: usize,
    /// Largest accepted CloudEvent body, in bytes.
    pub max_body_bytes: usize,
    /// Name models `<namespace>.<name>` instead of `<name>`.
    pub include_namespace: bool,
    /// Fixed model version for CloudEvents; empty: taken from
    /// `ce-endpoint` (`default` or `canary`).
    pub version: String,
    /// Column names per model, for tensors and array rows.
    pub models: Vec<RawInferenceModel>,
}

/// `[[inference.models]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInferenceModel {
    /// Model name as driftd sees it.
    pub name: String,
    /// Names of the input columns, in tensor order.
    #[serde(default)]
    pub input_names: Vec<String>,
    /// Names of the output columns, in tensor order.
    #[serde(default)]
    pub output_names: Vec<String>,
}

impl Default for RawInference {
    fn default() -> Self {
        Self {
            join_ttl: "30s".into(),
            join_capacity: 10_000,
            max_body_bytes: 8 * 1024 * 1024,
            include_namespace: false,
            version: String::new(),
            models: Vec::new(),
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawServer {
    /// gRPC listen address.
    pub grpc_addr: String,
    /// HTTP listen address (metrics, health, JSON API).
    pub http_addr: String,
    /// How long a graceful shutdown may take before driftd exits anyway.
    pub grace_period: String,
    /// Largest accepted gRPC message, in bytes.
    pub max_message_bytes: usize,
}

/// `[store]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawStore {
    /// Data directory; created if absent. One driftd process per directory.
    pub path: PathBuf,
    /// sled page cache size, in bytes.
    pub cache_capacity_bytes: u64,
    /// sled background flush interval, in milliseconds.
    pub flush_every_ms: u64,
    /// What to do when the store cannot be read: `refuse` to start (the
    /// default) or `quarantine` it (move it aside and start empty).
    pub on_corruption: OnCorruption,
    /// A clean shutdown after at least this many bytes were written since
    /// start-up reopens sled once, so that it records a snapshot of its
    /// log and the next start need not replay that log; 0: after any
    /// write.
    pub checkpoint_after_bytes: u64,
}

/// What driftd does with a store it cannot read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnCorruption {
    /// Exit with a message naming the directory and the way out.
    #[default]
    Refuse,
    /// Rename the directory to `<path>.corrupt-<unix seconds>` and start empty.
    Quarantine,
}

/// `[ingest]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawIngest {
    /// Batches waiting to be written; when full, ingest answers
    /// RESOURCE_EXHAUSTED instead of growing memory.
    pub queue_capacity: usize,
    /// Largest reference accepted by SetReference, in rows.
    pub max_reference_records: usize,
}

/// `[reference]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawReference {
    /// The first this-many records of a version become its reference, unless
    /// SetReference supplies one.
    pub warmup_samples: usize,
    /// Largest sorted sample a compiled reference keeps per numeric feature
    /// (bins, mean and spread use every value).
    pub sample_size: usize,
    /// Per model version, where its reference comes from; the first match
    /// wins, unmatched versions warm up.
    pub sources: Vec<RawReferenceSource>,
}

/// `[[reference.sources]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReferenceSource {
    /// Model name glob.
    pub model: String,
    /// Version glob; default all.
    #[serde(default = "star")]
    pub version: String,
    /// `warmup`, `file:PATH` (a CSV file with a header row, loaded at
    /// start) or `live:VERSION` (that version's window of the same name).
    pub reference: String,
    /// CSV columns that are model outputs (the rest are inputs).
    #[serde(default)]
    pub outputs: Vec<String>,
}

fn star() -> String {
    "*".into()
}

/// `[window]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawWindow {
    /// Windows of every model version: `"5m/10s"` (time, length/bucket),
    /// `"count:5000"` (the last N records, in buckets of a tenth).
    pub windows: Vec<String>,
    /// Target rows in each window's sample for KS, CvM and Wasserstein.
    pub sample_size: usize,
    /// Categories kept per categorical feature; the rest count as
    /// `__other__`.
    pub max_categories: usize,
    /// Other windows for some models; the first match wins.
    pub overrides: Vec<RawWindowOverride>,
}

/// `[[window.overrides]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindowOverride {
    /// Model name globs.
    pub models: Vec<String>,
    /// Their windows, as in `window.windows`.
    pub windows: Vec<String>,
}

/// `[evaluation]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawEvaluation {
    /// Time between evaluations, e.g. "10s".
    pub interval: String,
    /// Fewer non-missing window samples than this give `insufficient_data`.
    pub min_samples: usize,
    /// PSI bins (edges at the reference's quantiles).
    pub psi_bins: usize,
    /// Replacement for empty bin proportions in PSI.
    pub psi_epsilon: f64,
    /// Nice value of the evaluation thread, 0-19: how far below ingest it
    /// runs when both want the CPU.
    pub nice: i32,
}

/// `[rules]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRules {
    /// Default `for_evaluations` of every rule.
    pub for_evaluations: u32,
    /// Default `keep_firing_for` of every rule.
    pub keep_firing_for: u32,
    /// Threshold of the built-in `psi` rule (used when `list` is empty).
    pub psi_threshold: f64,
    /// Alpha of the built-in `ks` rule, after Bonferroni (used when `list`
    /// is empty).
    pub ks_pvalue_threshold: f64,
    /// Default severity of every rule.
    pub severity: String,
    /// The rules; empty: the built-in `psi` and `ks` rules.
    pub list: Vec<RawRule>,
}

/// `[[rules.list]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Unique name.
    pub name: String,
    /// Model name globs; default all.
    #[serde(default = "all")]
    pub models: Vec<String>,
    /// psi, ks_pvalue, ks_statistic, js, wasserstein_norm, hellinger,
    /// chi2_pvalue, cvm_pvalue or missing_share.
    pub statistic: Statistic,
    /// Feature name globs; default all.
    #[serde(default = "all")]
    pub features: Vec<String>,
    /// input, output or any (default).
    #[serde(default = "role_any")]
    pub role: RoleFilter,
    /// ">", ">=", "<" or "<="; default "<" for p-values, ">" otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<Op>,
    /// The threshold (alpha for p-values).
    pub threshold: f64,
    /// any (default), share or count.
    #[serde(default = "combine_any")]
    pub combine: String,
    /// The share (0-1) or count for `combine`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combine_value: Option<f64>,
    /// none (default), bonferroni or benjamini_hochberg (p-values only).
    #[serde(default = "correction_none")]
    pub correction: Correction,
    /// Default: `evaluation.min_samples`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u64>,
    /// Default: `rules.for_evaluations`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_evaluations: Option<u32>,
    /// Default: `rules.keep_firing_for`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_firing_for: Option<u32>,
    /// Default: `rules.severity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// Webhook target names; default all.
    #[serde(default)]
    pub webhooks: Vec<String>,
    /// The window it judges (its `window` label); default the model's
    /// first window.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub window: String,
}

fn all() -> Vec<String> {
    vec!["*".into()]
}
fn role_any() -> RoleFilter {
    RoleFilter::Any
}
fn combine_any() -> String {
    "any".into()
}
fn correction_none() -> Correction {
    Correction::None
}

/// `[webhook]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawWebhook {
    /// Shorthand targets `url0`, `url1`, ... with `secrets` and `format`.
    pub urls: Vec<String>,
    /// Signing secrets of the shorthand targets.
    pub secrets: Vec<String>,
    /// Payload of the shorthand targets: `driftd` or `alertmanager`.
    pub format: WebhookFormat,
    /// Timeout of one delivery attempt, e.g. "10s".
    pub timeout: String,
    /// Events older than this are dead-lettered, e.g. "24h".
    pub max_age: String,
    /// First retry delay ceiling; doubles per attempt (full jitter).
    pub backoff_base: String,
    /// Largest retry delay ceiling.
    pub backoff_cap: String,
    /// Named targets.
    pub targets: Vec<RawTarget>,
}

/// `[[webhook.targets]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// Unique name, referenced by rules.
    pub name: String,
    /// http(s) URL.
    pub url: String,
    /// Signing secrets (`whsec_<base64>` or plain text); several during
    /// rotation.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// A file with one secret per line, added to `secrets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// `driftd` (default) or `alertmanager`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<WebhookFormat>,
}

/// The body a webhook target receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// driftd's own payload.
    #[default]
    Driftd,
    /// The Alertmanager webhook payload, version 4.
    Alertmanager,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            log: "warn,driftd=info".into(),
            log_format: LogFormat::Plain,
            server: RawServer::default(),
            store: RawStore::default(),
            ingest: RawIngest::default(),
            reference: RawReference::default(),
            window: RawWindow::default(),
            evaluation: RawEvaluation::default(),
            rules: RawRules::default(),
            webhook: RawWebhook::default(),
            inference: RawInference::default(),
            metrics: RawMetrics::default(),
            auth: RawAuth::default(),
            tls: RawTls::default(),
            limits: RawLimits::default(),
        }
    }
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            grpc_addr: "127.0.0.1:7700".into(),
            http_addr: "127.0.0.1:9700".into(),
            grace_period: "30s".into(),
            max_message_bytes: 16 * 1024 * 1024,
        }
    }
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            path: PathBuf::from("./driftd-data"),
            // 64 MiB cost ~30-40 MiB more RSS than 16 for no ingest rate
            // (BENCHMARKS.md, "Memory at 20,000 records/s").
            cache_capacity_bytes: 16 * 1024 * 1024,
            flush_every_ms: 500,
            on_corruption: OnCorruption::Refuse,
            // An hour of the sizing load writes ~1.4 GB; a test's few
            // batches stay far below.
            checkpoint_after_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Default for RawIngest {
    fn default() -> Self {
        Self {
            queue_capacity: 1024,
            max_reference_records: 1_000_000,
        }
    }
}

impl Default for RawReference {
    fn default() -> Self {
        Self {
            warmup_samples: 5000,
            sample_size: 100_000,
            sources: Vec::new(),
        }
    }
}

impl Default for RawWindow {
    fn default() -> Self {
        Self {
            windows: vec!["5m/10s".into(), "1h/1m".into()],
            sample_size: 10_000,
            max_categories: 100,
            overrides: Vec::new(),
        }
    }
}

impl Default for RawEvaluation {
    fn default() -> Self {
        Self {
            interval: "10s".into(),
            min_samples: 500,
            psi_bins: crate::stats::DEFAULT_BINS,
            psi_epsilon: crate::stats::DEFAULT_EPSILON,
            nice: 19,
        }
    }
}

impl Default for RawRules {
    fn default() -> Self {
        Self {
            for_evaluations: 3,
            keep_firing_for: 0,
            psi_threshold: 0.2,
            ks_pvalue_threshold: 0.01,
            severity: "critical".into(),
            list: Vec::new(),
        }
    }
}

impl Default for RawWebhook {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            secrets: Vec::new(),
            format: WebhookFormat::Driftd,
            timeout: "10s".into(),
            max_age: "24h".into(),
            backoff_base: "1s".into(),
            backoff_cap: "5m".into(),
            targets: Vec::new(),
        }
    }
}

/// Validated configuration, ready to use.
#[derive(Debug, Clone)]
pub struct Config {
    /// tracing filter directive.
    pub log: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// Graceful shutdown budget.
    pub grace_period: Duration,
    /// Largest accepted gRPC message, in bytes.
    pub max_message_bytes: usize,
    /// Store settings.
    pub store: StoreConfig,
    /// Ingest queue capacity, in batches.
    pub queue_capacity: usize,
    /// Largest SetReference, in rows.
    pub max_reference_records: usize,
    /// Windows, references, evaluation and the rule.
    pub engine: EngineConfig,
    /// Webhook targets.
    pub webhook: WebhookConfig,
    /// KServe and OIP ingest.
    pub inference: InferenceConfig,
    /// Bearer-token authentication.
    pub auth: AuthConfig,
    /// TLS; None serves plain text.
    pub tls: Option<TlsConfig>,
    /// Connection and stream limits of the gRPC listener.
    pub connections: ConnectionLimits,
}

/// Validated connection and stream limits of `[limits]` (the ingest limits
/// are in [`EngineConfig::limits`]).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Most open gRPC connections.
    pub max_connections: usize,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS of gRPC connections.
    pub max_streams_per_connection: u32,
    /// Longest silence of a call's request stream, or of a new connection.
    pub stream_idle_timeout: Duration,
}

/// Validated `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The token file, reloaded when it changes.
    pub tokens_file: Option<PathBuf>,
    /// Digests of the tokens from the variable named by `auth.tokens_env`.
    pub env_tokens: Vec<crate::auth::Digest>,
    /// `/metrics` needs a token.
    pub protect_metrics: bool,
    /// Health and reflection need a token.
    pub protect_health: bool,
    /// Token file poll interval.
    pub reload_interval: Duration,
}

impl AuthConfig {
    /// Whether any token is configured; a token file counts even while it
    /// holds no token, so emptying it refuses everything rather than
    /// opening everything.
    pub fn enabled(&self) -> bool {
        self.tokens_file.is_some() || !self.env_tokens.is_empty()
    }
}

/// Validated `[tls]`.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM client CAs; Some means mutual TLS.
    pub client_ca_file: Option<PathBuf>,
    /// The HTTP listener serves TLS too.
    pub http: bool,
    /// File poll interval.
    pub reload_interval: Duration,
}

impl TlsConfig {
    /// The files whose changes trigger a reload.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.cert_file.clone(), self.key_file.clone()];
        files.extend(self.client_ca_file.clone());
        files
    }
}

/// Validated `[inference]`.
#[derive(Debug, Clone)]
pub struct InferenceConfig {
    /// Join time-to-live.
    pub join_ttl: Duration,
    /// Join buffer capacity, in events.
    pub join_capacity: usize,
    /// Largest CloudEvent body.
    pub max_body_bytes: usize,
    /// Prefix model names with the namespace.
    pub include_namespace: bool,
    /// Fixed version, or None to use `ce-endpoint`.
    pub version: Option<String>,
    /// Per model: (input names, output names).
    pub names: HashMap<String, (Vec<String>, Vec<String>)>,
}

/// Validated `[store]`.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Data directory.
    pub path: PathBuf,
    /// sled page cache, in bytes.
    pub cache_capacity_bytes: u64,
    /// sled background flush interval, in milliseconds.
    pub flush_every_ms: u64,
    /// Refuse or quarantine an unreadable store.
    pub on_corruption: OnCorruption,
    /// Bytes written since start-up above which a clean shutdown reopens
    /// sled so that it records a snapshot of its log.
    pub checkpoint_after_bytes: u64,
}

/// Validated settings of the evaluation core.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Records that form a warm-up reference.
    pub warmup_samples: NonZeroUsize,
    /// Windows of models without an override.
    pub windows: Vec<WindowSpec>,
    /// (model globs, windows) overrides, first match wins.
    pub window_overrides: Vec<(Vec<String>, Vec<WindowSpec>)>,
    /// Window sample and category limits.
    pub window_limits: window::Limits,
    /// How references are compiled.
    pub reference: reference::Settings,
    /// Where references come from, first match wins.
    pub reference_sources: Vec<ReferenceSource>,
    /// Time between evaluations.
    pub eval_interval: Duration,
    /// Samples below which the verdict is `insufficient_data`.
    pub min_samples: usize,
    /// PSI bins.
    pub psi_bins: NonZeroUsize,
    /// PSI empty-bin epsilon, in (0, 1).
    pub psi_epsilon: f64,
    /// Nice value of the evaluation thread (0-19).
    pub eval_nice: i32,
    /// The drift rules.
    pub rules: Vec<Rule>,
    /// Per-feature series budget per model version, in features.
    pub max_features_per_model: usize,
    /// What batches, names and models are accepted.
    pub limits: crate::domain::Limits,
    /// Where time comes from (the system clock; tests and simulations pass
    /// their own).
    pub clock: Clock,
}

/// The engine's time source, in milliseconds since the Unix epoch.
#[derive(Clone)]
pub struct Clock(std::sync::Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(std::sync::Arc::new(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        }))
    }

    /// A clock that reads `f`.
    pub fn from_fn(f: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(f))
    }

    /// Now.
    pub fn now_ms(&self) -> i64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// Where the reference of matching versions comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceSource {
    /// Model glob.
    pub model: String,
    /// Version glob.
    pub version: String,
    /// The source.
    pub kind: SourceKind,
}

/// A reference source.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    /// The first records of the version.
    Warmup,
    /// A CSV file, and its output columns.
    File {
        /// Path.
        path: PathBuf,
        /// Columns that are outputs.
        outputs: Vec<String>,
    },
    /// Another version's live window.
    Live {
        /// That version.
        version: String,
    },
}

impl EngineConfig {
    /// The windows of `model`.
    pub fn windows_for(&self, model: &str) -> &[WindowSpec] {
        self.window_overrides
            .iter()
            .find(|(globs, _)| globs.iter().any(|g| crate::rules::glob_match(g, model)))
            .map_or(&self.windows[..], |(_, w)| &w[..])
    }

    /// The configured source of `model`'s `version`, if any.
    pub fn source_for(&self, model: &str, version: &str) -> Option<&SourceKind> {
        self.reference_sources
            .iter()
            .find(|s| {
                crate::rules::glob_match(&s.model, model)
                    && crate::rules::glob_match(&s.version, version)
            })
            .map(|s| &s.kind)
    }
}

/// Validated `[webhook]`.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Age at which an undelivered event is dead-lettered.
    pub max_age: Duration,
    /// First backoff ceiling.
    pub backoff_base: Duration,
    /// Largest backoff ceiling.
    pub backoff_cap: Duration,
    /// Targets, with unique names.
    pub targets: Vec<Target>,
}

/// One webhook target.
#[derive(Debug, Clone)]
pub struct Target {
    /// Unique name.
    pub name: String,
    /// Absolute http(s) URL.
    pub url: String,
    /// HMAC keys; every one signs each delivery.
    pub secrets: Vec<Vec<u8>>,
    /// Payload format.
    pub format: WebhookFormat,
}

impl Default for Config {
    fn default() -> Self {
        // The embedded defaults are valid by construction; a test checks it.
        match RawConfig::default().validate() {
            Ok(c) => c,
            Err(e) => unreachable!("embedded defaults are invalid: {e}"),
        }
    }
}

/// Loads the configuration: embedded defaults, then `file` if given, then
/// the `DRIFTD_*` entries of `env`.
///
/// # Errors
/// Returns [`Error`] naming the key when the file cannot be read, a key is
/// unknown, a value has the wrong type or is out of range.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(RawConfig, Config), Error> {
    let env: Vec<(String, String)> = env.into_iter().collect();
    let raw = load_raw(file, env.iter().cloned())?;
    let mut config = raw.validate()?;
    let name = &raw.auth.tokens_env;
    if !name.is_empty() {
        if let Some((_, value)) = env.iter().find(|(k, _)| k == name) {
            config.auth.env_tokens = crate::auth::parse_list(value)
                .map_err(|e| invalid("auth.tokens_env", format!("variable {name}: {e}")))?;
        }
    }
    let a = &config.auth;
    if !a.enabled() && (a.protect_metrics || a.protect_health) {
        return Err(invalid(
            if a.protect_metrics {
                "auth.protect_metrics"
            } else {
                "auth.protect_health"
            },
            format!(
                "needs a token: set auth.tokens_file or the variable {:?} (auth.tokens_env)",
                raw.auth.tokens_env
            ),
        ));
    }
    Ok((raw, config))
}

fn load_raw(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<RawConfig, Error> {
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        builder = builder.add_source(
            config::File::from(path)
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    let prefix = format!("{ENV_PREFIX}_");
    let vars: HashMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| {
            let Some(rest) = k.strip_prefix(&prefix) else {
                return false;
            };
            let rest = rest.to_ascii_lowercase();
            TOP_LEVEL_KEYS.contains(&rest.as_str())
                || SECTIONS
                    .iter()
                    .any(|s| rest.strip_prefix(s).is_some_and(|r| r.starts_with("__")))
        })
        .collect();
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("_")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("webhook.urls")
            .with_list_parse_key("webhook.secrets")
            .with_list_parse_key("window.windows")
            .with_list_parse_key("limits.models")
            .try_parsing(true)
            .source(Some(vars)),
    );
    Ok(builder.build()?.try_deserialize::<RawConfig>()?)
}

/// An error and its sources, `: `-separated, for messages that must say
/// everything on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

fn invalid(key: &'static str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        key,
        reason: reason.into(),
    }
}

fn parse_addr(key: &'static str, s: &str) -> Result<SocketAddr, Error> {
    s.parse()
        .map_err(|_| invalid(key, format!("{s:?} is not an IP:port socket address")))
}

fn parse_duration(key: &'static str, s: &str) -> Result<Duration, Error> {
    humantime::parse_duration(s)
        .map_err(|e| invalid(key, format!("{s:?} is not a duration like \"10s\" ({e})")))
}

fn parse_windows(key: &'static str, specs: &[String]) -> Result<Vec<WindowSpec>, Error> {
    if specs.is_empty() {
        return Err(invalid(key, "at least one window is needed"));
    }
    let mut out: Vec<WindowSpec> = Vec::new();
    for s in specs {
        let w = WindowSpec::parse(s).map_err(|e| invalid(key, e))?;
        if out.iter().any(|o| o.name == w.name) {
            return Err(invalid(key, format!("two windows are named {:?}", w.name)));
        }
        out.push(w);
    }
    Ok(out)
}

fn non_zero(key: &'static str, n: usize) -> Result<NonZeroUsize, Error> {
    NonZeroUsize::new(n).ok_or_else(|| invalid(key, "must be at least 1"))
}

impl RawConfig {
    /// Checks ranges and converts to [`Config`]. The tokens of
    /// `auth.tokens_env` are not read here: [`load`] adds them from the
    /// environment it is given.
    ///
    /// # Errors
    /// Returns [`Error::Invalid`] naming the first bad key.
    pub fn validate(&self) -> Result<Config, Error> {
        tracing_subscriber::EnvFilter::try_new(&self.log)
            .map_err(|e| invalid("log", format!("{:?} is not a filter ({e})", self.log)))?;
        let grpc_addr = parse_addr("server.grpc_addr", &self.server.grpc_addr)?;
        let http_addr = parse_addr("server.http_addr", &self.server.http_addr)?;
        let grace_period = parse_duration("server.grace_period", &self.server.grace_period)?;
        if self.server.max_message_bytes < 1024 {
            return Err(invalid("server.max_message_bytes", "must be at least 1024"));
        }
        if self.store.path.as_os_str().is_empty() {
            return Err(invalid("store.path", "must not be empty"));
        }
        if self.store.flush_every_ms == 0 {
            return Err(invalid("store.flush_every_ms", "must be at least 1"));
        }
        if self.ingest.queue_capacity == 0 {
            return Err(invalid("ingest.queue_capacity", "must be at least 1"));
        }
        non_zero(
            "ingest.max_reference_records",
            self.ingest.max_reference_records,
        )?;
        let warmup_samples = non_zero("reference.warmup_samples", self.reference.warmup_samples)?;
        let windows = parse_windows("window.windows", &self.window.windows)?;
        let mut window_overrides = Vec::new();
        for o in &self.window.overrides {
            if o.models.is_empty() {
                return Err(invalid("window.overrides.models", "must not be empty"));
            }
            window_overrides.push((
                o.models.clone(),
                parse_windows("window.overrides.windows", &o.windows)?,
            ));
        }
        let sample_size = non_zero("window.sample_size", self.window.sample_size)?;
        let max_categories = non_zero("window.max_categories", self.window.max_categories)?;
        let ref_sample = non_zero("reference.sample_size", self.reference.sample_size)?;
        let reference_sources = self.validate_sources()?;
        let eval_interval = parse_duration("evaluation.interval", &self.evaluation.interval)?;
        if eval_interval < Duration::from_millis(10) {
            return Err(invalid("evaluation.interval", "must be at least 10ms"));
        }
        let psi_bins = non_zero("evaluation.psi_bins", self.evaluation.psi_bins)?;
        if psi_bins.get() < 2 || psi_bins.get() > 1000 {
            return Err(invalid("evaluation.psi_bins", "must be between 2 and 1000"));
        }
        let eps = self.evaluation.psi_epsilon;
        if !(eps > 0.0 && eps < 1.0) {
            return Err(invalid(
                "evaluation.psi_epsilon",
                "must be greater than 0 and less than 1",
            ));
        }
        if !(0..=19).contains(&self.evaluation.nice) {
            return Err(invalid("evaluation.nice", "must be between 0 and 19"));
        }
        let rules = self.validate_rules()?;
        let webhook = self.validate_webhook()?;
        for r in &rules {
            for w in &r.webhooks {
                if !webhook.targets.iter().any(|t| &t.name == w) {
                    return Err(invalid(
                        "rules.list.webhooks",
                        format!(
                            "rule {:?} names webhook target {w:?}, which is not configured",
                            r.name
                        ),
                    ));
                }
            }
        }
        let inf = &self.inference;
        let join_ttl = parse_duration("inference.join_ttl", &inf.join_ttl)?;
        if inf.join_capacity == 0 {
            return Err(invalid("inference.join_capacity", "must be at least 1"));
        }
        if inf.max_body_bytes < 1024 {
            return Err(invalid("inference.max_body_bytes", "must be at least 1024"));
        }
        if !inf.version.is_empty() {
            crate::domain::validate_name(&inf.version)
                .map_err(|e| invalid("inference.version", e.to_string()))?;
        }
        let mut names = HashMap::new();
        for m in &inf.models {
            crate::domain::validate_name(&m.name)
                .map_err(|e| invalid("inference.models.name", format!("{:?}: {e}", m.name)))?;
            for n in m.input_names.iter().chain(&m.output_names) {
                crate::domain::validate_name(n).map_err(|e| {
                    invalid(
                        "inference.models.input_names",
                        format!("{n:?} of model {:?}: {e}", m.name),
                    )
                })?;
            }
            names.insert(
                m.name.clone(),
                (m.input_names.clone(), m.output_names.clone()),
            );
        }
        let auth = self.validate_auth()?;
        let tls = self.validate_tls()?;
        let (limits, connections) = self.validate_limits()?;
        for s in &reference_sources {
            if let SourceKind::File { .. } = s.kind {
                if !limits.auto_register
                    && !limits
                        .models
                        .iter()
                        .any(|g| crate::rules::glob_match(g, &s.model))
                {
                    return Err(invalid(
                        "limits.models",
                        format!(
                            "model {:?} has a reference file but is not registered (limits.auto_register = false)",
                            s.model
                        ),
                    ));
                }
            }
        }
        Ok(Config {
            auth,
            tls,
            connections,
            inference: InferenceConfig {
                join_ttl,
                join_capacity: inf.join_capacity,
                max_body_bytes: inf.max_body_bytes,
                include_namespace: inf.include_namespace,
                version: (!inf.version.is_empty()).then(|| inf.version.clone()),
                names,
            },
            log: self.log.clone(),
            log_format: self.log_format,
            grpc_addr,
            http_addr,
            grace_period,
            max_message_bytes: self.server.max_message_bytes,
            store: StoreConfig {
                path: self.store.path.clone(),
                cache_capacity_bytes: self.store.cache_capacity_bytes,
                flush_every_ms: self.store.flush_every_ms,
                on_corruption: self.store.on_corruption,
                checkpoint_after_bytes: self.store.checkpoint_after_bytes,
            },
            queue_capacity: self.ingest.queue_capacity,
            max_reference_records: self.ingest.max_reference_records,
            engine: EngineConfig {
                warmup_samples,
                windows,
                window_overrides,
                window_limits: window::Limits {
                    sample_size: sample_size.get(),
                    max_categories: max_categories.get(),
                },
                reference: reference::Settings {
                    bins: psi_bins,
                    sample_size: ref_sample.get(),
                    max_categories: max_categories.get(),
                },
                reference_sources,
                eval_interval,
                min_samples: self.evaluation.min_samples,
                psi_bins,
                psi_epsilon: eps,
                eval_nice: self.evaluation.nice,
                rules,
                max_features_per_model: self.metrics.max_features_per_model,
                limits,
                clock: Clock::system(),
            },
            webhook,
        })
    }

    fn validate_limits(&self) -> Result<(crate::domain::Limits, ConnectionLimits), Error> {
        let l = &self.limits;
        let at_least_one = [
            ("limits.max_rows_per_batch", l.max_rows_per_batch),
            ("limits.max_columns_per_batch", l.max_columns_per_batch),
            ("limits.max_models", l.max_models),
            ("limits.max_versions_per_model", l.max_versions_per_model),
            ("limits.max_features_per_model", l.max_features_per_model),
            ("limits.max_category_bytes", l.max_category_bytes),
            ("limits.max_connections", l.max_connections),
            (
                "limits.max_streams_per_connection",
                l.max_streams_per_connection as usize,
            ),
        ];
        for (key, n) in at_least_one {
            non_zero(key, n)?;
        }
        if l.max_connections > 1_000_000 {
            return Err(invalid("limits.max_connections", "must be at most 1000000"));
        }
        // Names are store keys and label values: the version "default" must
        // fit, and 1024 bytes is already far beyond any useful name.
        let default_len = crate::domain::DEFAULT_VERSION.len();
        if !(default_len..=1024).contains(&l.max_name_bytes) {
            return Err(invalid(
                "limits.max_name_bytes",
                format!("must be between {default_len} and 1024"),
            ));
        }
        if let Some(c) = l
            .name_punctuation
            .chars()
            .find(|c| !c.is_ascii_punctuation())
        {
            return Err(invalid(
                "limits.name_punctuation",
                format!("{c:?} is not ASCII punctuation"),
            ));
        }
        if l.max_columns_per_batch > l.max_features_per_model {
            return Err(invalid(
                "limits.max_columns_per_batch",
                "must not exceed limits.max_features_per_model",
            ));
        }
        if !l.auto_register && l.models.is_empty() {
            return Err(invalid(
                "limits.models",
                "must name at least one model glob when limits.auto_register is false",
            ));
        }
        if l.models.iter().any(String::is_empty) {
            return Err(invalid("limits.models", "a glob must not be empty"));
        }
        let stream_idle_timeout =
            parse_duration("limits.stream_idle_timeout", &l.stream_idle_timeout)?;
        if stream_idle_timeout < Duration::from_millis(100) {
            return Err(invalid(
                "limits.stream_idle_timeout",
                "must be at least 100ms",
            ));
        }
        Ok((
            crate::domain::Limits {
                max_rows_per_batch: l.max_rows_per_batch,
                max_columns_per_batch: l.max_columns_per_batch,
                max_models: l.max_models,
                max_versions_per_model: l.max_versions_per_model,
                max_features_per_model: l.max_features_per_model,
                max_category_bytes: l.max_category_bytes,
                names: crate::domain::NameRules {
                    max_bytes: l.max_name_bytes,
                    punctuation: l.name_punctuation.clone(),
                },
                auto_register: l.auto_register,
                models: l.models.clone(),
            },
            ConnectionLimits {
                max_connections: l.max_connections,
                max_streams_per_connection: l.max_streams_per_connection,
                stream_idle_timeout,
            },
        ))
    }

    fn validate_sources(&self) -> Result<Vec<ReferenceSource>, Error> {
        let mut out = Vec::new();
        for s in &self.reference.sources {
            if s.model.is_empty() || s.version.is_empty() {
                return Err(invalid(
                    "reference.sources.model",
                    "model and version globs must not be empty",
                ));
            }
            let kind = if s.reference == "warmup" {
                SourceKind::Warmup
            } else if let Some(path) = s.reference.strip_prefix("file:") {
                if path.is_empty() {
                    return Err(invalid("reference.sources.reference", "file: needs a path"));
                }
                for name in [&s.model, &s.version] {
                    crate::domain::validate_name(name).map_err(|e| {
                        invalid(
                            "reference.sources.model",
                            format!(
                                "a file reference needs an exact model and version, not {name:?} ({e})"
                            ),
                        )
                    })?;
                }
                SourceKind::File {
                    path: PathBuf::from(path),
                    outputs: s.outputs.clone(),
                }
            } else if let Some(v) = s.reference.strip_prefix("live:") {
                crate::domain::validate_name(v).map_err(|e| {
                    invalid("reference.sources.reference", format!("live:{v}: {e}"))
                })?;
                SourceKind::Live {
                    version: v.to_string(),
                }
            } else {
                return Err(invalid(
                    "reference.sources.reference",
                    format!(
                        "{:?}: use \"warmup\", \"file:PATH\" or \"live:VERSION\"",
                        s.reference
                    ),
                ));
            };
            out.push(ReferenceSource {
                model: s.model.clone(),
                version: s.version.clone(),
                kind,
            });
        }
        Ok(out)
    }

    /// `[auth]` without the tokens of `auth.tokens_env`, which [`load`]
    /// adds from the environment it is given.
    fn validate_auth(&self) -> Result<AuthConfig, Error> {
        let a = &self.auth;
        let reload_interval = parse_duration("auth.reload_interval", &a.reload_interval)?;
        if reload_interval < Duration::from_millis(10) {
            return Err(invalid("auth.reload_interval", "must be at least 10ms"));
        }
        let tokens_file = (!a.tokens_file.as_os_str().is_empty()).then(|| a.tokens_file.clone());
        if let Some(path) = &tokens_file {
            let digests = crate::auth::read_file(path).map_err(|e| {
                let reason = match &e {
                    crate::auth::Error::Read { .. } => error_chain(&e),
                    crate::auth::Error::Token { .. } => format!("{}: {e}", path.display()),
                };
                invalid("auth.tokens_file", reason)
            })?;
            if digests.is_empty() {
                return Err(invalid(
                    "auth.tokens_file",
                    format!("{} holds no token", path.display()),
                ));
            }
        }
        Ok(AuthConfig {
            tokens_file,
            env_tokens: Vec::new(),
            protect_metrics: a.protect_metrics,
            protect_health: a.protect_health,
            reload_interval,
        })
    }

    fn validate_tls(&self) -> Result<Option<TlsConfig>, Error> {
        let t = &self.tls;
        let set = |p: &PathBuf| (!p.as_os_str().is_empty()).then(|| p.clone());
        let reload_interval = parse_duration("tls.reload_interval", &t.reload_interval)?;
        if reload_interval < Duration::from_millis(10) {
            return Err(invalid("tls.reload_interval", "must be at least 10ms"));
        }
        let cfg = match (set(&t.cert_file), set(&t.key_file)) {
            (None, None) => {
                if set(&t.client_ca_file).is_some() {
                    return Err(invalid(
                        "tls.client_ca_file",
                        "mutual TLS needs tls.cert_file and tls.key_file too",
                    ));
                }
                return Ok(None);
            }
            (Some(cert_file), Some(key_file)) => TlsConfig {
                cert_file,
                key_file,
                client_ca_file: set(&t.client_ca_file),
                http: t.http,
                reload_interval,
            },
            (Some(_), None) => {
                return Err(invalid("tls.key_file", "must be set with tls.cert_file"))
            }
            (None, Some(_)) => {
                return Err(invalid("tls.cert_file", "must be set with tls.key_file"))
            }
        };
        crate::tls::check(&cfg).map_err(|e| Error::Invalid {
            key: e.key(&cfg),
            reason: error_chain(&e),
        })?;
        Ok(Some(cfg))
    }

    fn validate_rules(&self) -> Result<Vec<Rule>, Error> {
        let d = &self.rules;
        if d.for_evaluations == 0 {
            return Err(invalid("rules.for_evaluations", "must be at least 1"));
        }
        if !(d.psi_threshold.is_finite() && d.psi_threshold >= 0.0) {
            return Err(invalid(
                "rules.psi_threshold",
                "must be a finite number >= 0",
            ));
        }
        if !(d.ks_pvalue_threshold > 0.0 && d.ks_pvalue_threshold < 1.0) {
            return Err(invalid("rules.ks_pvalue_threshold", "must be in (0, 1)"));
        }
        let min_samples = self.evaluation.min_samples as u64;
        let base = |name: &str, statistic, op, threshold, correction| Rule {
            name: name.into(),
            models: all(),
            statistic,
            features: all(),
            role: RoleFilter::Any,
            op,
            threshold,
            combine: Combine::Any,
            correction,
            min_samples,
            for_evaluations: d.for_evaluations,
            keep_firing_for: d.keep_firing_for,
            severity: d.severity.clone(),
            webhooks: Vec::new(),
            window: None,
        };
        if d.list.is_empty() {
            return Ok(vec![
                base(
                    "psi",
                    Statistic::Psi,
                    Op::Gt,
                    d.psi_threshold,
                    Correction::None,
                ),
                base(
                    "ks",
                    Statistic::KsPvalue,
                    Op::Lt,
                    d.ks_pvalue_threshold,
                    Correction::Bonferroni,
                ),
            ]);
        }
        let mut out: Vec<Rule> = Vec::new();
        for r in &d.list {
            crate::domain::validate_name(&r.name)
                .map_err(|e| invalid("rules.list.name", format!("{:?}: {e}", r.name)))?;
            if out.iter().any(|o| o.name == r.name) {
                return Err(invalid(
                    "rules.list.name",
                    format!("duplicate rule name {:?}", r.name),
                ));
            }
            if !r.threshold.is_finite() {
                return Err(invalid(
                    "rules.list.threshold",
                    format!("rule {:?}: must be finite", r.name),
                ));
            }
            if r.statistic.is_pvalue() && !(r.threshold > 0.0 && r.threshold <= 1.0) {
                return Err(invalid(
                    "rules.list.threshold",
                    format!("rule {:?}: a p-value threshold must be in (0, 1]", r.name),
                ));
            }
            if !r.statistic.is_pvalue() && r.correction != Correction::None {
                return Err(invalid(
                    "rules.list.correction",
                    format!(
                        "rule {:?}: corrections apply to p-value statistics only",
                        r.name
                    ),
                ));
            }
            let combine = match (r.combine.as_str(), r.combine_value) {
                ("any", None) => Combine::Any,
                ("share", Some(x)) if x > 0.0 && x <= 1.0 => Combine::Share(x),
                ("count", Some(k)) if k >= 1.0 && k.fract() == 0.0 && k <= f64::from(u32::MAX) => {
                    Combine::Count(k as u32)
                }
                _ => {
                    return Err(invalid(
                        "rules.list.combine",
                        format!(
                            "rule {:?}: use combine = \"any\", or \"share\" with combine_value in (0, 1], or \"count\" with a whole combine_value >= 1",
                            r.name
                        ),
                    ))
                }
            };
            let for_evaluations = r.for_evaluations.unwrap_or(d.for_evaluations);
            if for_evaluations == 0 {
                return Err(invalid(
                    "rules.list.for_evaluations",
                    format!("rule {:?}: must be at least 1", r.name),
                ));
            }
            if r.models.is_empty() || r.features.is_empty() {
                return Err(invalid(
                    "rules.list.features",
                    format!("rule {:?}: models and features must not be empty", r.name),
                ));
            }
            out.push(Rule {
                name: r.name.clone(),
                models: r.models.clone(),
                statistic: r.statistic,
                features: r.features.clone(),
                role: r.role,
                op: r.op.unwrap_or(if r.statistic.is_pvalue() {
                    Op::Lt
                } else {
                    Op::Gt
                }),
                threshold: r.threshold,
                combine,
                correction: r.correction,
                min_samples: r.min_samples.unwrap_or(min_samples),
                for_evaluations,
                keep_firing_for: r.keep_firing_for.unwrap_or(d.keep_firing_for),
                severity: r.severity.clone().unwrap_or_else(|| d.severity.clone()),
                webhooks: r.webhooks.clone(),
                window: (!r.window.is_empty()).then(|| r.window.clone()),
            });
        }
        Ok(out)
    }

    fn validate_webhook(&self) -> Result<WebhookConfig, Error> {
        use base64::Engine as _;
        let w = &self.webhook;
        let timeout = parse_duration("webhook.timeout", &w.timeout)?;
        let max_age = parse_duration("webhook.max_age", &w.max_age)?;
        let backoff_base = parse_duration("webhook.backoff_base", &w.backoff_base)?;
        let backoff_cap = parse_duration("webhook.backoff_cap", &w.backoff_cap)?;
        if backoff_base.is_zero() || backoff_cap < backoff_base {
            return Err(invalid(
                "webhook.backoff_cap",
                "backoff_base must be > 0 and backoff_cap >= backoff_base",
            ));
        }
        let check_url = |key: &'static str, url: &str| {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && reqwest::Url::parse(url).is_ok();
            if ok {
                Ok(())
            } else {
                Err(invalid(
                    key,
                    format!("{url:?} is not an absolute http:// or https:// URL"),
                ))
            }
        };
        let decode = |key: &'static str, s: &str| -> Result<Vec<u8>, Error> {
            match s.strip_prefix("whsec_") {
                Some(b64) => base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| invalid(key, "a whsec_ secret must be followed by base64")),
                None if s.is_empty() => Err(invalid(key, "a secret must not be empty")),
                None => Ok(s.as_bytes().to_vec()),
            }
        };
        let mut targets: Vec<Target> = Vec::new();
        let shared: Vec<Vec<u8>> = w
            .secrets
            .iter()
            .map(|s| decode("webhook.secrets", s))
            .collect::<Result<_, _>>()?;
        for (i, url) in w.urls.iter().enumerate() {
            check_url("webhook.urls", url)?;
            targets.push(Target {
                name: format!("url{i}"),
                url: url.clone(),
                secrets: shared.clone(),
                format: w.format,
            });
        }
        for t in &w.targets {
            crate::domain::validate_name(&t.name)
                .map_err(|e| invalid("webhook.targets.name", format!("{:?}: {e}", t.name)))?;
            if targets.iter().any(|o| o.name == t.name) {
                return Err(invalid(
                    "webhook.targets.name",
                    format!("duplicate target name {:?}", t.name),
                ));
            }
            check_url("webhook.targets.url", &t.url)?;
            let mut secrets: Vec<Vec<u8>> = t
                .secrets
                .iter()
                .map(|s| decode("webhook.targets.secrets", s))
                .collect::<Result<_, _>>()?;
            if let Some(path) = &t.secret_file {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    invalid(
                        "webhook.targets.secret_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    secrets.push(decode("webhook.targets.secret_file", line)?);
                }
            }
            targets.push(Target {
                name: t.name.clone(),
                url: t.url.clone(),
                secrets,
                format: t.format.unwrap_or_default(),
            });
        }
        Ok(WebhookConfig {
            timeout,
            max_age,
            backoff_base,
            backoff_cap,
            targets,
        })
    }

    /// The effective configuration as TOML, as `driftd check-config` prints it.
    ///
    /// # Errors
    /// Only if serialisation fails, which valid configurations do not.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn embedded_defaults_are_the_documented_ones() {
        let (_, c) = load(None, env(&[])).unwrap();
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:7700");
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:9700");
        assert_eq!(c.store.path, PathBuf::from("./driftd-data"));
        assert_eq!(c.engine.warmup_samples.get(), 5000);
        assert_eq!(c.engine.eval_interval, Duration::from_secs(10));
        assert_eq!(c.engine.min_samples, 500);
        assert_eq!(c.engine.psi_bins.get(), 10);
        let names: Vec<&str> = c.engine.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["psi", "ks"]);
        assert_eq!(c.engine.rules[0].threshold, 0.2);
        assert_eq!(c.engine.rules[0].for_evaluations, 3);
        assert_eq!(c.engine.rules[1].threshold, 0.01);
        assert_eq!(c.engine.rules[1].correction, Correction::Bonferroni);
        assert_eq!(c.engine.rules[1].min_samples, 500);
        assert_eq!(c.log, "warn,driftd=info");
    }

    #[test]
    fn file_then_env_override_defaults() {
        let f = file("[server]\ngrpc_addr = \"127.0.0.1:1234\"\n[rules]\npsi_threshold = 0.3\n");
        let (_, c) = load(
            Some(f.path()),
            env(&[
                ("DRIFTD_RULES__PSI_THRESHOLD", "0.5"),
                ("DRIFTD_WEBHOOK__URLS", "http://a/x,http://b/y"),
                ("DRIFTD_LOG", "debug"),
                ("DRIFTD_REQUIRE_E2E", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:1234");
        assert_eq!(c.engine.rules[0].threshold, 0.5);
        let urls: Vec<&str> = c.webhook.targets.iter().map(|t| t.url.as_str()).collect();
        assert_eq!(urls, ["http://a/x", "http://b/y"]);
        assert_eq!(c.log, "debug");
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("[server]\ngrpc_addr = \"nope\"\n", "server.grpc_addr"),
            ("[server]\ngrpc_adr = \"127.0.0.1:1\"\n", "grpc_adr"),
            ("[evaluation]\ninterval = \"soon\"\n", "evaluation.interval"),
            ("[evaluation]\nmin_samples = \"many\"\n", "min_samples"),
            ("[rules]\nfor_evaluations = 0\n", "rules.for_evaluations"),
            (
                "[[rules.list]]\nname = \"x\"\nstatistic = \"psi\"\nthreshold = 0.1\ncombine = \"share\"\n",
                "rules.list.combine",
            ),
            (
                "[[rules.list]]\nname = \"x\"\nstatistic = \"psi\"\nthreshold = 0.1\nwebhooks = [\"nope\"]\n",
                "rules.list.webhooks",
            ),
            ("[[rules.list]]\nname = \"x\"\nstatistic = \"nope\"\nthreshold = 0.1\n", "statistic"),
            ("[webhook]\nurls = [\"ftp://x\"]\n", "webhook.urls"),
            (
                "[evaluation]\npsi_epsilon = 0.0\n",
                "evaluation.psi_epsilon",
            ),
            ("[evaluation]\nnice = 20\n", "evaluation.nice"),
            ("bogus = 1\n", "bogus"),
        ];
        for (text, key) in cases {
            let f = file(text);
            let err = load(Some(f.path()), env(&[])).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err:?} does not name {key}");
        }
        let err = load(None, env(&[("DRIFTD_SERVER__HTTP_ADDR", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.http_addr"), "{err}");
    }

    #[test]
    fn auth_and_tls_errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("[tls]\ncert_file = \"/nonexistent.crt\"\n", "tls.key_file"),
            (
                "[tls]\ncert_file = \"/nonexistent.crt\"\nkey_file = \"/nonexistent.key\"\n",
                "tls.cert_file",
            ),
            (
                "[tls]\nclient_ca_file = \"/nonexistent.crt\"\n",
                "tls.client_ca_file",
            ),
            (
                "[tls]\nreload_interval = \"often\"\n",
                "tls.reload_interval",
            ),
            (
                "[auth]\ntokens_file = \"/nonexistent\"\n",
                "auth.tokens_file",
            ),
            ("[auth]\nprotect_metrics = true\n", "auth.protect_metrics"),
            ("[auth]\nprotect_health = true\n", "auth.protect_health"),
        ];
        for (text, key) in cases {
            let f = file(text);
            let err = load(Some(f.path()), env(&[])).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err:?} does not name {key}");
        }
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "# nothing yet\n").unwrap();
        let f = file(&format!(
            "[auth]\ntokens_file = {:?}\n",
            tokens.display().to_string()
        ));
        let err = load(Some(f.path()), env(&[])).unwrap_err().to_string();
        assert!(err.contains("holds no token"), "{err}");

        // A token from the environment is checked too, and never echoed.
        let err = load(None, env(&[("DRIFTD_TOKENS", "tooshort")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.tokens_env"), "{err}");
        assert!(!err.contains("tooshort"), "{err}");
        let (_, c) = load(
            None,
            env(&[
                ("DRIFTD_TOKENS", "0123456789abcdef,fedcba9876543210"),
                ("DRIFTD_AUTH__PROTECT_METRICS", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(c.auth.env_tokens.len(), 2);
        assert!(c.auth.enabled() && c.auth.protect_metrics);
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
        let (_, c) = load(None, env(&[])).unwrap();
        assert!(!c.auth.enabled());
        assert!(c.tls.is_none());
    }

    #[test]
    fn limits_are_loaded_and_validated() {
        let (_, c) = load(None, env(&[])).unwrap();
        assert_eq!(c.engine.limits, crate::domain::Limits::default());
        assert_eq!(c.connections.max_connections, 1000);
        assert_eq!(c.connections.max_streams_per_connection, 100);
        assert_eq!(c.connections.stream_idle_timeout, Duration::from_secs(60));
        let (_, c) = load(
            None,
            env(&[
                ("DRIFTD_LIMITS__AUTO_REGISTER", "false"),
                ("DRIFTD_LIMITS__MODELS", "fraud-*,churn"),
                ("DRIFTD_LIMITS__NAME_PUNCTUATION", "_/"),
                ("DRIFTD_LIMITS__MAX_ROWS_PER_BATCH", "10"),
            ]),
        )
        .unwrap();
        let l = &c.engine.limits;
        assert!(!l.auto_register);
        assert_eq!(l.models, ["fraud-*", "churn"]);
        assert_eq!(l.names.punctuation, "_/");
        assert_eq!(l.max_rows_per_batch, 10);
        for (text, key) in [
            ("[limits]\nmax_models = 0\n", "limits.max_models"),
            ("[limits]\nmax_name_bytes = 2000\n", "limits.max_name_bytes"),
            ("[limits]\nname_punctuation = \"a\"\n", "limits.name_punctuation"),
            ("[limits]\nauto_register = false\n", "limits.models"),
            (
                "[limits]\nmax_columns_per_batch = 10\nmax_features_per_model = 5\n",
                "limits.max_columns_per_batch",
            ),
            (
                "[limits]\nstream_idle_timeout = \"1ms\"\n",
                "limits.stream_idle_timeout",
            ),
            (
                "[limits]\nmax_streams_per_connection = -1\n",
                "max_streams_per_connection",
            ),
            (
                "[limits]\nauto_register = false\nmodels = [\"a\"]\n\
                 [[reference.sources]]\nmodel = \"b\"\nversion = \"v\"\nreference = \"file:/x.csv\"\n",
                "limits.models",
            ),
        ] {
            let f = file(text);
            let err = load(Some(f.path()), env(&[])).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err:?} does not name {key}");
        }
    }

    #[test]
    fn effective_config_round_trips_through_toml() {
        let (raw, _) = load(None, env(&[("DRIFTD_WINDOW__WINDOWS", "count:77,15m/30s")])).unwrap();
        let text = raw.to_toml().unwrap();
        let f = file(&text);
        let (_, c) = load(Some(f.path()), env(&[])).unwrap();
        let names: Vec<&str> = c.engine.windows.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["last_77", "15m"]);
    }

    #[test]
    fn windows_and_reference_sources_are_validated() {
        for (text, key) in [
            ("[window]\nwindows = []", "window.windows"),
            ("[window]\nwindows = [\"5m/7s\"]", "window.windows"),
            ("[window]\nwindows = [\"5m\", \"5m/1m\"]", "window.windows"),
            (
                "[[reference.sources]]\nmodel = \"m\"\nreference = \"s3://x\"",
                "reference.sources.reference",
            ),
            (
                "[[reference.sources]]\nmodel = \"m\"\nreference = \"live:a b\"",
                "reference.sources.reference",
            ),
        ] {
            let f = file(text);
            let err = load(Some(f.path()), env(&[])).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err:?} does not name {key}");
        }
        let f = file(
            "[[window.overrides]]\nmodels = [\"fraud-*\"]\nwindows = [\"count:100\"]\n\
             [[reference.sources]]\nmodel = \"fraud-*\"\nversion = \"canary\"\nreference = \"live:stable\"",
        );
        let (_, c) = load(Some(f.path()), env(&[])).unwrap();
        assert_eq!(c.engine.windows_for("fraud-eu")[0].name, "last_100");
        assert_eq!(c.engine.windows_for("churn")[0].name, "5m");
        assert_eq!(
            c.engine.source_for("fraud-eu", "canary"),
            Some(&SourceKind::Live {
                version: "stable".into()
            })
        );
        assert_eq!(c.engine.source_for("fraud-eu", "stable"), None);
    }
}
