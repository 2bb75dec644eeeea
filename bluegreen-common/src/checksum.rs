//! Incremental Internet checksum updates (RFC 1624), shared by the XDP
//! program and the reference model.
//!
//! Words are read and written in native byte order: the one's-complement sum
//! is byte-order independent (RFC 1071, section 2), so this saves two byte
//! swaps per word on the hot path and still yields the wire value.

#[inline(always)]
fn word(bytes: &[u8; 16], index: usize) -> u32 {
    u16::from_ne_bytes([bytes[index], bytes[index + 1]]) as u32
}

/// One's-complement delta of replacing the first `len` bytes (even, at most
/// 16) of `old` with those of `new`.
#[inline(always)]
pub fn address_delta(old: &[u8; 16], new: &[u8; 16], len: usize) -> u32 {
    let mut delta = 0u32;
    let mut index = 0;
    while index < len && index < 16 {
        delta += (!word(old, index) & 0xffff) + word(new, index);
        index += 2;
    }
    delta
}

/// One's-complement delta of replacing one 16-bit field.
#[inline(always)]
pub fn port_delta(old: [u8; 2], new: [u8; 2]) -> u32 {
    (!(u16::from_ne_bytes(old) as u32) & 0xffff) + u16::from_ne_bytes(new) as u32
}

/// Applies an accumulated delta to a checksum field, as stored in the packet.
#[inline(always)]
pub fn apply_delta(check: [u8; 2], delta: u32) -> [u8; 2] {
    let mut sum = (!(u16::from_ne_bytes(check) as u32) & 0xffff) + delta;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_ne_bytes()
}

/// Like [`apply_delta`] for a UDP checksum: an IPv4 checksum of zero means
/// "none" and stays zero, and a computed zero is sent as all ones (RFC 768).
#[inline(always)]
pub fn apply_udp_delta(check: [u8; 2], delta: u32) -> [u8; 2] {
    if check == [0, 0] {
        return check;
    }
    let updated = apply_delta(check, delta);
    if updated == [0, 0] {
        [0xff, 0xff]
    } else {
        updated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straight RFC 1071 sum over big-endian words, to check the incremental
    /// path against.
    fn full_checksum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn incremental_update_matches_full_recompute() {
        let mut data = [0u8; 40];
        for (index, byte) in data.iter_mut().enumerate() {
            *byte = (index as u8).wrapping_mul(37).wrapping_add(11);
        }
        data[10] = 0;
        data[11] = 0;
        let check = full_checksum(&data).to_be_bytes();
        data[10..12].copy_from_slice(&check);
        assert_eq!(
            full_checksum(&data),
            0,
            "a packet with its checksum sums to zero"
        );

        let mut old = [0u8; 16];
        old.copy_from_slice(&data[16..32]);
        let new: [u8; 16] = core::array::from_fn(|index| 0xf0 ^ index as u8);
        let old_port = [data[2], data[3]];
        let new_port = [0x1f, 0x90];
        let delta = address_delta(&old, &new, 16) + port_delta(old_port, new_port);
        data[16..32].copy_from_slice(&new);
        data[2..4].copy_from_slice(&new_port);
        let updated = apply_delta(check, delta);
        data[10..12].copy_from_slice(&updated);
        assert_eq!(
            full_checksum(&data),
            0,
            "updated checksum {updated:02x?} is wrong"
        );
    }

    #[test]
    fn udp_zero_checksum_is_kept_and_computed_zero_is_all_ones() {
        assert_eq!(apply_udp_delta([0, 0], 0x1234), [0, 0]);
        // ~0xffff + 0 folds to zero: the all-ones form must be sent instead.
        assert_eq!(apply_delta([0xff, 0xff], 0xffff), [0, 0]);
        assert_eq!(apply_udp_delta([0xff, 0xff], 0xffff), [0xff, 0xff]);
    }
}
