//! What a delivery looks like on the wire: the body, and the headers that
//! authenticate it in each format.
//!
//! HS256 JWTs and Standard Webhooks signatures are both one HMAC-SHA256 over a few
//! base64 strings, computed with `ring` (already in the tree for rustls). A JWT crate
//! would add RSA, ECDSA and EdDSA stacks (or aws-lc, by default) for the one
//! algorithm glustereventsd uses, so the three-part token is assembled here.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Serialize;

use super::state::{Auth, Format, WebhookConfig};

/// How long a gluster-format JWT is valid (glustereventsd: 60 s).
const JWT_LIFETIME_S: u64 = 60;
/// The prefix of Standard Webhooks secrets.
pub const STANDARD_SECRET_PREFIX: &str = "whsec_";

/// One event as delivered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Payload {
    /// The node that recorded the event (glustereventsd's `nodeid`).
    pub nodeid: String,
    /// Event time, Unix seconds.
    pub ts: u64,
    /// Event type (`GEOREP_START`, ...).
    pub event: String,
    /// Event keys.
    pub message: BTreeMap<String, String>,
    /// Stable delivery id `<stream>:<seq>`, the same on every retry and from every node.
    pub id: String,
}

/// A request ready to send: headers and body.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The stable id.
    pub id: String,
    /// Headers besides `Content-Type` and `Host`.
    pub headers: Vec<(String, String)>,
    /// JSON body.
    pub body: Vec<u8>,
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&key, data).as_ref().to_vec()
}

/// An HS256 JWT as glustereventsd signs it: `iss` gluster, `sub` the event type,
/// `iat` the event time, `exp` `now_s` + 60.
pub fn jwt(secret: &str, event: &str, event_ts: u64, now_s: u64) -> String {
    #[derive(Serialize)]
    struct Claims<'a> {
        iss: &'a str,
        sub: &'a str,
        iat: u64,
        exp: u64,
    }
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = Claims {
        iss: "gluster",
        sub: event,
        iat: event_ts,
        exp: now_s + JWT_LIFETIME_S,
    };
    // Serialising four plain fields cannot fail.
    let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
    let signing_input = format!("{header}.{claims}");
    let signature =
        URL_SAFE_NO_PAD.encode(hmac_sha256(secret.as_bytes(), signing_input.as_bytes()));
    format!("{signing_input}.{signature}")
}

/// Decodes a `whsec_<base64>` secret into its key bytes; `None` if it is not one.
pub fn standard_key(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.strip_prefix(STANDARD_SECRET_PREFIX)?;
    STANDARD.decode(encoded).ok().filter(|k| !k.is_empty())
}

/// The Standard Webhooks `webhook-signature` value: `v1,<base64 HMAC-SHA256 of
/// id.timestamp.body>`.
pub fn standard_signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    format!("v1,{}", STANDARD.encode(hmac_sha256(key, &signed)))
}

/// Checks that `config` can sign: a standard-format secret must be `whsec_<base64>`.
pub fn check(config: &WebhookConfig) -> Result<(), String> {
    if let (Format::Standard, Auth::Secret(secret)) = (config.format, &config.auth)
        && standard_key(secret).is_none()
    {
        return Err(format!(
            "a standard-format secret is `{STANDARD_SECRET_PREFIX}` followed by base64 (as Standard Webhooks libraries generate it)"
        ));
    }
    Ok(())
}

/// The request delivering `payload` under `config`, sent at `now_s`.
pub fn delivery(config: &WebhookConfig, payload: &Payload, now_s: u64) -> Delivery {
    let body = serde_json::to_vec(payload).unwrap_or_default();
    let mut headers = vec![("webhook-id".to_string(), payload.id.clone())];
    match (&config.auth, config.format) {
        (Auth::None, _) => {}
        (Auth::Token(token), _) => {
            headers.push(("authorization".into(), format!("Bearer {token}")));
        }
        (Auth::Secret(secret), Format::Gluster) => {
            let token = jwt(secret, &payload.event, payload.ts, now_s);
            headers.push(("authorization".into(), format!("Bearer {token}")));
        }
        (Auth::Secret(secret), Format::Standard) => {
            if let Some(key) = standard_key(secret) {
                headers.push((
                    "webhook-signature".into(),
                    standard_signature(&key, &payload.id, now_s, &body),
                ));
            }
        }
    }
    if config.format == Format::Standard {
        headers.push(("webhook-timestamp".into(), now_s.to_string()));
    }
    Delivery {
        id: payload.id.clone(),
        headers,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_example_signature_is_reproduced() {
        // The example in the Standard Webhooks specification (symmetric signature).
        let key = standard_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            standard_signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn jwts_are_three_base64url_parts_with_the_gluster_claims() {
        let token = jwt("s3cret", "GEOREP_START", 1_700_000_000, 1_700_000_010);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "gluster");
        assert_eq!(claims["sub"], "GEOREP_START");
        assert_eq!(claims["iat"], 1_700_000_000u64);
        assert_eq!(claims["exp"], 1_700_000_070u64);
        let expected = URL_SAFE_NO_PAD.encode(hmac_sha256(
            b"s3cret",
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
        ));
        assert_eq!(parts[2], expected);
    }

    #[test]
    fn standard_secrets_must_be_whsec_base64() {
        let config = |secret: &str| WebhookConfig {
            format: Format::Standard,
            auth: Auth::Secret(secret.into()),
            ca_pem: None,
        };
        assert!(check(&config("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).is_ok());
        assert!(check(&config("plain")).is_err());
        assert!(check(&config("whsec_!!")).is_err());
    }
}
