//! The decisions the dataplane takes from the maps' contents, shared so
//! that userspace (the CLI's status and flow listings, the reference model)
//! judges exactly as the kernel does: which color a new flow takes, where a
//! forced switch sends established flows, and whether a flow entry still
//! counts. A change here changes what the dataplane does.

use crate::{
    endpoint::IPPROTO_UDP,
    flows::{FlowEntry, Settings},
    services::{COLOR_BLUE, COLOR_GREEN, SERVICE_FORCED_GREEN, SERVICE_HAS_PREVIEW, ServiceState},
};

/// The color that is not `color`.
#[inline(always)]
pub fn other_color(color: u8) -> u8 {
    (color ^ 1) & 1
}

/// The color a new flow takes: the idle one for preview clients and for
/// the weighted share, the active one otherwise. `hash` is the flow's
/// [`flow_hash`](crate::flows::flow_hash), which also picks its backend
/// within the color.
#[inline(always)]
pub fn new_flow_color(service: &ServiceState, hash: u32, in_preview: impl FnOnce() -> bool) -> u8 {
    let idle = other_color(service.active);
    if service.flags & SERVICE_HAS_PREVIEW != 0 && in_preview() {
        return idle;
    }
    if service.weight != 0 && hash % 100 < u32::from(service.weight) {
        return idle;
    }
    service.active
}

impl ServiceState {
    /// The color the last forced switch sent established flows to: where a
    /// flow recorded under an older generation goes on its next packet.
    ///
    /// Not `active`: flows are rebound lazily, so a graceful switch made
    /// after the force, before an idle flow sends again, would otherwise
    /// carry that flow along, breaking the promise that a graceful switch
    /// leaves established connections where they are. The force alone
    /// decides where they move.
    #[inline(always)]
    pub fn forced_color(&self) -> u8 {
        if self.flags & SERVICE_FORCED_GREEN != 0 {
            COLOR_GREEN
        } else {
            COLOR_BLUE
        }
    }

    /// This state with `color` recorded as the last forced switch's color,
    /// other flags untouched. A forced switch records its target along with
    /// the generation bump; a graceful switch or a shift keeps the recorded
    /// color. A newly added service records its active color: its fresh
    /// generation rebinds any flow left from an earlier service, and those
    /// belong on the active color.
    #[must_use]
    #[inline(always)]
    pub fn with_forced_color(self, color: u8) -> Self {
        let flags = if color & 1 == COLOR_GREEN {
            self.flags | SERVICE_FORCED_GREEN
        } else {
            self.flags & !SERVICE_FORCED_GREEN
        };
        Self { flags, ..self }
    }
}

impl Settings {
    /// Whether a flow entry still counts at `now` (jiffies). A stale entry
    /// is treated exactly as an absent one.
    #[inline(always)]
    pub fn is_live(&self, proto: u8, entry: &FlowEntry, now: u64) -> bool {
        let timeout = if proto == IPPROTO_UDP {
            self.udp_idle_timeout
        } else if entry.closing != 0 {
            self.tcp_closing_timeout
        } else {
            self.tcp_idle_timeout
        };
        now.saturating_sub(entry.last_seen) <= timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        endpoint::IPPROTO_TCP,
        flows::{FlowKey, Timeouts, flow_hash},
    };

    #[test]
    fn weighted_split_is_close_to_the_weight_over_varied_ports() {
        let service = ServiceState {
            weight: 10,
            ..Default::default()
        };
        let idle = (0..10_000u16)
            .filter(|port| {
                let key = FlowKey {
                    client: [10, 200, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    server: [10, 200, 100, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    client_port: (32768 + port).to_be_bytes(),
                    server_port: 80u16.to_be_bytes(),
                    ..Default::default()
                };
                new_flow_color(&service, flow_hash(&key), || false) == COLOR_GREEN
            })
            .count();
        assert!(
            (900..=1100).contains(&idle),
            "{idle} of 10000 went to the idle color"
        );
        let all = ServiceState {
            weight: 0,
            ..service
        };
        assert_eq!(new_flow_color(&all, 0, || true), COLOR_BLUE);
        let preview = ServiceState {
            flags: SERVICE_HAS_PREVIEW,
            ..all
        };
        assert_eq!(new_flow_color(&preview, 0, || true), COLOR_GREEN);
        assert_eq!(new_flow_color(&preview, 0, || false), COLOR_BLUE);
    }

    #[test]
    fn the_forced_color_is_its_own_flag() {
        let preview = ServiceState {
            active: COLOR_GREEN,
            flags: SERVICE_HAS_PREVIEW,
            ..Default::default()
        };
        assert_eq!(preview.forced_color(), COLOR_BLUE, "nothing forced yet");
        let forced = preview.with_forced_color(COLOR_GREEN);
        assert_eq!(forced.forced_color(), COLOR_GREEN);
        assert_eq!(forced.flags, SERVICE_HAS_PREVIEW | SERVICE_FORCED_GREEN);
        let back = forced.with_forced_color(COLOR_BLUE);
        assert_eq!(back.forced_color(), COLOR_BLUE);
        assert_eq!(back.flags, SERVICE_HAS_PREVIEW, "the preview flag stays");
        assert_eq!(
            ServiceState {
                active: COLOR_BLUE,
                ..forced
            }
            .forced_color(),
            COLOR_GREEN,
            "a graceful switch leaves the forced color alone"
        );
    }

    #[test]
    fn stale_entries_are_judged_by_protocol_and_closing_state() {
        let timeouts = Timeouts {
            tcp_idle_secs: 100,
            tcp_closing_secs: 10,
            udp_idle_secs: 30,
        };
        let settings = Settings::new(&timeouts, 1);
        let mut entry = FlowEntry {
            last_seen: 1000,
            ..Default::default()
        };
        assert!(settings.is_live(IPPROTO_TCP, &entry, 1100));
        assert!(!settings.is_live(IPPROTO_TCP, &entry, 1101));
        assert!(settings.is_live(IPPROTO_UDP, &entry, 1030));
        assert!(!settings.is_live(IPPROTO_UDP, &entry, 1031));
        entry.closing = 1;
        assert!(settings.is_live(IPPROTO_TCP, &entry, 1010));
        assert!(!settings.is_live(IPPROTO_TCP, &entry, 1011));
        // A clock reading older than the entry (another CPU raced ahead) is live.
        assert!(settings.is_live(IPPROTO_TCP, &entry, 900));
        assert_eq!(Settings::new(&timeouts, 250).udp_idle_timeout, 7500);
    }
}
