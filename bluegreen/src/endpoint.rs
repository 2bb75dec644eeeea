//! Colors, protocols and addresses as the operator writes them, and their
//! conversion to the wire layout the maps use.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

use bluegreen_common::{
    COLOR_BLUE, COLOR_GREEN, Endpoint, FAMILY_IPV4, FAMILY_IPV6, IPPROTO_TCP, IPPROTO_UDP,
    ServiceKey,
};
use serde::{Deserialize, Serialize};

/// Text that is not a color, protocol, address or prefix. Apart from the
/// crate's `Error` (which wraps it), so that the types every module uses
/// depend on nothing of the crate.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error(
        "invalid address {input:?}: {reason} (expected ADDR:PORT, e.g. 10.0.0.1:8080 or [fd00::1]:8080)"
    )]
    InvalidEndpoint { input: String, reason: &'static str },
    #[error(
        "invalid prefix {input:?}: {reason} (expected ADDR/LEN, e.g. 10.0.0.0/24 or fd00::/64)"
    )]
    InvalidCidr { input: String, reason: String },
    #[error("unknown color {0:?}: use blue or green")]
    UnknownColor(String),
    #[error("unknown protocol {0:?}: use tcp or udp")]
    UnknownProtocol(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    pub const BOTH: [Color; 2] = [Color::Blue, Color::Green];

    pub fn wire(self) -> u8 {
        match self {
            Color::Blue => COLOR_BLUE,
            Color::Green => COLOR_GREEN,
        }
    }

    pub fn from_wire(value: u8) -> Color {
        if value & 1 == COLOR_GREEN {
            Color::Green
        } else {
            Color::Blue
        }
    }

    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Color::Blue => "blue",
            Color::Green => "green",
        })
    }
}

impl FromStr for Color {
    type Err = AddressError;

    fn from_str(input: &str) -> Result<Self, AddressError> {
        match input {
            "blue" => Ok(Color::Blue),
            "green" => Ok(Color::Green),
            _ => Err(AddressError::UnknownColor(input.to_owned())),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl Proto {
    pub fn wire(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = AddressError;

    fn from_str(input: &str) -> Result<Self, AddressError> {
        match input {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(AddressError::UnknownProtocol(input.to_owned())),
        }
    }
}

/// Parses `ADDR:PORT` or `[ADDR6]:PORT`, refusing port 0 and the unspecified
/// address, which can never be a real VIP or backend.
pub fn parse_endpoint(input: &str) -> Result<SocketAddr, AddressError> {
    let invalid = |reason| AddressError::InvalidEndpoint {
        input: input.to_owned(),
        reason,
    };
    let addr = SocketAddr::from_str(input).map_err(|_| {
        if !input.contains(':') {
            invalid("the port is missing")
        } else if input.matches(':').count() > 1 && !input.starts_with('[') {
            invalid("IPv6 addresses go in brackets")
        } else {
            invalid("not an IP address and port")
        }
    })?;
    if addr.port() == 0 {
        return Err(invalid("port 0 cannot be used"));
    }
    if addr.ip().is_unspecified() {
        return Err(invalid("the unspecified address cannot be used"));
    }
    Ok(addr)
}

/// A client prefix such as `10.0.0.0/8` or `fd00::/64`, host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl FromStr for Cidr {
    type Err = AddressError;

    fn from_str(input: &str) -> Result<Cidr, AddressError> {
        let invalid = |reason: String| AddressError::InvalidCidr {
            input: input.to_owned(),
            reason,
        };
        let (addr, len) = match input.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (input, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| invalid("not an IP address".to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|len| *len <= max)
                .ok_or_else(|| invalid(format!("the prefix length must be 0 to {max}")))?,
        };
        let cidr = Cidr { addr, len };
        let network = cidr.network();
        if network != addr {
            return Err(invalid(format!(
                "host bits are set; did you mean {network}/{len}?"
            )));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Cidr {
    /// The address with every bit past the prefix cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }

    pub fn wire_family(&self) -> u8 {
        if self.addr.is_ipv4() {
            FAMILY_IPV4
        } else {
            FAMILY_IPV6
        }
    }

    pub fn wire_addr(&self) -> [u8; 16] {
        wire_addr(self.addr)
    }
}

pub fn family_name(addr: &SocketAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn wire_family(addr: &SocketAddr) -> u8 {
    if addr.is_ipv4() {
        FAMILY_IPV4
    } else {
        FAMILY_IPV6
    }
}

fn wire_addr(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut addr = [0; 16];
            addr[..4].copy_from_slice(&v4.octets());
            addr
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub fn to_wire(addr: SocketAddr) -> Endpoint {
    Endpoint {
        addr: wire_addr(addr.ip()),
        port: addr.port().to_be_bytes(),
        reserved: [0; 2],
    }
}

pub fn from_wire(family: u8, endpoint: &Endpoint) -> SocketAddr {
    let ip = if family == FAMILY_IPV4 {
        let [a, b, c, d, ..] = endpoint.addr;
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    } else {
        IpAddr::V6(Ipv6Addr::from(endpoint.addr))
    };
    SocketAddr::new(ip, u16::from_be_bytes(endpoint.port))
}

pub fn service_key(vip: SocketAddr, proto: Proto) -> ServiceKey {
    let Endpoint { addr, port, .. } = to_wire(vip);
    ServiceKey {
        vip: addr,
        port,
        proto: proto.wire(),
        family: wire_family(&vip),
    }
}

/// The VIP and protocol of a service key: [`service_key`] undone.
pub fn vip_and_proto(key: &ServiceKey) -> (SocketAddr, Proto) {
    let endpoint = Endpoint {
        addr: key.vip,
        port: key.port,
        reserved: [0; 2],
    };
    let proto = if key.proto == IPPROTO_UDP {
        Proto::Udp
    } else {
        Proto::Tcp
    };
    (from_wire(key.family, &endpoint), proto)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_in_both_families() {
        assert_eq!(
            parse_endpoint("10.0.0.1:80").unwrap(),
            "10.0.0.1:80".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(parse_endpoint("[fd00::1]:8080").unwrap().port(), 8080);
    }

    #[test]
    fn bad_endpoints_say_what_is_wrong() {
        let reason = |input| match parse_endpoint(input) {
            Err(AddressError::InvalidEndpoint { reason, .. }) => reason,
            other => panic!("{input}: expected InvalidEndpoint, got {other:?}"),
        };
        assert_eq!(reason("10.0.0.1"), "the port is missing");
        assert_eq!(reason("fd00::1:80"), "IPv6 addresses go in brackets");
        assert_eq!(reason("host:80"), "not an IP address and port");
        assert_eq!(reason("10.0.0.1:0"), "port 0 cannot be used");
        assert_eq!(
            reason("0.0.0.0:80"),
            "the unspecified address cannot be used"
        );
        assert_eq!(reason("10.0.0.1:70000"), "not an IP address and port");
    }

    #[test]
    fn prefixes_parse_and_refuse_host_bits() {
        let cidr: Cidr = "10.200.1.0/24".parse().unwrap();
        assert_eq!(
            (cidr.addr.to_string(), cidr.len),
            ("10.200.1.0".to_owned(), 24)
        );
        assert_eq!("fd00:bb::/64".parse::<Cidr>().unwrap().len, 64);
        assert_eq!("10.200.1.3".parse::<Cidr>().unwrap().len, 32);
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().len, 0);
        let error = "10.200.1.5/24".parse::<Cidr>().unwrap_err().to_string();
        assert!(error.contains("did you mean 10.200.1.0/24"), "{error}");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("fd00::/129".parse::<Cidr>().is_err());
        assert!("nonsense/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn wire_round_trip_keeps_address_and_port() {
        for text in ["192.0.2.7:443", "[2001:db8::7]:443"] {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(
                from_wire(wire_family(&addr), &to_wire(addr)),
                addr,
                "{text}"
            );
        }
        let key = service_key("192.0.2.7:443".parse().unwrap(), Proto::Udp);
        assert_eq!(key.vip[..4], [192, 0, 2, 7]);
        assert_eq!(key.vip[4..], [0; 12]);
        assert_eq!(key.port, [0x01, 0xbb]);
        assert_eq!((key.proto, key.family), (IPPROTO_UDP, FAMILY_IPV4));
    }
}
