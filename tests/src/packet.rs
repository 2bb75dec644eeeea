//! Fixture frames built field by field, and a from-scratch checksum check.
//!
//! Nothing here uses `bluegreen_common`: expected frames and checksums come
//! from the RFCs, not from the code under test, so a shared mistake cannot
//! hide itself.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ROUTING: u8 = 43;
const NEXT_FRAGMENT: u8 = 44;
const NEXT_DEST_OPTIONS: u8 = 60;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
pub const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

/// IPv4 "don't fragment", set on every unfragmented frame as TCP stacks do.
const IPV4_DF: u16 = 0x4000;
const IPV4_MF: u16 = 0x2000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        flags: u8,
    },
    /// `checksum: false` sends zero, "no checksum" (RFC 768; IPv4 only).
    Udp {
        checksum: bool,
    },
    /// Any other protocol: the payload directly follows the IP headers.
    Other(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Ext {
    /// Hop-by-hop options of `(units + 1) * 8` bytes, all padding.
    HopByHop(u8),
    /// Destination options of `(units + 1) * 8` bytes, all padding.
    DestOptions(u8),
    /// A routing header with no segments left, so the destination address
    /// is still the final one.
    Routing,
    Fragment {
        offset: u16,
        more: bool,
    },
}

/// One Ethernet frame, described by its fields. [`Frame::build`] lays it out
/// with correct lengths and checksums.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub transport: Transport,
    /// Tag control information of one 802.1Q tag.
    pub vlan: Option<u16>,
    pub ipv4_options: Vec<u8>,
    /// The IPv4 flags and fragment offset field as on the wire.
    pub ipv4_fragment: u16,
    pub ipv6_extensions: Vec<Ipv6Ext>,
    /// The TCP sequence number; unused by other transports.
    pub tcp_seq: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(src: SocketAddr, dst: SocketAddr, transport: Transport) -> Self {
        assert_eq!(
            src.is_ipv4(),
            dst.is_ipv4(),
            "{src} and {dst} are of different families"
        );
        Self {
            src,
            dst,
            transport,
            vlan: None,
            ipv4_options: Vec::new(),
            ipv4_fragment: IPV4_DF,
            ipv6_extensions: Vec::new(),
            tcp_seq: 1000,
            payload: b"bluegreen".to_vec(),
        }
    }

    pub fn tcp(src: SocketAddr, dst: SocketAddr, flags: u8) -> Self {
        Self::new(src, dst, Transport::Tcp { flags })
    }

    pub fn udp(src: SocketAddr, dst: SocketAddr) -> Self {
        Self::new(src, dst, Transport::Udp { checksum: true })
    }

    pub fn vlan(mut self, tci: u16) -> Self {
        self.vlan = Some(tci);
        self
    }

    /// Raw option bytes; their length must be a multiple of four.
    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        assert!(
            options.len().is_multiple_of(4) && options.len() <= 40,
            "IPv4 options must fill whole words, at most 40 bytes"
        );
        self.ipv4_options = options.to_vec();
        self
    }

    /// `offset` is in units of eight bytes, as on the wire.
    pub fn ipv4_fragment(mut self, offset: u16, more: bool) -> Self {
        self.ipv4_fragment = (offset & 0x1fff) | if more { IPV4_MF } else { 0 };
        self
    }

    pub fn ipv6_ext(mut self, ext: Ipv6Ext) -> Self {
        self.ipv6_extensions.push(ext);
        self
    }

    pub fn seq(mut self, seq: u32) -> Self {
        self.tcp_seq = seq;
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    pub fn without_udp_checksum(mut self) -> Self {
        self.transport = Transport::Udp { checksum: false };
        self
    }

    /// Bytes from the start of the frame to the end of the minimal L4 header:
    /// every truncation shorter than this cuts a header.
    pub fn headers_len(&self) -> usize {
        self.build().len() - self.payload.len()
    }

    pub fn build(&self) -> Vec<u8> {
        let (proto, mut segment) = self.transport_segment();
        let mut frame = Vec::with_capacity(128);
        frame.extend_from_slice(&ROUTER_MAC);
        frame.extend_from_slice(&CLIENT_MAC);
        if let Some(tci) = self.vlan {
            frame.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            frame.extend_from_slice(&tci.to_be_bytes());
        }
        let (src, dst) = (octets(self.src.ip()), octets(self.dst.ip()));
        let mut summed = pseudo_header(&src, &dst, proto, segment.len());
        summed.extend_from_slice(&segment);
        let checksum = self.l4_checksum(proto, &summed);
        fill_l4_checksum(self.transport, &mut segment, checksum);
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
                frame.extend_from_slice(&self.ipv4_header(src, dst, proto, segment.len()));
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let extensions = self.ipv6_extension_bytes(proto);
                let first_next = match self.ipv6_extensions.first() {
                    Some(ext) => ext.next_header_value(),
                    None => proto,
                };
                frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                frame.extend_from_slice(&0x6000_0000u32.to_be_bytes());
                frame.extend_from_slice(&((extensions.len() + segment.len()) as u16).to_be_bytes());
                frame.push(first_next);
                frame.push(64);
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
                frame.extend_from_slice(&extensions);
            }
            _ => unreachable!("Frame::new rejects mixed families"),
        }
        frame.extend_from_slice(&segment);
        frame
    }

    /// The L4 header (checksum still zero) followed by the payload.
    fn transport_segment(&self) -> (u8, Vec<u8>) {
        let mut segment = Vec::with_capacity(20 + self.payload.len());
        let proto = match self.transport {
            Transport::Tcp { flags } => {
                segment.extend_from_slice(&self.src.port().to_be_bytes());
                segment.extend_from_slice(&self.dst.port().to_be_bytes());
                segment.extend_from_slice(&self.tcp_seq.to_be_bytes());
                let ack = if flags & TCP_ACK != 0 { 2000u32 } else { 0 };
                segment.extend_from_slice(&ack.to_be_bytes());
                segment.push(5 << 4);
                segment.push(flags);
                segment.extend_from_slice(&64240u16.to_be_bytes());
                segment.extend_from_slice(&[0, 0, 0, 0]);
                PROTO_TCP
            }
            Transport::Udp { .. } => {
                segment.extend_from_slice(&self.src.port().to_be_bytes());
                segment.extend_from_slice(&self.dst.port().to_be_bytes());
                segment.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                segment.extend_from_slice(&[0, 0]);
                PROTO_UDP
            }
            Transport::Other(proto) => proto,
        };
        segment.extend_from_slice(&self.payload);
        (proto, segment)
    }

    fn l4_checksum(&self, proto: u8, pseudo_and_segment: &[u8]) -> u16 {
        match self.transport {
            Transport::Udp { checksum: false } => 0,
            // A computed zero goes out as all ones: zero means "none" (RFC 768).
            Transport::Udp { checksum: true } => match internet_checksum(pseudo_and_segment) {
                0 => 0xffff,
                sum => sum,
            },
            _ if proto == PROTO_TCP => internet_checksum(pseudo_and_segment),
            _ => 0,
        }
    }

    fn ipv4_header(&self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment_len: usize) -> Vec<u8> {
        let header_len = 20 + self.ipv4_options.len();
        let mut header = Vec::with_capacity(header_len);
        header.push(0x40 | (header_len / 4) as u8);
        header.push(0);
        header.extend_from_slice(&((header_len + segment_len) as u16).to_be_bytes());
        header.extend_from_slice(&0x1234u16.to_be_bytes());
        header.extend_from_slice(&self.ipv4_fragment.to_be_bytes());
        header.push(64);
        header.push(proto);
        header.extend_from_slice(&[0, 0]);
        header.extend_from_slice(&src.octets());
        header.extend_from_slice(&dst.octets());
        header.extend_from_slice(&self.ipv4_options);
        let checksum = internet_checksum(&header);
        header[10..12].copy_from_slice(&checksum.to_be_bytes());
        header
    }

    fn ipv6_extension_bytes(&self, proto: u8) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (index, ext) in self.ipv6_extensions.iter().enumerate() {
            let next = match self.ipv6_extensions.get(index + 1) {
                Some(following) => following.next_header_value(),
                None => proto,
            };
            match *ext {
                Ipv6Ext::HopByHop(units) | Ipv6Ext::DestOptions(units) => {
                    let len = (usize::from(units) + 1) * 8;
                    // One PadN option fills everything after the two-byte header.
                    bytes.extend_from_slice(&[next, units, 1, (len - 4) as u8]);
                    bytes.resize(bytes.len() + len - 4, 0);
                }
                Ipv6Ext::Routing => bytes.extend_from_slice(&[next, 0, 253, 0, 0, 0, 0, 0]),
                Ipv6Ext::Fragment { offset, more } => {
                    let field = (offset << 3) | u16::from(more);
                    bytes.extend_from_slice(&[next, 0]);
                    bytes.extend_from_slice(&field.to_be_bytes());
                    bytes.extend_from_slice(&0xbeefu32.to_be_bytes());
                }
            }
        }
        bytes
    }
}

impl Ipv6Ext {
    fn next_header_value(self) -> u8 {
        match self {
            Self::HopByHop(_) => NEXT_HOP_BY_HOP,
            Self::DestOptions(_) => NEXT_DEST_OPTIONS,
            Self::Routing => NEXT_ROUTING,
            Self::Fragment { .. } => NEXT_FRAGMENT,
        }
    }
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    }
}

fn fill_l4_checksum(transport: Transport, segment: &mut [u8], checksum: u16) {
    let at = match transport {
        Transport::Tcp { .. } => 16,
        Transport::Udp { .. } => 6,
        Transport::Other(_) => return,
    };
    segment[at..at + 2].copy_from_slice(&checksum.to_be_bytes());
}

/// `frame` with another VLAN tag pushed in front of its own headers.
pub fn with_outer_tag(frame: &[u8], ethertype: u16, tci: u16) -> Vec<u8> {
    let mut tagged = frame[..12].to_vec();
    tagged.extend_from_slice(&ethertype.to_be_bytes());
    tagged.extend_from_slice(&tci.to_be_bytes());
    tagged.extend_from_slice(&frame[12..]);
    tagged
}

/// An ARP request, for "not IP at all".
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&sender.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target.octets());
    frame
}

/// RFC 1071: the one's complement of the one's-complement sum of the
/// big-endian 16-bit words, an odd last byte padded with zero.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u64 = bytes
        .chunks(2)
        .map(|pair| {
            u64::from(u16::from_be_bytes([
                pair[0],
                pair.get(1).copied().unwrap_or(0),
            ]))
        })
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The pseudo-header the L4 checksum covers: RFC 793 for IPv4 (4-byte
/// addresses), RFC 8200 section 8.1 for IPv6 (16-byte addresses).
fn pseudo_header(src: &[u8], dst: &[u8], proto: u8, segment_len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(40 + segment_len);
    bytes.extend_from_slice(src);
    bytes.extend_from_slice(dst);
    if src.len() == 4 {
        bytes.extend_from_slice(&[0, proto]);
        bytes.extend_from_slice(&(segment_len as u16).to_be_bytes());
    } else {
        bytes.extend_from_slice(&(segment_len as u32).to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, proto]);
    }
    bytes
}

fn be16(frame: &[u8], at: usize) -> Result<u16, String> {
    match frame.get(at..at + 2) {
        Some(pair) => Ok(u16::from_be_bytes([pair[0], pair[1]])),
        None => Err(format!(
            "frame of {} bytes ends before offset {at}",
            frame.len()
        )),
    }
}

/// Recomputes every checksum of an IPv4 or IPv6 TCP/UDP frame from scratch:
/// the IPv4 header checksum and the L4 checksum over its pseudo-header.
/// Fragments get their IPv4 header checked only.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let mut l3 = 14;
    let mut ethertype = be16(frame, 12)?;
    if ethertype == ETH_P_8021Q {
        ethertype = be16(frame, 16)?;
        l3 = 18;
    }
    match ethertype {
        ETH_P_IPV4 => verify_ipv4(frame, l3),
        ETH_P_IPV6 => verify_ipv6(frame, l3),
        other => Err(format!("ethertype {other:#06x} is neither IPv4 nor IPv6")),
    }
}

fn verify_ipv4(frame: &[u8], l3: usize) -> Result<(), String> {
    let first = *frame.get(l3).ok_or("no IPv4 header")?;
    let header_len = usize::from(first & 0x0f) * 4;
    let total_len = usize::from(be16(frame, l3 + 2)?);
    if first >> 4 != 4 || header_len < 20 || total_len < header_len {
        return Err(format!(
            "bad IPv4 version/IHL {first:#04x} or total length {total_len}"
        ));
    }
    let packet = frame
        .get(l3..l3 + total_len)
        .ok_or_else(|| format!("IPv4 total length {total_len} exceeds the frame"))?;
    let header = &packet[..header_len];
    check_sum("IPv4 header", header, 10)?;
    if be16(header, 6)? & 0x3fff != 0 {
        return Ok(());
    }
    let proto = header[9];
    let segment = &packet[header_len..];
    let pseudo = pseudo_header(&header[12..16], &header[16..20], proto, segment.len());
    verify_l4(proto, pseudo, segment, true)
}

fn verify_ipv6(frame: &[u8], l3: usize) -> Result<(), String> {
    let header = frame.get(l3..l3 + 40).ok_or("no complete IPv6 header")?;
    if header[0] >> 4 != 6 {
        return Err(format!("bad IPv6 version byte {:#04x}", header[0]));
    }
    let payload_len = usize::from(be16(header, 4)?);
    let payload = frame
        .get(l3 + 40..l3 + 40 + payload_len)
        .ok_or_else(|| format!("IPv6 payload length {payload_len} exceeds the frame"))?;
    let mut next = header[6];
    let mut at = 0;
    loop {
        match next {
            NEXT_HOP_BY_HOP | NEXT_DEST_OPTIONS | NEXT_ROUTING => {
                let ext = payload
                    .get(at..at + 8)
                    .ok_or("truncated extension header")?;
                if next == NEXT_ROUTING && ext[3] != 0 {
                    return Err("routing header with segments left: final address unknown".into());
                }
                next = ext[0];
                at += (usize::from(ext[1]) + 1) * 8;
            }
            NEXT_FRAGMENT => return Ok(()),
            _ => break,
        }
    }
    let segment = payload
        .get(at..)
        .ok_or("extension headers exceed the payload")?;
    let pseudo = pseudo_header(&header[8..24], &header[24..40], next, segment.len());
    verify_l4(next, pseudo, segment, false)
}

fn verify_l4(proto: u8, mut pseudo: Vec<u8>, segment: &[u8], ipv4: bool) -> Result<(), String> {
    let (name, check_at) = match proto {
        PROTO_TCP => ("TCP", 16),
        PROTO_UDP => ("UDP", 6),
        _ => return Ok(()),
    };
    if segment.len() < check_at + 2 {
        return Err(format!("{name} header truncated"));
    }
    if proto == PROTO_UDP {
        let udp_len = usize::from(be16(segment, 4)?);
        if udp_len != segment.len() {
            return Err(format!(
                "UDP length {udp_len}, segment is {} bytes",
                segment.len()
            ));
        }
        if segment[6..8] == [0, 0] {
            return if ipv4 {
                Ok(())
            } else {
                Err("UDP over IPv6 must carry a checksum".into())
            };
        }
    }
    let field_at = pseudo.len() + check_at;
    pseudo.extend_from_slice(segment);
    check_sum(name, &pseudo, field_at)
}

/// Succeeds if `bytes` sums to zero, otherwise names the value that the
/// checksum field at `field_at` should hold.
fn check_sum(name: &str, bytes: &[u8], field_at: usize) -> Result<(), String> {
    if internet_checksum(bytes) == 0 {
        return Ok(());
    }
    let mut zeroed = bytes.to_vec();
    zeroed[field_at..field_at + 2].fill(0);
    Err(format!(
        "{name} checksum is {:#06x}, should be {:#06x}",
        be16(bytes, field_at)?,
        internet_checksum(&zeroed)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071, section 3: the words sum to 0xddf2.
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&bytes), !0xddf2);
    }

    #[test]
    fn built_frames_verify_and_corruption_is_caught() {
        let v4 = |ip: [u8; 4], port| SocketAddr::from((ip, port));
        let v6 = |last: u16, port| SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, last], port));
        let frames = [
            Frame::tcp(v4([10, 0, 0, 1], 1234), v4([10, 0, 0, 2], 80), TCP_SYN).build(),
            Frame::udp(v4([10, 0, 0, 1], 1234), v4([10, 0, 0, 2], 53))
                .vlan(7)
                .ipv4_options(&[0x94, 4, 0, 0])
                .build(),
            Frame::udp(v6(1, 1234), v6(2, 53))
                .ipv6_ext(Ipv6Ext::HopByHop(1))
                .ipv6_ext(Ipv6Ext::DestOptions(0))
                .build(),
            Frame::tcp(v6(1, 1234), v6(2, 80), TCP_ACK)
                .payload(b"odd")
                .build(),
        ];
        for frame in frames {
            verify_checksums(&frame).expect("a built frame verifies");
            let mut corrupted = frame.clone();
            // The last byte is payload, covered by the L4 checksum only.
            *corrupted.last_mut().unwrap() ^= 0x40;
            assert!(
                verify_checksums(&corrupted).is_err(),
                "corruption went unnoticed"
            );
        }
    }
}
