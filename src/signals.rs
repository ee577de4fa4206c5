//! The process's signals: shutdown for the servers, SIGPIPE for the rest.
//! Libraries take shutdown as an argument (a future); only the binary listens.

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Restores the default action of SIGPIPE, which Rust's runtime ignores (so
/// that a closed pipe would otherwise end in an error or a panic at the next
/// print). Only for commands without sockets: a server must not die because
/// a peer closed its connection.
pub fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to the default at start-up, before
    // any thread that could be writing exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
