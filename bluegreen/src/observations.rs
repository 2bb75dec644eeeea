//! What the daemon has seen that the kernel's maps do not hold: health
//! states and the switches it counted. Written by the daemon's watchers,
//! read by the metrics endpoint.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use bluegreen::{endpoint::Color, health::Health};

#[derive(Default)]
pub struct Observations {
    /// (service, color) -> health.
    pub health: BTreeMap<(String, Color), Health>,
    /// (service, cause) -> count. Causes: `operator`, `auto_rollback`.
    pub switches: BTreeMap<(String, &'static str), u64>,
    /// (service, cause) -> count of automatic rollbacks.
    pub rollbacks: BTreeMap<(String, &'static str), u64>,
}

pub type Shared = Arc<Mutex<Observations>>;
