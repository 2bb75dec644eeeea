//! Writing a new address over a packet's, with the IPv4 header checksum
//! that covers it, for both programs. Apart from [`crate::packet`] (bytes)
//! and [`crate::parse`] (headers) because it needs both, and `parse` itself
//! reads through `packet`: here, neither of those two needs the other back.

use bluegreen_common::{
    FAMILY_IPV4, PassReason,
    checksum::{address_delta, apply_delta},
};

use crate::{
    packet::{LinearData, read_field, write_fields},
    parse::Headers,
};

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
