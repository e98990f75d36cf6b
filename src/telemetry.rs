//! Logging set-up through tracing-subscriber: the filter comes from the
//! configuration's `log` key (env `DRIFTD_LOG`), the format is plain text or
//! one JSON object per line. Logs go to stderr so stdout stays free for
//! command output such as `check-config`.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Installs the global subscriber. Safe to call more than once: later calls
/// (tests that start several daemons) keep the first subscriber.
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("warn,driftd=info"));
    // Colour codes only for a terminal; journald and log collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // Ignoring the error is deliberate: it only says a subscriber is already set.
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
