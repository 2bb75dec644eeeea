//! Header parsing shared by the XDP and TC programs.
//!
//! Both programs walk the same headers; they differ only in how bytes are
//! read (direct packet pointers in XDP; in TC too, with `bpf_skb_load_bytes`
//! for bytes beyond the linear part), which [`PacketBytes`] hides.

use bluegreen_common::{
    FAMILY_IPV4, FAMILY_IPV6, FlowKey, IPPROTO_TCP, IPPROTO_UDP, PassReason,
    wire::{
        ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, IPV6_DEST_OPTIONS, IPV6_FRAGMENT,
        IPV6_HOP_BY_HOP, IPV6_ROUTING, MAX_IPV6_EXTENSIONS,
    },
};

use crate::packet::{self, LinearData};

pub trait PacketBytes {
    /// Reads a `T` at `offset`, failing if the packet is too short.
    fn read<T: Copy>(&self, offset: usize) -> Result<T, PassReason>;
}

/// Where the headers of a TCP or UDP packet start.
#[derive(Clone, Copy)]
pub struct Headers {
    pub family: u8,
    pub proto: u8,
    pub l3: usize,
    pub l4: usize,
}

impl Headers {
    /// Offset of the source address; the destination follows it directly
    /// in both IPv4 and IPv6.
    #[inline(always)]
    pub fn src_addr_offset(&self) -> usize {
        if self.family == FAMILY_IPV4 {
            self.l3 + 12
        } else {
            self.l3 + 8
        }
    }

    #[inline(always)]
    pub fn addr_len(&self) -> usize {
        if self.family == FAMILY_IPV4 { 4 } else { 16 }
    }

    #[inline(always)]
    pub fn dst_addr_offset(&self) -> usize {
        self.src_addr_offset() + self.addr_len()
    }

    #[inline(always)]
    pub fn l4_checksum_offset(&self) -> usize {
        if self.proto == IPPROTO_TCP {
            self.l4 + 16
        } else {
            self.l4 + 6
        }
    }

    /// Reads an address in the map layout: IPv4 in the first four bytes.
    #[inline(always)]
    pub fn read_addr<P: PacketBytes>(
        &self,
        packet: &P,
        offset: usize,
    ) -> Result<[u8; 16], PassReason> {
        if self.family == FAMILY_IPV4 {
            let v4: [u8; 4] = packet.read(offset)?;
            Ok([
                v4[0], v4[1], v4[2], v4[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ])
        } else {
            packet.read(offset)
        }
    }
}

/// Which way a packet travels, to tell the client's end from the server's.
pub enum Direction {
    /// Client to VIP (ingress).
    ToServer,
    /// Backend to client (egress replies).
    ToClient,
}

impl Headers {
    /// The connection's key, client first whichever way the packet goes.
    #[inline(always)]
    pub fn flow_key<P: PacketBytes>(
        &self,
        packet: &P,
        direction: Direction,
    ) -> Result<FlowKey, PassReason> {
        let [src_hi, src_lo, dst_hi, dst_lo]: [u8; 4] = packet.read(self.l4)?;
        let src = self.read_addr(packet, self.src_addr_offset())?;
        let dst = self.read_addr(packet, self.dst_addr_offset())?;
        let (client, client_port, server, server_port) = match direction {
            Direction::ToServer => (src, [src_hi, src_lo], dst, [dst_hi, dst_lo]),
            Direction::ToClient => (dst, [dst_hi, dst_lo], src, [src_hi, src_lo]),
        };
        Ok(FlowKey {
            client,
            server,
            client_port,
            server_port,
            proto: self.proto,
            family: self.family,
            reserved: [0; 2],
        })
    }
}

/// A TCP or UDP packet whose headers were found, and the fields both
/// programs read from it: [`PlainIpv4`] has them at fixed offsets,
/// [`AnyFrame`] wherever [`parse_any`] found them. The programs are
/// generic over it, so that each kind gets its own copy of their paths,
/// with the plain one's offsets and family known at compile time.
pub trait Parsed {
    fn headers(&self) -> Headers;
    fn destination_port(&self) -> Result<u16, PassReason>;
    /// The destination address in the map layout (see
    /// `Headers::read_addr`).
    fn destination(&self) -> Result<[u8; 16], PassReason>;
    fn flow_key(&self, direction: Direction) -> Result<FlowKey, PassReason>;
}

/// Any frame [`parse_any`] accepts, read through its packet.
pub struct AnyFrame<'a, P> {
    headers: Headers,
    packet: &'a P,
}

impl<'a, P: PacketBytes> AnyFrame<'a, P> {
    #[inline(always)]
    pub fn parse(packet: &'a P) -> Result<Self, PassReason> {
        Ok(Self {
            headers: parse_any(packet)?,
            packet,
        })
    }
}

impl<P: PacketBytes> Parsed for AnyFrame<'_, P> {
    #[inline(always)]
    fn headers(&self) -> Headers {
        self.headers
    }

    #[inline(always)]
    fn destination_port(&self) -> Result<u16, PassReason> {
        read_be16(self.packet, self.headers.l4 + 2)
    }

    #[inline(always)]
    fn destination(&self) -> Result<[u8; 16], PassReason> {
        self.headers
            .read_addr(self.packet, self.headers.dst_addr_offset())
    }

    #[inline(always)]
    fn flow_key(&self, direction: Direction) -> Result<FlowKey, PassReason> {
        self.headers.flow_key(self.packet, direction)
    }
}

#[inline(always)]
fn read_be16<P: PacketBytes>(packet: &P, offset: usize) -> Result<u16, PassReason> {
    let bytes: [u8; 2] = packet.read(offset)?;
    Ok(u16::from_be_bytes(bytes))
}

/// A packet [`plain_ipv4`] recognised: its headers sit at fixed offsets,
/// so the fields the hot paths need are read as whole 16-bit words.
pub struct PlainIpv4 {
    headers: Headers,
    destination_port: u16,
    /// The first 54 bytes of the frame, checked to be there.
    words: *const [u16; PLAIN_WORDS],
}

/// Ethernet, IPv4 without options and a minimal TCP header, in 16-bit words.
const PLAIN_WORDS: usize = (14 + 20 + 20) / 2;
const SOURCE_ADDRESS: usize = (14 + 12) / 2;
const DESTINATION_ADDRESS: usize = (14 + 16) / 2;
const SOURCE_PORT: usize = (14 + 20) / 2;
const DESTINATION_PORT: usize = SOURCE_PORT + 1;

impl PlainIpv4 {
    #[inline(always)]
    fn word(&self, index: usize) -> u16 {
        // SAFETY: `plain_ipv4` checked that all of `words` is in the packet,
        // and the words are aligned (see there).
        unsafe { (*self.words)[index] }
    }

    /// The four bytes from word `index` on, as the low half of a u64 whose
    /// in-memory bytes are those of the packet.
    #[inline(always)]
    fn address(&self, index: usize) -> u64 {
        u64::from(self.word(index)) | u64::from(self.word(index + 1)) << 16
    }
}

impl Parsed for PlainIpv4 {
    #[inline(always)]
    fn headers(&self) -> Headers {
        self.headers
    }

    #[inline(always)]
    fn destination_port(&self) -> Result<u16, PassReason> {
        Ok(self.destination_port)
    }

    #[inline(always)]
    fn destination(&self) -> Result<[u8; 16], PassReason> {
        // SAFETY: two u64s are sixteen initialised bytes.
        Ok(unsafe {
            core::mem::transmute::<[u64; 2], [u8; 16]>([self.address(DESTINATION_ADDRESS), 0u64])
        })
    }

    /// What [`Headers::flow_key`] would read, put together from whole
    /// words: from byte arrays, LLVM builds it byte by byte, spilling each
    /// byte to the stack, on every packet to a service (BENCHMARKS.md has
    /// the count).
    #[inline(always)]
    fn flow_key(&self, direction: Direction) -> Result<FlowKey, PassReason> {
        let (source, destination) = (
            self.address(SOURCE_ADDRESS),
            self.address(DESTINATION_ADDRESS),
        );
        let (source_port, destination_port) = (
            u64::from(self.word(SOURCE_PORT)),
            u64::from(self.word(DESTINATION_PORT)),
        );
        let (client, client_port, server, server_port) = match direction {
            Direction::ToServer => (source, source_port, destination, destination_port),
            Direction::ToClient => (destination, destination_port, source, source_port),
        };
        let tail = client_port
            | server_port << 16
            | u64::from(self.headers.proto) << 32
            | u64::from(FAMILY_IPV4) << 40;
        // SAFETY: `FlowKey` is 40 bytes of byte arrays and bytes, aligned
        // to 8, without padding: any five u64s are a valid one. Little
        // endian (asserted below), so each u64's low bytes come first.
        Ok(unsafe { core::mem::transmute::<[u64; 5], FlowKey>([client, 0, server, 0, tail]) })
    }
}

// `PlainIpv4` puts words together in little-endian order, as the BPF
// target this crate is built for (`bpfel`) stores them.
const _: () = assert!(cfg!(target_endian = "little"));

/// Untagged IPv4 without options, not a fragment, TCP or UDP, with at least
/// a minimal TCP header's worth of bytes: most packets a host sees. They
/// are judged with one bounds check and loads at fixed offsets, a few dozen
/// instructions fewer than [`parse_any`] needs. Finds exactly what
/// `parse_any` would; any other packet is left to it.
#[inline(always)]
pub fn plain_ipv4(ctx: &impl LinearData) -> Option<PlainIpv4> {
    const ETHERTYPE: usize = 12 / 2;
    const VERSION_IHL: usize = 14;
    const FRAGMENT: usize = (14 + 6) / 2;
    const PROTO: usize = 14 + 9;
    // Whole 16-bit fields are loaded at once: aligned, see
    // `packet::read_field`.
    let words = packet::at::<[u16; PLAIN_WORDS]>(ctx, 0).ok()?;
    let bytes = words.cast::<u8>();
    // SAFETY: `at` checked that all 54 bytes are there; every u16 of the
    // array is aligned (see above).
    let (ethertype, version_ihl, fragment, proto, port) = unsafe {
        (
            (*words)[ETHERTYPE],
            *bytes.add(VERSION_IHL),
            (*words)[FRAGMENT],
            *bytes.add(PROTO),
            (*words)[DESTINATION_PORT],
        )
    };
    let plain = ethertype == ETH_P_IPV4.to_be()
        && version_ihl == 0x45
        && fragment & 0x3fff_u16.to_be() == 0
        && (proto == IPPROTO_TCP || proto == IPPROTO_UDP);
    plain.then_some(PlainIpv4 {
        headers: Headers {
            family: FAMILY_IPV4,
            proto,
            l3: VERSION_IHL,
            l4: VERSION_IHL + 20,
        },
        destination_port: u16::from_be(port),
        words,
    })
}

/// Parses Ethernet (with at most one 802.1Q tag), IPv4 or IPv6 and requires
/// a complete minimal TCP or UDP header: any frame, where [`plain_ipv4`]
/// takes only the common one.
#[inline(always)]
fn parse_any<P: PacketBytes>(packet: &P) -> Result<Headers, PassReason> {
    let mut ethertype = read_be16(packet, 12)?;
    let mut l3 = 14;
    if ethertype == ETH_P_8021Q {
        ethertype = read_be16(packet, 16)?;
        l3 = 18;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            return Err(PassReason::Unsupported);
        }
    } else if ethertype == ETH_P_8021AD {
        return Err(PassReason::Unsupported);
    }
    let (family, proto, l4) = if ethertype == ETH_P_IPV4 {
        parse_ipv4(packet, l3)?
    } else if ethertype == ETH_P_IPV6 {
        parse_ipv6(packet, l3)?
    } else {
        return Err(PassReason::NotIp);
    };
    let l4_len = if proto == IPPROTO_TCP {
        20
    } else if proto == IPPROTO_UDP {
        8
    } else {
        return Err(PassReason::NotService);
    };
    // The last byte of the minimal header proves the whole header is there.
    packet.read::<u8>(l4 + l4_len - 1)?;
    Ok(Headers {
        family,
        proto,
        l3,
        l4,
    })
}

#[inline(always)]
fn parse_ipv4<P: PacketBytes>(packet: &P, l3: usize) -> Result<(u8, u8, usize), PassReason> {
    // Proves the fixed header is there before reading single fields of it.
    packet.read::<u8>(l3 + 19)?;
    let version_ihl: u8 = packet.read(l3)?;
    let fragment: [u8; 2] = packet.read(l3 + 6)?;
    let proto: u8 = packet.read(l3 + 9)?;
    if version_ihl >> 4 != 4 {
        return Err(PassReason::Malformed);
    }
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    if header_len < 20 {
        return Err(PassReason::Malformed);
    }
    packet.read::<u8>(l3 + header_len - 1)?;
    if u16::from_be_bytes(fragment) & 0x3fff != 0 {
        return Err(PassReason::Fragment);
    }
    Ok((FAMILY_IPV4, proto, l3 + header_len))
}

#[inline(always)]
fn parse_ipv6<P: PacketBytes>(packet: &P, l3: usize) -> Result<(u8, u8, usize), PassReason> {
    let version: u8 = packet.read(l3)?;
    packet.read::<u8>(l3 + 39)?;
    if version >> 4 != 6 {
        return Err(PassReason::Malformed);
    }
    let mut next: u8 = packet.read(l3 + 6)?;
    let mut offset = l3 + 40;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        if next != IPV6_HOP_BY_HOP && next != IPV6_DEST_OPTIONS {
            break;
        }
        let [following, len]: [u8; 2] = packet.read(offset)?;
        next = following;
        offset += (len as usize + 1) * 8;
    }
    if next == IPV6_FRAGMENT {
        return Err(PassReason::Fragment);
    }
    if next == IPV6_HOP_BY_HOP || next == IPV6_DEST_OPTIONS || next == IPV6_ROUTING {
        return Err(PassReason::Unsupported);
    }
    Ok((FAMILY_IPV6, next, offset))
}
