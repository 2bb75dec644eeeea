//! Shadow traffic: sampled flows' requests replayed to the idle color, and
//! the two colors' answers compared. Pure parts only: HTTP/1.1 framing, the
//! live color's exchanges from the kernel's reply-segment records, and the
//! figures per color.

pub mod figures;
pub mod http;
pub mod live;
