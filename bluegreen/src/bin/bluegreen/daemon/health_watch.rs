//! The daemon's health watch over one service (`[service.health]`): probe
//! every backend of both colors, publish their health, keep unhealthy
//! backends out of the tables, and roll back when the policy says so.

use std::{net::SocketAddr, ops::ControlFlow, time::Duration};

use bluegreen::{
    clock::unix_now_ms,
    config::AutoRollback,
    endpoint::Color,
    health::{Health, HealthCheck, HealthTracker},
    host::{Host, ServiceView},
};
use bluegreen_common::ChangeCause;

use super::{
    backend_health::{BackendHealth, excluded},
    periodic::Watch,
    rollback,
};
use crate::observations::Shared;

/// Whether the daemon rolls a service back now (`now_ms`: Unix time in
/// milliseconds): its active color is unhealthy, there is a color to go
/// back to and it is not known to be unhealthy too, and the last switch is
/// within the policy's window (0: any time).
fn should_roll_back(
    policy: &AutoRollback,
    view: &ServiceView,
    trackers: &[HealthTracker; 2],
    now_ms: u64,
) -> bool {
    let active = &trackers[usize::from(view.active.wire())];
    let fallback = &trackers[usize::from(view.previous.wire())];
    active.state() == Health::Unhealthy
        && view.previous != view.active
        && fallback.state() != Health::Unhealthy
        && policy.covers(view.record.switched_at_unix_ms, now_ms)
}

/// Probes every backend of both colors of one service every interval,
/// publishes their health, rebuilds a color's table when a backend turns
/// unhealthy or healthy again, and rolls back when the active color turns
/// unhealthy and the service asks for it.
#[derive(Default)]
pub(super) struct HealthWatch {
    trackers: [HealthTracker; 2],
    backend_health: BackendHealth,
}

impl Watch for HealthWatch {
    type Settings = HealthCheck;

    fn settings(view: &ServiceView) -> Option<HealthCheck> {
        view.record.spec.health.clone()
    }

    fn interval(check: &HealthCheck) -> Duration {
        check.interval()
    }

    fn forget(name: &str, observations: &Shared) {
        observations
            .lock()
            .expect("observations lock")
            .retain_checked(|service| service != name);
    }

    async fn round(
        &mut self,
        host: &Host,
        name: &str,
        view: &ServiceView,
        check: &HealthCheck,
        observations: &Shared,
    ) -> ControlFlow<()> {
        let name = name.to_owned();
        for color in Color::BOTH {
            let pool = view.pool(color).clone();
            let addrs: Vec<SocketAddr> = pool.addrs().collect();
            let probe = check.clone();
            let results = tokio::task::spawn_blocking(move || probe.probe_each(&addrs))
                .await
                .unwrap_or_else(|error| vec![Err(error.to_string()); pool.backends().len()]);
            // The color is judged by the backends the operator has not
            // drained, as a switch judges it.
            let (serving, serving_results): (Vec<SocketAddr>, Vec<_>) = pool
                .backends()
                .iter()
                .zip(&results)
                .filter(|(backend, _)| !backend.drained)
                .map(|(backend, result)| (backend.addr, result.clone()))
                .unzip();
            let result = check.judge_pool(&serving, &serving_results);
            let states = self
                .backend_health
                .observe(&name, color, check, &pool, results);
            let tracker = &mut self.trackers[usize::from(color.wire())];
            if let Some(state) = tracker.observe(check, result) {
                match state {
                    Health::Unhealthy => log::warn!(
                        "{name}: {color} ({pool}) is unhealthy: {}",
                        tracker.last_error.as_deref().unwrap_or("probe failed")
                    ),
                    _ => log::info!("{name}: {color} ({pool}) is {state:?}"),
                }
            }
            {
                let mut observations = observations.lock().expect("observations lock");
                observations
                    .health
                    .insert((name.clone(), color), tracker.state());
                observations
                    .backends
                    .retain(|(service, of, _), _| *service != name || *of != color);
                for (backend, state) in &states {
                    observations
                        .backends
                        .insert((name.clone(), color, *backend), *state);
                }
            }
            // The interface lock only when the table must change.
            if pool.with_health(|backend| excluded(&states, backend)) != pool {
                let (host, service) = (host.clone(), name.clone());
                let applied = tokio::task::spawn_blocking(move || {
                    host.apply_runtime(&service, color, |pool| {
                        pool.with_health(|backend| excluded(&states, backend))
                    })
                })
                .await;
                match applied {
                    Ok(Ok(Some(pool))) => log::warn!("{name}: {color} takes new flows on: {pool}"),
                    Ok(Ok(None)) => {}
                    Ok(Err(error)) => {
                        log::error!("{name}: cannot apply {color}'s backend health: {error}")
                    }
                    Err(_) => return ControlFlow::Break(()),
                }
            }
        }

        if let Some(policy) = view.record.spec.auto_rollback
            && should_roll_back(&policy, view, &self.trackers, unix_now_ms())
        {
            let active = &self.trackers[usize::from(view.active.wire())];
            let reason = active.last_error.clone().unwrap_or_default();
            // The watcher's own probes just judged the fallback.
            let options = rollback::options(ChangeCause::AutoRollback, policy.force, false);
            let why = format!(
                "{} failed {} health checks: {reason}",
                view.active, check.unhealthy_threshold
            );
            return rollback::roll_back(host, &name, view.active, options, &why).await;
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::test_views::{SWITCHED_AT_MS, view};
    use bluegreen::health::{HealthCheck, Probe};

    /// Trackers that saw `blue` and `green` probe results enough times to
    /// settle on them.
    fn trackers(blue: bool, green: bool) -> [HealthTracker; 2] {
        let check = HealthCheck::new(Probe::Tcp);
        let mut trackers: [HealthTracker; 2] = Default::default();
        for _ in 0..check.unhealthy_threshold.max(check.healthy_threshold) {
            for (tracker, healthy) in trackers.iter_mut().zip([blue, green]) {
                let result = if healthy {
                    Ok(())
                } else {
                    Err("refused".to_owned())
                };
                tracker.observe(&check, result);
            }
        }
        trackers
    }

    const ANY_TIME: AutoRollback = AutoRollback {
        window_secs: 0,
        force: false,
        analysis: false,
    };

    #[test]
    fn an_unhealthy_active_color_with_a_healthy_fallback_rolls_back() {
        let green_after_blue = view(Color::Green, Color::Blue);
        assert!(should_roll_back(
            &ANY_TIME,
            &green_after_blue,
            &trackers(true, false),
            0
        ));
        assert!(!should_roll_back(
            &ANY_TIME,
            &green_after_blue,
            &trackers(true, true),
            0
        ));
    }

    #[test]
    fn no_rollback_to_an_unhealthy_fallback_or_without_a_previous_color() {
        let green_after_blue = view(Color::Green, Color::Blue);
        assert!(!should_roll_back(
            &ANY_TIME,
            &green_after_blue,
            &trackers(false, false),
            0
        ));
        let never_switched = view(Color::Green, Color::Green);
        assert!(!should_roll_back(
            &ANY_TIME,
            &never_switched,
            &trackers(true, false),
            0
        ));
    }

    #[test]
    fn the_window_bounds_how_long_after_a_switch_the_daemon_rolls_back() {
        let policy = AutoRollback {
            window_secs: 60,
            force: true,
            analysis: false,
        };
        let green_after_blue = view(Color::Green, Color::Blue);
        let failing = trackers(true, false);
        let inside = SWITCHED_AT_MS + 60_000;
        assert!(should_roll_back(
            &policy,
            &green_after_blue,
            &failing,
            inside
        ));
        assert!(!should_roll_back(
            &policy,
            &green_after_blue,
            &failing,
            inside + 1
        ));
        let mut unknown_switch_time = green_after_blue;
        unknown_switch_time.record.switched_at_unix_ms = None;
        assert!(!should_roll_back(
            &policy,
            &unknown_switch_time,
            &failing,
            inside
        ));
    }
}
