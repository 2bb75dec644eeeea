//! `aya::Pod` for every map key and value, so that userspace can read and
//! write them. Together because one argument covers them all, and a new
//! type is checked against it here.

use crate::{
    counters::{SwitchCounters, TrafficCounters},
    endpoint::Endpoint,
    flows::{FlowEntry, FlowKey, Settings},
    local::{LocalSettings, LocalSocket, LocalSocketKey},
    pools::{BackendKey, Pool, PoolBackend},
    services::{PreviewPrefix, ServiceKey, ServiceState},
    shadow::{ShadowFlow, ShadowHeader, ShadowSettings},
};

// SAFETY: all of these are `#[repr(C)]`, contain only integers and byte
// arrays, and spell out their padding, so every bit pattern is valid.
unsafe impl aya::Pod for Endpoint {}
unsafe impl aya::Pod for ServiceKey {}
unsafe impl aya::Pod for BackendKey {}
unsafe impl aya::Pod for ServiceState {}
unsafe impl aya::Pod for Pool {}
unsafe impl aya::Pod for PoolBackend {}
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for FlowEntry {}
unsafe impl aya::Pod for Settings {}
unsafe impl aya::Pod for TrafficCounters {}
unsafe impl aya::Pod for PreviewPrefix {}
unsafe impl aya::Pod for SwitchCounters {}
unsafe impl aya::Pod for LocalSettings {}
unsafe impl aya::Pod for LocalSocketKey {}
unsafe impl aya::Pod for LocalSocket {}
unsafe impl aya::Pod for ShadowSettings {}
unsafe impl aya::Pod for ShadowFlow {}
unsafe impl aya::Pod for ShadowHeader {}
