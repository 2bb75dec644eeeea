//! The sockets of this network namespace, as `sock_diag` netlink lists
//! them, and `SOCK_DESTROY` to reset one: how local clients' connections
//! are counted per color and moved by a forced switch. The kernel's own
//! socket cookie, which both sock_diag and the cgroup programs see, ties a
//! listed socket to the entry the programs wrote for it.

use std::{io, net::IpAddr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable,
};
use netlink_packet_sock_diag::{
    SockDiagDestroy, SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

/// A socket with a peer: connected TCP in any state but listening,
/// closed or TIME_WAIT (those carry no connection an application uses),
/// or connected UDP.
#[derive(Clone, Debug)]
pub struct PeerSocket {
    pub cookie: u64,
    pub proto: u8,
    pub peer: IpAddr,
    pub peer_port: u16,
    /// What `SOCK_DESTROY` needs to find the socket again.
    family: u8,
    id: SocketId,
}

/// States that hold a connection: `StateFlags` are `1 << TCP_*`, and a
/// connected UDP socket reports TCP_ESTABLISHED.
fn connected_states() -> StateFlags {
    StateFlags::all() - StateFlags::LISTEN - StateFlags::CLOSE - StateFlags::TIME_WAIT
}

fn open() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

fn send<T: NetlinkSerializable + std::fmt::Debug>(
    socket: &Socket,
    flags: u16,
    payload: T,
) -> io::Result<()>
where
    NetlinkPayload<T>: From<T>,
{
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::from(payload));
    message.finalize();
    let mut buffer = vec![0; message.buffer_len()];
    message.serialize(&mut buffer);
    socket.send(&buffer, 0).map(drop)
}

/// Reads replies until the kernel's final message; `each` sees every
/// socket listed. A netlink error becomes the matching OS error.
fn receive(socket: &Socket, mut each: impl FnMut(&SockDiagMessage)) -> io::Result<()> {
    loop {
        let (datagram, _) = socket.recv_from_full()?;
        let mut at = 0;
        while at < datagram.len() {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&datagram[at..])
                .map_err(io::Error::other)?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(error) => {
                    return match error.code {
                        None => Ok(()),
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                    };
                }
                NetlinkPayload::InnerMessage(inner) => each(&inner),
                _ => {}
            }
            if length == 0 {
                break;
            }
            at += length;
        }
    }
}

fn request(family: u8, proto: u8, id: SocketId) -> SockDiagMessage {
    SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: proto,
        extensions: ExtensionFlags::empty(),
        states: connected_states(),
        socket_id: id,
    })
}

/// Every connected TCP and UDP socket of this network namespace, both
/// families.
pub fn peer_sockets() -> io::Result<Vec<PeerSocket>> {
    let socket = open()?;
    let mut found = Vec::new();
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        for (family, any) in [
            (AF_INET, SocketId::new_v4()),
            (AF_INET6, SocketId::new_v6()),
        ] {
            send(
                &socket,
                NLM_F_REQUEST | NLM_F_DUMP,
                request(family, proto, any),
            )?;
            receive(&socket, |message| {
                if let SockDiagMessage::InetResponse(response) = message {
                    let id = &response.header.socket_id;
                    found.push(PeerSocket {
                        cookie: cookie(&id.cookie),
                        proto,
                        peer: id.destination_address,
                        peer_port: id.destination_port,
                        family,
                        id: id.clone(),
                    });
                }
            })?;
        }
    }
    Ok(found)
}

/// The kernel writes the cookie as two host-order 32-bit words, low first.
fn cookie(raw: &[u8; 8]) -> u64 {
    let low = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let high = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
    u64::from(low) | (u64::from(high) << 32)
}

/// Resets the socket: its application sees the connection aborted
/// (ECONNABORTED), as after a RST. A socket already gone (ENOENT) is not
/// an error: it was closing anyway.
pub fn destroy(socket: &PeerSocket) -> io::Result<()> {
    let netlink = open()?;
    send(
        &netlink,
        NLM_F_REQUEST | NLM_F_ACK,
        SockDiagDestroy::new(request(socket.family, socket.proto, socket.id.clone())),
    )?;
    match receive(&netlink, |_| {}) {
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}
