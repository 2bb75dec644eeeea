//! A color's lifecycle on this host (see [`crate::lifecycle`]): starting
//! it and waiting until every backend is ready, holding it up, refusing
//! traffic to a color that is not running, and the daemon's scale-down of
//! the idle color.
//!
//! Every change of the lifecycle record is made under the interface lock,
//! the lock a switch commits under, so a switch and a stop never cross:
//! the commit refuses a color marked stopping, and the stop is decided on
//! the service's state of that moment. The commands themselves run without
//! the lock (a model server may take minutes to load), their progress in
//! the record: a process that died midway is told from one still at it by
//! its pid.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bluegreen_common::SERVICE_HAS_PREVIEW;

use super::{Host, Lock, OpenService};
use crate::{
    clock::unix_now_ms,
    endpoint::Color,
    error::{Error, Result},
    lifecycle::{ColorLifecycle, Lifecycle, LifecycleRecord, Phase, Plan, Serving, plan},
    verify::run_command,
};

/// Whether the process `pid` still runs.
pub(crate) fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// This process's pid, recorded while it acts on a color.
fn own_pid() -> u32 {
    std::process::id()
}

/// What `start` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    pub service: String,
    pub color: Color,
    /// False when the color was running already: nothing was run.
    pub ran: bool,
    /// The start command's own time, then the wait for every backend.
    pub command: Duration,
    pub ready: Duration,
}

/// What the daemon's scale-down round found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleDown {
    pub service: String,
    pub plan: Plan,
    /// The stop command's failure, when it ran and failed.
    pub failed: Option<String>,
}

impl OpenService {
    fn lifecycle_settings(&self) -> Result<Lifecycle> {
        self.record()
            .spec
            .lifecycle
            .clone()
            .ok_or_else(|| Error::InvalidService {
                service: self.name().to_owned(),
                message: "it has no [service.lifecycle] table: bluegreen does not know how to start or stop its colors".to_owned(),
            })
    }
}

impl Host {
    /// Applies `change` to `service`'s lifecycle record under its
    /// interface lock, and saves it; returns what `change` returns.
    fn change_lifecycle<T>(
        &self,
        service: Option<&str>,
        change: impl FnOnce(&OpenService, &mut LifecycleRecord) -> Result<T>,
    ) -> Result<T> {
        let open = self.open_service(service, Lock::Exclusive)?;
        let mut record = self.state.load_lifecycle(open.name())?;
        let result = change(&open, &mut record)?;
        self.state.save_lifecycle(open.name(), &record)?;
        Ok(result)
    }

    /// The service's name and both colors' lifecycle records.
    pub fn lifecycle(&self, service: Option<&str>) -> Result<(String, LifecycleRecord)> {
        let open = self.open_service(service, Lock::None)?;
        let record = self.state.load_lifecycle(open.name())?;
        Ok((open.name().to_owned(), record))
    }

    /// Holds `color` up (the daemon never stops it) or releases it;
    /// returns the service's name.
    pub fn hold(&self, service: Option<&str>, color: Color, held: bool) -> Result<String> {
        self.change_lifecycle(service, |open, record| {
            open.lifecycle_settings()?;
            record.color_mut(color).held = held;
            Ok(open.name().to_owned())
        })
    }

    /// Refuses a change that would send new flows to `color` while it is
    /// not running. Called under the interface lock, with the commit.
    pub(super) fn require_running(&self, open: &OpenService, color: Color) -> Result<()> {
        if open.record().spec.lifecycle.is_none() {
            return Ok(());
        }
        let record = self.state.load_lifecycle(open.name())?;
        let lifecycle = record.color(color);
        if lifecycle.phase == Phase::Running {
            return Ok(());
        }
        Err(Error::ColorNotRunning {
            service: open.name().to_owned(),
            color,
            phase: lifecycle.phase,
            since_unix_ms: lifecycle.since_unix_ms,
        })
    }

    /// Marks (this process) or clears the switch in progress to `color`
    /// of a service with a lifecycle, so that the daemon does not stop it
    /// while the release gates run. Fails when `color` is not running.
    pub(super) fn mark_switching(&self, service: &str, color: Color, on: bool) -> Result<()> {
        self.change_lifecycle(Some(service), |open, record| {
            if on {
                self.require_running(open, color)?;
            }
            record.color_mut(color).switching_pid = on.then(own_pid);
            Ok(())
        })
    }

    /// Starts `color` with the service's start command, then waits until
    /// every backend of the color that takes new flows passes the health
    /// check (a TCP connect without one), telling `waiting` which are not
    /// ready yet and why. A color recorded running whose backends answer
    /// is left alone. On any failure the color is recorded stopped, with
    /// why: traffic never moved, and the next start runs the command
    /// again.
    pub fn start_color(
        &self,
        service: Option<&str>,
        color: Color,
        mut waiting: impl FnMut(&[(SocketAddr, String)], Duration),
    ) -> Result<Started> {
        let (name, to_start) = self.change_lifecycle(service, |open, record| {
            let name = open.name().to_owned();
            let settings = open.lifecycle_settings()?;
            // It serves: a failed start would record it stopped under its
            // clients, and a rollback to it would be refused.
            if color == Color::from_wire(open.live.active) {
                return Err(Error::InvalidService {
                    service: name,
                    message: format!(
                        "{color} is the active color: start only the idle one (a backend of the active color that does not answer is the health check's, or `backend` commands', to handle)"
                    ),
                });
            }
            let lifecycle = record.color_mut(color);
            match lifecycle.phase {
                Phase::Starting | Phase::Stopping if lifecycle.pid.is_some_and(alive) => {
                    return Err(Error::InvalidService {
                        service: name,
                        message: format!(
                            "{color} is {} by process {}: wait for it",
                            lifecycle.phase,
                            lifecycle.pid.unwrap_or_default()
                        ),
                    });
                }
                // Up as far as bluegreen knows: started only if a backend
                // does not answer (it was never started, or died).
                Phase::Running if ready_now(open, color) => return Ok((name, None)),
                _ => {}
            }
            *lifecycle = ColorLifecycle {
                phase: Phase::Starting,
                since_unix_ms: unix_now_ms(),
                pid: Some(own_pid()),
                last_error: None,
                switching_pid: None,
                ..lifecycle.clone()
            };
            let check = open.admission_check().map(|(check, _)| check);
            Ok((name, Some((settings, open.pool(color).serving(), check))))
        })?;
        let Some((settings, backends, check)) = to_start else {
            return Ok(Started {
                service: name,
                color,
                ran: false,
                command: Duration::ZERO,
                ready: Duration::ZERO,
            });
        };
        let started = Instant::now();
        let outcome = self
            .run_lifecycle_command(
                &name,
                color,
                "start",
                &settings.start,
                settings.start_timeout_secs,
                &backends,
            )
            .and_then(|()| {
                let command = started.elapsed();
                let ready = wait_ready(
                    check.as_ref(),
                    &backends,
                    Duration::from_secs(settings.ready_timeout_secs),
                    &mut waiting,
                )
                .map_err(|reason| {
                    // Started but never ready: what did start (and may
                    // hold GPUs) is stopped, since a color recorded stopped
                    // is never stopped again.
                    match self.run_lifecycle_command(
                        &name,
                        color,
                        "stop",
                        &settings.stop,
                        settings.stop_timeout_secs,
                        &backends,
                    ) {
                        Ok(()) => format!("{reason}; stopped again"),
                        Err(stop) => format!("{reason}; and stopping it again failed: {stop}"),
                    }
                })?;
                Ok((command, ready))
            });
        self.change_lifecycle(Some(&name), |_, record| {
            let lifecycle = record.color_mut(color);
            lifecycle.pid = None;
            lifecycle.since_unix_ms = unix_now_ms();
            match &outcome {
                Ok(_) => {
                    lifecycle.phase = Phase::Running;
                    lifecycle.starts += 1;
                }
                Err(reason) => {
                    lifecycle.phase = Phase::Stopped;
                    lifecycle.failures += 1;
                    lifecycle.last_error = Some(format!("start: {reason}"));
                }
            }
            Ok(())
        })?;
        let (command, ready) = outcome.map_err(|reason| Error::LifecycleFailed {
            service: name.clone(),
            color,
            action: "start",
            reason,
        })?;
        Ok(Started {
            service: name,
            color,
            ran: true,
            command,
            ready,
        })
    }

    /// `action`'s command for `color` (`{color}` and `{service}` filled
    /// in, the color in its environment), its output in a log under the
    /// state directory, named in the failure.
    fn run_lifecycle_command(
        &self,
        service: &str,
        color: Color,
        action: &str,
        argv: &[String],
        timeout_secs: u64,
        backends: &[SocketAddr],
    ) -> std::result::Result<(), String> {
        let (path, log) = self
            .state
            .create_verify_log(&format!("{service}-{color}-{action}-{}.log", unix_now_ms()))
            .map_err(|error| error.to_string())?;
        let argv = Lifecycle::render(argv, service, color);
        let env = Lifecycle::environment(service, color, backends);
        let unit = format!("bluegreen-{action}-{service}-{color}-{}", unix_now_ms());
        run_command(&argv, &env, self.launcher, &unit, timeout_secs, &log).map_err(|reason| {
            format!(
                "{}: {reason} (output in {})",
                argv.join(" "),
                path.display()
            )
        })
    }

    /// Stops `color` now, as the daemon would once its window passed:
    /// only the idle color, with no share of new flows, no preview
    /// prefixes and no live flow (`bluegreen stop`, e.g. a color that was
    /// never started). Returns the service's name.
    pub fn stop_color(&self, service: Option<&str>, color: Color) -> Result<String> {
        let (name, settings, backends) = self.change_lifecycle(service, |open, record| {
            let name = open.name().to_owned();
            let settings = open.lifecycle_settings()?;
            let serving = self.serving(open, true)?;
            let refuse = |why: String| Error::InvalidService {
                service: name.clone(),
                message: format!("{color} is not stopped: {why}"),
            };
            if color == serving.active {
                return Err(refuse("it is the active color".to_owned()));
            }
            let lifecycle = record.color_mut(color);
            let busy = lifecycle.pid.is_some_and(alive);
            match lifecycle.phase {
                Phase::Stopped => return Err(refuse("it is stopped already".to_owned())),
                Phase::Starting | Phase::Stopping if busy => {
                    return Err(refuse(format!(
                        "it is {} by process {}",
                        lifecycle.phase,
                        lifecycle.pid.unwrap_or_default()
                    )));
                }
                _ => {}
            }
            let why = if lifecycle.held {
                Some(format!("it is held (`bluegreen release {color}` first)"))
            } else if serving.idle_share > 0 {
                Some("it has a weighted share of new flows".to_owned())
            } else if serving.has_preview {
                Some("preview prefixes reach it".to_owned())
            } else if serving.idle_flows > 0 {
                Some(format!(
                    "it still has {} live flows (`bluegreen switch --wait-drain` waits for them)",
                    serving.idle_flows
                ))
            } else {
                lifecycle
                    .switching_pid
                    .filter(|pid| alive(*pid))
                    .map(|_| "a switch to it is in progress".to_owned())
            };
            if let Some(why) = why {
                return Err(refuse(why));
            }
            lifecycle.phase = Phase::Stopping;
            lifecycle.since_unix_ms = unix_now_ms();
            lifecycle.pid = Some(own_pid());
            Ok((name, settings, open.pool(color).serving()))
        })?;
        let stopped = self.finish_stop(&name, color, &settings, &backends);
        stopped
            .map(|()| name.clone())
            .map_err(|reason| Error::LifecycleFailed {
                service: name,
                color,
                action: "stop",
                reason,
            })
    }

    /// Runs the stop command of `color`, marked stopping, and records how
    /// it ended: stopped, or (failed) still running with its window
    /// started again, so that the next try is a window away, not a tick.
    fn finish_stop(
        &self,
        service: &str,
        color: Color,
        settings: &Lifecycle,
        backends: &[SocketAddr],
    ) -> std::result::Result<(), String> {
        let stopped = self.run_lifecycle_command(
            service,
            color,
            "stop",
            &settings.stop,
            settings.stop_timeout_secs,
            backends,
        );
        let recorded = self.change_lifecycle(Some(service), |_, record| {
            let lifecycle = record.color_mut(color);
            lifecycle.pid = None;
            lifecycle.since_unix_ms = unix_now_ms();
            match &stopped {
                Ok(()) => {
                    lifecycle.phase = Phase::Stopped;
                    lifecycle.stops += 1;
                    lifecycle.last_error = None;
                }
                Err(reason) => {
                    lifecycle.phase = Phase::Running;
                    lifecycle.failures += 1;
                    lifecycle.last_error = Some(format!("stop: {reason}"));
                }
            }
            Ok(())
        });
        stopped.and(recorded.map_err(|error| error.to_string()))
    }

    /// One round of the daemon's scale-down of `service`'s idle color:
    /// decides under the interface lock (see [`crate::lifecycle::plan`])
    /// and acts on it. `None` when the service has no lifecycle.
    pub fn scale_down(&self, service: &str) -> Result<Option<ScaleDown>> {
        // A first look without the lock: most rounds find nothing to do,
        // and the flow table is walked only once a stop is otherwise due
        // (a color draining for hours must not hold the lock every round).
        let open = self.open_service(Some(service), Lock::None)?;
        let Some(settings) = open.record().spec.lifecycle.clone() else {
            return Ok(None);
        };
        let record = self.state.load_lifecycle(service)?;
        let look = |count_flows| -> Result<Plan> {
            Ok(plan(
                settings.scale_down_after_secs,
                &self.serving(&open, count_flows)?,
                &record,
                alive,
                unix_now_ms(),
            ))
        };
        let mut first_look = look(false)?;
        if matches!(first_look, Plan::Stop { .. }) {
            first_look = look(true)?;
        }
        drop(open);
        if !first_look.acts() {
            return Ok(Some(ScaleDown {
                service: service.to_owned(),
                plan: first_look,
                failed: None,
            }));
        }
        let decided = self.change_lifecycle(Some(service), |open, record| {
            let Some(settings) = open.record().spec.lifecycle.clone() else {
                return Ok(None);
            };
            let serving = self.serving(open, true)?;
            let decided = plan(
                settings.scale_down_after_secs,
                &serving,
                record,
                alive,
                unix_now_ms(),
            );
            match decided {
                Plan::Stop { color } | Plan::ResumeStop { color } => {
                    let lifecycle = record.color_mut(color);
                    lifecycle.phase = Phase::Stopping;
                    lifecycle.since_unix_ms = unix_now_ms();
                    lifecycle.pid = Some(own_pid());
                }
                Plan::AbandonStart { color } => {
                    let lifecycle = record.color_mut(color);
                    lifecycle.phase = Phase::Stopped;
                    lifecycle.since_unix_ms = unix_now_ms();
                    lifecycle.pid = None;
                    lifecycle.last_error =
                        Some("start: interrupted (its process is gone)".to_owned());
                }
                _ => {}
            }
            Ok(Some((
                decided,
                settings,
                open.pool(serving.active.other()).serving(),
            )))
        })?;
        let Some((decided, settings, backends)) = decided else {
            return Ok(None);
        };
        let (Plan::Stop { color } | Plan::ResumeStop { color }) = decided else {
            return Ok(Some(ScaleDown {
                service: service.to_owned(),
                plan: decided,
                failed: None,
            }));
        };
        let stopped = self.finish_stop(service, color, &settings, &backends);
        Ok(Some(ScaleDown {
            service: service.to_owned(),
            plan: decided,
            failed: stopped.err(),
        }))
    }

    /// The service as the scale-down decision sees it, its idle color's
    /// live flows counted now when `count_flows` (else taken as none: a
    /// walk of the flow table is only worth it once a stop is due).
    pub(super) fn serving(&self, open: &OpenService, count_flows: bool) -> Result<Serving> {
        let active = Color::from_wire(open.live.active);
        let idle_flows = if count_flows {
            self.live_flows_of(open)?[usize::from(active.other().wire())]
        } else {
            0
        };
        Ok(Serving {
            active,
            idle_share: open.live.weight,
            has_preview: open.live.flags & SERVICE_HAS_PREVIEW != 0,
            switched_at_unix_ms: open.record().switched_at_unix_ms,
            idle_flows,
        })
    }
}

/// Whether every backend of `color` that takes new flows passes the
/// admission check now (a UDP service without a health check has none to
/// pass).
fn ready_now(open: &OpenService, color: Color) -> bool {
    open.admission_check()
        .is_none_or(|(check, _)| check.probe_pool(&open.pool(color).serving()).is_ok())
}

/// Polls `backends` with `check` (a TCP connect without one) until every
/// one passes, telling `waiting` which do not yet; the time it took, or
/// why it gave up at `deadline`.
fn wait_ready(
    check: Option<&crate::health::HealthCheck>,
    backends: &[SocketAddr],
    deadline: Duration,
    waiting: &mut impl FnMut(&[(SocketAddr, String)], Duration),
) -> std::result::Result<Duration, String> {
    let started = Instant::now();
    let connect = crate::health::HealthCheck::new(crate::health::Probe::Tcp);
    let check = check.unwrap_or(&connect);
    // Soon at first (a backend may listen within milliseconds of its
    // start command), then backing off to a look every 250 ms for one
    // that loads its weights for minutes.
    let mut pause = Duration::from_millis(10);
    loop {
        let not_ready: Vec<(SocketAddr, String)> = backends
            .iter()
            .copied()
            .zip(check.probe_each(backends))
            .filter_map(|(backend, result)| result.err().map(|reason| (backend, reason)))
            .collect();
        if not_ready.is_empty() {
            return Ok(started.elapsed());
        }
        waiting(&not_ready, started.elapsed());
        if started.elapsed() >= deadline {
            let (backend, reason) = &not_ready[0];
            return Err(format!(
                "{} of {} backends not ready after {} s (first: {backend}: {reason})",
                not_ready.len(),
                backends.len(),
                deadline.as_secs()
            ));
        }
        std::thread::sleep(pause.min(deadline.saturating_sub(started.elapsed())));
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}
