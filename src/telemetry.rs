//! Logging setup: one `init` for the whole process.

use tracing_subscriber::EnvFilter;

use crate::config::{LogArgs, LogFormat};

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        /// The filter given.
        filter: String,
        /// Why it is invalid.
        source: tracing_subscriber::filter::ParseError,
    },
}

/// Installs the global subscriber: `RUST_LOG` if set, else `--log-level`;
/// text or JSON lines on standard error.
pub fn init(args: &LogArgs) -> Result<(), TelemetryError> {
    let LogArgs {
        log_format,
        log_level,
    } = args;
    let filter = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.is_empty() => filter,
        _ => log_level.clone(),
    };
    let env_filter =
        EnvFilter::try_new(&filter).map_err(|source| TelemetryError::Filter { filter, source })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    match log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
    Ok(())
}
