//! The agent's log (its stderr, which the runtime points at the sandbox's `agent.log`).
//!
//! Without `PRISM_AGENT_LOG` the agent only ever writes warnings and errors, and it starts once
//! per sandbox: a full `tracing_subscriber` (env filter, span registry with its sharded slab)
//! costs page faults and CPU on every start for lines that are never written. So the default is
//! [`WarnLog`], a subscriber without spans that formats warnings and errors like `fmt` does;
//! with `PRISM_AGENT_LOG` set (a filter such as `debug` or `prism_agent=trace`) the full one is
//! installed.

use std::fmt::{self, Write as _};
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

/// The environment variable holding a full log filter.
pub const ENV: &str = "PRISM_AGENT_LOG";

/// Installs the log: the full subscriber when `PRISM_AGENT_LOG` is set, [`WarnLog`] otherwise.
pub fn init() {
    match std::env::var_os(ENV) {
        Some(_) => {
            let filter = tracing_subscriber::EnvFilter::try_from_env(ENV)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
        }
        None => {
            let _ = tracing::subscriber::set_global_default(WarnLog);
        }
    }
}

/// Writes `WARN` and `ERROR` events to stderr, one line each; no spans.
pub struct WarnLog;

impl WarnLog {
    fn wanted(meta: &Metadata<'_>) -> bool {
        meta.is_event() && *meta.level() <= Level::WARN
    }
}

impl Subscriber for WarnLog {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if Self::wanted(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        Self::wanted(meta)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::WARN)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Never called for an enabled span (no span is enabled); ids must be non-zero.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let line = format_line(event, |w| SystemTime.format_time(w));
        // A log line that cannot be written is dropped: there is nowhere else to report it.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// `<time> <LEVEL> <target>: <message> key=value…\n`, as `tracing_subscriber::fmt` prints it.
fn format_line(event: &Event<'_>, time: impl FnOnce(&mut Writer<'_>) -> fmt::Result) -> String {
    let meta = event.metadata();
    let mut fields = Fields::default();
    event.record(&mut fields);
    let mut line = String::with_capacity(64 + fields.message.len() + fields.rest.len());
    let _ = time(&mut Writer::new(&mut line));
    let _ = write!(line, " {:>5} {}:", meta.level(), meta.target());
    if !fields.message.is_empty() {
        line.push(' ');
        line.push_str(&fields.message);
    }
    line.push_str(&fields.rest);
    line.push('\n');
    line
}

/// An event's message and its other fields (` key=value` each).
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Formats events with a fixed time, as `WarnLog` filters them.
    struct Capture(Arc<Mutex<Vec<String>>>);

    impl Subscriber for Capture {
        fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
            WarnLog.register_callsite(meta)
        }
        fn enabled(&self, meta: &Metadata<'_>) -> bool {
            WarnLog.enabled(meta)
        }
        fn new_span(&self, a: &Attributes<'_>) -> Id {
            WarnLog.new_span(a)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let line = format_line(event, |w| w.write_str("T"));
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn warnings_and_errors_only_with_their_fields() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        tracing::subscriber::with_default(Capture(lines.clone()), || {
            let error = std::io::Error::other("boom");
            tracing::warn!(message = "cannot do it", %error, pid = 7);
            tracing::error!("plain {}", 1);
            tracing::info!("not written");
            tracing::debug!(x = 1, "not written");
            let span = tracing::warn_span!("ignored");
            let _guard = span.enter();
            tracing::warn!(name = "q", "inside a span");
        });
        let lines = lines.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(
            lines,
            vec![
                "T  WARN prism_agent::log::tests: cannot do it error=boom pid=7\n".to_string(),
                "T ERROR prism_agent::log::tests: plain 1\n".to_string(),
                "T  WARN prism_agent::log::tests: inside a span name=\"q\"\n".to_string(),
            ]
        );
    }
}
