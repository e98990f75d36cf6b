//! driftd watches a machine-learning model in production: it receives the
//! model's inference records over gRPC, keeps sliding windows of what the
//! model sees and predicts, compares them with a reference distribution,
//! exports the statistics as Prometheus metrics and calls webhooks when a
//! drift rule trips.
//!
//! See ARCHITECTURE.md for the code map. Read the pure core first
//! (`domain`, `stats`, `window`, `reference`, `detector`, `rules`,
//! `inference`), then the stateful parts (`store`, `engine`, `webhook`,
//! `metrics`), then the edges (`server`, `auth`, `tls`, `watch`, `config`,
//! `telemetry`, `shutdown`, `app`) and the offline command (`compare`).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod compare;
pub mod detector;
pub mod domain;
pub mod inference;
pub mod refcsv;
pub mod reference;
pub mod rules;
pub mod stats;
pub mod window;

pub mod engine;
pub mod metrics;
pub mod store;
pub mod webhook;

pub mod app;
pub mod auth;
pub mod client;
pub mod config;
pub mod proto;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod watch;
