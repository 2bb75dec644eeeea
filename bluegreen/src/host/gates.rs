//! The release gates (see [`crate::verify`]) against a color: before an
//! operator's switch or rollback sends it traffic, and on their own for
//! `bluegreen verify`.
//!
//! They run without the interface lock: an evaluation may take minutes,
//! and holding the lock that long would block every other command on the
//! interface (status aside), the daemon's rollbacks included. The change
//! itself is then made under the lock, and only if it still sends traffic
//! to the color that passed; a concurrent change that moved the target
//! meanwhile makes it refuse rather than move traffic to a color no gate
//! has judged.

use bluegreen_common::ServiceState;

use super::{Host, Lock, OpenService, switching::traffic_direction};
use crate::{
    clock::unix_now_ms,
    endpoint::Color,
    error::{Error, Result},
    verify::VerifyReport,
};

impl Host {
    /// Runs every gate the service configures against `color` now,
    /// changing nothing (an empty report when it configures none).
    pub fn verify(&self, service: Option<&str>, color: Color) -> Result<VerifyReport> {
        self.run_gates(self.open_service(service, Lock::None)?, color)
    }

    /// The gates of the `open` service against `color`, the service
    /// closed while they run.
    fn run_gates(&self, open: OpenService, color: Color) -> Result<VerifyReport> {
        let view = self.view_of(&open);
        let target = view.target(color, view.active);
        let spec = open.record().spec.clone();
        // The maps are not needed while the gates run.
        drop(open);
        spec.gates().run(&target, self.launcher, || {
            self.state.create_verify_log(&format!(
                "{}-{color}-{}.log",
                target.service,
                unix_now_ms()
            ))
        })
    }

    /// Before a change (`decide`, as `change_colors` takes it): runs the
    /// gates against the color it would send traffic to, and refuses it
    /// with the first failing gate. The color that passed, with the
    /// report; `None` when the service has no gate or nothing would change.
    pub(super) fn gate_change(
        &self,
        service: Option<&str>,
        decide: &impl Fn(&str, &ServiceState) -> Result<ServiceState>,
    ) -> Result<Option<(Color, VerifyReport)>> {
        let open = self.open_service(service, Lock::None)?;
        let gates = open.record().spec.gates();
        if gates.is_empty() {
            return Ok(None);
        }
        let after = decide(open.name(), &open.live)?;
        if after == open.live {
            return Ok(None);
        }
        let (_, to) = traffic_direction(&open.live, &after);
        let active = Color::from_wire(open.live.active);
        // Marked while the gates run, so that the daemon does not stop
        // the color under them; a color not running is refused at once.
        let name = open.name().to_owned();
        let report = if open.record().spec.lifecycle.is_some() {
            drop(open);
            self.mark_switching(&name, to, true)?;
            let report = self.run_gates(self.open_service(Some(&name), Lock::None)?, to);
            if let Err(error) = self.mark_switching(&name, to, false) {
                log::warn!("{name}: cannot clear the switch in progress to {to}: {error}");
            }
            report?
        } else {
            self.run_gates(open, to)?
        };
        if let Some(failed) = report.failure() {
            return Err(Error::GateFailed {
                service: report.service.clone(),
                color: to,
                gate: failed.gate,
                detail: failed.detail.clone(),
                log: failed.log.clone(),
                tail: failed.tail.clone(),
                active,
            });
        }
        Ok(Some((to, report)))
    }
}
