//! Load-aware selection (`[service.load]`): the queue depth each backend
//! reports in its Prometheus metrics lowers the weight its color's table
//! gives it, so new flows go to the replicas with the shortest queues.
//!
//! The pure parts live here (queue depth from the text, the weight it
//! gives, and whether a change is worth a new table); the daemon scrapes
//! and applies them.

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    backend_http::{each_backend, http_get},
    exposition,
};

/// Table weights under load are in tenths of the operator's weight, so a
/// deeply queued backend can fall to a tenth of its share without ever
/// reaching 0 (only a drain or a failed health check stops new flows).
pub const SCALE: u32 = 10;

/// The queue depth at which a backend's weight halves. Small, because a
/// model server's waiting queue of a few requests already means seconds
/// of added latency for the next one.
pub const HALF_WEIGHT_QUEUE: f64 = 4.0;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadCheck {
    /// A gauge whose samples (any labels) add up to the queue depth.
    pub metric: String,
    pub path: String,
    /// Scrape this port instead of the backend's.
    #[serde(default)]
    pub port: Option<u16>,
    pub interval_ms: u64,
}

impl Default for LoadCheck {
    fn default() -> Self {
        LoadCheck {
            metric: "vllm:num_requests_waiting".to_owned(),
            path: "/metrics".to_owned(),
            port: None,
            interval_ms: 500,
        }
    }
}

impl LoadCheck {
    /// Checks the settings; the message names the offending one.
    pub fn validate(&self) -> Result<(), String> {
        let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        if self.metric.is_empty()
            || self.metric.starts_with(|c: char| c.is_ascii_digit())
            || !self.metric.chars().all(name_char)
        {
            return Err(format!(
                "metric {:?} is not a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)",
                self.metric
            ));
        }
        if !self.path.starts_with('/') || self.path.chars().any(|c| c.is_ascii_control()) {
            return Err(format!(
                "path {:?} must start with '/' and hold no control character",
                self.path
            ));
        }
        if self.port == Some(0) {
            return Err("port 0 cannot be scraped: name the metrics port, or leave port out to scrape the backend's own".to_owned());
        }
        if !(100..=60_000).contains(&self.interval_ms) {
            return Err(format!(
                "interval_ms {} is outside 100..=60000",
                self.interval_ms
            ));
        }
        Ok(())
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// Scrapes `backend`'s metrics once (timing out within the interval)
    /// and returns its queue depth.
    pub fn scrape(&self, backend: SocketAddr) -> Result<f64, String> {
        let target = SocketAddr::new(backend.ip(), self.port.unwrap_or(backend.port()));
        let text = http_get(target, &self.path, self.interval())?;
        queue_depth(&text, &self.metric)
    }

    /// [`LoadCheck::scrape`] of each of `backends` at once, in their order.
    pub fn scrape_each(&self, backends: &[SocketAddr]) -> Vec<Result<f64, String>> {
        each_backend(backends, |backend| self.scrape(backend))
    }
}

/// The sum of `metric`'s samples (any labels) in Prometheus text; an error
/// when the text has none of them, so a backend that stopped exporting it
/// is not taken for an idle one.
pub fn queue_depth(text: &str, metric: &str) -> Result<f64, String> {
    let samples =
        exposition::samples(text).map_err(|error| format!("cannot parse the metrics: {error}"))?;
    let values: Vec<f64> = samples
        .iter()
        .filter(|sample| sample.name == metric)
        .map(|sample| sample.value)
        .collect();
    if values.is_empty() {
        return Err(format!("no {metric} sample in the metrics"));
    }
    let depth: f64 = values.iter().sum();
    if depth.is_finite() && depth >= 0.0 {
        Ok(depth)
    } else {
        Err(format!("{metric} is {depth}, not a queue depth"))
    }
}

/// The table weight of a backend of operator `weight` with `queue`
/// requests waiting: `max(w, round(w * SCALE * K / (K + q)))` with K =
/// [`HALF_WEIGHT_QUEUE`]. An idle backend keeps its full share
/// (`w * SCALE`); each K more queued requests shrink it hyperbolically
/// (a backend that is further behind gets proportionally fewer new
/// flows), down to a floor of `w`, a tenth of the full share, so a
/// loaded backend still sees some traffic and its queue is still judged.
pub fn load_weight(weight: u32, queue: f64) -> u32 {
    let full = f64::from(weight * SCALE);
    let shrunk = (full * HALF_WEIGHT_QUEUE / (HALF_WEIGHT_QUEUE + queue.max(0.0))).round();
    // Bounded by `full`, so the cast cannot truncate.
    (shrunk as u32).max(weight)
}

/// Whether a backend of operator `weight` whose table weight is `current`
/// should get a new table for `wanted`: a change of at least a quarter, or
/// one onto or off the floor. Smaller moves are queue noise, and each new
/// table moves some new flows between backends.
pub fn changed_materially(weight: u32, current: u32, wanted: u32) -> bool {
    let at_floor = |table: u32| table <= weight;
    current.abs_diff(wanted) * 4 >= current.max(1) || at_floor(current) != at_floor(wanted)
}

#[cfg(test)]
mod tests;
