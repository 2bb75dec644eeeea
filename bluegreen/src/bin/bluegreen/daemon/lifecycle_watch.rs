//! The daemon's lifecycle watch over one service (`[service.lifecycle]`):
//! every round, the library decides whether the idle color is due to be
//! stopped (drained, out of its window, not held, previewed, weighted or
//! switched to) and stops it; a stop or start interrupted by a crash is
//! resumed or written off. Each action is logged with its cause.

use std::{
    ops::ControlFlow,
    time::{Duration, Instant},
};

use bluegreen::{
    host::{Host, ScaleDown, ServiceView},
    lifecycle::{Lifecycle, Plan},
};

use super::periodic::Watch;
use crate::observations::Shared;

/// How often the idle color is looked at: a stop is never urgent, and a
/// look that finds one due walks the flow table.
const INTERVAL: Duration = Duration::from_secs(2);

/// How long a draining color is left before its flows are counted again:
/// each count walks the flow table.
const DRAIN_RECHECK: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(super) struct LifecycleWatch {
    /// The kind of the last plan logged, so that a wait is logged once,
    /// not every round (a drain's count changes every round).
    last: Option<std::mem::Discriminant<Plan>>,
    /// While the idle color drains: when to count its flows again.
    next_count: Option<Instant>,
}

impl Watch for LifecycleWatch {
    type Settings = Lifecycle;

    fn settings(view: &ServiceView) -> Option<Lifecycle> {
        view.record.spec.lifecycle.clone()
    }

    fn interval(_: &Lifecycle) -> Duration {
        INTERVAL
    }

    fn forget(_: &str, _: &Shared) {}

    async fn round(
        &mut self,
        host: &Host,
        name: &str,
        _: &ServiceView,
        _: &Lifecycle,
        _: &Shared,
    ) -> ControlFlow<()> {
        if self.next_count.is_some_and(|at| Instant::now() < at) {
            return ControlFlow::Continue(());
        }
        let round = {
            let (host, name) = (host.clone(), name.to_owned());
            tokio::task::spawn_blocking(move || host.scale_down(&name)).await
        };
        let scaled = match round {
            Ok(Ok(Some(scaled))) => scaled,
            Ok(Ok(None)) => return ControlFlow::Continue(()),
            Ok(Err(error)) => {
                log::warn!("{name}: scale-down round: {error}");
                return ControlFlow::Continue(());
            }
            Err(_) => return ControlFlow::Break(()),
        };
        let ScaleDown { plan, failed, .. } = &scaled;
        match (plan, failed) {
            (Plan::Stop { color } | Plan::ResumeStop { color }, Some(reason)) => {
                log::error!(
                    "{name}: stopping idle {color} failed (it stays up, next try a window later): {reason}"
                )
            }
            (Plan::Stop { color }, None) => {
                log::warn!("{name}: stopped idle {color}: drained and past its scale-down window")
            }
            (Plan::ResumeStop { color }, None) => {
                log::warn!("{name}: stopped idle {color}, resuming a stop whose process is gone")
            }
            (Plan::AbandonStart { color }, _) => {
                log::warn!(
                    "{name}: a start of {color} was interrupted (its process is gone): counted stopped"
                )
            }
            (waiting, _) if self.last != Some(std::mem::discriminant(waiting)) => match waiting {
                Plan::StopAt { color, at_unix_ms } => log::info!(
                    "{name}: idle {color} is stopped once drained, after {} (Unix ms)",
                    at_unix_ms
                ),
                Plan::StopAfter { color, reason } => {
                    log::info!("{name}: idle {color} stays up for now: {reason}")
                }
                Plan::Draining { color, flows } => {
                    log::info!("{name}: idle {color} is stopped once drained ({flows} live flows)")
                }
                _ => {}
            },
            _ => {}
        }
        self.next_count =
            matches!(scaled.plan, Plan::Draining { .. }).then(|| Instant::now() + DRAIN_RECHECK);
        self.last = Some(std::mem::discriminant(&scaled.plan));
        ControlFlow::Continue(())
    }
}
