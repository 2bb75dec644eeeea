//! Protocol constants the parsers on both sides agree on.

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// IPv6 extension headers the dataplane walks over; a routing header is not
/// among them because it changes which address the L4 checksum covers.
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_DEST_OPTIONS: u8 = 60;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_ROUTING: u8 = 43;
/// How many skippable IPv6 extension headers are walked before giving up.
pub const MAX_IPV6_EXTENSIONS: usize = 4;
