//! HTTPS for the API (`[api.tls]`): rustls with the server's PEM certificate
//! chain and private key. SIGHUP loads the files again, so a renewed
//! certificate takes effect without a restart; files that do not load are
//! refused and logged while the certificate already loaded keeps serving.

use axum_server::tls_rustls::RustlsConfig;
use vigil_core::pipeline::TlsFiles;

use crate::ApiError;

fn refused(files: &TlsFiles, e: std::io::Error) -> ApiError {
    ApiError::Tls(format!("cannot load {} with {}: {e}", files.cert_file.display(), files.key_file.display()))
}

/// Loads the certificate chain and key, naming both files when they do not load.
pub async fn load(files: &TlsFiles) -> Result<RustlsConfig, ApiError> {
    RustlsConfig::from_pem_file(&files.cert_file, &files.key_file).await.map_err(|e| refused(files, e))
}

/// On every SIGHUP, loads the files again into the serving configuration.
pub fn reload_on_hangup(config: RustlsConfig, files: TlsFiles) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else { return };
        while hangup.recv().await.is_some() {
            match config.reload_from_pem_file(&files.cert_file, &files.key_file).await {
                Ok(()) => tracing::info!(cert = %files.cert_file.display(), "TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %refused(&files, e), "TLS certificate refused; the previous one keeps serving")
                }
            }
        }
    });
}
