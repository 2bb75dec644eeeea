//! A plain-Rust reference model of the ingress transform.
//!
//! The property tests feed the same packets to the real XDP program (through
//! `BPF_PROG_TEST_RUN`) and to this model and require identical bytes,
//! verdicts and flow-table effects. It is written for clarity over slices,
//! independently of the pointer-walking kernel code.

use crate::checksum::{address_delta, apply_delta, apply_udp_delta, port_delta};
use crate::wire::*;
use crate::{
    counters::PassReason,
    endpoint::{FAMILY_IPV4, FAMILY_IPV6, IPPROTO_TCP, IPPROTO_UDP},
    flows::{FlowEntry, FlowKey, Settings, flow_hash},
    pools::{Pool, PoolBackend, maglev_position},
    rules::new_flow_color,
    services::{ServiceKey, ServiceState},
};

/// What the ingress program does with one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Passed on unchanged.
    Passed(PassReason),
    /// Destination rewritten; `entry` is what the flow table holds afterwards
    /// (its `last_seen` is the `now` given, in jiffies).
    Rewritten {
        key: FlowKey,
        entry: FlowEntry,
        new_flow: bool,
    },
}

struct Headers {
    family: u8,
    proto: u8,
    l3: usize,
    l4: usize,
}

fn be16(packet: &[u8], offset: usize) -> u16 {
    u16::from_be_bytes([packet[offset], packet[offset + 1]])
}

fn parse(packet: &[u8]) -> Result<Headers, PassReason> {
    if packet.len() < 14 {
        return Err(PassReason::Malformed);
    }
    let mut l3 = 14;
    let mut ethertype = be16(packet, 12);
    if ethertype == ETH_P_8021Q {
        if packet.len() < 18 {
            return Err(PassReason::Malformed);
        }
        ethertype = be16(packet, 16);
        l3 = 18;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            return Err(PassReason::Unsupported);
        }
    } else if ethertype == ETH_P_8021AD {
        return Err(PassReason::Unsupported);
    }
    let (family, proto, l4) = match ethertype {
        ETH_P_IPV4 => parse_ipv4(packet, l3)?,
        ETH_P_IPV6 => parse_ipv6(packet, l3)?,
        _ => return Err(PassReason::NotIp),
    };
    let l4_len = match proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        _ => return Err(PassReason::NotService),
    };
    if packet.len() < l4 + l4_len {
        return Err(PassReason::Malformed);
    }
    Ok(Headers {
        family,
        proto,
        l3,
        l4,
    })
}

fn parse_ipv4(packet: &[u8], l3: usize) -> Result<(u8, u8, usize), PassReason> {
    if packet.len() < l3 + 20 || packet[l3] >> 4 != 4 {
        return Err(PassReason::Malformed);
    }
    let header_len = usize::from(packet[l3] & 0x0f) * 4;
    if header_len < 20 || packet.len() < l3 + header_len {
        return Err(PassReason::Malformed);
    }
    if be16(packet, l3 + 6) & 0x3fff != 0 {
        return Err(PassReason::Fragment);
    }
    Ok((FAMILY_IPV4, packet[l3 + 9], l3 + header_len))
}

fn parse_ipv6(packet: &[u8], l3: usize) -> Result<(u8, u8, usize), PassReason> {
    if packet.len() < l3 + 40 || packet[l3] >> 4 != 6 {
        return Err(PassReason::Malformed);
    }
    let mut next = packet[l3 + 6];
    let mut offset = l3 + 40;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        if next != IPV6_HOP_BY_HOP && next != IPV6_DEST_OPTIONS {
            break;
        }
        if packet.len() < offset + 2 {
            return Err(PassReason::Malformed);
        }
        next = packet[offset];
        offset += (usize::from(packet[offset + 1]) + 1) * 8;
    }
    match next {
        IPV6_FRAGMENT => Err(PassReason::Fragment),
        IPV6_HOP_BY_HOP | IPV6_DEST_OPTIONS | IPV6_ROUTING => Err(PassReason::Unsupported),
        proto => Ok((FAMILY_IPV6, proto, offset)),
    }
}

/// The maps the ingress program reads, as they are before a packet arrives.
pub trait Tables {
    fn service(&self, key: &ServiceKey) -> Option<ServiceState>;
    fn flow(&self, key: &FlowKey) -> Option<FlowEntry>;
    /// One entry of the packed lookup tables (`BG_MAGLEV`).
    fn maglev_entry(&self, chunk: u32, at: usize) -> Option<u8>;
    /// One entry of the backends array (`BG_BACKENDS`).
    fn backend(&self, index: u32) -> Option<PoolBackend>;
    /// Whether `client` falls in one of the service's preview prefixes.
    fn in_preview(&self, counter_slot: u32, family: u8, client: &[u8; 16]) -> bool;
}

/// The backend of `pool` for a flow hash, as the kernel's `pool_backend`
/// finds it.
fn pool_backend(tables: &impl Tables, pool: &Pool, hash: u32) -> Option<PoolBackend> {
    let (chunk, at) = maglev_position(pool, hash)?;
    let index = tables.maglev_entry(chunk, at)?;
    tables.backend(pool.first_backend + u32::from(index))
}

/// Runs the ingress transform on `packet` in place.
pub fn ingress(packet: &mut [u8], tables: &impl Tables, settings: &Settings, now: u64) -> Outcome {
    let headers = match parse(packet) {
        Ok(headers) => headers,
        Err(reason) => return Outcome::Passed(reason),
    };
    let Headers {
        family,
        proto,
        l3,
        l4,
    } = headers;
    let (src_at, dst_at, addr_len) = if family == FAMILY_IPV4 {
        (l3 + 12, l3 + 16, 4)
    } else {
        (l3 + 8, l3 + 24, 16)
    };
    let mut client = [0u8; 16];
    client[..addr_len].copy_from_slice(&packet[src_at..src_at + addr_len]);
    let mut vip = [0u8; 16];
    vip[..addr_len].copy_from_slice(&packet[dst_at..dst_at + addr_len]);
    let client_port = [packet[l4], packet[l4 + 1]];
    let vip_port = [packet[l4 + 2], packet[l4 + 3]];

    let service_key = ServiceKey {
        vip,
        port: vip_port,
        proto,
        family,
    };
    let Some(state) = tables.service(&service_key) else {
        return Outcome::Passed(PassReason::NotService);
    };
    let key = FlowKey {
        client,
        server: vip,
        client_port,
        server_port: vip_port,
        proto,
        family,
        reserved: [0; 2],
    };
    let tcp_flags = if proto == IPPROTO_TCP {
        packet[l4 + 13]
    } else {
        0
    };
    let opens_connection = tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let known = tables
        .flow(&key)
        .filter(|entry| settings.is_live(proto, entry, now));

    let hash = flow_hash(&key);
    let (color, known, new_flow) = match known {
        Some(entry) if !opens_connection && entry.generation == state.generation => {
            (entry.color, Some(entry), false)
        }
        // A forced switch since the flow started: it goes where the force
        // sent it, keeping its closing state.
        Some(entry) if !opens_connection => (state.forced_color(), Some(entry), false),
        _ => {
            let color = new_flow_color(&state, hash, || {
                tables.in_preview(state.counter_slot, family, &client)
            });
            (color, None, true)
        }
    };
    let mut entry = match known {
        Some(entry) if entry.generation == state.generation => entry,
        _ => {
            let Some(backend) = pool_backend(tables, state.pool(color), hash) else {
                return Outcome::Passed(PassReason::NoBackend);
            };
            FlowEntry {
                last_seen: 0,
                backend: backend.flow_endpoint(),
                generation: state.generation,
                color,
                closing: known.map_or(0, |entry| entry.closing),
                counter_slot: state.counter_slot as u16,
                backend_counter_slot: backend.counter_slot,
            }
        }
    };
    entry.last_seen = now;
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        entry.closing = 1;
    }

    let backend = entry.backend;
    let addr_delta = address_delta(&vip, &backend.addr, addr_len);
    packet[dst_at..dst_at + addr_len].copy_from_slice(&backend.addr[..addr_len]);
    packet[l4 + 2..l4 + 4].copy_from_slice(&backend.port);
    if family == FAMILY_IPV4 {
        let check = [packet[l3 + 10], packet[l3 + 11]];
        packet[l3 + 10..l3 + 12].copy_from_slice(&apply_delta(check, addr_delta));
    }
    let l4_delta = addr_delta + port_delta(vip_port, backend.port);
    let check_at = if proto == IPPROTO_TCP {
        l4 + 16
    } else {
        l4 + 6
    };
    let check = [packet[check_at], packet[check_at + 1]];
    let updated = if proto == IPPROTO_UDP {
        apply_udp_delta(check, l4_delta)
    } else {
        apply_delta(check, l4_delta)
    };
    packet[check_at..check_at + 2].copy_from_slice(&updated);

    Outcome::Rewritten {
        key,
        entry,
        new_flow,
    }
}
