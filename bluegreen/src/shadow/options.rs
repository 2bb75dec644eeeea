//! What a shadowing run is asked to do: how many new flows it samples, for
//! how long, and the bounds that keep it from costing the host more than
//! the operator allows.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

use super::http::{AllowList, DEFAULT_ALLOW};

/// A share of new flows, in hundredths of a percent: `5%`, `0.5%`, `100%`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleShare {
    pub basis_points: u32,
}

impl SampleShare {
    pub fn percent(&self) -> f64 {
        f64::from(self.basis_points) / 100.0
    }
}

impl fmt::Display for SampleShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.percent())
    }
}

impl FromStr for SampleShare {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid sample share {text:?}: use a percentage above 0 and at most 100, with up to two decimals, like 5% or 0.5%"
            )
        };
        let number = text.trim().strip_suffix('%').ok_or_else(bad)?.trim();
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty()
            || fraction.len() > 2
            || !whole.bytes().all(|byte| byte.is_ascii_digit())
            || !fraction.bytes().all(|byte| byte.is_ascii_digit())
            || whole.len() > 3
        {
            return Err(bad());
        }
        let whole: u32 = whole.parse().map_err(|_| bad())?;
        let fraction: u32 = format!("{fraction:0<2}").parse().map_err(|_| bad())?;
        let basis_points = whole * 100 + fraction;
        if basis_points == 0 || basis_points > 10_000 {
            return Err(bad());
        }
        Ok(Self { basis_points })
    }
}

/// A shadowing run's settings, from `[service.shadow]` and the command
/// line.
#[derive(Clone, Debug, PartialEq)]
pub struct ShadowOptions {
    pub sample: SampleShare,
    /// Shadowing stops by itself after this long; `None`: when stopped.
    pub duration: Option<Duration>,
    /// Flows replayed at once; a new sampled flow beyond them is not
    /// replayed (counted).
    pub max_inflight: usize,
    /// The requests that may be replayed; others are skipped (counted).
    pub allow: AllowList,
    /// How long the idle color may take to answer one request; after that
    /// the request counts as failed and its connection is closed.
    pub response_timeout: Duration,
    /// A flow that sends nothing for this long is closed on the replay side.
    pub idle_timeout: Duration,
    /// Client bytes held at once, waiting to be put in order or to be
    /// replayed; beyond it flows are abandoned, the oldest first.
    pub max_buffered_bytes: usize,
}

impl ShadowOptions {
    pub const DEFAULT_MAX_INFLIGHT: usize = 256;
    pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 64 << 20;
    pub const MAX_INFLIGHT: usize = 65_536;
    pub const MIN_BUFFERED_BYTES: usize = 1 << 20;

    pub fn new(sample: SampleShare) -> Self {
        Self {
            sample,
            duration: None,
            max_inflight: Self::DEFAULT_MAX_INFLIGHT,
            allow: AllowList::default(),
            response_timeout: Self::DEFAULT_RESPONSE_TIMEOUT,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            max_buffered_bytes: Self::DEFAULT_MAX_BUFFERED_BYTES,
        }
    }

    /// The bounds a run needs to stay a bounded run.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=Self::MAX_INFLIGHT).contains(&self.max_inflight) {
            return Err(format!(
                "max_inflight {} is out of range: replay 1 to {} flows at once",
                self.max_inflight,
                Self::MAX_INFLIGHT
            ));
        }
        // Whole seconds: a record or an order keeps them so.
        for (name, duration) in [
            ("the response timeout", Some(self.response_timeout)),
            ("the idle timeout", Some(self.idle_timeout)),
            ("the duration", self.duration),
        ] {
            if duration
                .is_some_and(|duration| duration.as_secs() == 0 || duration.subsec_nanos() != 0)
            {
                return Err(format!(
                    "{name} must be a whole number of seconds, at least 1 (e.g. 30s, 2m)"
                ));
            }
        }
        if self.max_buffered_bytes < Self::MIN_BUFFERED_BYTES {
            return Err(format!(
                "a buffer of {} bytes cannot hold one request: allow at least 1 MiB",
                self.max_buffered_bytes
            ));
        }
        Ok(())
    }

    /// The settings a request file or a record carries, to rebuild these
    /// options in another process.
    pub fn to_request(&self) -> ShadowRequest {
        ShadowRequest {
            sample: self.sample,
            duration_secs: self.duration.map(|duration| duration.as_secs()),
            max_inflight: self.max_inflight,
            allow: self.allow.rules(),
            response_timeout_secs: self.response_timeout.as_secs(),
            idle_timeout_secs: self.idle_timeout.as_secs(),
            max_buffered_bytes: self.max_buffered_bytes,
        }
    }
}

/// [`ShadowOptions`] as `shadow start` hands them to the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowRequest {
    pub sample: SampleShare,
    pub duration_secs: Option<u64>,
    pub max_inflight: usize,
    pub allow: Vec<String>,
    pub response_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub max_buffered_bytes: usize,
}

impl ShadowRequest {
    pub fn options(&self) -> Result<ShadowOptions, String> {
        let options = ShadowOptions {
            sample: self.sample,
            duration: self.duration_secs.map(Duration::from_secs),
            max_inflight: self.max_inflight,
            allow: AllowList::parse(&self.allow).map_err(|error| error.to_string())?,
            response_timeout: Duration::from_secs(self.response_timeout_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            max_buffered_bytes: self.max_buffered_bytes,
        };
        options.validate()?;
        Ok(options)
    }
}

/// `[service.shadow]`, as the state file keeps it with the service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowConfig {
    /// The daemon shadows the service from its start.
    pub enabled: bool,
    pub settings: ShadowRequest,
}

impl ShadowConfig {
    pub const DEFAULT_SAMPLE: SampleShare = SampleShare { basis_points: 500 };
}

/// The allow-list rules replayed when none are configured, for `--help`
/// and the README.
pub fn default_allow_rules() -> String {
    DEFAULT_ALLOW.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_parse_as_percentages() {
        for (text, basis_points) in [
            ("5%", 500),
            ("0.5%", 50),
            ("100%", 10_000),
            ("0.01%", 1),
            (" 12.25% ", 1225),
        ] {
            assert_eq!(
                text.parse::<SampleShare>().map(|share| share.basis_points),
                Ok(basis_points),
                "{text}"
            );
        }
        for text in [
            "5", "0%", "100.01%", "-1%", "1.234%", "%", "five%", "1e2%", "1000%",
        ] {
            assert!(text.parse::<SampleShare>().is_err(), "{text} is refused");
        }
    }
}
