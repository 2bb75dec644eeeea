//! `bluegreen daemon`: `up`, then health checks, automatic rollback, config
//! reloads and metrics, in the foreground for systemd.

mod analysis_watch;
mod backend_health;
mod fleet;
mod health_watch;
mod lifecycle_watch;
mod load_watch;
mod lock;
mod periodic;
mod rollback;
mod shadow_watch;
#[cfg(test)]
mod test_views;

use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::{Context as _, bail};
use bluegreen::{
    config::{Config, FleetConfig, ServiceSpec},
    host::{Host, UpRequest},
    state::StateStore,
    verify::Launcher,
};
use tokio::{signal::unix::SignalKind, sync::watch, task::JoinHandle};

use crate::{observations::Shared, output::print_up};
use analysis_watch::AnalysisWatch;
use health_watch::HealthWatch;
use lifecycle_watch::LifecycleWatch;
use load_watch::LoadWatch;
use periodic::keep_watching;
use shadow_watch::ShadowWatch;

/// What the daemon runs from its config file: the `up` and the fleet it
/// joins, if any.
struct Running {
    request: UpRequest,
    fleet: Option<FleetConfig>,
}

fn load_request(config_path: &Path) -> anyhow::Result<Running> {
    let config = Config::load(config_path)?;
    let Some(iface) = config.interface.clone() else {
        bail!(
            "{}: the daemon needs `interface = \"IFACE\"` at the top of the config",
            config_path.display()
        );
    };
    Ok(Running {
        request: UpRequest {
            iface,
            xdp_mode: config.xdp_mode,
            dataplane: config.dataplane,
            services: config.services,
            local: config.local,
        },
        fleet: config.fleet,
    })
}

/// Joins the fleet when `[fleet]` is set (once converged to its desired
/// states); without it, removes a marker an earlier fleet daemon left, so
/// that local switches work again.
async fn join_fleet(
    host: &Host,
    state_dir: &Path,
    running: &Running,
    observations: &Shared,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    let store = StateStore::new(state_dir);
    let iface = running.request.iface.clone();
    let Some(config) = running.fleet.clone() else {
        store.remove_fleet(&iface)?;
        let mut observations = observations.lock().expect("observations lock");
        observations.fleet_connected = None;
        observations.fleet_unreadable.clear();
        return Ok(None);
    };
    let services = running
        .request
        .services
        .iter()
        .map(|spec| spec.name.clone())
        .collect();
    let task = fleet::start(
        config,
        host.clone(),
        iface,
        store,
        services,
        observations.clone(),
    )
    .await?;
    Ok(Some(task))
}

pub async fn serve(
    host: &Host,
    state_dir: &Path,
    config_path: &Path,
    metrics: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let mut running = load_request(config_path)?;
    let _lock = lock::DaemonLock::take(host, state_dir, &running.request.iface)?;
    // Its watchers and fleet agent act on its own interface's services
    // (a reload cannot move it), and find them there at every tick.
    // Gate commands of a fleet change run outside the daemon's sandbox.
    let host = &host
        .on_interface(&running.request.iface)
        .launching_commands_with(Launcher::for_this_process());
    let mut outcome = host.up(&running.request)?;
    print_up(&outcome);
    forward_ebpf_logs(&mut outcome.ebpf);

    let observations: Shared = Arc::default();
    if let Some(address) = metrics {
        crate::metrics::serve(host.clone(), observations.clone(), address).await?;
        log::info!("metrics on http://{address}/metrics");
    }
    let (stopping, _) = watch::channel(None);
    let mut checkers = start_checkers(host, &running.request.services, &observations, &stopping);
    let mut fleet = join_fleet(host, state_dir, &running, &observations).await?;

    let mut hangup =
        tokio::signal::unix::signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut terminate =
        tokio::signal::unix::signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt =
        tokio::signal::unix::signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    log::info!("daemon ready on {}", running.request.iface);
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                match reload(host, config_path, &running.request) {
                    Ok(new) => {
                        for checker in checkers.drain(..) {
                            checker.abort();
                        }
                        checkers = start_checkers(host, &new.request.services, &observations, &stopping);
                        observations
                            .lock()
                            .expect("observations lock")
                            .retain_checked(|name| has(&new.request.services, name, |spec| spec.health.is_some()));
                        observations
                            .lock()
                            .expect("observations lock")
                            .retain_weighed(|name| has(&new.request.services, name, |spec| spec.load.is_some()));
                        observations
                            .lock()
                            .expect("observations lock")
                            .analyses
                            .retain(|name, _| has(&new.request.services, name, |spec| !spec.analysis.is_empty()));
                        // The services or the fleet may have changed: the
                        // agent starts over (and re-lists what it follows).
                        if let Some(task) = fleet.take() {
                            task.abort();
                        }
                        running = new;
                        match join_fleet(host, state_dir, &running, &observations).await {
                            Ok(task) => fleet = task,
                            Err(error) => log::error!("fleet: cannot rejoin after the reload: {error:#}"),
                        }
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
    let services: Vec<String> = running
        .request
        .services
        .iter()
        .map(|spec| spec.name.clone())
        .collect();
    shadow_watch::stop_runs(host, &stopping, &services, SHADOW_STOP_WAIT).await;
    log::info!("daemon exiting; programs stay attached and traffic keeps flowing");
    Ok(())
}

fn reload(host: &Host, config_path: &Path, running: &UpRequest) -> anyhow::Result<Running> {
    let new = load_request(config_path)?;
    if new.request.iface != running.iface {
        bail!(
            "the interface changed ({} -> {}): restart the daemon to move",
            running.iface,
            new.request.iface
        );
    }
    let (_, notes) = host.reload(&new.request)?;
    log::info!("configuration reloaded");
    for note in notes {
        log::info!("{note}");
    }
    Ok(new)
}

/// Whether `services` has `name`, and it is `like` that (checked, weighed).
fn has(services: &[ServiceSpec], name: &str, like: impl Fn(&ServiceSpec) -> bool) -> bool {
    services.iter().any(|spec| spec.name == name && like(spec))
}

/// How long an exiting daemon waits for its shadowing runs to write their
/// last records (they let the requests in replay finish first).
const SHADOW_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// A health watcher per checked service, a load watcher per weighed one,
/// an analysis watcher per analysed one, a lifecycle watcher per one
/// whose colors bluegreen starts and stops, and a shadowing watcher per
/// service (any can be ordered shadowed); `stopping` stops the runs.
fn start_checkers(
    host: &Host,
    services: &[ServiceSpec],
    observations: &Shared,
    stopping: &watch::Sender<Option<bluegreen::shadow::engine::StopReason>>,
) -> Vec<JoinHandle<()>> {
    let mut checkers = Vec::new();
    for spec in services {
        let (host, name, observations) = (host.clone(), spec.name.clone(), observations.clone());
        checkers.push(tokio::spawn(keep_watching(
            host.clone(),
            name.clone(),
            observations.clone(),
            ShadowWatch::new(stopping.subscribe()),
        )));
        if spec.health.is_some() {
            checkers.push(tokio::spawn(keep_watching(
                host.clone(),
                name.clone(),
                observations.clone(),
                HealthWatch::default(),
            )));
        }
        if spec.lifecycle.is_some() {
            checkers.push(tokio::spawn(keep_watching(
                host.clone(),
                name.clone(),
                observations.clone(),
                LifecycleWatch::default(),
            )));
        }
        if !spec.analysis.is_empty() {
            checkers.push(tokio::spawn(keep_watching(
                host.clone(),
                name.clone(),
                observations.clone(),
                AnalysisWatch::default(),
            )));
        }
        if spec.load.is_some() {
            checkers.push(tokio::spawn(keep_watching(
                host,
                name,
                observations,
                LoadWatch::default(),
            )));
        }
    }
    checkers
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
