//! Durations as people write them: `500ms`, `90s`, `5m`, `1h`, `1m30s`, and signed
//! offsets (`-2s`, `+750ms`) for clock skew.

use std::time::Duration;

/// Why a duration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{given}`: {reason} (write e.g. 500ms, 90s, 5m, 1h, 1m30s)")]
pub struct DurationError {
    /// What was given.
    pub given: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// Parses an unsigned duration such as `90s`, `5m`, `1m30s` or `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let error = |reason| DurationError {
        given: text.to_string(),
        reason,
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(error("empty"));
    }
    let mut total_ms: u64 = 0;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return Err(error("expected a number"));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| error("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let factor = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" => return Err(error("missing unit (ms, s, m or h)")),
            _ => return Err(error("unknown unit (use ms, s, m or h)")),
        };
        let part = value
            .checked_mul(factor)
            .ok_or_else(|| error("too large"))?;
        total_ms = total_ms
            .checked_add(part)
            .ok_or_else(|| error("too large"))?;
    }
    Ok(Duration::from_millis(total_ms))
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
        reason: "too large",
    })?;
    Ok(sign * millis)
}

/// Formats a duration compactly (`1m30s`, `250ms`).
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
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
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_offset_ms("-2s"), Ok(-2000));
        assert_eq!(parse_offset_ms("+750ms"), Ok(750));
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
