//! Shadow traffic: a sampled share of a service's new flows, copied by the
//! dataplane as they pass, rebuilt in order ([`reassembly`]), cut into
//! requests ([`http`]) and replayed to the idle color ([`replay`]), whose
//! answers are compared with the live color's ([`live`], [`figures`]); the
//! [`engine`] runs it all from the capture ring ([`capture`]).

pub mod capture;
pub mod engine;
pub mod figures;
pub mod http;
pub mod live;
pub mod options;
pub mod reassembly;
pub mod record;
pub mod replay;
