//! Prometheus metrics on an owned registry with the `driftd_` prefix. Every
//! metric is created here, with its help text; other modules hold a clone of
//! [`Metrics`] and update handles. Label values come only from validated
//! names and from the closed sets defined here as enums.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
};

use prometheus::{
    core::{Collector, Desc},
    proto::{self, LabelPair, MetricFamily, MetricType},
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::domain::ModelKey;

/// Why a request was refused: the `reason` label of
/// `driftd_ingest_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Model, version or feature name missing or with a character outside
    /// the allowed alphabet.
    InvalidName,
    /// A name longer than `limits.max_name_bytes`.
    NameTooLong,
    /// A batch without columns or rows, or a column without values.
    EmptyBatch,
    /// Columns of different lengths, or timestamps/request ids that do not
    /// match the row count.
    UnequalLengths,
    /// A column's kind differs from the feature's established kind.
    KindMismatch,
    /// Two columns with the same name.
    DuplicateColumn,
    /// A categorical value longer than `limits.max_category_bytes`.
    ValueTooLong,
    /// A batch with more rows than `limits.max_rows_per_batch`.
    TooManyRows,
    /// A batch with more columns than `limits.max_columns_per_batch`.
    TooManyColumns,
    /// A new model beyond `limits.max_models`.
    TooManyModels,
    /// A new version beyond `limits.max_versions_per_model`.
    TooManyVersions,
    /// New features beyond `limits.max_features_per_model`.
    TooManyFeatures,
    /// A model not registered while `limits.auto_register` is false.
    UnknownModel,
    /// A gRPC message larger than `server.max_message_bytes`, compressed or
    /// once decompressed.
    MessageTooLarge,
    /// A gRPC message that is not valid protobuf (including strings that
    /// are not UTF-8).
    Malformed,
    /// A stream that sent nothing for `limits.stream_idle_timeout`, or a
    /// connection that sent nothing as long after it was accepted.
    IdleTimeout,
    /// A connection beyond `limits.max_connections`, closed at once.
    TooManyConnections,
    /// The ingest queue is full.
    QueueFull,
    /// The daemon is shutting down.
    Draining,
    /// The store refused the write.
    StoreError,
    /// A reference larger than `ingest.max_reference_records`.
    TooLarge,
    /// No valid bearer token, on any protected gRPC call or HTTP request.
    Unauthenticated,
}

impl RejectReason {
    /// Every reason, for pre-initialising the series.
    pub const ALL: [RejectReason; 22] = [
        RejectReason::InvalidName,
        RejectReason::NameTooLong,
        RejectReason::EmptyBatch,
        RejectReason::UnequalLengths,
        RejectReason::KindMismatch,
        RejectReason::DuplicateColumn,
        RejectReason::ValueTooLong,
        RejectReason::TooManyRows,
        RejectReason::TooManyColumns,
        RejectReason::TooManyModels,
        RejectReason::TooManyVersions,
        RejectReason::TooManyFeatures,
        RejectReason::UnknownModel,
        RejectReason::MessageTooLarge,
        RejectReason::Malformed,
        RejectReason::IdleTimeout,
        RejectReason::TooManyConnections,
        RejectReason::QueueFull,
        RejectReason::Draining,
        RejectReason::StoreError,
        RejectReason::TooLarge,
        RejectReason::Unauthenticated,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidName => "invalid_name",
            RejectReason::NameTooLong => "name_too_long",
            RejectReason::EmptyBatch => "empty_batch",
            RejectReason::UnequalLengths => "unequal_lengths",
            RejectReason::KindMismatch => "kind_mismatch",
            RejectReason::DuplicateColumn => "duplicate_column",
            RejectReason::ValueTooLong => "value_too_long",
            RejectReason::TooManyRows => "too_many_rows",
            RejectReason::TooManyColumns => "too_many_columns",
            RejectReason::TooManyModels => "too_many_models",
            RejectReason::TooManyVersions => "too_many_versions",
            RejectReason::TooManyFeatures => "too_many_features",
            RejectReason::UnknownModel => "unknown_model",
            RejectReason::MessageTooLarge => "message_too_large",
            RejectReason::Malformed => "malformed",
            RejectReason::IdleTimeout => "idle_timeout",
            RejectReason::TooManyConnections => "too_many_connections",
            RejectReason::QueueFull => "queue_full",
            RejectReason::Draining => "draining",
            RejectReason::StoreError => "store_error",
            RejectReason::TooLarge => "too_large",
            RejectReason::Unauthenticated => "unauthenticated",
        }
    }

    /// The reason a refused name counts as.
    pub fn of_name(e: &crate::domain::NameError) -> Self {
        match e {
            crate::domain::NameError::TooLong { .. } => RejectReason::NameTooLong,
            _ => RejectReason::InvalidName,
        }
    }
}

/// Outcome of one webhook delivery attempt: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// 2xx.
    Delivered,
    /// Non-2xx, timeout or connection error; retried if attempts remain.
    Failed,
    /// The receiver answered a 4xx other than 410, 429: the event was given up.
    GaveUp,
    /// The event grew older than `webhook.max_age` undelivered.
    DeadLettered,
    /// The receiver answered 410: the target was disabled with this event.
    Disabled,
}

impl WebhookOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookOutcome::Delivered => "delivered",
            WebhookOutcome::Failed => "failed",
            WebhookOutcome::GaveUp => "gave_up",
            WebhookOutcome::DeadLettered => "dead_lettered",
            WebhookOutcome::Disabled => "disabled",
        }
    }
}

/// What a reload was of: the `source` label of `driftd_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadSource {
    /// The bearer token file (`auth.tokens_file`).
    Tokens,
    /// The TLS certificate, key and client CA files (`[tls]`).
    Tls,
}

impl ReloadSource {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadSource::Tokens => "tokens",
            ReloadSource::Tls => "tls",
        }
    }
}

/// How a reload went: the `outcome` label of `driftd_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new files are in force.
    Reloaded,
    /// The new files could not be used; the previous ones stay in force.
    Failed,
}

impl ReloadOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Reloaded => "reloaded",
            ReloadOutcome::Failed => "failed",
        }
    }
}

/// What happened to a KServe CloudEvent: the `outcome` label of
/// `driftd_cloudevents_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudEventOutcome {
    /// Joined with its counterpart and ingested.
    Joined,
    /// Held, waiting for its counterpart.
    Buffered,
    /// Its counterpart never came within the TTL; ingested alone.
    Expired,
    /// The join buffer was full; ingested alone at once.
    BufferFull,
    /// Same ce-id and type as an event already held; ignored.
    Duplicate,
    /// Request and response disagree on the row count; ingested separately.
    RowMismatch,
    /// Missing headers, invalid JSON or inconsistent tensors (400).
    Malformed,
    /// A content type that is not JSON (415).
    UnsupportedMediaType,
    /// A body over `inference.max_body_bytes` (413).
    TooLarge,
    /// Too many ingests in flight (503).
    Overloaded,
    /// The engine refused the decoded batch (for example a kind mismatch).
    IngestFailed,
}

impl CloudEventOutcome {
    /// Every outcome, for pre-initialising the series.
    pub const ALL: [CloudEventOutcome; 11] = [
        CloudEventOutcome::Joined,
        CloudEventOutcome::Buffered,
        CloudEventOutcome::Expired,
        CloudEventOutcome::BufferFull,
        CloudEventOutcome::Duplicate,
        CloudEventOutcome::RowMismatch,
        CloudEventOutcome::Malformed,
        CloudEventOutcome::UnsupportedMediaType,
        CloudEventOutcome::TooLarge,
        CloudEventOutcome::Overloaded,
        CloudEventOutcome::IngestFailed,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloudEventOutcome::Joined => "joined",
            CloudEventOutcome::Buffered => "buffered",
            CloudEventOutcome::Expired => "expired",
            CloudEventOutcome::BufferFull => "buffer_full",
            CloudEventOutcome::Duplicate => "duplicate",
            CloudEventOutcome::RowMismatch => "row_mismatch",
            CloudEventOutcome::Malformed => "malformed",
            CloudEventOutcome::UnsupportedMediaType => "unsupported_media_type",
            CloudEventOutcome::TooLarge => "too_large",
            CloudEventOutcome::Overloaded => "overloaded",
            CloudEventOutcome::IngestFailed => "ingest_failed",
        }
    }
}

/// Handles on every driftd metric. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Features already counted in `driftd_series_dropped_total`, so each
    /// is counted once.
    dropped: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<(String, String, String)>>>,
    /// `driftd_series_dropped_total`.
    pub series_dropped: IntCounterVec,
    /// `driftd_psi`.
    pub psi: GaugeVec,
    /// `driftd_ks_statistic`.
    pub ks_statistic: GaugeVec,
    /// `driftd_ks_p_value`.
    pub ks_p_value: GaugeVec,
    /// `driftd_chi2_statistic`.
    pub chi2_statistic: GaugeVec,
    /// `driftd_chi2_p_value`.
    pub chi2_p_value: GaugeVec,
    /// `driftd_window_samples`.
    pub window_samples: IntGaugeVec,
    /// `driftd_reference_samples`.
    pub reference_samples: IntGaugeVec,
    /// `driftd_feature_drifting`.
    pub feature_drifting: IntGaugeVec,
    /// `driftd_missing_values_total`.
    pub missing_values: IntCounterVec,
    /// `driftd_ingest_records_total`.
    pub ingest_records: IntCounterVec,
    /// `driftd_ingest_batches_total`.
    pub ingest_batches: IntCounterVec,
    /// `driftd_ingest_rejected_total`.
    pub ingest_rejected: IntCounterVec,
    /// `driftd_ingest_ack_duration_seconds`.
    pub ingest_ack_duration: Histogram,
    /// `driftd_ingest_queue_depth`.
    pub ingest_queue_depth: IntGauge,
    /// `driftd_evaluation_duration_seconds`.
    pub evaluation_duration: Histogram,
    /// `driftd_evaluations_total`.
    pub evaluations: IntCounterVec,
    /// `driftd_rule_firing`.
    pub rule_firing: IntGaugeVec,
    /// `driftd_rule_state`.
    pub rule_state: IntGaugeVec,
    /// `driftd_webhook_deliveries_total`.
    pub webhook_deliveries: IntCounterVec,
    /// `driftd_store_flush_duration_seconds`.
    pub store_flush_duration: Histogram,
    /// `driftd_store_errors_total`.
    pub store_errors: IntCounter,
    /// `driftd_store_quarantined_total`.
    pub store_quarantined: IntCounter,
    /// `driftd_store_size_bytes`.
    pub store_size: Gauge,
    /// `driftd_store_recoveries_total`.
    pub store_recoveries: IntCounter,
    /// `driftd_reference_info`.
    pub reference_info: IntGaugeVec,
    /// `driftd_window_records`.
    pub window_records: IntGaugeVec,
    /// `driftd_window_sample_size`.
    pub window_sample_size: IntGaugeVec,
    /// `driftd_build_info`.
    pub build_info: IntGaugeVec,
    /// `driftd_webhook_attempts_total`.
    pub webhook_attempts: IntCounterVec,
    /// `driftd_outbox_pending`.
    pub outbox_pending: IntGauge,
    /// `driftd_outbox_oldest_pending_timestamp_seconds`.
    pub outbox_oldest_pending: Gauge,
    /// `driftd_outbox_dead_lettered_total`.
    pub outbox_dead_lettered: IntCounter,
    /// `driftd_cloudevents_total`.
    pub cloudevents: IntCounterVec,
    /// `driftd_inference_join_pending`.
    pub join_pending: IntGauge,
    /// `driftd_reloads_total`.
    pub reloads: IntCounterVec,
    /// `driftd_window_values` (histogram over the reference bins),
    /// `driftd_window_bin_samples`, `driftd_reference_bin_ratio` and
    /// `driftd_reference_cumulative_ratio`: the inputs of the fleet-wide
    /// recording rules. Updated through [`Metrics::export_bins`].
    fleet_bins: FleetBins,
}

const FEATURE_LABELS: &[&str] = &["model", "version", "feature", "window"];

impl Metrics {
    /// Creates and registers every metric.
    ///
    /// # Panics
    /// Only on a programming error in this function (a duplicate or invalid
    /// metric name), which the unit tests exercise.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("driftd".into()), None)
            .expect("static prefix is a valid metric name");
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let int_gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid histogram");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let m = Self {
            dropped: Default::default(),
            series_dropped: counter_vec(
                "series_dropped_total",
                "Features left without per-feature series by the metrics.max_features_per_model budget",
                &["model"],
            ),
            psi: gauge_vec(
                "psi",
                "Population stability index of the window against the reference",
                FEATURE_LABELS,
            ),
            ks_statistic: gauge_vec(
                "ks_statistic",
                "Two-sample Kolmogorov-Smirnov statistic D of window against reference",
                FEATURE_LABELS,
            ),
            ks_p_value: gauge_vec(
                "ks_p_value",
                "Two-sample Kolmogorov-Smirnov p-value of window against reference",
                FEATURE_LABELS,
            ),
            chi2_statistic: gauge_vec(
                "chi2_statistic",
                "Chi-square statistic of window against reference (categorical features)",
                FEATURE_LABELS,
            ),
            chi2_p_value: gauge_vec(
                "chi2_p_value",
                "Chi-square p-value of window against reference (categorical features)",
                FEATURE_LABELS,
            ),
            window_samples: int_gauge_vec(
                "window_samples",
                "Non-missing values in the window at the last evaluation",
                FEATURE_LABELS,
            ),
            reference_samples: int_gauge_vec(
                "reference_samples",
                "Non-missing values in the reference",
                &["model", "version", "feature"],
            ),
            feature_drifting: int_gauge_vec(
                "feature_drifting",
                "1 when the feature's last verdict was drift, else 0",
                FEATURE_LABELS,
            ),
            missing_values: counter_vec(
                "missing_values_total",
                "Missing values (NaN, +/-inf, empty category) received",
                &["model", "version", "feature"],
            ),
            ingest_records: counter_vec(
                "ingest_records_total",
                "Records accepted and acknowledged",
                &["model", "version"],
            ),
            ingest_batches: counter_vec(
                "ingest_batches_total",
                "Batches accepted and acknowledged",
                &["model", "version"],
            ),
            ingest_rejected: counter_vec(
                "ingest_rejected_total",
                "Requests refused (ingest, or any protected request without a valid token), by reason",
                &["reason"],
            ),
            // From tens of microseconds (an idle group commit) to seconds (a
            // stalled disk); acknowledgements include the store flush.
            ingest_ack_duration: histogram(
                "ingest_ack_duration_seconds",
                "Time from a batch entering the ingest queue to its acknowledgement",
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5,
                ],
            ),
            ingest_queue_depth: {
                let g = IntGauge::new("ingest_queue_depth", "Batches waiting in the ingest queue")
                    .expect("valid gauge");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            // One evaluation of all versions; the target is well under 100 ms.
            evaluation_duration: histogram(
                "evaluation_duration_seconds",
                "Time to evaluate every model version once",
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            ),
            evaluations: counter_vec(
                "evaluations_total",
                "Model version evaluations, by verdict",
                &["model", "version", "verdict"],
            ),
            rule_firing: int_gauge_vec(
                "rule_firing",
                "1 while the drift rule is firing for the model version, else 0",
                &["model", "version", "rule"],
            ),
            rule_state: int_gauge_vec(
                "rule_state",
                "1 for the rule's current state (inactive, pending, firing), 0 for the others",
                &["model", "version", "rule", "state"],
            ),
            webhook_deliveries: counter_vec(
                "webhook_deliveries_total",
                "Webhook delivery attempts, by outcome",
                &["outcome"],
            ),
            // sled's flush is a sync_file_range: sub-millisecond on a quiet
            // SSD, hundreds of milliseconds on a saturated disk.
            store_flush_duration: histogram(
                "store_flush_duration_seconds",
                "Duration of one store flush (group commit)",
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    1.0,
                ],
            ),
            store_errors: {
                let c = IntCounter::new("store_errors_total", "Store operations that failed")
                    .expect("valid counter");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            store_quarantined: {
                let c = IntCounter::new(
                    "store_quarantined_total",
                    "Unreadable stores moved aside at start-up (store.on_corruption = quarantine)",
                )
                .expect("valid counter");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            store_size: {
                let g = Gauge::new("store_size_bytes", "Size of the store on disk")
                    .expect("valid gauge");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            store_recoveries: {
                let c = IntCounter::new(
                    "store_recoveries_total",
                    "Times the store was reopened after a failed write or flush (disk full)",
                )
                .expect("valid counter");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            reference_info: int_gauge_vec(
                "reference_info",
                "Always 1 for the reference in force; labels name its source and content hash",
                &["model", "version", "source", "hash"],
            ),
            window_records: int_gauge_vec(
                "window_records",
                "Records in a window at the last evaluation",
                &["model", "version", "window"],
            ),
            window_sample_size: int_gauge_vec(
                "window_sample_size",
                "Values of a window's sample used by KS, Cramér-von Mises and Wasserstein",
                FEATURE_LABELS,
            ),
            build_info: int_gauge_vec(
                "build_info",
                "Always 1; labels carry the driftd version",
                &["version"],
            ),
            webhook_attempts: counter_vec(
                "webhook_attempts_total",
                "Webhook delivery attempts, by target",
                &["target"],
            ),
            outbox_pending: {
                let g = IntGauge::new(
                    "outbox_pending",
                    "Webhook events waiting for delivery (per target)",
                )
                .expect("valid gauge");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            outbox_oldest_pending: {
                let g = Gauge::new(
                    "outbox_oldest_pending_timestamp_seconds",
                    "Creation time of the oldest undelivered webhook event; 0 when none",
                )
                .expect("valid gauge");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            outbox_dead_lettered: {
                let c = IntCounter::new(
                    "outbox_dead_lettered_total",
                    "Webhook events dropped undelivered after webhook.max_age",
                )
                .expect("valid counter");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            cloudevents: counter_vec(
                "cloudevents_total",
                "KServe logger CloudEvents received, by outcome",
                &["outcome"],
            ),
            join_pending: {
                let g = IntGauge::new(
                    "inference_join_pending",
                    "Logged requests or responses waiting for their counterpart",
                )
                .expect("valid gauge");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            reloads: counter_vec(
                "reloads_total",
                "Reloads of changed token or TLS files, by source and outcome",
                &["source", "outcome"],
            ),
            fleet_bins: {
                let c = FleetBins::new();
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            registry,
        };
        for outcome in CloudEventOutcome::ALL {
            m.cloudevents.with_label_values(&[outcome.as_str()]);
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for reason in RejectReason::ALL {
            m.ingest_rejected.with_label_values(&[reason.as_str()]);
        }
        for source in [ReloadSource::Tokens, ReloadSource::Tls] {
            for outcome in [ReloadOutcome::Reloaded, ReloadOutcome::Failed] {
                m.reloads
                    .with_label_values(&[source.as_str(), outcome.as_str()]);
            }
        }
        for outcome in [
            WebhookOutcome::Delivered,
            WebhookOutcome::Failed,
            WebhookOutcome::GaveUp,
            WebhookOutcome::DeadLettered,
            WebhookOutcome::Disabled,
        ] {
            m.webhook_deliveries.with_label_values(&[outcome.as_str()]);
        }
        m
    }

    /// Counts a feature the series budget left out, once per feature.
    pub fn drop_feature(&self, key: &ModelKey, feature: &str) {
        let mut d = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
        if d.insert((key.model.clone(), key.version.clone(), feature.to_string())) {
            self.series_dropped
                .with_label_values(&[key.model.as_str()])
                .inc();
        }
    }

    /// Counts a webhook delivery outcome.
    pub fn webhook(&self, outcome: WebhookOutcome) {
        self.webhook_deliveries
            .with_label_values(&[outcome.as_str()])
            .inc();
        if outcome == WebhookOutcome::DeadLettered {
            self.outbox_dead_lettered.inc();
        }
    }

    /// Counts a CloudEvent outcome.
    pub fn cloudevent(&self, outcome: CloudEventOutcome) {
        self.cloudevents
            .with_label_values(&[outcome.as_str()])
            .inc();
    }

    /// Counts a reload of changed token or TLS files.
    pub fn reload(&self, source: ReloadSource, outcome: ReloadOutcome) {
        self.reloads
            .with_label_values(&[source.as_str(), outcome.as_str()])
            .inc();
    }

    /// Counts a rejected request.
    pub fn reject(&self, reason: RejectReason) {
        self.ingest_rejected
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Removes every per-feature series of one feature and window, so a
    /// stale value cannot keep an alert firing.
    pub fn clear_feature_stats(&self, key: &ModelKey, feature: &str, window: &str) {
        let labels = [key.model.as_str(), key.version.as_str(), feature, window];
        for g in [
            &self.psi,
            &self.ks_statistic,
            &self.ks_p_value,
            &self.chi2_statistic,
            &self.chi2_p_value,
        ] {
            // Absent series are fine: nothing to remove.
            let _ = g.remove_label_values(&labels);
        }
    }

    /// Exports one feature's window and reference counts over the
    /// reference's PSI bins, replacing whatever was exported for it before
    /// (a new reference brings new edges). Counts that cannot describe a
    /// distribution (no bins, lengths that do not match the edges, an empty
    /// reference) remove the feature's bin series instead.
    pub fn export_bins(&self, key: &ModelKey, feature: &str, window: &str, bins: BinCounts<'_>) {
        let id = (
            key.model.clone(),
            key.version.clone(),
            feature.to_string(),
            window.to_string(),
        );
        let n = bins.edges.len() + 1;
        let valid = bins.reference.len() == n
            && bins.window.len() == n
            && bins.reference.iter().sum::<u64>() > 0;
        let mut map = self
            .fleet_bins
            .bins
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if valid {
            map.insert(
                id,
                Binned {
                    edges: bins.edges.to_vec(),
                    reference: bins.reference.to_vec(),
                    window: bins.window.to_vec(),
                    window_sum: bins.window_sum,
                },
            );
        } else {
            map.remove(&id);
        }
    }

    /// The text exposition (format 0.0.4) of every driftd metric plus the
    /// standard `process_*` metrics.
    pub fn encode(&self) -> String {
        let mut families = self.registry.gather();
        #[cfg(target_os = "linux")]
        families.extend(prometheus::process_collector::ProcessCollector::for_self().collect());
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&families, &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// One feature's counts over the reference's PSI bins, for
/// [`Metrics::export_bins`]. Bin `i` holds the values `x` with
/// `edges[i-1] < x <= edges[i]`; the last bin is open to +inf, so both count
/// vectors have `edges.len() + 1` entries.
#[derive(Debug, Clone, Copy)]
pub struct BinCounts<'a> {
    /// The reference's bin edges, ascending.
    pub edges: &'a [f64],
    /// Reference values per bin.
    pub reference: &'a [u64],
    /// Window values per bin.
    pub window: &'a [u64],
    /// Sum of the window's values (the histogram's `_sum`).
    pub window_sum: f64,
}

/// What [`FleetBins`] exports for one (model, version, feature, window).
#[derive(Debug, Clone)]
struct Binned {
    edges: Vec<f64>,
    reference: Vec<u64>,
    window: Vec<u64>,
    window_sum: f64,
}

type BinKey = (String, String, String, String);

/// The per-bin series of every numeric feature. A collector rather than
/// metric vectors, because a new reference changes a feature's bin edges
/// and with them the label sets of all its bin series at once; replacing
/// one map entry cannot leave a stale bin behind.
#[derive(Clone)]
struct FleetBins {
    bins: Arc<Mutex<BTreeMap<BinKey, Binned>>>,
    descs: Vec<Desc>,
}

const WINDOW_VALUES: (&str, &str) = (
    "window_values",
    "Window values over the reference's PSI bins, cumulative (le = the bin's upper edge)",
);
const WINDOW_BIN_SAMPLES: (&str, &str) = (
    "window_bin_samples",
    "Window values in one reference PSI bin (bin = the bin's upper edge, as in le)",
);
const REFERENCE_BIN_RATIO: (&str, &str) = (
    "reference_bin_ratio",
    "Share of the reference's values in one PSI bin (bin = the bin's upper edge)",
);
const REFERENCE_CUMULATIVE_RATIO: (&str, &str) = (
    "reference_cumulative_ratio",
    "Share of the reference's values at or below the bin's upper edge (bin, as in le)",
);

impl FleetBins {
    fn new() -> Self {
        let labels = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let desc = |(name, help): (&str, &str), l: &[&str]| {
            Desc::new(name.into(), help.into(), labels(l), Default::default())
                .expect("valid descriptor")
        };
        Self {
            bins: Arc::default(),
            descs: vec![
                desc(WINDOW_VALUES, FEATURE_LABELS),
                desc(
                    WINDOW_BIN_SAMPLES,
                    &["model", "version", "feature", "window", "bin"],
                ),
                desc(REFERENCE_BIN_RATIO, &["model", "version", "feature", "bin"]),
                desc(
                    REFERENCE_CUMULATIVE_RATIO,
                    &["model", "version", "feature", "bin"],
                ),
            ],
        }
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.into());
    l.set_value(value.into());
    l
}

fn family(
    (name, help): (&str, &str),
    kind: MetricType,
    metrics: Vec<proto::Metric>,
) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn gauge(labels: Vec<LabelPair>, value: f64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(value);
    let mut m = proto::Metric::from_gauge(g);
    m.set_label(labels);
    m
}

/// The label value of bin `i`: its upper edge, formatted as the text
/// encoder formats `le`, so a bin series matches its histogram bucket.
fn bin_label(edges: &[f64], i: usize) -> String {
    edges
        .get(i)
        .map_or_else(|| "+Inf".to_string(), |e| e.to_string())
}

impl Collector for FleetBins {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let map = self.bins.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut hist, mut win_bins) = (Vec::new(), Vec::new());
        // The reference has no window label: one entry per model version and
        // feature, whatever the number of windows.
        let mut refs: BTreeMap<(&str, &str, &str), &Binned> = BTreeMap::new();
        for ((model, version, feature, window), b) in map.iter() {
            let base = [
                label("feature", feature),
                label("model", model),
                label("version", version),
                label("window", window),
            ];
            let mut h = proto::Histogram::default();
            let mut cum = 0u64;
            let mut buckets = Vec::with_capacity(b.edges.len());
            for (edge, count) in b.edges.iter().zip(&b.window) {
                cum += count;
                let mut bucket = proto::Bucket::default();
                bucket.set_upper_bound(*edge);
                bucket.set_cumulative_count(cum);
                buckets.push(bucket);
            }
            h.set_bucket(buckets);
            h.set_sample_count(b.window.iter().sum());
            h.set_sample_sum(b.window_sum);
            let mut m = proto::Metric::from_label(base.to_vec());
            m.set_histogram(h);
            hist.push(m);
            for (i, count) in b.window.iter().enumerate() {
                let mut labels = vec![label("bin", &bin_label(&b.edges, i))];
                labels.extend(base.iter().cloned());
                win_bins.push(gauge(labels, *count as f64));
            }
            refs.insert((model.as_str(), version.as_str(), feature.as_str()), b);
        }
        let (mut ratio, mut cumulative) = (Vec::new(), Vec::new());
        for ((model, version, feature), b) in refs {
            let n: u64 = b.reference.iter().sum();
            let mut cum = 0u64;
            for (i, count) in b.reference.iter().enumerate() {
                cum += count;
                let labels = vec![
                    label("bin", &bin_label(&b.edges, i)),
                    label("feature", feature),
                    label("model", model),
                    label("version", version),
                ];
                // Same operation order as `stats::binned_ks`: integer
                // cumulative sum, then one division. n > 0 (export_bins).
                ratio.push(gauge(labels.clone(), *count as f64 / n as f64));
                cumulative.push(gauge(labels, cum as f64 / n as f64));
            }
        }
        vec![
            family(WINDOW_VALUES, MetricType::HISTOGRAM, hist),
            family(WINDOW_BIN_SAMPLES, MetricType::GAUGE, win_bins),
            family(REFERENCE_BIN_RATIO, MetricType::GAUGE, ratio),
            family(REFERENCE_CUMULATIVE_RATIO, MetricType::GAUGE, cumulative),
        ]
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_prefix_build_info_and_preinitialised_reasons() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(text.contains("driftd_build_info{version=\""), "{text}");
        assert!(text.contains("driftd_ingest_rejected_total{reason=\"queue_full\"} 0"));
        assert!(text.contains("driftd_webhook_deliveries_total{outcome=\"delivered\"} 0"));
        assert!(text.contains("process_resident_memory_bytes"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.starts_with("driftd_") || line.starts_with("process_"),
                "unprefixed sample: {line}"
            );
        }
    }

    #[test]
    fn export_bins_writes_cumulative_buckets_per_bin_series_and_replaces_edges() {
        let m = Metrics::new();
        let key = ModelKey {
            model: "fraud".into(),
            version: "v1".into(),
        };
        let bins = BinCounts {
            edges: &[1.5, 2.5],
            reference: &[2, 1, 1],
            window: &[0, 3, 1],
            window_sum: 10.0,
        };
        m.export_bins(&key, "amount", "last_10", bins);
        let text = m.encode();
        let has = |line: &str| text.lines().any(|l| l == line);
        let w = "feature=\"amount\",model=\"fraud\",version=\"v1\",window=\"last_10\"";
        let r = "feature=\"amount\",model=\"fraud\",version=\"v1\"";
        assert!(
            text.contains("# TYPE driftd_window_values histogram"),
            "{text}"
        );
        for line in [
            format!("driftd_window_values_bucket{{{w},le=\"1.5\"}} 0"),
            format!("driftd_window_values_bucket{{{w},le=\"2.5\"}} 3"),
            format!("driftd_window_values_bucket{{{w},le=\"+Inf\"}} 4"),
            format!("driftd_window_values_sum{{{w}}} 10"),
            format!("driftd_window_values_count{{{w}}} 4"),
            format!("driftd_window_bin_samples{{bin=\"1.5\",{w}}} 0"),
            format!("driftd_window_bin_samples{{bin=\"2.5\",{w}}} 3"),
            format!("driftd_window_bin_samples{{bin=\"+Inf\",{w}}} 1"),
            format!("driftd_reference_bin_ratio{{bin=\"1.5\",{r}}} 0.5"),
            format!("driftd_reference_bin_ratio{{bin=\"+Inf\",{r}}} 0.25"),
            format!("driftd_reference_cumulative_ratio{{bin=\"2.5\",{r}}} 0.75"),
            format!("driftd_reference_cumulative_ratio{{bin=\"+Inf\",{r}}} 1"),
        ] {
            assert!(has(&line), "missing {line}\n{text}");
        }
        // A new reference with other edges replaces every bin series.
        let bins = BinCounts {
            edges: &[2.0],
            reference: &[1, 1],
            window: &[2, 2],
            window_sum: 9.0,
        };
        m.export_bins(&key, "amount", "last_10", bins);
        let text = m.encode();
        assert!(!text.contains("bin=\"1.5\""), "{text}");
        assert!(text.contains("bin=\"2\""), "{text}");
        // Counts that do not fit the edges remove the feature's series.
        let bins = BinCounts {
            edges: &[2.0],
            reference: &[],
            window: &[],
            window_sum: 0.0,
        };
        m.export_bins(&key, "amount", "last_10", bins);
        assert!(!m.encode().contains("driftd_window_values"));
    }
}
