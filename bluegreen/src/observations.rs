//! What the daemon has seen that the kernel's maps do not hold: the health
//! of each checked service's colors. Written by the daemon's watchers, read
//! by the metrics endpoint.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use bluegreen::{endpoint::Color, health::Health};

#[derive(Default)]
pub struct Observations {
    /// (service, color) -> health.
    pub health: BTreeMap<(String, Color), Health>,
}

pub type Shared = Arc<Mutex<Observations>>;
