//! Shadow traffic: the client streams of sampled flows, replayed to another backend.
pub mod reassembly;
