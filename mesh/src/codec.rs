//! Encoding of replicated values: a version byte + postcard, base64 inside chitchat strings.
//!
//! Everything decoded here may come from the network, so decoding is fallible and
//! bounded: the base64 text and the binary form are size-checked before any work.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Version byte of the current value encoding.
pub const CODEC_VERSION: u8 = 1;

/// Largest encoded (binary) value we write or accept. Chitchat silently drops a value
/// that does not fit one ~64 KB message, so we stay well below and fail loudly instead.
pub const MAX_VALUE_BYTES: usize = 48 * 1024;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The value is larger than [`MAX_VALUE_BYTES`]; nothing was written.
    #[error("value of {0} bytes exceeds the {MAX_VALUE_BYTES}-byte cap")]
    TooLarge(usize),
    /// The text is not valid base64.
    #[error("value is not base64: {0}")]
    Base64(String),
    /// Empty value.
    #[error("empty value")]
    Empty,
    /// Encoded by an incompatible version.
    #[error("unsupported value encoding version {0}")]
    Version(u8),
    /// postcard could not decode (or encode) the value.
    #[error("undecodable value: {0}")]
    Postcard(String),
}

/// Encodes a value to its binary form: version byte + postcard.
pub fn to_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![CODEC_VERSION];
    let body = postcard::to_stdvec(value).map_err(|e| CodecError::Postcard(e.to_string()))?;
    out.extend_from_slice(&body);
    if out.len() > MAX_VALUE_BYTES {
        return Err(CodecError::TooLarge(out.len()));
    }
    Ok(out)
}

/// Decodes the binary form written by [`to_bytes`].
pub fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != CODEC_VERSION {
        return Err(CodecError::Version(version));
    }
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| CodecError::Postcard(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::Postcard(format!(
            "{} trailing bytes after the value",
            rest.len()
        )));
    }
    Ok(value)
}

/// Encodes a value for a chitchat string value: base64 of [`to_bytes`].
pub fn encode<T: Serialize>(value: &T) -> Result<String, CodecError> {
    Ok(STANDARD_NO_PAD.encode(to_bytes(value)?))
}

/// Decodes a chitchat string value written by [`encode`].
pub fn decode<T: DeserializeOwned>(text: &str) -> Result<T, CodecError> {
    // 4 base64 characters carry 3 bytes: refuse before decoding anything too long.
    if text.len() > MAX_VALUE_BYTES / 3 * 4 + 4 {
        return Err(CodecError::TooLarge(text.len() / 4 * 3));
    }
    let bytes = STANDARD_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|e| CodecError::Base64(e.to_string()))?;
    from_bytes(&bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn roundtrip() {
        let value: BTreeMap<String, u64> = [("a".to_string(), 1), ("b".to_string(), 2)].into();
        let text = encode(&value).unwrap();
        assert_eq!(decode::<BTreeMap<String, u64>>(&text).unwrap(), value);
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        assert!(matches!(decode::<u64>("***"), Err(CodecError::Base64(_))));
        assert_eq!(decode::<u64>(""), Err(CodecError::Empty));
        assert_eq!(
            decode::<u64>(&STANDARD_NO_PAD.encode([9u8, 1])),
            Err(CodecError::Version(9))
        );
        assert!(matches!(
            decode::<String>(&STANDARD_NO_PAD.encode([CODEC_VERSION, 200])),
            Err(CodecError::Postcard(_))
        ));
        let huge = "A".repeat(MAX_VALUE_BYTES * 2);
        assert!(matches!(decode::<u64>(&huge), Err(CodecError::TooLarge(_))));
        let big = vec![0u8; MAX_VALUE_BYTES];
        assert!(matches!(encode(&big), Err(CodecError::TooLarge(_))));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_text_never_panics(text in ".{0,200}") {
            let _ = decode::<BTreeMap<String, Vec<u8>>>(&text);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = from_bytes::<(String, Vec<String>, u64)>(&bytes);
        }
    }
}
