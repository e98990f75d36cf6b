//! driftd's integration tests: one binary, modules by concern. Every test
//! runs the real daemon (in process through `app::run`, or the built binary)
//! on 127.0.0.1 with ephemeral ports, a temporary data directory and bounded
//! waits.

mod support;

/// Each malformed request and its status and message.
mod bad_input;
/// The binary: configuration errors, check-config, SIGTERM.
mod binary;
/// Ingest over gRPC end to end: PSI on /metrics, webhooks, restart.
mod end_to_end;
