//! The daemon's automatic rollback, one for every watch that decides one
//! (health, metric analysis).

use std::ops::ControlFlow;

use bluegreen::{
    endpoint::Color,
    host::{Host, SwitchOptions, SwitchTarget},
};
use bluegreen_common::ChangeCause;

/// Rolls `name` back from `active`, the color the watch's round judged,
/// only if it is still active when the change is made: an operator's
/// change landing meanwhile is left alone. `check` probes the color it
/// returns to first; `why` says what failed, for the log. `Break` when the
/// runtime is shutting down.
pub(super) async fn roll_back(
    host: &Host,
    name: &str,
    active: Color,
    options: SwitchOptions,
    why: &str,
) -> ControlFlow<()> {
    let rolled_back = {
        let (host, service) = (host.clone(), name.to_owned());
        tokio::task::spawn_blocking(move || {
            host.switch(Some(&service), SwitchTarget::PreviousFrom(active), options)
        })
        .await
    };
    match rolled_back {
        Ok(Ok(outcome)) if !outcome.changed => log::info!(
            "{name}: no rollback: {active} is no longer active (a change was made meanwhile)"
        ),
        Ok(Ok(outcome)) => log::warn!(
            "{name}: rolled back {} -> {} ({}) because {why}",
            outcome.from,
            outcome.to,
            if options.force { "forced" } else { "graceful" },
        ),
        Ok(Err(error)) => log::error!("{name}: {why}; the automatic rollback failed: {error}"),
        Err(_) => return ControlFlow::Break(()),
    }
    ControlFlow::Continue(())
}

/// The options of a rollback by `cause`.
pub(super) fn options(cause: ChangeCause, force: bool, check: bool) -> SwitchOptions {
    SwitchOptions {
        force,
        check,
        gates: false,
        cause,
    }
}
