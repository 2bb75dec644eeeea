//! The daemon's shadowing of one service: a run ordered by `shadow start`
//! (or, with `[service.shadow] enabled = true`, from the daemon's start) is
//! run as a task of the daemon, which stops it when the daemon exits. The
//! run itself stops on its duration, a switch, an unhealthy idle color or
//! `shadow stop`.

use std::{ops::ControlFlow, time::Duration};

use bluegreen::{
    host::{Host, ServiceView},
    shadow::{engine::StopReason, options::ShadowConfig},
};
use tokio::{sync::watch, task::JoinHandle};

use super::periodic::Watch;
use crate::observations::Shared;

/// How often orders are looked for: `shadow start` waits for the daemon.
const INTERVAL: Duration = Duration::from_secs(1);

pub(super) struct ShadowWatch {
    /// Set when the daemon exits: every run stops.
    stopping: watch::Receiver<Option<StopReason>>,
    run: Option<JoinHandle<()>>,
    /// `[service.shadow] enabled` starts one run per daemon start (or
    /// reload), not another each time one ends.
    enabled_started: bool,
}

impl ShadowWatch {
    pub(super) fn new(stopping: watch::Receiver<Option<StopReason>>) -> Self {
        Self {
            stopping,
            run: None,
            enabled_started: false,
        }
    }
}

impl Watch for ShadowWatch {
    /// Every service can be ordered shadowed; a config only adds defaults.
    type Settings = Option<ShadowConfig>;

    fn settings(view: &ServiceView) -> Option<Option<ShadowConfig>> {
        Some(view.record.spec.shadow.clone())
    }

    fn interval(_: &Option<ShadowConfig>) -> Duration {
        INTERVAL
    }

    fn forget(_: &str, _: &Shared) {}

    async fn round(
        &mut self,
        host: &Host,
        name: &str,
        _: &ServiceView,
        config: &Option<ShadowConfig>,
        _: &Shared,
    ) -> ControlFlow<()> {
        if self.run.as_ref().is_some_and(JoinHandle::is_finished) {
            self.run = None;
        }
        if self.run.is_some() {
            return ControlFlow::Continue(());
        }
        // A `shadow run` killed outright leaves capture on: turned off here.
        match host.end_abandoned_shadow(name) {
            Ok(Some(record)) => log::warn!(
                "{name}: turned shadow capture off: the run's owner (pid {}) ended without stopping it",
                record.owner.pid
            ),
            Ok(None) => {}
            Err(error) => log::warn!("{name}: {error}"),
        }
        let options = match config {
            Some(config) if config.enabled && !self.enabled_started => {
                self.enabled_started = true;
                // After a reload, the run the earlier config started may
                // still be going.
                if host
                    .shadow_record(Some(name))
                    .is_ok_and(|record| record.is_some_and(|record| record.is_running()))
                {
                    return ControlFlow::Continue(());
                }
                config
                    .settings
                    .options()
                    .map_err(|reason| bluegreen::Error::ShadowRefused {
                        service: name.to_owned(),
                        reason: format!("its [service.shadow]: {reason}"),
                    })
            }
            _ => match host.take_shadow_start(name) {
                Ok(Some(options)) => options,
                Ok(None) => return ControlFlow::Continue(()),
                Err(error) => Err(error),
            },
        };
        let options = match options {
            Ok(options) => options,
            Err(error) => {
                log::error!("{name}: shadowing not started: {error}");
                return ControlFlow::Continue(());
            }
        };
        let (host, name, stopping) = (host.clone(), name.to_owned(), self.stopping.clone());
        log::info!(
            "{name}: shadowing {} of new flows to the idle color",
            options.sample
        );
        self.run = Some(tokio::spawn(async move {
            match host.shadow(Some(&name), options, true, stopping).await {
                Ok(record) => {
                    let reason = record
                        .stopped
                        .map_or_else(String::new, |stopped| stopped.reason.to_string());
                    log::info!("{name}: shadowing ended: {reason}");
                }
                Err(error) => log::error!("{name}: shadowing not started: {error}"),
            }
        }));
        ControlFlow::Continue(())
    }
}

/// Stops every run of this daemon and waits (at most `wait`) for them to
/// write their last record, so that none is left marked running.
pub(super) async fn stop_runs(
    host: &Host,
    stopping: &watch::Sender<Option<StopReason>>,
    services: &[String],
    wait: Duration,
) {
    let _ = stopping.send(Some(StopReason::Requested));
    let deadline = tokio::time::Instant::now() + wait;
    let own = std::process::id();
    while tokio::time::Instant::now() < deadline {
        let running = services.iter().any(|name| {
            host.shadow_record(Some(name)).is_ok_and(|record| {
                record.is_some_and(|record| record.stopped.is_none() && record.owner.pid == own)
            })
        });
        if !running {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
