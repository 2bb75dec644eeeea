//! The daemon's view of each backend of a pool: a health tracker per
//! backend, and which backends that view takes out of the table.

use std::{collections::BTreeMap, net::SocketAddr};

use bluegreen::{
    config::{BackendSpec, PoolSpec},
    endpoint::Color,
    health::{Health, HealthCheck, HealthTracker},
};

/// Per (color, backend) trackers of one service.
#[derive(Default)]
pub(super) struct BackendHealth {
    trackers: BTreeMap<(Color, SocketAddr), HealthTracker>,
}

impl BackendHealth {
    /// Records one probe of each backend of `color`'s pool (`results` in
    /// pool order), forgets backends that left it, logs changes, and
    /// returns each backend's state.
    pub(super) fn observe(
        &mut self,
        service: &str,
        color: Color,
        check: &HealthCheck,
        pool: &PoolSpec,
        results: Vec<Result<(), String>>,
    ) -> BTreeMap<SocketAddr, Health> {
        self.trackers
            .retain(|(of, addr), _| *of != color || pool.get(*addr).is_some());
        let mut states = BTreeMap::new();
        for (backend, result) in pool.addrs().zip(results) {
            let tracker = self.trackers.entry((color, backend)).or_default();
            match tracker.observe(check, result) {
                Some(Health::Unhealthy) => log::warn!(
                    "{service}: {color} backend {backend} is unhealthy: {}",
                    tracker.last_error.as_deref().unwrap_or("probe failed")
                ),
                Some(state) => log::info!("{service}: {color} backend {backend} is {state:?}"),
                None => {}
            }
            states.insert(backend, tracker.state());
        }
        states
    }
}

/// Whether the daemon wants `backend` out of the table, given the
/// backends' `states`: a verdict changes it, and a backend not judged yet
/// (the daemon just started) keeps what the state file records.
pub(super) fn excluded(states: &BTreeMap<SocketAddr, Health>, backend: &BackendSpec) -> bool {
    match states.get(&backend.addr) {
        Some(Health::Unhealthy) => true,
        Some(Health::Healthy) => false,
        Some(Health::Unknown) | None => backend.unhealthy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bluegreen::health::Probe;

    #[test]
    fn failing_backends_are_excluded_and_unjudged_ones_keep_their_record() {
        let check = HealthCheck {
            unhealthy_threshold: 2,
            healthy_threshold: 2,
            ..HealthCheck::new(Probe::Tcp)
        };
        let pool: PoolSpec = "10.1.0.2:80,10.1.0.3:80".parse().expect("literal");
        let mut health = BackendHealth::default();
        let down = || vec![Ok(()), Err("refused".to_owned())];
        let states = health.observe("web", Color::Blue, &check, &pool, down());
        // One failure is not enough: the record decides meanwhile.
        let mut recorded = pool.backends()[1];
        recorded.unhealthy = true;
        assert!(excluded(&states, &recorded));
        assert!(!excluded(&states, &pool.backends()[1]));
        let states = health.observe("web", Color::Blue, &check, &pool, down());
        assert!(excluded(&states, &pool.backends()[1]));
        assert!(!excluded(&states, &pool.backends()[0]));
        let up = || vec![Ok(()), Ok(())];
        health.observe("web", Color::Blue, &check, &pool, up());
        let states = health.observe("web", Color::Blue, &check, &pool, up());
        assert!(!excluded(&states, &recorded), "healthy again: back in");
    }
}
