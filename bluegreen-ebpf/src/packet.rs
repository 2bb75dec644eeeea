//! Direct access to the bytes of a packet, XDP frame or socket buffer
//! alike, bounds-checked against the end of its linear data.

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};
use bluegreen_common::PassReason;

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
