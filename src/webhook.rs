//! Rollback webhooks: one JSON POST per configured URL when a rule fires and
//! one when it resolves. Each delivery runs in its own task with a bounded
//! retry (exponential backoff with full jitter, a per-attempt timeout), so a
//! slow receiver never delays evaluation or another receiver.
//!
//! Deliveries are not yet durable: an event whose retries are still running
//! at shutdown is lost. Receivers must be idempotent on `id`, because a
//! delivery whose response was lost is sent again.

use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use tokio_util::task::TaskTracker;

use crate::{
    config::WebhookConfig,
    metrics::{Metrics, WebhookOutcome},
};

/// What happened to the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The rule started firing.
    Firing,
    /// A firing rule stopped holding.
    Resolved,
}

/// The statistics of one feature at the evaluation that produced the event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureStats {
    /// Feature name.
    pub feature: String,
    /// PSI of window against reference.
    pub psi: Option<f64>,
    /// KS statistic D.
    pub ks_statistic: Option<f64>,
    /// KS p-value.
    pub ks_pvalue: Option<f64>,
    /// Non-missing values in the window.
    pub window_samples: u64,
}

/// The JSON body of a webhook (README: "Webhook payload").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Stable id of this event; the same on every retry.
    pub id: String,
    /// `firing` or `resolved`.
    pub event: EventKind,
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Rule name.
    pub rule: String,
    /// One line for chat notifications.
    pub summary: String,
    /// The rule's PSI threshold.
    pub threshold: f64,
    /// Consecutive evaluations required to fire.
    pub for_evaluations: u32,
    /// Window label.
    pub window: String,
    /// On firing: the features above the threshold. On resolved: every
    /// evaluated feature.
    pub features: Vec<FeatureStats>,
    /// When the rule started firing (RFC 3339).
    pub started_at: String,
    /// When it resolved (RFC 3339), on resolved events.
    pub resolved_at: Option<String>,
    /// When the event was created (RFC 3339).
    pub timestamp: String,
}

/// Sends events to every configured URL in the background.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    cfg: WebhookConfig,
    metrics: Metrics,
    tracker: TaskTracker,
}

impl Sender {
    /// A sender for `cfg.urls`; deliveries run on `tracker` so shutdown can
    /// wait for them.
    ///
    /// # Errors
    /// Fails only if the TLS backend cannot be initialised.
    pub fn new(
        cfg: WebhookConfig,
        metrics: Metrics,
        tracker: TaskTracker,
    ) -> reqwest::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .user_agent(concat!("driftd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            cfg,
            metrics,
            tracker,
        })
    }

    /// Starts delivering `event` to every URL; returns at once.
    pub fn send(&self, event: Event) {
        for url in &self.cfg.urls {
            let this = self.clone();
            let url = url.clone();
            let event = event.clone();
            self.tracker
                .spawn(async move { this.deliver(&url, &event).await });
        }
    }

    async fn deliver(&self, url: &str, event: &Event) {
        let max = self.cfg.max_attempts;
        for attempt in 1..=max {
            let res = self
                .client
                .post(url)
                .header("webhook-id", &event.id)
                .json(event)
                .send()
                .await;
            match res {
                Ok(resp) if resp.status().is_success() => {
                    self.count(WebhookOutcome::Delivered);
                    tracing::info!(model = %event.model, url, attempt, "Webhook delivered");
                    return;
                }
                Ok(resp) => {
                    self.count(WebhookOutcome::Failed);
                    tracing::warn!(model = %event.model, url, attempt, status = resp.status().as_u16(), "Webhook rejected, retrying");
                }
                Err(error) => {
                    self.count(WebhookOutcome::Failed);
                    tracing::warn!(model = %event.model, url, attempt, error = %error, "Webhook failed, retrying");
                }
            }
            if attempt < max {
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
        self.count(WebhookOutcome::GaveUp);
        tracing::error!(model = %event.model, url, attempts = max, "Webhook given up after all attempts");
    }

    fn count(&self, outcome: WebhookOutcome) {
        self.metrics
            .webhook_deliveries
            .with_label_values(&[outcome.as_str()])
            .inc();
    }
}

/// Full-jitter exponential backoff: uniform in [0, min(cap, base * 2^n)).
/// Jitter spreads retries of many sidecars that failed at the same moment.
fn backoff(attempt: u32) -> Duration {
    const BASE_MS: u64 = 250;
    const CAP_MS: u64 = 10_000;
    let ceiling = BASE_MS.saturating_mul(1u64 << attempt.min(16)).min(CAP_MS);
    Duration::from_millis(rand::rng().random_range(0..ceiling.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_by_the_exponential_ceiling_and_cap() {
        for attempt in 1..30 {
            let ceiling = (250u64 << attempt.min(16)).min(10_000);
            for _ in 0..50 {
                assert!(backoff(attempt) < Duration::from_millis(ceiling));
            }
        }
    }
}
