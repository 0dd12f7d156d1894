//! What every binary does the same way to be observed: its log output
//! (`--log-format text|json` with `RUST_LOG` filtering) and the
//! `switchboard_build_info` metric on its `/metrics`. The gateway, the worker,
//! the operator and `switchboard` flatten [`LogArgs`] into their command
//! lines and call [`LogArgs::init`] first; their metrics modules render
//! through [`render_metrics`].

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::env;

/// How log lines are written (to stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (tracing-subscriber's default format).
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`,
    /// `span`, `spans`): for log collectors.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `--log-format` value that is neither `text` nor `json`.
#[derive(Debug, thiserror::Error)]
#[error("unknown log format {0:?} (expected `text` or `json`)")]
pub struct UnknownLogFormat(String);

impl FromStr for LogFormat {
    type Err = UnknownLogFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(UnknownLogFormat(other.chars().take(32).collect())),
        }
    }
}

/// The logging flags every binary takes (`#[command(flatten)]`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct LogArgs {
    /// Log line format: `text` or `json` (one object per line). The filter
    /// is `RUST_LOG` (e.g. `info,switchboard_gateway=debug`)
    #[arg(long, env = env::LOG_FORMAT, default_value = "text", global = true)]
    pub log_format: LogFormat,
}

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogInitError {
    #[error("{var} is not a valid log filter: {source}")]
    Filter {
        var: &'static str,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("a global logger is already installed: {0}")]
    Installed(#[from] tracing_subscriber::util::TryInitError),
}

impl LogArgs {
    /// Installs the global logger: `RUST_LOG` filters (`default_filter` when
    /// unset), lines go to stderr in the chosen format. An invalid
    /// `RUST_LOG` is an error rather than silently logging everything or
    /// nothing.
    pub fn init(&self, default_filter: &str) -> Result<(), LogInitError> {
        use tracing_subscriber::util::SubscriberInitExt as _;
        let filter = match std::env::var(env::LOG) {
            Ok(spec) if !spec.trim().is_empty() => {
                EnvFilter::try_new(&spec).map_err(|source| LogInitError::Filter {
                    var: env::LOG,
                    source,
                })?
            }
            _ => EnvFilter::new(default_filter),
        };
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.finish().try_init()?,
            LogFormat::Json => builder
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .finish()
                .try_init()?,
        }
        Ok(())
    }
}

/// The workspace version every binary is built at.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit the binary was built from: `SWITCHBOARD_GIT_SHA` in the
/// build's environment (the Dockerfile passes its build argument through),
/// else `unknown`. No build script: a clean build needs no git.
pub fn git_sha() -> &'static str {
    match option_env!("SWITCHBOARD_GIT_SHA") {
        Some(sha) if !sha.is_empty() => sha,
        _ => "unknown",
    }
}

/// `switchboard_build_info{version, git_sha} 1`: which build answers, on
/// every binary's `/metrics` (an OpenMetrics info metric: a gauge of 1).
fn build_info() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut registry = Registry::with_prefix("switchboard");
        registry.register(
            "build",
            "The version and commit of this binary",
            Info::new(vec![
                ("version".to_string(), VERSION.to_string()),
                ("git_sha".to_string(), git_sha().to_string()),
            ]),
        );
        registry
    })
}

/// The OpenMetrics text of `registry` after `switchboard_build_info`: what
/// every binary's `/metrics` answers.
pub fn render_metrics(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode_registry(&mut out, build_info());
    let _ = encode_registry(&mut out, registry);
    let _ = encode_eof(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn log_format_parses_text_and_json_only() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.log.log_format);
        assert_eq!(parse(&["x"]).ok(), Some(LogFormat::Text));
        assert_eq!(
            parse(&["x", "--log-format", "json"]).ok(),
            Some(LogFormat::Json)
        );
        let err = parse(&["x", "--log-format", "xml"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected `text` or `json`"), "{err}");
    }

    #[test]
    fn build_info_comes_first_and_the_registry_follows() {
        let mut registry = Registry::with_prefix("switchboard_test");
        let gauge = prometheus_client::metrics::gauge::Gauge::<i64>::default();
        gauge.set(3);
        registry.register("things", "Things", gauge);
        let text = render_metrics(&registry);
        let want = format!("switchboard_build_info{{version=\"{VERSION}\",git_sha=\"");
        assert!(text.contains(&want), "{text}");
        assert!(text.contains("# TYPE switchboard_build info"), "{text}");
        assert!(text.contains("switchboard_test_things 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    }
}
