//! The `sandboxd` binary: parse the configuration, install telemetry, run the server.

use std::process::ExitCode;

use clap::Parser;
use sandboxd_server::config::{Cli, Config};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sandboxd: {error}");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = sandboxd_server::telemetry::init_tracing(config.log_format) {
        eprintln!("sandboxd: {error:#}");
        return ExitCode::FAILURE;
    }
    match sandboxd_server::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "sandboxd_failed");
            ExitCode::FAILURE
        }
    }
}
