//! The service the watches' policies are tested on, as a round sees it.

use bluegreen::{
    config::ServiceSpec,
    endpoint::{Color, Proto},
    host::ServiceView,
    state::ServiceRecord,
};

/// When the service last switched, in Unix milliseconds.
pub(super) const SWITCHED_AT_MS: u64 = 1_000_000;

/// Service "chat" with one backend per color, `active` after `previous`
/// (the same color: never switched), switched at [`SWITCHED_AT_MS`].
pub(super) fn view(active: Color, previous: Color) -> ServiceView {
    let spec = ServiceSpec {
        active,
        ..ServiceSpec::new(
            "chat".to_owned(),
            "10.0.0.1:80".parse().expect("literal"),
            Proto::Tcp,
            "10.1.0.2:80".parse().expect("literal"),
            "10.1.0.3:80".parse().expect("literal"),
        )
    };
    ServiceView {
        active,
        previous,
        pools: [spec.blue.clone(), spec.green.clone()],
        record: ServiceRecord {
            spec,
            previous,
            counter_slot: 0,
            switched_at_unix_ms: Some(SWITCHED_AT_MS),
            weight: 0,
            preview: Vec::new(),
        },
        shadow: None,
    }
}
