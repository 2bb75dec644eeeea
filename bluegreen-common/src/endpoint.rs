//! How map keys and values name one end of a connection: its address and
//! port as they travel on the wire, and the address family and transport
//! protocol every key carries. Services, pools and flows all build on it.

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Address family markers used in keys (not the kernel's AF_* values, which
/// differ between platforms).
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// An address and port as they appear on the wire. IPv4 addresses occupy the
/// first four bytes of `addr`; the rest stays zero.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: [u8; 16],
    pub port: [u8; 2],
    pub reserved: [u8; 2],
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Endpoint>(), 20);
    }
}
