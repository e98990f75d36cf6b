//! Prometheus metrics on an owned registry with the `driftd_` prefix. Every
//! metric is created here, with its help text; other modules hold a clone of
//! [`Metrics`] and update handles. Label values come only from validated
//! names and from the closed sets defined here as enums.

use prometheus::{
    core::Collector, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::domain::ModelKey;

/// Why an ingest request was refused: the `reason` label of
/// `driftd_ingest_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Model, version or feature name missing or invalid.
    InvalidName,
    /// A batch without columns or rows, or a column without values.
    EmptyBatch,
    /// Columns of different lengths, or timestamps/request ids that do not
    /// match the row count.
    UnequalLengths,
    /// A column's kind differs from the feature's established kind.
    KindMismatch,
    /// Two columns with the same name.
    DuplicateColumn,
    /// The ingest queue is full.
    QueueFull,
    /// The daemon is shutting down.
    Draining,
    /// The store refused the write.
    StoreError,
    /// A reference larger than `ingest.max_reference_records`.
    TooLarge,
}

impl RejectReason {
    /// Every reason, for pre-initialising the series.
    pub const ALL: [RejectReason; 9] = [
        RejectReason::InvalidName,
        RejectReason::EmptyBatch,
        RejectReason::UnequalLengths,
        RejectReason::KindMismatch,
        RejectReason::DuplicateColumn,
        RejectReason::QueueFull,
        RejectReason::Draining,
        RejectReason::StoreError,
        RejectReason::TooLarge,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidName => "invalid_name",
            RejectReason::EmptyBatch => "empty_batch",
            RejectReason::UnequalLengths => "unequal_lengths",
            RejectReason::KindMismatch => "kind_mismatch",
            RejectReason::DuplicateColumn => "duplicate_column",
            RejectReason::QueueFull => "queue_full",
            RejectReason::Draining => "draining",
            RejectReason::StoreError => "store_error",
            RejectReason::TooLarge => "too_large",
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
    /// All attempts failed; the event was given up.
    GaveUp,
}

impl WebhookOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookOutcome::Delivered => "delivered",
            WebhookOutcome::Failed => "failed",
            WebhookOutcome::GaveUp => "gave_up",
        }
    }
}

/// Handles on every driftd metric. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
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
    /// `driftd_webhook_deliveries_total`.
    pub webhook_deliveries: IntCounterVec,
    /// `driftd_store_flush_duration_seconds`.
    pub store_flush_duration: Histogram,
    /// `driftd_store_errors_total`.
    pub store_errors: IntCounter,
    /// `driftd_store_size_bytes`.
    pub store_size: Gauge,
    /// `driftd_build_info`.
    pub build_info: IntGaugeVec,
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
                "Ingest requests refused, by reason",
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
            store_size: {
                let g = Gauge::new("store_size_bytes", "Size of the store on disk")
                    .expect("valid gauge");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            build_info: int_gauge_vec(
                "build_info",
                "Always 1; labels carry the driftd version",
                &["version"],
            ),
            registry,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for reason in RejectReason::ALL {
            m.ingest_rejected.with_label_values(&[reason.as_str()]);
        }
        for outcome in [
            WebhookOutcome::Delivered,
            WebhookOutcome::Failed,
            WebhookOutcome::GaveUp,
        ] {
            m.webhook_deliveries.with_label_values(&[outcome.as_str()]);
        }
        m
    }

    /// Counts a rejected ingest request.
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
}
