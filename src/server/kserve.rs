//! `POST /v1/cloudevents`: the sink for KServe's InferenceService logger.
//!
//! The logger sends each request and each response as a CloudEvent (binary
//! mode: `ce-*` headers and the raw JSON body; structured mode:
//! `application/cloudevents+json`). A request and its response share a
//! `ce-id`; they are joined here so that features and predictions of the
//! same rows land in one batch. The model is `ce-inferenceservicename`
//! (optionally prefixed with `ce-namespace`), the version `ce-endpoint`
//! (`default` or `canary`) unless configured.
//!
//! The logger treats only 200 as success, never retries, and blocks the
//! model's own requests when its queue fills, so this endpoint answers 200
//! as soon as an event is decoded and queued; ingest happens in the
//! background. Events waiting for their counterpart sit in a bounded join
//! buffer with a TTL; an expired one is ingested alone.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::{
    config::InferenceConfig,
    domain::{self, Batch, ModelKey},
    engine::Handle,
    inference::{self, Decoded, Side},
    metrics::{CloudEventOutcome, Metrics},
};

/// Ingests that may run at once; beyond it the endpoint answers 503 rather
/// than queueing without bound.
const MAX_IN_FLIGHT: usize = 1024;

/// Shared state of the endpoint.
#[derive(Clone)]
pub struct Kserve {
    engine: Handle,
    metrics: Metrics,
    cfg: Arc<InferenceConfig>,
    join: Arc<Mutex<JoinBuffer>>,
    in_flight: Arc<Semaphore>,
}

/// One decoded event waiting for its counterpart.
struct Pending {
    key: ModelKey,
    side: Side,
    decoded: Decoded,
    deadline: Instant,
}

/// Unmatched events by (model, ce-id), with their arrival order for expiry.
#[derive(Default)]
struct JoinBuffer {
    pending: HashMap<(ModelKey, String), Pending>,
    order: VecDeque<(Instant, (ModelKey, String))>,
}

/// What arriving at the join buffer did.
enum Arrival {
    /// Both sides are here: one batch.
    Joined(Pending, Pending),
    /// Held until its counterpart or the TTL.
    Buffered,
    /// The same side with the same id is already held.
    Duplicate,
    /// No room: ingest alone now.
    Full(Pending),
}

impl JoinBuffer {
    fn arrive(&mut self, id: String, p: Pending, capacity: usize) -> Arrival {
        let k = (p.key.clone(), id);
        match self.pending.get(&k) {
            Some(held) if held.side == p.side => return Arrival::Duplicate,
            Some(_) => {
                // Present, checked just above.
                let held = self.pending.remove(&k).expect("entry exists");
                return Arrival::Joined(held, p);
            }
            None => {}
        }
        if self.pending.len() >= capacity {
            return Arrival::Full(p);
        }
        self.order.push_back((p.deadline, k.clone()));
        self.pending.insert(k, p);
        Arrival::Buffered
    }

    /// Removes and returns events whose deadline has passed.
    fn expire(&mut self, now: Instant) -> Vec<Pending> {
        let mut out = Vec::new();
        while let Some((deadline, _)) = self.order.front() {
            if *deadline > now {
                break;
            }
            if let Some((_, k)) = self.order.pop_front() {
                // Already joined events are gone from `pending`; skip them.
                if let Some(p) = self.pending.remove(&k) {
                    if p.deadline <= now {
                        out.push(p);
                    } else {
                        self.pending.insert(k, p);
                    }
                }
            }
        }
        out
    }
}

impl Kserve {
    /// The endpoint's state; call [`Kserve::spawn_expiry`] once.
    pub fn new(engine: Handle, metrics: Metrics, cfg: InferenceConfig) -> Self {
        Self {
            engine,
            metrics,
            cfg: Arc::new(cfg),
            join: Arc::default(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// The route.
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/cloudevents", post(cloudevents))
            .with_state(self)
    }

    /// Ingests expired events alone until `cancel` fires, then ingests
    /// every event still held, so a shutdown loses nothing that was answered
    /// with 200.
    pub async fn run_expiry(self, cancel: CancellationToken) {
        let period =
            (self.cfg.join_ttl / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        loop {
            let stop = tokio::select! {
                _ = cancel.cancelled() => true,
                _ = tick.tick() => false,
            };
            let now = if stop {
                // Far enough in the future to expire everything.
                Instant::now() + self.cfg.join_ttl + Duration::from_secs(3600)
            } else {
                Instant::now()
            };
            let expired = {
                let mut j = self.join.lock().unwrap_or_else(|p| p.into_inner());
                let e = j.expire(now);
                self.metrics.join_pending.set(j.pending.len() as i64);
                e
            };
            for p in expired {
                self.metrics.cloudevent(CloudEventOutcome::Expired);
                let batch = to_batch(p.key, vec![p.decoded]);
                if stop {
                    self.ingest_now(batch).await;
                } else {
                    self.ingest_background(batch);
                }
            }
            if stop {
                return;
            }
        }
    }

    /// Starts ingesting `batch` without waiting; false when too many
    /// ingests are already in flight.
    fn ingest_background(&self, batch: Batch) -> bool {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            self.metrics.cloudevent(CloudEventOutcome::Overloaded);
            tracing::warn!(model = %batch.key.model, "CloudEvent ingest overloaded, event dropped");
            return false;
        };
        let this = self.clone();
        tokio::spawn(async move {
            this.ingest_now(batch).await;
            drop(permit);
        });
        true
    }

    async fn ingest_now(&self, batch: Batch) {
        let model = batch.key.model.clone();
        if let Err(error) = self.engine.ingest_waiting(batch, None).await {
            self.metrics.cloudevent(CloudEventOutcome::IngestFailed);
            // Counted by reason too, as every refused batch is.
            self.metrics.reject(error.reason());
            tracing::warn!(model = %model, error = %error, "CloudEvent batch refused");
        }
    }
}

/// Builds one batch from decoded sides (see [`inference::join_columns`]).
fn to_batch(key: ModelKey, parts: Vec<Decoded>) -> Batch {
    let n_rows = parts.first().map(|d| d.n_rows).unwrap_or(0);
    Batch {
        key,
        columns: inference::join_columns(parts),
        n_rows,
    }
}

fn reply(status: StatusCode, outcome: CloudEventOutcome, msg: impl Into<String>) -> Response {
    let body = if status.is_success() {
        json!({ "outcome": outcome.as_str() })
    } else {
        json!({ "error": msg.into(), "outcome": outcome.as_str() })
    };
    (status, Json(body)).into_response()
}

/// The attributes of a CloudEvent that driftd uses.
struct Envelope {
    id: String,
    side: Side,
    model: String,
    namespace: Option<String>,
    endpoint: Option<String>,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
}

fn side_of(ce_type: &str) -> Option<Side> {
    if ce_type.ends_with(".inference.request") {
        Some(Side::Request)
    } else if ce_type.ends_with(".inference.response") {
        Some(Side::Response)
    } else {
        None
    }
}

/// Parses either mode into the envelope and the JSON payload bytes.
fn parse(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Envelope, Vec<u8>), (StatusCode, CloudEventOutcome, String)> {
    let malformed = |m: String| (StatusCode::BAD_REQUEST, CloudEventOutcome::Malformed, m);
    let content_type = header(headers, "content-type")
        .unwrap_or("application/json")
        .to_ascii_lowercase();
    if content_type.starts_with("application/cloudevents+json") {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| malformed(format!("body: invalid structured CloudEvent JSON ({e})")))?;
        let attr = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let id = attr("id").ok_or_else(|| malformed("id: required attribute".into()))?;
        let ce_type = attr("type").ok_or_else(|| malformed("type: required attribute".into()))?;
        let side = side_of(&ce_type)
            .ok_or_else(|| malformed(format!("type: unsupported event type {ce_type:?}")))?;
        let model = attr("inferenceservicename")
            .ok_or_else(|| malformed("inferenceservicename: required attribute".into()))?;
        let payload = if let Some(data) = v.get("data") {
            match data {
                // Some senders put the JSON document in a string.
                Value::String(s) => s.clone().into_bytes(),
                other => serde_json::to_vec(other).unwrap_or_default(),
            }
        } else if let Some(b64) = attr("data_base64") {
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| malformed("data_base64: invalid base64".into()))?
        } else {
            return Err(malformed("data: required".into()));
        };
        return Ok((
            Envelope {
                id,
                side,
                model,
                namespace: attr("namespace"),
                endpoint: attr("endpoint"),
            },
            payload,
        ));
    }
    if !content_type.contains("json") {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            CloudEventOutcome::UnsupportedMediaType,
            format!("content-type: {content_type:?} is not supported; send JSON (KServe v1 or v2) or application/cloudevents+json"),
        ));
    }
    let id = header(headers, "ce-id").ok_or_else(|| malformed("ce-id: required header".into()))?;
    let ce_type =
        header(headers, "ce-type").ok_or_else(|| malformed("ce-type: required header".into()))?;
    let side = side_of(ce_type)
        .ok_or_else(|| malformed(format!("ce-type: unsupported event type {ce_type:?}")))?;
    let model = header(headers, "ce-inferenceservicename")
        .ok_or_else(|| malformed("ce-inferenceservicename: required header".into()))?;
    Ok((
        Envelope {
            id: id.to_string(),
            side,
            model: model.to_string(),
            namespace: header(headers, "ce-namespace").map(str::to_string),
            endpoint: header(headers, "ce-endpoint").map(str::to_string),
        },
        body.to_vec(),
    ))
}

async fn cloudevents(State(st): State<Kserve>, headers: HeaderMap, body: Body) -> Response {
    let limit = st.cfg.max_body_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            st.metrics.cloudevent(CloudEventOutcome::TooLarge);
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                CloudEventOutcome::TooLarge,
                format!("body: larger than inference.max_body_bytes = {limit}"),
            );
        }
    };
    let (env, payload) = match parse(&headers, &bytes) {
        Ok(x) => x,
        Err((status, outcome, msg)) => {
            st.metrics.cloudevent(outcome);
            return reply(status, outcome, msg);
        }
    };
    let model = match (&env.namespace, st.cfg.include_namespace) {
        (Some(ns), true) => format!("{ns}.{}", env.model),
        _ => env.model.clone(),
    };
    let version = st
        .cfg
        .version
        .clone()
        .or(env.endpoint.clone())
        .unwrap_or_else(|| domain::DEFAULT_VERSION.to_string());
    for (field, v) in [
        ("ce-inferenceservicename", &model),
        ("ce-endpoint", &version),
    ] {
        if let Err(e) = st.engine.reader().names().check(v) {
            st.metrics.cloudevent(CloudEventOutcome::Malformed);
            return reply(
                StatusCode::BAD_REQUEST,
                CloudEventOutcome::Malformed,
                format!("{field}: {e}"),
            );
        }
    }
    let names = st.cfg.names.get(&model).map(|(i, o)| match env.side {
        Side::Request => i.as_slice(),
        Side::Response => o.as_slice(),
    });
    let names = names.filter(|n| !n.is_empty());
    let decoded = match inference::decode_json(&payload, env.side, names) {
        Ok(d) => d,
        Err(e) => {
            st.metrics.cloudevent(CloudEventOutcome::Malformed);
            return reply(StatusCode::BAD_REQUEST, CloudEventOutcome::Malformed, e.0);
        }
    };
    let key = ModelKey { model, version };
    let pending = Pending {
        key: key.clone(),
        side: env.side,
        decoded,
        deadline: Instant::now() + st.cfg.join_ttl,
    };
    let arrival = {
        let mut j = st.join.lock().unwrap_or_else(|p| p.into_inner());
        let a = j.arrive(env.id, pending, st.cfg.join_capacity);
        st.metrics.join_pending.set(j.pending.len() as i64);
        a
    };
    let (outcome, batches) = match arrival {
        Arrival::Buffered => (CloudEventOutcome::Buffered, vec![]),
        Arrival::Duplicate => (CloudEventOutcome::Duplicate, vec![]),
        Arrival::Full(p) => (
            CloudEventOutcome::BufferFull,
            vec![to_batch(p.key, vec![p.decoded])],
        ),
        Arrival::Joined(a, b) => {
            let (req, resp) = if a.side == Side::Request {
                (a, b)
            } else {
                (b, a)
            };
            if req.decoded.n_rows == resp.decoded.n_rows {
                (
                    CloudEventOutcome::Joined,
                    vec![to_batch(key, vec![req.decoded, resp.decoded])],
                )
            } else {
                (
                    CloudEventOutcome::RowMismatch,
                    vec![
                        to_batch(key.clone(), vec![req.decoded]),
                        to_batch(key, vec![resp.decoded]),
                    ],
                )
            }
        }
    };
    for b in batches {
        if !st.ingest_background(b) {
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                CloudEventOutcome::Overloaded,
                "too many events in flight; event dropped",
            );
        }
    }
    st.metrics.cloudevent(outcome);
    reply(StatusCode::OK, outcome, "")
}
