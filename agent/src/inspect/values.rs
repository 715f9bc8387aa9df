//! Raw chitchat keys and values made readable: the kind of a key, its value decoded
//! to JSON, stamps as text. Pure functions.

use super::*;

/// What kind of value a key holds, by its name.
pub fn key_kind(key: &str) -> &'static str {
    if key.starts_with(SESSION_PREFIX) {
        "session"
    } else if key.starts_with(MONITOR_PREFIX) {
        "monitor"
    } else if key.starts_with(KEY_INSTALL_PREFIX) {
        "key-install"
    } else if key.starts_with(KEYS_PREFIX) {
        "keys"
    } else if key == NODE_KEY {
        "node"
    } else if key == SEEN_KEY {
        "seen"
    } else if key == crate::events::EVENTS_KEY {
        "event-ranges"
    } else if key == crate::datapath::DATA_ADDR_KEY {
        "data-endpoint"
    } else {
        "other"
    }
}

/// Decodes a raw chitchat value to readable JSON by its key: `s/` as the session's
/// registers, `node` as [`NodeInfo`], `seen` as [`Seen`], `m/` as
/// [`NodeSessionStatus`], `k/` as [`SessionKeys`], `ki/` as [`KeyInstall`], `ev` as
/// the event streams held (`{stream: {floor, high}}`), `data` as the data path
/// endpoint's address. Never panics: whatever does not decode is an error string.
pub fn decode_value(key: &str, raw: &str) -> (&'static str, Result<Value, String>) {
    let kind = key_kind(key);
    let decoded = match kind {
        "session" => codec::decode::<SessionRecord>(raw)
            .map_err(|e| e.to_string())
            .and_then(|record| {
                let expected = format!("{SESSION_PREFIX}{}", record.id.key());
                if expected != key {
                    return Err(format!(
                        "record of session {} stored under the wrong key (expected {expected})",
                        record.id
                    ));
                }
                Ok(json!({
                    "session": record.id.to_string(),
                    "registers": register_values(&record),
                }))
            }),
        "node" => codec::decode::<NodeInfo>(raw)
            .map_err(|e| e.to_string())
            .and_then(|info| serde_json::to_value(info).map_err(|e| e.to_string())),
        "seen" => codec::decode::<Seen>(raw)
            .map_err(|e| e.to_string())
            .and_then(|seen| serde_json::to_value(seen).map_err(|e| e.to_string())),
        "event-ranges" => codec::decode::<BTreeMap<String, (u64, u64)>>(raw)
            .map_err(|e| e.to_string())
            .map(|ranges| {
                ranges
                    .into_iter()
                    .map(|(stream, (floor, high))| (stream, json!({"floor": floor, "high": high})))
                    .collect::<serde_json::Map<String, Value>>()
                    .into()
            }),
        "keys" => codec::decode::<SessionKeys>(raw)
            .map_err(|e| e.to_string())
            .and_then(|keys| serde_json::to_value(keys).map_err(|e| e.to_string()))
            .map(stamps_as_text),
        "key-install" => codec::decode::<KeyInstall>(raw)
            .map_err(|e| e.to_string())
            .and_then(|report| serde_json::to_value(report).map_err(|e| e.to_string()))
            .map(stamps_as_text),
        "monitor" => codec::decode::<NodeSessionStatus>(raw)
            .map_err(|e| e.to_string())
            .and_then(|status| serde_json::to_value(status).map_err(|e| e.to_string()))
            .map(stamps_as_text),
        "data-endpoint" => raw
            .parse::<std::net::SocketAddr>()
            .map(|addr| json!(addr.to_string()))
            .map_err(|e| format!("not an address: {e}")),
        _ => Err("no decoder for this key; use --raw".to_string()),
    };
    (kind, decoded)
}

/// Replaces every serialized HLC (`{"millis", "counter", "node"}`) by its
/// `millis.counter@node` text.
pub fn stamps_as_text(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let is_hlc = map.len() == 3
                && map.get("millis").is_some_and(Value::is_u64)
                && map.get("counter").is_some_and(Value::is_u64)
                && map.get("node").is_some_and(Value::is_string);
            if is_hlc {
                Value::String(format!(
                    "{}.{}@{}",
                    map["millis"],
                    map["counter"],
                    map["node"].as_str().unwrap_or_default()
                ))
            } else {
                Value::Object(
                    map.into_iter()
                        .map(|(k, v)| (k, stamps_as_text(v)))
                        .collect(),
                )
            }
        }
        Value::Array(items) => Value::Array(items.into_iter().map(stamps_as_text).collect()),
        other => other,
    }
}
