//! The warm-up gate: the same synthetic request sent `requests` times to
//! every serving backend of the target color, so that a model server has
//! compiled its graphs and filled its caches before real users arrive.

use std::{
    fmt,
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{Gate, GateReport, percentile};
use crate::backend_http::{each_backend, http_status};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
    Put,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Method {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, String> {
        match input {
            "GET" => Ok(Method::Get),
            "POST" => Ok(Method::Post),
            "PUT" => Ok(Method::Put),
            other => Err(format!("method {other:?} is not GET, POST or PUT")),
        }
    }
}

/// `[service.warmup]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warmup {
    /// Sent to each backend, one after the other.
    pub requests: u32,
    pub method: Method,
    pub path: String,
    /// Sent as `application/json` when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    pub expect_status: u16,
    /// Each request's deadline: a model server's first answers are slow.
    pub timeout_ms: u64,
}

impl Warmup {
    pub const DEFAULT_EXPECT_STATUS: u16 = 200;
    pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

    pub fn validate(&self) -> Result<(), String> {
        if !(1..=10_000).contains(&self.requests) {
            return Err(format!("requests {} is outside 1..=10000", self.requests));
        }
        if !self.path.starts_with('/') {
            return Err(format!("path {:?} must start with '/'", self.path));
        }
        // The path goes into the request line verbatim: a CR or LF would
        // end it and let the rest pose as headers.
        if self.path.chars().any(|c| c.is_ascii_control()) {
            return Err(format!(
                "path {:?} contains a control character, which would corrupt the HTTP request: remove it",
                self.path
            ));
        }
        if self.method == Method::Get && self.body.is_some() {
            return Err("a GET carries no body: use POST or PUT, or remove body".to_owned());
        }
        if !(100..=599).contains(&self.expect_status) {
            return Err(format!(
                "expect_status {} is outside 100..=599",
                self.expect_status
            ));
        }
        if !(10..=600_000).contains(&self.timeout_ms) {
            return Err(format!(
                "timeout_ms {} is outside 10..=600000",
                self.timeout_ms
            ));
        }
        Ok(())
    }

    /// Warms every one of `backends` at once (a slow one does not hold the
    /// others back); any failed request fails the gate.
    pub(super) fn run(&self, backends: &[SocketAddr]) -> GateReport {
        let started = Instant::now();
        let results: Vec<Warmed> = each_backend(backends, |backend| Ok(self.warm(backend)))
            .into_iter()
            .zip(backends)
            .map(|(result, &backend)| {
                result.unwrap_or_else(|reason| Warmed::failed(backend, reason))
            })
            .collect();
        let failed: Vec<String> = results
            .iter()
            .filter(|warmed| warmed.failed > 0)
            .map(Warmed::failure)
            .collect();
        let (passed, detail) = if backends.is_empty() {
            (false, "no backend takes new flows to warm".to_owned())
        } else if failed.is_empty() {
            let each: Vec<String> = results.iter().map(ToString::to_string).collect();
            (true, each.join("; "))
        } else {
            (false, failed.join("; "))
        };
        GateReport {
            gate: Gate::Warmup,
            passed,
            duration: started.elapsed(),
            detail,
            log: None,
            tail: Vec::new(),
            measurement: None,
        }
    }

    fn warm(&self, backend: SocketAddr) -> Warmed {
        let timeout = Duration::from_millis(self.timeout_ms);
        let mut latencies = Vec::with_capacity(self.requests as usize);
        let mut warmed = Warmed::new(backend);
        for _ in 0..self.requests {
            let sent = Instant::now();
            let answer = http_status(
                backend,
                self.method.as_str(),
                &self.path,
                self.body.as_deref(),
                timeout,
            );
            latencies.push(sent.elapsed());
            warmed.sent += 1;
            let error = match answer {
                Ok(status) if status == self.expect_status => continue,
                Ok(status) => format!("status {status}, expected {}", self.expect_status),
                Err(error) => error,
            };
            warmed.failed += 1;
            if warmed.first_failure.is_empty() {
                warmed.first_failure = error;
            }
        }
        latencies.sort();
        warmed.p50 = percentile(&latencies, 50);
        warmed.max = latencies.last().copied().unwrap_or_default();
        warmed
    }
}

/// What warming one backend found.
struct Warmed {
    backend: SocketAddr,
    sent: u32,
    failed: u32,
    first_failure: String,
    p50: Duration,
    max: Duration,
}

impl Warmed {
    fn new(backend: SocketAddr) -> Warmed {
        Warmed {
            backend,
            sent: 0,
            failed: 0,
            first_failure: String::new(),
            p50: Duration::ZERO,
            max: Duration::ZERO,
        }
    }

    /// A backend whose warming could not even run.
    fn failed(backend: SocketAddr, reason: String) -> Warmed {
        Warmed {
            failed: 1,
            first_failure: reason,
            ..Warmed::new(backend)
        }
    }

    fn failure(&self) -> String {
        format!(
            "{}: {} of {} failed (first: {})",
            self.backend, self.failed, self.sent, self.first_failure
        )
    }
}

impl fmt::Display for Warmed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} sent, p50 {:.1?}, max {:.1?}",
            self.backend, self.sent, self.p50, self.max
        )
    }
}
