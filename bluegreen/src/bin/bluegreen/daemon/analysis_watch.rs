//! The daemon's analysis watch over one service (`[[service.analysis]]`):
//! measures the active color, compared with the previous one, every
//! analysis interval; publishes each analysis's last measurement (metrics,
//! and a state file for `status`); and, with `[service.auto_rollback]`
//! `analysis = true`, rolls back when an analysis fails its
//! `failure_limit` within the window after a switch.

use std::{ops::ControlFlow, time::Duration};

use bluegreen::{
    clock::unix_now_ms,
    config::AutoRollback,
    host::{Host, ServiceView},
    verify::{AnalysesRecord, Analysis, AnalysisStatus, NoData, Watched},
};
use bluegreen_common::ChangeCause;

use super::{periodic::Watch, rollback};
use crate::observations::Shared;

/// Whether the daemon rolls back now after an analysis `failed` its limit
/// (`now_ms`: Unix time in milliseconds): the policy asks for it, the
/// last switch is within its window, and there is a color to go back to.
fn should_roll_back(
    policy: Option<AutoRollback>,
    view: &ServiceView,
    failed: bool,
    now_ms: u64,
) -> bool {
    failed
        && view.previous != view.active
        && policy.is_some_and(|policy| {
            policy.analysis && policy.covers(view.record.switched_at_unix_ms, now_ms)
        })
}

#[derive(Default)]
pub(super) struct AnalysisWatch {
    /// The analyses as measured so far, with the settings they were built
    /// from (a reload that changes them starts afresh).
    watched: Option<(Vec<Analysis>, Watched)>,
    /// The switch whose window the failures are counted in.
    counting_since: Option<Option<u64>>,
    /// What was last kept for `status`: written again only when a
    /// measurement changed it, not every round.
    saved: Vec<AnalysisStatus>,
}

pub(super) struct Settings {
    analyses: Vec<Analysis>,
    policy: Option<AutoRollback>,
}

impl Watch for AnalysisWatch {
    type Settings = Settings;

    fn settings(view: &ServiceView) -> Option<Settings> {
        let spec = &view.record.spec;
        (!spec.analysis.is_empty()).then(|| Settings {
            analyses: spec.analysis.clone(),
            policy: spec.auto_rollback,
        })
    }

    /// Each analysis keeps its own interval; a round a second measures
    /// those that are due.
    fn interval(settings: &Settings) -> Duration {
        settings
            .analyses
            .iter()
            .map(Analysis::interval)
            .min()
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1))
    }

    fn forget(name: &str, observations: &Shared) {
        observations
            .lock()
            .expect("observations lock")
            .analyses
            .remove(name);
    }

    async fn round(
        &mut self,
        host: &Host,
        name: &str,
        view: &ServiceView,
        settings: &Settings,
        observations: &Shared,
    ) -> ControlFlow<()> {
        let switched_at = view.record.switched_at_unix_ms;
        // The active color, compared with the one it took over from.
        let target = view.target(view.active, view.previous);
        let (analyses, mut watched) = match self.watched.take() {
            Some((analyses, watched)) if analyses == settings.analyses => (analyses, watched),
            _ => {
                self.counting_since = None;
                // After a switch the daemon watches a color already live:
                // no data there is no reason to undo it, unless the
                // analysis says so.
                let watched = Watched::new(&settings.analyses, NoData::Pass);
                (settings.analyses.clone(), watched)
            }
        };
        let restart = self.counting_since != Some(switched_at);
        self.counting_since = Some(switched_at);
        let measured = tokio::task::spawn_blocking(move || {
            let now = unix_now_ms();
            let failed = if restart {
                watched.restart(&target, now);
                None
            } else {
                watched.measure_due(&target, now)
            };
            (watched, failed)
        })
        .await;
        let Ok((watched, failed)) = measured else {
            return ControlFlow::Break(());
        };
        let statuses = watched.statuses();
        self.watched = Some((analyses, watched));
        observations
            .lock()
            .expect("observations lock")
            .analyses
            .insert(name.to_owned(), statuses.clone());
        if !statuses.is_empty() && statuses != self.saved {
            let record = AnalysesRecord {
                schema_version: AnalysesRecord::SCHEMA_VERSION,
                analyses: statuses.clone(),
            };
            let (host, service) = (host.clone(), name.to_owned());
            let saved =
                tokio::task::spawn_blocking(move || host.save_analyses(&service, &record)).await;
            match saved {
                Ok(Ok(())) => self.saved = statuses,
                Ok(Err(error)) => {
                    log::warn!("{name}: cannot keep its analyses for `status`: {error}")
                }
                Err(_) => return ControlFlow::Break(()),
            }
        }
        let Some(failed) = failed else {
            return ControlFlow::Continue(());
        };
        if !should_roll_back(settings.policy, view, true, unix_now_ms()) {
            log::warn!("{name}: {} {failed}", view.active);
            return ControlFlow::Continue(());
        }
        let force = settings.policy.is_some_and(|policy| policy.force);
        // The previous color's health is checked, when the service has a
        // check: a rollback onto a dead color would be worse than a slow one.
        let options = rollback::options(ChangeCause::Analysis, force, true);
        rollback::roll_back(host, name, view.active, options, &failed.to_string()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::test_views::{SWITCHED_AT_MS, view};
    use bluegreen::endpoint::Color;

    const WITHIN_A_MINUTE: AutoRollback = AutoRollback {
        window_secs: 60,
        force: false,
        analysis: true,
    };

    #[test]
    fn a_failed_analysis_rolls_back_within_the_window_when_asked_to() {
        let green_after_blue = view(Color::Green, Color::Blue);
        let inside = SWITCHED_AT_MS + 60_000;
        assert!(should_roll_back(
            Some(WITHIN_A_MINUTE),
            &green_after_blue,
            true,
            inside
        ));
        assert!(!should_roll_back(
            Some(WITHIN_A_MINUTE),
            &green_after_blue,
            false,
            inside
        ));
        assert!(!should_roll_back(
            Some(WITHIN_A_MINUTE),
            &green_after_blue,
            true,
            inside + 1
        ));
    }

    #[test]
    fn no_rollback_without_the_policy_or_a_previous_color() {
        let green_after_blue = view(Color::Green, Color::Blue);
        let inside = SWITCHED_AT_MS + 1_000;
        let health_only = AutoRollback {
            analysis: false,
            ..WITHIN_A_MINUTE
        };
        assert!(!should_roll_back(
            Some(health_only),
            &green_after_blue,
            true,
            inside
        ));
        assert!(!should_roll_back(None, &green_after_blue, true, inside));
        let never_switched = view(Color::Green, Color::Green);
        assert!(!should_roll_back(
            Some(WITHIN_A_MINUTE),
            &never_switched,
            true,
            inside
        ));
    }
}
