//! The HTTP admin server (axum): `/metrics` in the Prometheus text format,
//! `/healthz` (alive), `/readyz` (ready to take traffic, false while
//! starting and draining) and the JSON API under `/api/v1`. Errors are JSON
//! bodies `{"error": "..."}` with a 4xx status.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use axum::{
    extract::{Path, Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Deserialize;
use serde_json::json;

use crate::{domain, engine::Reader, metrics::Metrics};

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
        .fallback(not_found)
        .with_state(AppState {
            metrics,
            reader,
            ready,
        })
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

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
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
    if let Err(e) = domain::validate_name(&model) {
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
