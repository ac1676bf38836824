//! Observability and access of a real `sandboxd` process: `/metrics` read with a real Prometheus
//! text parser (and `promtool check metrics` when installed), spans received by a real OTLP/gRPC
//! receiver on loopback, JSON log lines, and bearer-token authentication of all seven RPCs.
//!
//! One submodule per signal: metrics, traces, logs, and authentication.

mod auth;
mod logs;
mod metrics;
mod traces;
