//! Health checks of a color's backend: a TCP connect, or an HTTP GET that
//! must answer 2xx; and the threshold logic that turns probes into a state.

use std::{
    net::{SocketAddr, TcpStream},
    str::FromStr,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    backend_http::{each_backend, http_get},
    error::Error,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Probe {
    Tcp,
    Http { path: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    #[serde(flatten)]
    pub probe: Probe,
    /// Probe this port instead of the backend's (a separate health port).
    #[serde(default)]
    pub port: Option<u16>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive successes that make an unhealthy backend healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy backend unhealthy.
    pub unhealthy_threshold: u32,
    /// Backends of a pool that must pass for the color to be healthy.
    #[serde(default = "one")]
    pub min_healthy: u32,
}

fn one() -> u32 {
    1
}

impl HealthCheck {
    pub const DEFAULT_INTERVAL_MS: u64 = 1000;
    pub const DEFAULT_TIMEOUT_MS: u64 = 500;
    pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
    pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;

    pub fn new(probe: Probe) -> HealthCheck {
        HealthCheck {
            probe,
            port: None,
            interval_ms: Self::DEFAULT_INTERVAL_MS,
            timeout_ms: Self::DEFAULT_TIMEOUT_MS,
            healthy_threshold: Self::DEFAULT_HEALTHY_THRESHOLD,
            unhealthy_threshold: Self::DEFAULT_UNHEALTHY_THRESHOLD,
            min_healthy: 1,
        }
    }

    /// Checks the numbers; the message names the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        if let Probe::Http { path } = &self.probe {
            if !path.starts_with('/') {
                return Err(format!("path {path:?} must start with '/'"));
            }
            // The path goes into the request line verbatim: a CR or LF
            // would end it and let the rest pose as headers.
            if path.chars().any(|c| c.is_ascii_control()) {
                return Err(format!(
                    "path {path:?} contains a control character, which would corrupt the HTTP request: remove it"
                ));
            }
        }
        if self.port == Some(0) {
            return Err(
                "port 0 cannot be probed: name the health port, or leave port out to probe the backend's own"
                    .to_owned(),
            );
        }
        if !(50..=3_600_000).contains(&self.interval_ms) {
            return Err(format!(
                "interval_ms {} is outside 50..=3600000",
                self.interval_ms
            ));
        }
        if self.timeout_ms < 10 || self.timeout_ms > self.interval_ms {
            return Err(format!(
                "timeout_ms {} must be at least 10 and at most interval_ms ({})",
                self.timeout_ms, self.interval_ms
            ));
        }
        for (name, value) in [
            ("healthy_threshold", self.healthy_threshold),
            ("unhealthy_threshold", self.unhealthy_threshold),
        ] {
            if !(1..=100).contains(&value) {
                return Err(format!("{name} {value} is outside 1..=100"));
            }
        }
        if !(1..=bluegreen_common::MAX_POOL_BACKENDS).contains(&self.min_healthy) {
            return Err(format!(
                "min_healthy {} is outside 1..={}",
                self.min_healthy,
                bluegreen_common::MAX_POOL_BACKENDS
            ));
        }
        Ok(())
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    fn target(&self, backend: SocketAddr) -> SocketAddr {
        SocketAddr::new(backend.ip(), self.port.unwrap_or(backend.port()))
    }

    /// One probe of each of a pool's `backends` at once: passes when at
    /// least `min_healthy` pass; the error names each one that failed.
    pub fn probe_pool(&self, backends: &[SocketAddr]) -> Result<(), String> {
        self.judge_pool(backends, &self.probe_each(backends))
    }

    /// One probe of each of `backends` at once, in their order.
    pub fn probe_each(&self, backends: &[SocketAddr]) -> Vec<Result<(), String>> {
        each_backend(backends, |backend| self.probe(backend))
    }

    /// A pool's verdict from one probe `results` of each of its `backends`
    /// (in their order): see [`HealthCheck::probe_pool`].
    pub fn judge_pool(
        &self,
        backends: &[SocketAddr],
        results: &[Result<(), String>],
    ) -> Result<(), String> {
        let failures: Vec<String> = backends
            .iter()
            .zip(results)
            .filter_map(|(backend, result)| {
                result.as_ref().err().map(|reason| {
                    if backends.len() > 1 {
                        format!("{backend}: {reason}")
                    } else {
                        reason.clone()
                    }
                })
            })
            .collect();
        let passed = backends.len() - failures.len();
        if passed >= self.min_healthy as usize {
            return Ok(());
        }
        if backends.len() == 1 {
            return Err(failures.join(""));
        }
        Err(format!(
            "{passed} of {} backends passed, {} needed; {}",
            backends.len(),
            self.min_healthy,
            if failures.is_empty() {
                "no backend takes new flows".to_owned()
            } else {
                failures.join("; ")
            }
        ))
    }

    /// One probe of `backend`; the error says what failed.
    pub fn probe(&self, backend: SocketAddr) -> Result<(), String> {
        let target = self.target(backend);
        let timeout = Duration::from_millis(self.timeout_ms);
        match &self.probe {
            Probe::Tcp => TcpStream::connect_timeout(&target, timeout)
                .map(drop)
                .map_err(|error| format!("TCP connect to {target}: {error}")),
            Probe::Http { path } => http_get(target, path, timeout).map(drop),
        }
    }
}

/// `tcp` or `http:/path`, as given to `--check`.
impl FromStr for Probe {
    type Err = Error;

    fn from_str(input: &str) -> Result<Probe, Error> {
        match input.split_once(':') {
            None if input == "tcp" => Ok(Probe::Tcp),
            Some(("http", path)) if path.starts_with('/') => Ok(Probe::Http {
                path: path.to_owned(),
            }),
            _ => Err(Error::InvalidCheck(input.to_owned())),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not enough probes yet to say.
    Unknown,
    Healthy,
    Unhealthy,
}

/// Turns a sequence of probe results into a state with hysteresis.
#[derive(Clone, Debug)]
pub struct HealthTracker {
    state: Health,
    successes: u32,
    failures: u32,
    pub last_error: Option<String>,
}

impl Default for HealthTracker {
    fn default() -> Self {
        HealthTracker {
            state: Health::Unknown,
            successes: 0,
            failures: 0,
            last_error: None,
        }
    }
}

impl HealthTracker {
    pub fn state(&self) -> Health {
        self.state
    }

    /// Records one probe; returns the new state if it changed.
    pub fn observe(&mut self, check: &HealthCheck, result: Result<(), String>) -> Option<Health> {
        let before = self.state;
        match result {
            Ok(()) => {
                self.successes += 1;
                self.failures = 0;
                if self.successes >= check.healthy_threshold {
                    self.state = Health::Healthy;
                }
            }
            Err(error) => {
                self.failures += 1;
                self.successes = 0;
                self.last_error = Some(error);
                if self.failures >= check.unhealthy_threshold {
                    self.state = Health::Unhealthy;
                }
            }
        }
        (self.state != before).then_some(self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_parse_from_flags() {
        assert_eq!("tcp".parse::<Probe>().unwrap(), Probe::Tcp);
        assert_eq!(
            "http:/healthz".parse::<Probe>().unwrap(),
            Probe::Http {
                path: "/healthz".to_owned()
            }
        );
        for bad in ["udp", "http:healthz", "http", ""] {
            assert!(bad.parse::<Probe>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn thresholds_add_hysteresis() {
        let check = HealthCheck {
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            ..HealthCheck::new(Probe::Tcp)
        };
        let mut tracker = HealthTracker::default();
        assert_eq!(tracker.observe(&check, Ok(())), None);
        assert_eq!(tracker.observe(&check, Ok(())), Some(Health::Healthy));
        assert_eq!(tracker.observe(&check, Err("down".into())), None);
        assert_eq!(tracker.observe(&check, Err("down".into())), None);
        assert_eq!(
            tracker.observe(&check, Ok(())),
            None,
            "a success resets the failure count"
        );
        for _ in 0..2 {
            assert_eq!(tracker.observe(&check, Err("down".into())), None);
        }
        assert_eq!(
            tracker.observe(&check, Err("down".into())),
            Some(Health::Unhealthy)
        );
        assert_eq!(tracker.last_error.as_deref(), Some("down"));
    }

    #[test]
    fn bad_settings_are_named() {
        let mut check = HealthCheck::new(Probe::Http {
            path: "healthz".to_owned(),
        });
        assert!(check.validate().unwrap_err().contains("path"));
        check.probe = Probe::Tcp;
        check.timeout_ms = 5000;
        assert!(check.validate().unwrap_err().contains("timeout_ms"));
        check.timeout_ms = 100;
        check.unhealthy_threshold = 0;
        assert!(
            check
                .validate()
                .unwrap_err()
                .contains("unhealthy_threshold")
        );
        check.unhealthy_threshold = 1;
        assert_eq!(check.validate(), Ok(()));
    }

    #[test]
    fn port_zero_and_control_characters_in_the_path_are_refused() {
        let port_zero = HealthCheck {
            port: Some(0),
            ..HealthCheck::new(Probe::Tcp)
        };
        let error = port_zero.validate().unwrap_err();
        assert!(error.starts_with("port 0 cannot be probed"), "{error}");
        for path in [
            "/a\r\nX-Injected: 1",
            "/a\n",
            "/a\rb",
            "/a\tb",
            "/\0",
            "/a\x7f",
        ] {
            let check = HealthCheck::new(Probe::Http {
                path: path.to_owned(),
            });
            let error = check.validate().unwrap_err();
            assert!(error.contains("control character"), "{path:?}: {error}");
            assert_eq!(error.lines().count(), 1, "{error}");
        }
        let fine = HealthCheck {
            port: Some(9100),
            ..HealthCheck::new(Probe::Http {
                path: "/health?full=1&probe=%20x".to_owned(),
            })
        };
        assert_eq!(fine.validate(), Ok(()));
    }

    #[test]
    fn probes_reach_a_listener_and_report_a_closed_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let check = HealthCheck::new(Probe::Tcp);
        assert_eq!(check.probe(open), Ok(()));
        drop(listener);
        let error = check.probe(open).unwrap_err();
        assert!(error.contains("TCP connect"), "{error}");
    }
}
