//! Direct access to the bytes of a packet, XDP frame or socket buffer
//! alike, bounds-checked against the end of its linear data.

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};
use bluegreen_common::{
    FAMILY_IPV4, PassReason,
    checksum::{address_delta, apply_delta},
};

use crate::parse::Headers;

/// A program context whose packet data lies between two addresses.
pub trait LinearData {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl LinearData for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

impl LinearData for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

/// A pointer to the `T` at `offset`, if the linear data holds all of it.
#[inline(always)]
pub fn at<T>(ctx: &impl LinearData, offset: usize) -> Result<*mut T, PassReason> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return Err(PassReason::Malformed);
    }
    Ok((start + offset) as *mut T)
}

#[inline(always)]
pub fn read<T: Copy>(ctx: &impl LinearData, offset: usize) -> Result<T, PassReason> {
    // SAFETY: `at` checked the bounds; packet data has no alignment.
    Ok(unsafe { at::<T>(ctx, offset)?.read_unaligned() })
}

/// A 16-bit header field, read whole. Every field read or rewritten 16 bits
/// at a time sits at an even offset, and packet data starts at an even
/// address (drivers align the IP header so, NET_IP_ALIGN, and the
/// verifier's alignment model assumes it), so the load is aligned; read as
/// a `[u8; 2]`, LLVM would load it byte by byte.
#[inline(always)]
pub fn read_field(ctx: &impl LinearData, offset: usize) -> Result<[u8; 2], PassReason> {
    // SAFETY: `at` checked the bounds; aligned, as above.
    Ok(unsafe { at::<u16>(ctx, offset)?.read() }.to_ne_bytes())
}

/// Writes `words` from an even `offset` on, one 16-bit store each (see
/// [`read_field`]).
#[inline(always)]
pub fn write_fields<const N: usize>(
    ctx: &impl LinearData,
    offset: usize,
    words: [[u8; 2]; N],
) -> Result<(), PassReason> {
    let fields = at::<[u16; N]>(ctx, offset)?;
    for (index, word) in words.iter().enumerate() {
        // SAFETY: `at` checked the bounds of all N; aligned, as above.
        unsafe { (*fields)[index] = u16::from_ne_bytes(*word) };
    }
    Ok(())
}

/// The first `N` 16-bit words of an address in the map layout.
#[inline(always)]
fn address_fields<const N: usize>(addr: &[u8; 16]) -> [[u8; 2]; N] {
    core::array::from_fn(|index| [addr[2 * index], addr[2 * index + 1]])
}

/// Writes `new` over the address at `offset` (the source or the
/// destination, `old` until now), fixing the IPv4 header checksum; returns
/// the checksum delta that the transport checksum still needs. Each family
/// has its own constant length, so that the delta is unrolled rather than
/// looped over.
#[inline(always)]
pub fn rewrite_address(
    ctx: &impl LinearData,
    headers: &Headers,
    offset: usize,
    old: &[u8; 16],
    new: &[u8; 16],
) -> Result<u32, PassReason> {
    if headers.family == FAMILY_IPV4 {
        let delta = address_delta(old, new, 4);
        let ip_check = read_field(ctx, headers.l3 + 10)?;
        write_fields(ctx, headers.l3 + 10, [apply_delta(ip_check, delta)])?;
        write_fields::<2>(ctx, offset, address_fields(new))?;
        Ok(delta)
    } else {
        write_fields::<8>(ctx, offset, address_fields(new))?;
        Ok(address_delta(old, new, 16))
    }
}
