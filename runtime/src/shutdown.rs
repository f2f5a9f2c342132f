use std::future::Future;

/// Resolves on the first SIGTERM or SIGINT. The handlers are installed when this is called, not
/// when the future is first polled: call it before announcing readiness, so a signal sent right
/// after the announcement cannot meet the default action and kill the process uncleanly.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Installing a handler only fails when the runtime has no signal driver, a programming error
    // we surface by falling back to whichever handler could be installed.
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
                    _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
                }
            }
            (Ok(mut term), Err(error)) => {
                tracing::warn!(%error, "cannot watch SIGINT; only SIGTERM stops this process");
                term.recv().await;
            }
            (Err(error), Ok(mut int)) => {
                tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT stops this process");
                int.recv().await;
            }
            (Err(error), Err(_)) => {
                tracing::warn!(%error, "cannot watch SIGTERM or SIGINT");
                std::future::pending::<()>().await;
            }
        }
    }
}
