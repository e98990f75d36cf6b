//! Rollback webhooks from a durable outbox. When a rule fires or resolves,
//! the engine renders one entry per target (driftd's payload or
//! Alertmanager's) and stores it in the store's outbox *before* any attempt;
//! one worker task per target delivers its entries, so a slow or dead
//! receiver never delays another. Delivery is at least once across restarts.
//!
//! Per attempt: Standard Webhooks headers (`webhook-id` = the event id, the
//! same on every attempt; `webhook-timestamp`; `webhook-signature` with one
//! `v1,<base64 HMAC-SHA256>` per configured secret over
//! `"{id}.{timestamp}.{body}"`), a timeout, then: 2xx delivered; 410 disables
//! the target; 429 and 503 honour `Retry-After`; other 4xx give the event
//! up; anything else retries with exponential backoff and full jitter up to
//! a cap. Events older than `webhook.max_age` are dead-lettered.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::Serialize;
use serde_json::json;
use sha2::Sha256;
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::{Target, WebhookConfig, WebhookFormat},
    metrics::{Metrics, WebhookOutcome},
    store::{self, OutboxEntry, Store},
};

/// What happened to the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The rule started firing.
    Firing,
    /// A firing rule resolved.
    Resolved,
}

impl EventKind {
    /// `firing` or `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Firing => "firing",
            EventKind::Resolved => "resolved",
        }
    }
}

/// One feature's value under the rule, at the evaluation of the event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureStats {
    /// Feature name.
    pub feature: String,
    /// The rule's statistic.
    pub value: f64,
    /// The threshold it was compared with (after correction).
    pub threshold: f64,
    /// Non-missing values in the window.
    pub window_samples: u64,
}

/// driftd's webhook payload (README: "Webhook payload").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Stable id of this event; the same on every attempt (`webhook-id`).
    pub id: String,
    /// `firing` or `resolved`.
    pub event: EventKind,
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Rule name.
    pub rule: String,
    /// The rule's statistic.
    pub statistic: String,
    /// Comparison operator.
    pub op: String,
    /// The configured threshold (alpha for p-values).
    pub threshold: f64,
    /// Rule severity.
    pub severity: String,
    /// The verdict of the evaluation that produced the event.
    pub verdict: String,
    /// One line for chat notifications.
    pub summary: String,
    /// Window label.
    pub window: String,
    /// On firing: the features that tripped the rule. On resolved: every
    /// feature the rule evaluated.
    pub features: Vec<FeatureStats>,
    /// When the rule started firing (RFC 3339).
    pub started_at: String,
    /// When it resolved (RFC 3339), on resolved events.
    pub resolved_at: Option<String>,
    /// When the event was created (RFC 3339).
    pub timestamp: String,
    /// Webhook targets of the rule; empty: every target.
    #[serde(skip)]
    pub targets: Vec<String>,
}

/// Renders the Alertmanager webhook payload (version 4) for `event`, so
/// receivers built for Alertmanager work unchanged.
pub fn alertmanager_payload(event: &Event, receiver: &str) -> serde_json::Value {
    let labels = json!({
        "alertname": "DriftdRule",
        "model": event.model,
        "version": event.version,
        "rule": event.rule,
        "severity": event.severity,
    });
    let annotations = json!({
        "summary": event.summary,
        "statistic": event.statistic,
        "threshold": event.threshold.to_string(),
        "features": event.features.iter().map(|f| f.feature.as_str()).collect::<Vec<_>>().join(","),
    });
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{model=\"{}\", rule=\"{}\", version=\"{}\"}}", event.model, event.rule, event.version),
        "truncatedAlerts": 0,
        "status": event.event.as_str(),
        "receiver": receiver,
        "groupLabels": {"model": event.model, "rule": event.rule, "version": event.version},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [{
            "status": event.event.as_str(),
            "labels": labels,
            "annotations": annotations,
            "startsAt": event.started_at,
            "endsAt": event.resolved_at.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".to_string()),
            "generatorURL": "",
            "fingerprint": fingerprint(&event.model, &event.version, &event.rule),
        }],
    })
}

/// A stable 16-hex-digit fingerprint of the alert's identity (FNV-1a).
fn fingerprint(model: &str, version: &str, rule: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in [model, "\0", version, "\0", rule]
        .iter()
        .flat_map(|s| s.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// `v1,<base64>` signatures of `body`, one per secret, space separated.
pub fn sign(secrets: &[Vec<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|key| {
            // HMAC accepts keys of any length.
            let mut mac = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(body);
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The outbox: enqueue events, and the per-target delivery workers.
#[derive(Clone)]
pub struct Outbox {
    store: Store,
    cfg: Arc<WebhookConfig>,
    metrics: Metrics,
    wake: Arc<BTreeMap<String, Arc<Notify>>>,
}

impl Outbox {
    /// Starts one delivery worker per target on `tracker`; they stop when
    /// `cancel` fires (after the attempt in progress).
    ///
    /// # Errors
    /// Fails only if the TLS backend cannot be initialised.
    pub fn start(
        cfg: WebhookConfig,
        store: Store,
        metrics: Metrics,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> reqwest::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .user_agent(concat!("driftd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let wake: BTreeMap<String, Arc<Notify>> = cfg
            .targets
            .iter()
            .map(|t| (t.name.clone(), Arc::new(Notify::new())))
            .collect();
        let this = Self {
            store,
            cfg: Arc::new(cfg),
            metrics,
            wake: Arc::new(wake),
        };
        this.update_gauges();
        for t in this.cfg.targets.clone() {
            let w = Worker {
                outbox: this.clone(),
                client: client.clone(),
                notify: this.wake[&t.name].clone(),
                target: t,
            };
            tracker.spawn(w.run(cancel.clone()));
        }
        Ok(this)
    }

    /// Stores one entry per target of `event`. Not durable until the store
    /// is flushed; call [`Outbox::wake`] after the flush.
    ///
    /// # Errors
    /// The store's error; the event is then not queued.
    pub fn enqueue(&self, event: &Event) -> Result<(), store::Error> {
        let created = now_ms();
        for t in &self.cfg.targets {
            if !event.targets.is_empty() && !event.targets.contains(&t.name) {
                continue;
            }
            let body = match t.format {
                WebhookFormat::Driftd => serde_json::to_vec(event),
                WebhookFormat::Alertmanager => {
                    serde_json::to_vec(&alertmanager_payload(event, &t.name))
                }
            }
            .unwrap_or_default();
            self.store.outbox_put(
                &t.name,
                &OutboxEntry {
                    id: event.id.clone(),
                    created_ms: created,
                    attempts: 0,
                    next_attempt_ms: created,
                    body,
                },
            )?;
        }
        Ok(())
    }

    /// Tells every worker to look at the outbox now.
    pub fn wake(&self) {
        self.update_gauges();
        for n in self.wake.values() {
            n.notify_one();
        }
    }

    fn update_gauges(&self) {
        if let Ok(entries) = self.store.outbox_list(None) {
            self.metrics.outbox_pending.set(entries.len() as i64);
            let oldest = entries.iter().map(|(_, e)| e.created_ms).min();
            self.metrics
                .outbox_oldest_pending
                .set(oldest.map(|ms| ms as f64 / 1000.0).unwrap_or(0.0));
        }
    }
}

struct Worker {
    outbox: Outbox,
    client: reqwest::Client,
    notify: Arc<Notify>,
    target: Target,
}

/// What to do with an entry after an attempt.
enum Next {
    Done(WebhookOutcome),
    Retry(Duration),
    Disable,
}

impl Worker {
    fn disabled_key(&self) -> String {
        format!("webhook_disabled/{}", self.target.name)
    }

    async fn run(self, cancel: CancellationToken) {
        let store = &self.outbox.store;
        if matches!(store.meta_get(&self.disabled_key()), Ok(Some(_))) {
            tracing::error!(target = %self.target.name, "Webhook target disabled earlier by HTTP 410; not delivering");
            return;
        }
        loop {
            let entries = match store.outbox_list(Some(&self.target.name)) {
                Ok(e) => e,
                Err(error) => {
                    tracing::error!(error = %error, "Reading the webhook outbox failed");
                    Vec::new()
                }
            };
            let now = now_ms();
            let mut next_due: Option<i64> = None;
            for (_, e) in entries {
                if cancel.is_cancelled() {
                    return;
                }
                if now.saturating_sub(e.created_ms) > self.outbox.cfg.max_age.as_millis() as i64 {
                    self.finish(&e, WebhookOutcome::DeadLettered);
                    tracing::error!(target = %self.target.name, id = %e.id, "Webhook event dead-lettered: older than webhook.max_age");
                    continue;
                }
                if e.next_attempt_ms > now {
                    next_due =
                        Some(next_due.map_or(e.next_attempt_ms, |n| n.min(e.next_attempt_ms)));
                    continue;
                }
                let outcome = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return,
                    o = self.attempt(&e) => o,
                };
                match outcome {
                    Next::Done(o) => self.finish(&e, o),
                    Next::Retry(after) => {
                        let mut e2 = e.clone();
                        e2.attempts += 1;
                        e2.next_attempt_ms = now_ms() + after.as_millis() as i64;
                        next_due = Some(
                            next_due.map_or(e2.next_attempt_ms, |n| n.min(e2.next_attempt_ms)),
                        );
                        if let Err(error) = store.outbox_put(&self.target.name, &e2) {
                            tracing::error!(error = %error, "Updating the webhook outbox failed");
                        }
                    }
                    Next::Disable => {
                        tracing::error!(target = %self.target.name, url = %self.target.url, "Webhook receiver answered 410 Gone; target disabled");
                        let _ = store.meta_put(&self.disabled_key(), b"410");
                        if let Ok(all) = store.outbox_list(Some(&self.target.name)) {
                            for (_, e) in all {
                                self.finish(&e, WebhookOutcome::Disabled);
                            }
                        }
                        let _ = store.flush().await;
                        self.outbox.update_gauges();
                        return;
                    }
                }
            }
            let _ = store.flush().await;
            self.outbox.update_gauges();
            let sleep = next_due
                .map(|t| Duration::from_millis((t - now_ms()).max(0) as u64))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = self.notify.notified() => {},
                _ = tokio::time::sleep(sleep) => {},
            }
        }
    }

    fn finish(&self, e: &OutboxEntry, outcome: WebhookOutcome) {
        self.outbox.metrics.webhook(outcome);
        if let Err(error) = self.outbox.store.outbox_delete(&self.target.name, &e.id) {
            tracing::error!(error = %error, "Deleting a webhook outbox entry failed");
        }
    }

    async fn attempt(&self, e: &OutboxEntry) -> Next {
        let ts = now_ms() / 1000;
        let mut req = self
            .client
            .post(&self.target.url)
            .header("content-type", "application/json")
            .header("webhook-id", &e.id)
            .header("webhook-timestamp", ts.to_string());
        if !self.target.secrets.is_empty() {
            req = req.header(
                "webhook-signature",
                sign(&self.target.secrets, &e.id, ts, &e.body),
            );
        }
        self.outbox
            .metrics
            .webhook_attempts
            .with_label_values(&[self.target.name.as_str()])
            .inc();
        let backoff = || {
            backoff(
                e.attempts,
                self.outbox.cfg.backoff_base,
                self.outbox.cfg.backoff_cap,
            )
        };
        match req.body(e.body.clone()).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match status {
                    200..=299 => {
                        tracing::info!(target = %self.target.name, id = %e.id, attempt = e.attempts + 1, "Webhook delivered");
                        Next::Done(WebhookOutcome::Delivered)
                    }
                    410 => Next::Disable,
                    429 | 503 => {
                        self.outbox.metrics.webhook(WebhookOutcome::Failed);
                        let after = resp
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(retry_after)
                            .map(|d| d.min(self.outbox.cfg.backoff_cap))
                            .unwrap_or_else(backoff);
                        tracing::warn!(target = %self.target.name, id = %e.id, status, retry_in = ?after, "Webhook receiver busy, retrying");
                        Next::Retry(after)
                    }
                    400..=499 => {
                        tracing::error!(target = %self.target.name, id = %e.id, status, "Webhook rejected by receiver, event given up");
                        Next::Done(WebhookOutcome::GaveUp)
                    }
                    _ => {
                        self.outbox.metrics.webhook(WebhookOutcome::Failed);
                        tracing::warn!(target = %self.target.name, id = %e.id, status, "Webhook failed, retrying");
                        Next::Retry(backoff())
                    }
                }
            }
            Err(error) => {
                self.outbox.metrics.webhook(WebhookOutcome::Failed);
                tracing::warn!(target = %self.target.name, id = %e.id, error = %error, "Webhook failed, retrying");
                Next::Retry(backoff())
            }
        }
    }
}

/// `Retry-After` as delta-seconds or an HTTP date.
fn retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let t = httpdate_parse(v.trim())?;
    Some(
        t.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn httpdate_parse(v: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(v).ok().or_else(|| {
        // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT".
        let parts: Vec<&str> = v.split_whitespace().collect();
        if parts.len() != 6 || parts[5] != "GMT" {
            return None;
        }
        let month = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ]
        .iter()
        .position(|m| *m == parts[2])?
            + 1;
        let s = format!(
            "{}-{:02}-{:02}T{}Z",
            parts[3],
            month,
            parts[1].parse::<u32>().ok()?,
            parts[4]
        );
        humantime::parse_rfc3339(&s).ok()
    })
}

/// Full-jitter exponential backoff: uniform in [0, min(cap, base * 2^n)).
/// Jitter spreads the retries of many sidecars that failed together.
pub fn backoff(attempts: u32, base: Duration, cap: Duration) -> Duration {
    let ceiling = base
        .saturating_mul(1u32 << attempts.min(20))
        .min(cap)
        .as_millis()
        .max(1) as u64;
    Duration::from_millis(rand::rng().random_range(0..ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_by_the_exponential_ceiling_and_cap() {
        let base = Duration::from_millis(250);
        let cap = Duration::from_secs(10);
        for attempt in 0..30 {
            let ceiling = (250u64 << attempt.min(20)).min(10_000);
            for _ in 0..50 {
                assert!(backoff(attempt, base, cap) < Duration::from_millis(ceiling));
            }
        }
    }

    /// The Standard Webhooks reference example: secret
    /// `whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw`, id `msg_p5jXN8AQM9LWM0D4loKWxJek`,
    /// timestamp 1614265330, body `{"test": 2432232314}` signs to
    /// `v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=` (the value given in
    /// the specification's verification example).
    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let sig = sign(
            &[key],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn every_secret_signs_during_rotation() {
        let sig = sign(&[b"old".to_vec(), b"new".to_vec()], "id", 1, b"{}");
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], sign(&[b"old".to_vec()], "id", 1, b"{}"));
        assert_eq!(parts[1], sign(&[b"new".to_vec()], "id", 1, b"{}"));
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }
}
