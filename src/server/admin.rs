//! The HTTP admin server (axum): `/metrics` in the Prometheus text format,
//! `/healthz` (alive), `/readyz` (ready to take traffic, false while
//! starting and draining) and the JSON API under `/api/v1`. Errors are JSON
//! bodies `{"error": "..."}` with a 4xx status. [`protect`] puts the bearer
//! token check in front of every route, the KServe sink included.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use axum::{
    extract::{Path, Query, Request, State},
    http::{header, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use serde_json::json;

use crate::{
    auth::{self, Denial},
    domain::{self, Verdict},
    engine::{Reader, VersionStatus},
    metrics::Metrics,
    rules,
};

/// Shared readiness flag: set once start-up is complete, cleared when the
/// drain begins.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the process ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Whether the process is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    reader: Reader,
    ready: Readiness,
}

/// The admin router.
pub fn router(metrics: Metrics, reader: Reader, ready: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/models/{model}/status", get(status))
        .route("/api/v1/models/{model}/verdict", get(verdict))
        .route("/api/v1/flagger/gate", post(flagger_gate))
        .route("/api/v1/flagger/rollback", post(flagger_rollback))
        .fallback(not_found)
        .with_state(AppState {
            metrics,
            reader,
            ready,
        })
}

/// Requires a bearer token on every request to `router` when a token is
/// configured, except `/metrics` (unless `auth.protect_metrics`) and
/// `/healthz`, `/readyz` (unless `auth.protect_health`). Anything else,
/// unknown paths and routes added later included, needs a token, so a new
/// endpoint cannot be left open by mistake.
pub fn protect(router: Router, guard: auth::Guard) -> Router {
    if !guard.enabled() {
        return router;
    }
    router.layer(axum::middleware::from_fn_with_state(guard, require_token))
}

async fn require_token(State(guard): State<auth::Guard>, request: Request, next: Next) -> Response {
    let open = match request.uri().path() {
        "/metrics" => !guard.protects_metrics(),
        "/healthz" | "/readyz" => !guard.protects_health(),
        _ => false,
    };
    if open {
        return next.run(request).await;
    }
    let value = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match guard.check(value) {
        Ok(()) => next.run(request).await,
        Err(denial) => {
            // RFC 6750: the challenge names the error only when a token was
            // presented.
            let challenge = match denial {
                Denial::Invalid => r#"Bearer realm="driftd", error="invalid_token""#,
                Denial::Missing | Denial::NotBearer => r#"Bearer realm="driftd""#,
            };
            let mut response = error(StatusCode::UNAUTHORIZED, denial.message());
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
            response
        }
    }
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

async fn metrics_handler(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

/// Alive unless something only a restart fixes has happened (a stuck
/// store): a liveness probe then restarts driftd.
async fn healthz(State(s): State<AppState>) -> Response {
    match s.reader.fatal() {
        None => Json(json!({ "status": "ok" })).into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "failed", "error": why })),
        )
            .into_response(),
    }
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.ready.get() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

#[derive(Deserialize)]
struct StatusQuery {
    version: Option<String>,
}

async fn status(
    State(s): State<AppState>,
    Path(model): Path<String>,
    Query(q): Query<StatusQuery>,
) -> Response {
    if let Err(e) = s.reader.names().check(&model) {
        return error(StatusCode::BAD_REQUEST, format!("model: {e}"));
    }
    match s.reader.status(&model, q.version.as_deref()) {
        Some(versions) => Json(json!({ "model": model, "versions": versions })).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("model {model:?} is unknown")),
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

#[derive(Deserialize)]
struct VerdictQuery {
    version: Option<String>,
    window: Option<String>,
}

/// The gate view of one model version: the last evaluation's verdict, with
/// any firing rule counting as drift.
fn gate_verdict(v: &VersionStatus) -> Verdict {
    let firing = v.rules.iter().any(|r| r.state == rules::State::Firing);
    if firing || v.verdict == Verdict::Drift {
        Verdict::Drift
    } else {
        v.verdict
    }
}

fn verdict_body(model: &str, v: Option<&VersionStatus>, version: &str) -> serde_json::Value {
    let Some(v) = v else {
        return json!({
            "model": model, "version": version, "verdict": Verdict::InsufficientData.as_str(),
            "ok": false, "samples": 0, "max_score": null, "firing": false, "rules": [],
            "reason": "no data for this model version yet",
        });
    };
    let verdict = gate_verdict(v);
    let max_score = v.features.iter().filter_map(|f| f.psi).reduce(f64::max);
    json!({
        "model": model,
        "version": v.version,
        "window": v.window,
        "verdict": verdict.as_str(),
        "ok": verdict == Verdict::Ok,
        "samples": v.window_records,
        "max_score": max_score,
        "firing": v.rules.iter().any(|r| r.state == rules::State::Firing),
        "rules": v.rules,
    })
}

/// Argo Rollouts web metric: always 200 with the verdict in the body, since
/// Argo counts any other status as a measurement error.
async fn verdict(
    State(s): State<AppState>,
    Path(model): Path<String>,
    Query(q): Query<VerdictQuery>,
) -> Response {
    if let Err(e) = s.reader.names().check(&model) {
        return error(StatusCode::BAD_REQUEST, format!("model: {e}"));
    }
    let versions = s.reader.status(&model, None).unwrap_or_default();
    let version = match (&q.version, versions.len()) {
        (Some(v), _) => v.clone(),
        (None, 1) => versions[0].version.clone(),
        (None, _) => domain::DEFAULT_VERSION.to_string(),
    };
    let v = versions.iter().find(|v| v.version == version);
    if let (Some(w), Some(v)) = (&q.window, v) {
        if *w != v.window {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "window: {w:?} is not a window of this model; it has {:?}",
                    v.window
                ),
            );
        }
    }
    Json(verdict_body(&model, v, &version)).into_response()
}

/// Flagger's webhook payload.
#[derive(Deserialize)]
struct FlaggerPayload {
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    metadata: std::collections::HashMap<String, String>,
}

// The error is the ready 400 response; boxing it would only move the
// allocation.
#[allow(clippy::result_large_err)]
/// The model and version a Flagger canary stands for: `metadata.model`
/// (default: the canary's name) and `metadata.version` (default `canary`).
fn flagger_target(
    s: &AppState,
    body: &[u8],
) -> Result<(String, Option<VersionStatus>, String), Response> {
    let p: FlaggerPayload = serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("body: not a Flagger webhook payload ({e})"),
        )
    })?;
    let model = p.metadata.get("model").cloned().unwrap_or(p.name);
    let version = p
        .metadata
        .get("version")
        .cloned()
        .unwrap_or_else(|| "canary".into());
    if let Err(e) = s.reader.names().check(&model) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("metadata.model (or name): {e}"),
        ));
    }
    let _ = p.namespace;
    let v = s
        .reader
        .status(&model, Some(&version))
        .and_then(|mut vs| vs.pop());
    Ok((model, v, version))
}

/// Flagger `rollout` / `confirm-promotion` hook: 200 when the canary is ok,
/// 409 with the reason when it drifts or has too little data.
async fn flagger_gate(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let (model, v, version) = match flagger_target(&s, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let body = verdict_body(&model, v.as_ref(), &version);
    if body["ok"] == true {
        Json(body).into_response()
    } else {
        let mut b = body;
        b["error"] = json!(format!(
            "{model}@{version}: verdict {}",
            b["verdict"].as_str().unwrap_or("")
        ));
        (StatusCode::CONFLICT, Json(b)).into_response()
    }
}

/// Flagger `rollback` hook: any 2xx means "roll back now", so 200 only while
/// a rule fires for the canary, 409 otherwise.
async fn flagger_rollback(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let (model, v, version) = match flagger_target(&s, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let firing: Vec<String> = v
        .iter()
        .flat_map(|v| v.rules.iter())
        .filter(|r| r.state == rules::State::Firing)
        .map(|r| r.name.clone())
        .collect();
    if firing.is_empty() {
        (
            StatusCode::CONFLICT,
            Json(json!({"rollback": false, "model": model, "version": version, "error": "no rule is firing"})),
        )
            .into_response()
    } else {
        Json(json!({"rollback": true, "model": model, "version": version, "firing_rules": firing}))
            .into_response()
    }
}
