//! The `sandboxd` binary: parse the configuration, install telemetry, run the server.

use std::process::ExitCode;

use sandboxd_server::config::{Cli, Config};
use sandboxd_server::names;

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
    let tracing_guard = match sandboxd_server::telemetry::init_tracing(
        config.telemetry.log_format,
        config.telemetry.log_spans,
    ) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("sandboxd: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let exit = match sandboxd_server::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(
                name: names::SANDBOXD_FAILED,
                message = names::SANDBOXD_FAILED,
                error = format!("{error:#}"),
            );
            ExitCode::FAILURE
        }
    };
    // The last spans (the shutdown's) go out now, bounded: a dead collector cannot hold the exit.
    tracing_guard.shutdown().await;
    exit
}
