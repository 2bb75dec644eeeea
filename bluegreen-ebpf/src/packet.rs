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

#[inline(always)]
pub fn write<T>(ctx: &impl LinearData, offset: usize, value: T) -> Result<(), PassReason> {
    // SAFETY: `at` checked the bounds; packet data has no alignment.
    unsafe { at::<T>(ctx, offset)?.write_unaligned(value) };
    Ok(())
}
