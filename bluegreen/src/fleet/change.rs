//! A fleet change, all or nothing, as a state machine: once the desired
//! state is written, what the live hosts did decides whether the change
//! stands, is kept in part (`--best-effort`) or is undone, and what the
//! operator is told. The command writes, waits and restores through etcd
//! and reports what it saw; every decision is here, tested branch by
//! branch without an etcd.

use std::{fmt, time::Duration};

use super::{DesiredState, Progress};

/// One change of a service's desired state, from `before` to `desired`.
#[derive(Clone, Debug)]
pub struct FleetChange {
    pub service: String,
    pub before: DesiredState,
    pub desired: DesiredState,
    /// Keep the change on the hosts that applied it instead of undoing it.
    pub best_effort: bool,
    /// How long the hosts have to act on a revision.
    pub timeout: Duration,
}

/// What waiting for the live hosts to act on a revision gave.
#[derive(Clone, Debug)]
pub enum Waited {
    /// Every host acted (or, all or nothing, one refused), or the time ran
    /// out (`timed_out`: the pending hosts did not act in time). A host
    /// whose lease expired meanwhile is no longer live and waited for no
    /// more.
    Settled { progress: Progress, timed_out: bool },
    /// Waiting itself failed (etcd unreachable, the desired state moved
    /// under the command): some hosts may have applied the change.
    Lost(String),
}

/// What the command does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    Finish(Outcome),
    /// Write `before` back without waiting again (the hosts cannot be
    /// followed), then [`FleetChange::restored_blind`] or
    /// [`FleetChange::restore_failed`].
    RestoreBlind {
        lost: String,
    },
    /// Write `before` back and wait for the hosts, then
    /// [`FleetChange::restored`] or [`FleetChange::restore_failed`].
    Restore {
        failures: Vec<String>,
    },
}

/// How a change ended, for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every live host applied it.
    Converged { hosts: usize },
    /// `--best-effort`: kept where it was applied.
    KeptInPart {
        applied: usize,
        failures: Vec<String>,
    },
    /// `--best-effort`: written, but where it was applied is unknown.
    KeptUnfollowed { lost: String },
    /// Undone after hosts failed it; `not_back` lists the hosts that did
    /// not return to `before` (empty: every one did).
    Undone {
        failures: Vec<String>,
        not_back: Vec<String>,
    },
    /// Undone after the hosts could no longer be followed.
    UndoneUnfollowed { lost: String },
    /// Writing `before` back failed too: the fleet may be mixed.
    NotUndone { why: String, undo: String },
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        matches!(self, Outcome::Converged { .. })
    }
}

/// Each host that did not apply, and why.
pub fn failures(progress: &Progress, timed_out: bool, timeout: Duration) -> Vec<String> {
    let mut failures: Vec<String> = progress
        .refused
        .iter()
        .map(|(host, reason)| format!("{host} refused: {reason}"))
        .collect();
    if timed_out {
        failures.extend(
            progress
                .pending
                .iter()
                .map(|host| format!("{host} did not apply it within {} s", timeout.as_secs())),
        );
    }
    failures
}

impl FleetChange {
    /// The decision once the hosts were waited for: done when every live
    /// host applied it; otherwise kept (`--best-effort`) or undone.
    pub fn waited(&self, waited: Waited) -> Next {
        let (progress, timed_out) = match waited {
            Waited::Lost(lost) if self.best_effort => {
                return Next::Finish(Outcome::KeptUnfollowed { lost });
            }
            Waited::Lost(lost) => return Next::RestoreBlind { lost },
            Waited::Settled {
                progress,
                timed_out,
            } => (progress, timed_out),
        };
        if progress.is_converged() {
            return Next::Finish(Outcome::Converged {
                hosts: progress.applied.len(),
            });
        }
        let failures = failures(&progress, timed_out, self.timeout);
        if self.best_effort {
            return Next::Finish(Outcome::KeptInPart {
                applied: progress.applied.len(),
                failures,
            });
        }
        Next::Restore { failures }
    }

    /// `before` is written back after [`Next::RestoreBlind`].
    pub fn restored_blind(&self, lost: String) -> Outcome {
        Outcome::UndoneUnfollowed { lost }
    }

    /// `before` is written back after [`Next::Restore`] and the hosts were
    /// waited for again.
    pub fn restored(&self, failures: Vec<String>, back: Waited) -> Outcome {
        let not_back = match back {
            Waited::Settled { progress, .. } if progress.is_converged() => Vec::new(),
            Waited::Settled {
                progress,
                timed_out,
            } => self::failures(&progress, timed_out, self.timeout),
            Waited::Lost(lost) => vec![format!("the hosts could not be followed: {lost}")],
        };
        Outcome::Undone { failures, not_back }
    }

    /// Writing `before` back failed, after the change failed for `why`.
    pub fn restore_failed(&self, why: String, undo: String) -> Outcome {
        Outcome::NotUndone { why, undo }
    }

    /// What the operator reads of `outcome`.
    pub fn report<'a>(&'a self, outcome: &'a Outcome) -> Report<'a> {
        Report {
            change: self,
            outcome,
        }
    }
}

/// An outcome worded for the operator (see [`FleetChange::report`]).
pub struct Report<'a> {
    change: &'a FleetChange,
    outcome: &'a Outcome,
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let FleetChange {
            service,
            before,
            desired,
            ..
        } = self.change;
        match self.outcome {
            Outcome::Converged { hosts } => {
                write!(f, "{service}: every live host ({hosts}) applied {desired}")
            }
            Outcome::KeptInPart { applied, failures } => write!(
                f,
                "{service}: {desired} kept on the {applied} hosts that applied it (--best-effort); not on: {}",
                failures.join("; ")
            ),
            Outcome::KeptUnfollowed { lost } => write!(
                f,
                "{service}: {desired} is written (--best-effort keeps it) but waiting for the hosts failed: {lost}; check `bluegreen fleet status`"
            ),
            Outcome::Undone { failures, not_back } => {
                let restored = if not_back.is_empty() {
                    format!("every live host is back on {before}")
                } else {
                    format!(
                        "NOT every host is back on {before}: {}",
                        not_back.join("; ")
                    )
                };
                write!(
                    f,
                    "{service}: the change to {desired} failed and was undone ({restored}): {}",
                    failures.join("; ")
                )
            }
            Outcome::UndoneUnfollowed { lost } => write!(
                f,
                "{service}: the change to {desired} was undone (restoring {before}) after waiting for the hosts failed: {lost}; check `bluegreen fleet status`"
            ),
            Outcome::NotUndone { why, undo } => write!(
                f,
                "{service}: the change to {desired} is NOT undone: {why}, and restoring {before} failed too ({undo}); check `bluegreen fleet status` and run the command again"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Color;

    fn change(best_effort: bool) -> FleetChange {
        FleetChange {
            service: "web".to_owned(),
            before: DesiredState::initial(Color::Blue),
            desired: DesiredState::next(
                &DesiredState::initial(Color::Blue),
                Color::Green,
                100,
                false,
                "ops".to_owned(),
                1,
            ),
            best_effort,
            timeout: Duration::from_secs(30),
        }
    }

    fn progress(applied: &[&str], refused: &[(&str, &str)], pending: &[&str]) -> Progress {
        let names = |hosts: &[&str]| hosts.iter().map(|host| (*host).to_owned()).collect();
        Progress {
            applied: names(applied),
            refused: refused
                .iter()
                .map(|(host, why)| ((*host).to_owned(), (*why).to_owned()))
                .collect(),
            pending: names(pending),
        }
    }

    fn settled(progress: Progress, timed_out: bool) -> Waited {
        Waited::Settled {
            progress,
            timed_out,
        }
    }

    #[test]
    fn every_live_host_applying_it_is_done() {
        for best_effort in [false, true] {
            let next =
                change(best_effort).waited(settled(progress(&["h1", "h2"], &[], &[]), false));
            assert_eq!(next, Next::Finish(Outcome::Converged { hosts: 2 }));
        }
        // A host whose lease expired while the command waited is no longer
        // live: it is in no list, and the others decide.
        let next = change(false).waited(settled(progress(&["h1"], &[], &[]), false));
        assert!(matches!(next, Next::Finish(outcome) if outcome.succeeded()));
    }

    #[test]
    fn a_refusal_or_a_timeout_undoes_it_all_or_nothing() {
        let refused = progress(&["h1"], &[("h2", "green failed its health check")], &["h3"]);
        assert_eq!(
            change(false).waited(settled(refused, false)),
            Next::Restore {
                failures: vec!["h2 refused: green failed its health check".to_owned()]
            },
            "a refusal ends the wait: the pending host is not blamed"
        );
        let slow = progress(&["h1"], &[], &["h3"]);
        assert_eq!(
            change(false).waited(settled(slow, true)),
            Next::Restore {
                failures: vec!["h3 did not apply it within 30 s".to_owned()]
            }
        );
    }

    #[test]
    fn best_effort_keeps_what_was_applied() {
        let mixed = progress(&["h1"], &[("h2", "drifted")], &["h3"]);
        let next = change(true).waited(settled(mixed, true));
        let Next::Finish(outcome) = next else {
            panic!("best effort never restores: {next:?}");
        };
        assert!(!outcome.succeeded());
        let text = change(true).report(&outcome).to_string();
        assert!(text.contains("kept on the 1 hosts"), "{text}");
        assert!(
            text.contains("h2 refused: drifted; h3 did not apply it within 30 s"),
            "{text}"
        );
    }

    #[test]
    fn losing_the_hosts_mid_change_restores_without_waiting() {
        let lost = Waited::Lost("etcd unreachable".to_owned());
        let all_or_nothing = change(false);
        assert_eq!(
            all_or_nothing.waited(lost.clone()),
            Next::RestoreBlind {
                lost: "etcd unreachable".to_owned()
            }
        );
        let undone = all_or_nothing.restored_blind("etcd unreachable".to_owned());
        let text = all_or_nothing.report(&undone).to_string();
        assert!(text.contains("was undone (restoring blue)"), "{text}");
        let not_undone =
            all_or_nothing.restore_failed("etcd unreachable".to_owned(), "still down".to_owned());
        let text = all_or_nothing.report(&not_undone).to_string();
        assert!(text.contains("is NOT undone"), "{text}");
        assert!(!not_undone.succeeded());
        // Best effort keeps it, and says it could not follow it.
        assert_eq!(
            change(true).waited(lost),
            Next::Finish(Outcome::KeptUnfollowed {
                lost: "etcd unreachable".to_owned()
            })
        );
    }

    #[test]
    fn a_restore_says_which_hosts_did_not_come_back() {
        let all_or_nothing = change(false);
        let failures = vec!["h2 refused: no".to_owned()];
        let back = all_or_nothing.restored(
            failures.clone(),
            settled(progress(&["h1", "h2"], &[], &[]), false),
        );
        assert_eq!(
            back,
            Outcome::Undone {
                failures: failures.clone(),
                not_back: Vec::new()
            }
        );
        let text = all_or_nothing.report(&back).to_string();
        assert!(text.contains("every live host is back on blue"), "{text}");

        let stuck = all_or_nothing.restored(
            failures.clone(),
            settled(progress(&["h1"], &[], &["h3"]), true),
        );
        let text = all_or_nothing.report(&stuck).to_string();
        assert!(
            text.contains("NOT every host is back on blue: h3 did not apply it within 30 s"),
            "{text}"
        );
        let unfollowed = all_or_nothing.restored(failures, Waited::Lost("watch ended".to_owned()));
        let Outcome::Undone { not_back, .. } = unfollowed else {
            panic!("still undone: {unfollowed:?}");
        };
        assert_eq!(not_back, ["the hosts could not be followed: watch ended"]);
    }
}
