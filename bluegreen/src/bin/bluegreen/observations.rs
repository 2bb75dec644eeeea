//! What the daemon has seen that the kernel's maps do not hold: the health
//! of each checked service's colors and of their backends, and the load of
//! each weighed service's backends. Written by the daemon's watchers, read
//! by the metrics endpoint.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bluegreen::{endpoint::Color, health::Health, verify::AnalysisStatus};

#[derive(Default)]
pub struct Observations {
    /// (service, color) -> health.
    pub health: BTreeMap<(String, Color), Health>,
    /// (service, color, backend) -> health.
    pub backends: BTreeMap<(String, Color, SocketAddr), Health>,
    /// (service, color, backend) -> its load, for services with
    /// `[service.load]`.
    pub load: BTreeMap<(String, Color, SocketAddr), BackendLoad>,
    /// Whether the fleet agent holds a session with etcd; `None` without
    /// `[fleet]`.
    pub fleet_connected: Option<bool>,
    /// Per fleet service: whether its desired state in etcd is one this
    /// host cannot read (and so refuses).
    pub fleet_unreadable: BTreeMap<String, bool>,
    /// service -> its analyses as last measured, for services with
    /// `[[service.analysis]]`.
    pub analyses: BTreeMap<String, Vec<AnalysisStatus>>,
}

/// What the daemon's load watcher last saw of one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BackendLoad {
    /// The last queue depth scraped (kept through failed scrapes).
    pub queue_depth: Option<f64>,
    /// The weight the daemon wants its table to give it (load units;
    /// 0 while drained or unhealthy).
    pub effective_weight: u32,
    pub scrape_errors: u64,
}

impl Observations {
    /// Keeps the health of the services `checked` says are still checked:
    /// a service whose check was dropped, or that is gone, must not keep
    /// reporting its last state.
    pub fn retain_checked(&mut self, checked: impl Fn(&str) -> bool) {
        self.health.retain(|(service, _), _| checked(service));
        self.backends.retain(|(service, _, _), _| checked(service));
    }

    /// Keeps the load of the services `weighed` says still have
    /// `[service.load]`, for the same reason.
    pub fn retain_weighed(&mut self, weighed: impl Fn(&str) -> bool) {
        self.load.retain(|(service, _, _), _| weighed(service));
    }
}

pub type Shared = Arc<Mutex<Observations>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_services_still_checked_keep_their_health() {
        let mut observations = Observations::default();
        for service in ["chat", "dns"] {
            for color in Color::BOTH {
                observations
                    .health
                    .insert((service.to_owned(), color), Health::Healthy);
                observations.backends.insert(
                    (
                        service.to_owned(),
                        color,
                        "10.1.0.2:80".parse().expect("literal"),
                    ),
                    Health::Healthy,
                );
            }
        }
        observations.retain_checked(|service| service == "dns");
        let left: Vec<&str> = observations
            .health
            .keys()
            .map(|(service, _)| service.as_str())
            .collect();
        assert_eq!(left, ["dns", "dns"]);
        assert!(
            observations
                .backends
                .keys()
                .all(|(service, _, _)| service == "dns")
        );
    }
}
