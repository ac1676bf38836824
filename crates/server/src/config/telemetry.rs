//! The `telemetry` section: how log lines are written (the level comes from `RUST_LOG`).

use serde::{Deserialize, Serialize};

use super::flags::{Kind, Setting};

/// How log lines are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Log output settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    /// Log lines also carry the fields of the spans they happen in (the RPC's and the use
    /// case's). Off by default: each event already names its chat, session and container, the
    /// spans go to the trace exporter, and formatting every span's fields for the log costs the
    /// hot path more than the rest of sandboxd's own work (README, "Benchmark").
    pub log_spans: bool,
}

pub(crate) const SETTINGS: &[Setting] = &[
    Setting::new(
        "log_format",
        "FORMAT",
        "text",
        "Log line format; the level comes from RUST_LOG",
    )
    .kind(Kind::Choice(&["text", "json"])),
    Setting::new(
        "log_spans",
        "BOOL",
        "false",
        "Log lines also carry their spans' fields (RPC, use case): more context, more CPU per call",
    )
    .kind(Kind::Boolean),
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_log_format_choice_is_a_log_format() {
        let Kind::Choice(words) = SETTINGS[0].kind else {
            panic!("log_format is a choice");
        };
        for word in words {
            figment::value::Value::from(*word)
                .deserialize::<LogFormat>()
                .unwrap();
        }
    }
}
