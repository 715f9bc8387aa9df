//! Latency injected on frames to a network (`--inject-delay`, testing only).

use super::*;

/// Latency injected on frames to one network (`--inject-delay`, testing only):
/// written `NETWORK=DELAY[~JITTER]`, e.g. `10.77.2.0/24=40ms~5ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DelayRule {
    /// Destination network (a bare address is a network of one).
    pub network: IpNetwork,
    /// Fixed added one-way delay.
    pub delay: Duration,
    /// Extra uniformly random delay in `[0, jitter)`.
    pub jitter: Duration,
}

impl DelayRule {
    /// Parses `NETWORK=DELAY[~JITTER]`; the error says what is wrong, in one line.
    pub fn parse(text: &str) -> Result<DelayRule, String> {
        let Some((network, delays)) = text.split_once('=') else {
            return Err("expected NETWORK=DELAY[~JITTER], e.g. 10.77.2.0/24=40ms~5ms".to_owned());
        };
        let network = network
            .trim()
            .parse::<IpNetwork>()
            .map_err(|e| format!("network: {e}"))?;
        let (delay, jitter) = match delays.split_once('~') {
            Some((delay, jitter)) => (delay, Some(jitter)),
            None => (delays, None),
        };
        let delay = parse_delay(delay).map_err(|e| format!("delay: {e}"))?;
        let jitter = match jitter {
            Some(jitter) => parse_delay(jitter).map_err(|e| format!("jitter: {e}"))?,
            None => Duration::ZERO,
        };
        Ok(DelayRule {
            network,
            delay,
            jitter,
        })
    }

    /// The faults this rule asks for.
    pub fn link_faults(&self) -> LinkFaults {
        LinkFaults {
            delay: self.delay,
            jitter: self.jitter,
            ..LinkFaults::default()
        }
    }
}

impl fmt::Display for DelayRule {
    /// The canonical `NETWORK=DELAY[~JITTER]`, which [`DelayRule::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.network, DelaySpelling(self.delay))?;
        if !self.jitter.is_zero() {
            write!(f, "~{}", DelaySpelling(self.jitter))?;
        }
        Ok(())
    }
}

impl TryFrom<String> for DelayRule {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        DelayRule::parse(&text)
    }
}

impl From<DelayRule> for String {
    fn from(rule: DelayRule) -> String {
        rule.to_string()
    }
}

/// A duration as `--inject-delay` writes it: whole `s`, `ms` or `us`.
struct DelaySpelling(Duration);

impl fmt::Display for DelaySpelling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0.as_micros();
        if us != 0 && us.is_multiple_of(1_000_000) {
            write!(f, "{}s", us / 1_000_000)
        } else if us.is_multiple_of(1_000) {
            write!(f, "{}ms", us / 1_000)
        } else {
            write!(f, "{us}us")
        }
    }
}

/// Parses a duration (`250us`, `40ms`, `2s`: humantime's grammar), at most
/// [`MAX_INJECTED_DELAY`].
fn parse_delay(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let delay = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration with a unit (e.g. 40ms, 250us): {e}"))?;
    if delay > MAX_INJECTED_DELAY {
        return Err(format!(
            "{text} is longer than {}",
            DelaySpelling(MAX_INJECTED_DELAY)
        ));
    }
    Ok(delay)
}
