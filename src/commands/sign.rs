//! `vigil sign`: a `Vigil-Signature` header for a request body.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The client id, as in `[[api.clients]]`.
    #[arg(long)]
    client: String,
    /// Environment variable holding the client's secret.
    #[arg(long)]
    secret_env: String,
    #[arg(long, default_value = "POST")]
    method: String,
    #[arg(long, default_value = "/v1/decisions")]
    path: String,
    /// The body file, or `-` for stdin; sign exactly the bytes you send.
    body: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let Ok(secret) = std::env::var(&a.secret_env) else {
        anyhow::bail!("--secret-env {0}: ${0} is not set; export the client's secret in it", a.secret_env);
    };
    let bytes = super::read_input(&a.body)?;
    if bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        eprintln!(
            "warning: {} ends in a newline, which the signature covers: send the body byte for byte \
             (curl --data-binary @FILE); curl -d @FILE strips newlines and the request would get 401",
            a.body.display()
        );
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    println!("{}", vigil_api::auth::sign(&a.client, secret.as_bytes(), now, &a.method, &a.path, &bytes));
    Ok(())
}
