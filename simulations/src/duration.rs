//! Durations as people write them (`500ms`, `90s`, `5m`, `1h`, `1m30s`: humantime's
//! grammar), and signed offsets (`-2s`, `+750ms`) for clock skew.

use std::time::Duration;

/// Why a duration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{given}`: {reason} (write e.g. 500ms, 90s, 5m, 1h, 1m30s)")]
pub struct DurationError {
    /// What was given.
    pub given: String,
    /// What is wrong.
    pub reason: String,
}

/// Parses an unsigned duration such as `90s`, `5m`, `1m30s` or `250ms` (humantime's
/// grammar; a bare number is refused: it has no unit).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationError {
            given: text.to_string(),
            reason: "empty".into(),
        });
    }
    humantime::parse_duration(trimmed).map_err(|e| DurationError {
        given: text.to_string(),
        reason: e.to_string(),
    })
}

/// Parses a signed offset in milliseconds: `-2s`, `+750ms`, `3s`.
pub fn parse_offset_ms(text: &str) -> Result<i64, DurationError> {
    let trimmed = text.trim();
    let (sign, body) = match trimmed.strip_prefix('-') {
        Some(body) => (-1, body),
        None => (1, trimmed.strip_prefix('+').unwrap_or(trimmed)),
    };
    let millis = i64::try_from(parse_duration(body)?.as_millis()).map_err(|_| DurationError {
        given: text.to_string(),
        reason: "too large".into(),
    })?;
    Ok(sign * millis)
}

/// Formats a duration as humantime does (`1m 30s`, `250ms`).
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_people_write() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("90").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(2 * 86_400)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_offset_ms("-2s"), Ok(-2000));
        assert_eq!(parse_offset_ms("+750ms"), Ok(750));
        assert_eq!(format_duration(Duration::from_secs(90)), "1m 30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s 500ms");
    }
}
