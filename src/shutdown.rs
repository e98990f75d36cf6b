//! Turns SIGINT and SIGTERM into a graceful drain. The first signal resolves
//! [`signal`]; a second one while draining exits the process at once, so an
//! operator is never stuck behind a slow drain.

use tokio::signal::unix::{signal as unix_signal, SignalKind};

/// Exit status when a second signal aborts the drain (128 + SIGINT).
pub const ABORT_EXIT_CODE: i32 = 130;

/// Resolves on the first SIGINT or SIGTERM, then arms the second-signal
/// abort.
///
/// # Errors
/// Fails only if the signal handlers cannot be installed.
pub async fn signal() -> std::io::Result<()> {
    // SIGTERM: Kubernetes and systemd send it to start a graceful shutdown.
    let mut term = unix_signal(SignalKind::terminate())?;
    // SIGINT: Ctrl-C in a terminal.
    let mut int = unix_signal(SignalKind::interrupt())?;
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = name,
        "Shutdown signal received, draining; send it again to exit at once"
    );
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("Second signal received, exiting without finishing the drain");
        std::process::exit(ABORT_EXIT_CODE);
    });
    Ok(())
}
