//! Turns SIGTERM and ctrl-c (SIGINT) into the one cancellation token that stops the server.

use tokio_util::sync::CancellationToken;

use crate::names;

/// Cancels `token` on the first SIGTERM or SIGINT.
pub(crate) fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let signal = wait_for_signal().await;
        tracing::info!(name: names::SHUTDOWN_SIGNAL, message = names::SHUTDOWN_SIGNAL, signal);
        token.cancel();
    });
}

async fn wait_for_signal() -> &'static str {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(
                name: names::CTRL_C_HANDLER_FAILED,
                message = names::CTRL_C_HANDLER_FAILED,
                error = %error,
            );
            std::future::pending::<()>().await;
        }
    };
    // `ctrl_c` is SIGINT only; `kill` and orchestrators send SIGTERM.
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(
                    name: names::SIGTERM_HANDLER_FAILED,
                    message = names::SIGTERM_HANDLER_FAILED,
                    error = %error,
                );
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => "SIGINT",
        () = terminate => "SIGTERM",
    }
}
