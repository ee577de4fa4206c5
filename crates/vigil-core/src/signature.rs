//! The `Vigil-Signature` scheme, shared by the scoring API (which verifies
//! what clients send) and the review server (which signs the webhooks it
//! sends): `client=ID,t=UNIX_MILLISECONDS,v1=HEX`, where `HEX` is the
//! HMAC-SHA256, under a shared secret, of `"{t}.{METHOD}.{path}.{body}"`
//! (the path with its query, the body as sent).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header that carries the signature.
pub const HEADER: &str = "vigil-signature";

/// The MAC being computed.
pub type HmacSha256 = Hmac<Sha256>;

/// The HMAC of one request under `secret`; `verify_slice` it against a
/// received `v1`, or `finalize` it.
pub fn mac(secret: &[u8], t_ms: i64, method: &str, path: &str, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    let mut m = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts any key length"),
    };
    m.update(t_ms.to_string().as_bytes());
    m.update(b".");
    m.update(method.as_bytes());
    m.update(b".");
    m.update(path.as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The header value for a request: what `vigil sign` prints, what clients
/// compute in their own language, and what each webhook carries.
pub fn sign(client: &str, secret: &[u8], t_ms: i64, method: &str, path: &str, body: &[u8]) -> String {
    let v1 = hex::encode(mac(secret, t_ms, method, path, body).finalize().into_bytes());
    format!("client={client},t={t_ms},v1={v1}")
}

/// Checks a header value against `secret` for this request: the client it
/// names when the MAC matches (compared in constant time); the caller
/// judges the timestamp's age.
pub fn verify(header: &str, secret: &[u8], method: &str, path: &str, body: &[u8]) -> Option<(String, i64)> {
    let (mut client, mut t, mut v1) = (None, None, None);
    for part in header.split(',') {
        match part.trim().split_once('=')? {
            ("client", c) => client = Some(c.to_owned()),
            ("t", v) => t = v.parse::<i64>().ok(),
            ("v1", v) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (client, t, v1) = (client?, t?, v1?);
    mac(secret, t, method, path, body).verify_slice(&v1).ok()?;
    Some((client, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_under_its_secret_only() {
        let h = sign("vigil", b"s3cret", 1_700_000_000_123, "POST", "/hook?x=1", b"{}");
        assert!(h.starts_with("client=vigil,t=1700000000123,v1="));
        assert_eq!(verify(&h, b"s3cret", "POST", "/hook?x=1", b"{}"), Some(("vigil".into(), 1_700_000_000_123)));
        assert_eq!(verify(&h, b"other", "POST", "/hook?x=1", b"{}"), None);
        assert_eq!(verify(&h, b"s3cret", "POST", "/hook", b"{}"), None);
        assert_eq!(verify(&h, b"s3cret", "POST", "/hook?x=1", b"{ }"), None);
        assert_eq!(verify("client=vigil,t=1", b"s3cret", "POST", "/", b""), None);
    }
}
