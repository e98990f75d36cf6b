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
    "rule",
    "webhook",
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
    /// The drift rule.
    pub rule: RawRule,
    /// Webhook targets.
    pub webhook: RawWebhook,
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
}

/// `[window]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawWindow {
    /// Records in the count-based window (the last N per feature).
    pub size: usize,
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
}

/// `[rule]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRule {
    /// The rule holds when any feature's PSI exceeds this.
    pub psi_threshold: f64,
    /// Consecutive evaluations the rule must hold before it fires.
    pub for_evaluations: u32,
}

/// `[webhook]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawWebhook {
    /// URLs that receive a POST when a rule fires or resolves.
    pub urls: Vec<String>,
    /// Timeout of one delivery attempt, e.g. "5s".
    pub timeout: String,
    /// Attempts per event and URL before it is given up.
    pub max_attempts: u32,
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
            rule: RawRule::default(),
            webhook: RawWebhook::default(),
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
            cache_capacity_bytes: 64 * 1024 * 1024,
            flush_every_ms: 500,
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
        }
    }
}

impl Default for RawWindow {
    fn default() -> Self {
        Self { size: 5000 }
    }
}

impl Default for RawEvaluation {
    fn default() -> Self {
        Self {
            interval: "10s".into(),
            min_samples: 500,
            psi_bins: crate::stats::DEFAULT_BINS,
            psi_epsilon: crate::stats::DEFAULT_EPSILON,
        }
    }
}

impl Default for RawRule {
    fn default() -> Self {
        Self {
            psi_threshold: 0.2,
            for_evaluations: 3,
        }
    }
}

impl Default for RawWebhook {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            timeout: "5s".into(),
            max_attempts: 5,
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
}

/// Validated settings of the evaluation core.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Records that form a warm-up reference.
    pub warmup_samples: NonZeroUsize,
    /// Records in the count window.
    pub window_size: NonZeroUsize,
    /// Time between evaluations.
    pub eval_interval: Duration,
    /// Samples below which the verdict is `insufficient_data`.
    pub min_samples: usize,
    /// PSI bins.
    pub psi_bins: NonZeroUsize,
    /// PSI empty-bin epsilon, in (0, 1).
    pub psi_epsilon: f64,
    /// PSI threshold of the rule.
    pub psi_threshold: f64,
    /// Consecutive evaluations before the rule fires, at least 1.
    pub for_evaluations: u32,
}

/// Validated `[webhook]`.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Absolute http(s) URLs.
    pub urls: Vec<String>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Attempts per event and URL, at least 1.
    pub max_attempts: u32,
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
    let raw = load_raw(file, env)?;
    let config = raw.validate()?;
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
            .try_parsing(true)
            .source(Some(vars)),
    );
    Ok(builder.build()?.try_deserialize::<RawConfig>()?)
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

fn non_zero(key: &'static str, n: usize) -> Result<NonZeroUsize, Error> {
    NonZeroUsize::new(n).ok_or_else(|| invalid(key, "must be at least 1"))
}

impl RawConfig {
    /// Checks ranges and converts to [`Config`].
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
        let window_size = non_zero("window.size", self.window.size)?;
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
        let thr = self.rule.psi_threshold;
        if !(thr.is_finite() && thr >= 0.0) {
            return Err(invalid(
                "rule.psi_threshold",
                "must be a finite number >= 0",
            ));
        }
        if self.rule.for_evaluations == 0 {
            return Err(invalid("rule.for_evaluations", "must be at least 1"));
        }
        for url in &self.webhook.urls {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && reqwest::Url::parse(url).is_ok();
            if !ok {
                return Err(invalid(
                    "webhook.urls",
                    format!("{url:?} is not an absolute http:// or https:// URL"),
                ));
            }
        }
        let timeout = parse_duration("webhook.timeout", &self.webhook.timeout)?;
        if self.webhook.max_attempts == 0 {
            return Err(invalid("webhook.max_attempts", "must be at least 1"));
        }
        Ok(Config {
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
            },
            queue_capacity: self.ingest.queue_capacity,
            max_reference_records: self.ingest.max_reference_records,
            engine: EngineConfig {
                warmup_samples,
                window_size,
                eval_interval,
                min_samples: self.evaluation.min_samples,
                psi_bins,
                psi_epsilon: eps,
                psi_threshold: thr,
                for_evaluations: self.rule.for_evaluations,
            },
            webhook: WebhookConfig {
                urls: self.webhook.urls.clone(),
                timeout,
                max_attempts: self.webhook.max_attempts,
            },
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
        assert_eq!(c.engine.psi_threshold, 0.2);
        assert_eq!(c.engine.for_evaluations, 3);
        assert_eq!(c.log, "warn,driftd=info");
    }

    #[test]
    fn file_then_env_override_defaults() {
        let f = file("[server]\ngrpc_addr = \"127.0.0.1:1234\"\n[rule]\npsi_threshold = 0.3\n");
        let (_, c) = load(
            Some(f.path()),
            env(&[
                ("DRIFTD_RULE__PSI_THRESHOLD", "0.5"),
                ("DRIFTD_WEBHOOK__URLS", "http://a/x,http://b/y"),
                ("DRIFTD_LOG", "debug"),
                ("DRIFTD_REQUIRE_E2E", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:1234");
        assert_eq!(c.engine.psi_threshold, 0.5);
        assert_eq!(c.webhook.urls, vec!["http://a/x", "http://b/y"]);
        assert_eq!(c.log, "debug");
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("[server]\ngrpc_addr = \"nope\"\n", "server.grpc_addr"),
            ("[server]\ngrpc_adr = \"127.0.0.1:1\"\n", "grpc_adr"),
            ("[evaluation]\ninterval = \"soon\"\n", "evaluation.interval"),
            ("[evaluation]\nmin_samples = \"many\"\n", "min_samples"),
            ("[rule]\nfor_evaluations = 0\n", "rule.for_evaluations"),
            ("[webhook]\nurls = [\"ftp://x\"]\n", "webhook.urls"),
            (
                "[evaluation]\npsi_epsilon = 0.0\n",
                "evaluation.psi_epsilon",
            ),
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
    fn effective_config_round_trips_through_toml() {
        let (raw, _) = load(None, env(&[("DRIFTD_WINDOW__SIZE", "77")])).unwrap();
        let text = raw.to_toml().unwrap();
        let f = file(&text);
        let (_, c) = load(Some(f.path()), env(&[])).unwrap();
        assert_eq!(c.engine.window_size.get(), 77);
    }
}
