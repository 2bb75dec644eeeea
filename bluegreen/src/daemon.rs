//! `bluegreen daemon`: `up`, then health checks, automatic rollback, config
//! reloads and metrics, in the foreground for systemd.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use bluegreen::{
    config::{Config, ServiceSpec},
    control::SwitchTarget,
    dataplane::{Host, UpRequest},
    endpoint::Color,
    health::{Health, HealthTracker},
};
use tokio::{signal::unix::SignalKind, task::JoinHandle};

/// What the daemon has seen, for the metrics endpoint.
#[derive(Default)]
pub struct Observations {
    /// (service, color) -> health.
    pub health: BTreeMap<(String, Color), Health>,
    /// (service, cause) -> count. Causes: `operator`, `auto_rollback`.
    pub switches: BTreeMap<(String, &'static str), u64>,
    /// (service, cause) -> count of automatic rollbacks.
    pub rollbacks: BTreeMap<(String, &'static str), u64>,
}

pub type Shared = Arc<Mutex<Observations>>;

fn load_request(config_path: &Path) -> anyhow::Result<UpRequest> {
    let config = Config::load(config_path)?;
    let Some(iface) = config.interface.clone() else {
        bail!(
            "{}: the daemon needs `interface = \"IFACE\"` at the top of the config",
            config_path.display()
        );
    };
    Ok(UpRequest {
        iface,
        xdp_mode: config.xdp_mode,
        dataplane: config.dataplane,
        services: config.services,
    })
}

pub async fn run(
    host: &Host,
    config_path: &Path,
    metrics: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let mut request = load_request(config_path)?;
    let mut outcome = host.up(&request)?;
    crate::print_up(&outcome);
    forward_ebpf_logs(&mut outcome.ebpf);

    let observations: Shared = Arc::default();
    if let Some(address) = metrics {
        crate::metrics::serve(host.clone(), observations.clone(), address).await?;
        log::info!("metrics on http://{address}/metrics");
    }
    let mut checkers = start_checkers(host, &request.services, &observations);

    let mut hangup =
        tokio::signal::unix::signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut terminate =
        tokio::signal::unix::signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt =
        tokio::signal::unix::signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    log::info!("daemon ready on {}", request.iface);
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                match reload(host, config_path, &request) {
                    Ok(new) => {
                        for checker in checkers.drain(..) {
                            checker.abort();
                        }
                        checkers = start_checkers(host, &new.services, &observations);
                        request = new;
                    }
                    // A bad config must not take a running dataplane down.
                    Err(error) => log::error!("reload refused, keeping the running configuration: {error:#}"),
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    log::info!("daemon exiting; programs stay attached and traffic keeps flowing");
    Ok(())
}

fn reload(host: &Host, config_path: &Path, running: &UpRequest) -> anyhow::Result<UpRequest> {
    let new = load_request(config_path)?;
    if new.iface != running.iface {
        bail!(
            "the interface changed ({} -> {}): restart the daemon to move",
            running.iface,
            new.iface
        );
    }
    let (_, notes) = host.reload(&new)?;
    log::info!("configuration reloaded");
    for note in notes {
        log::info!("{note}");
    }
    Ok(new)
}

fn start_checkers(
    host: &Host,
    services: &[ServiceSpec],
    observations: &Shared,
) -> Vec<JoinHandle<()>> {
    services
        .iter()
        .filter(|spec| spec.health.is_some())
        .map(|spec| {
            tokio::spawn(watch_service(
                host.clone(),
                spec.name.clone(),
                observations.clone(),
            ))
        })
        .collect()
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis() as u64)
        .unwrap_or(0)
}

/// Probes both colors of one service every interval, publishes their
/// health, and rolls back when the active color turns unhealthy and the
/// service asks for it.
async fn watch_service(host: Host, name: String, observations: Shared) {
    let mut trackers: [HealthTracker; 2] = Default::default();
    let mut last_active: Option<Color> = None;
    loop {
        let view = {
            let (host, name) = (host.clone(), name.clone());
            tokio::task::spawn_blocking(move || host.service_view(Some(&name))).await
        };
        let view = match view {
            Ok(Ok(view)) => view,
            Ok(Err(error)) => {
                log::warn!("{name}: cannot read its state: {error}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => return,
        };
        let Some(check) = view.record.spec.health.clone() else {
            return;
        };
        if let Some(before) = last_active
            && before != view.active
        {
            // A color change the daemon did not make: an operator switch.
            *observations
                .lock()
                .expect("observations lock")
                .switches
                .entry((name.clone(), "operator"))
                .or_default() += 1;
        }
        last_active = Some(view.active);

        for color in Color::BOTH {
            let backend = view.backend(color);
            let probe = check.clone();
            let result = tokio::task::spawn_blocking(move || probe.probe(backend))
                .await
                .unwrap_or_else(|error| Err(error.to_string()));
            let tracker = &mut trackers[usize::from(color.wire())];
            if let Some(state) = tracker.observe(&check, result) {
                match state {
                    Health::Unhealthy => log::warn!(
                        "{name}: {color} ({backend}) is unhealthy: {}",
                        tracker.last_error.as_deref().unwrap_or("probe failed")
                    ),
                    _ => log::info!("{name}: {color} ({backend}) is {state:?}"),
                }
            }
            observations
                .lock()
                .expect("observations lock")
                .health
                .insert((name.clone(), color), tracker.state());
        }

        if let Some(policy) = view.record.spec.auto_rollback {
            let active = &trackers[usize::from(view.active.wire())];
            let fallback = &trackers[usize::from(view.previous.wire())];
            let within_window = policy.window_secs == 0
                || view.record.switched_at_unix_ms.is_some_and(|at| {
                    unix_now_ms().saturating_sub(at) <= policy.window_secs * 1000
                });
            if active.state() == Health::Unhealthy
                && view.previous != view.active
                && fallback.state() != Health::Unhealthy
                && within_window
            {
                let reason = active.last_error.clone().unwrap_or_default();
                let rolled_back = {
                    let (host, name) = (host.clone(), name.clone());
                    tokio::task::spawn_blocking(move || {
                        host.switch(Some(&name), SwitchTarget::Previous, policy.force)
                    })
                    .await
                };
                match rolled_back {
                    Ok(Ok(outcome)) => {
                        log::warn!(
                            "{name}: rolled back {} -> {} ({}) because {} failed {} health checks: {reason}",
                            outcome.from,
                            outcome.to,
                            if policy.force { "forced" } else { "graceful" },
                            outcome.from,
                            check.unhealthy_threshold
                        );
                        let mut observations = observations.lock().expect("observations lock");
                        *observations
                            .switches
                            .entry((name.clone(), "auto_rollback"))
                            .or_default() += 1;
                        *observations
                            .rollbacks
                            .entry((name.clone(), "unhealthy"))
                            .or_default() += 1;
                        last_active = Some(outcome.to);
                    }
                    Ok(Err(error)) => log::error!("{name}: automatic rollback failed: {error}"),
                    Err(_) => return,
                }
            }
        }
        tokio::time::sleep(check.interval()).await;
    }
}

fn forward_ebpf_logs(ebpf: &mut aya::Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(error) => {
            log::warn!("eBPF log records will not be forwarded: {error}");
            return;
        }
    };
    // SAFETY: the logger owns its ring-buffer descriptor and moves into the
    // AsyncFd, so the descriptor outlives the registration.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let Ok(mut readable) = registered else {
        log::warn!("eBPF log records will not be forwarded: cannot poll the log buffer");
        return;
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = readable.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
