//! driftd's integration tests: one binary, modules by concern. Every test
//! runs the real daemon (in process through `app::run`, or the built binary)
//! on 127.0.0.1 with ephemeral ports, a temporary data directory and bounded
//! waits.

mod support;

/// Bearer tokens on gRPC and HTTP: refusals, rotation, open endpoints.
mod auth;
/// Each malformed request and its status and message.
mod bad_input;
/// The binary: configuration errors, check-config, SIGTERM.
mod binary;
/// `driftd compare` on CSV files: SciPy golden report, exit codes, table.
mod compare;
/// SIGKILL at random moments: acknowledged records counted exactly once.
mod crash;
/// Deployment files: YAML parses, the ConfigMap's driftd.toml is valid,
/// the dashboard is a dashboard model.
mod deploy;
/// Ingest over gRPC end to end: PSI on /metrics, webhooks, restart.
mod end_to_end;
/// Health, reflection, SetReference and group commit over gRPC.
mod grpc_api;
/// KServe logger CloudEvents and Open Inference Protocol mirrors.
mod kserve;
/// A real Prometheus and promtool: lint of a scrape, alert and recording
/// rules, fleet-wide PSI from three daemons, dashboard and manifest queries.
mod prometheus_e2e;
/// Unreadable stores: refused or quarantined.
mod store;
/// TLS and mutual TLS on both listeners, and certificate reload.
mod tls;
/// Durable webhook outbox against real receivers; Argo and Flagger gates.
mod webhook;
/// Time and count windows, retention, reference files, import, live
/// references.
mod windows;
