//! The prefilters (`BG_VIP_PORTS`, `BG_VIP_FILTER`): bitmaps that let most
//! packets not meant for a service leave after an array lookup, before the
//! services hash is looked up.

/// Where bit `bit` of a bitmap stored as an array of `u32` words lives:
/// the word's index and the mask within it.
#[inline(always)]
pub fn bitmap_position(bit: u32) -> (u32, u32) {
    (bit >> 5, 1 << (bit & 31))
}

/// Number of 32-bit words in the port prefilter bitmap (one bit per port).
pub const FILTER_WORDS: u32 = 65536 / 32;

/// Bits of the VIP address-and-port prefilter: 2^20, so that even 10,000
/// services leave under 1 % of other addresses to the hash lookup.
pub const VIP_FILTER_BITS: u32 = 1 << 20;
pub const VIP_FILTER_WORDS: u32 = VIP_FILTER_BITS / 32;

/// Bit of the VIP address-and-port prefilter for a destination: packets to
/// a port some service uses but to another address leave after an array
/// lookup instead of a services hash lookup. Collisions only cost that
/// lookup.
///
/// Two multiply-xorshift rounds over the address folded to 64 bits: on
/// every packet to a service port, so it must be short (BENCHMARKS.md
/// weighs the longer hashes tried), yet one multiply alone maps a run of
/// neighbouring VIPs onto a lattice that the addresses next to them hit
/// dozens of times as often as chance (the test below).
#[inline(always)]
pub fn vip_filter_bit(addr: &[u8; 16], port: [u8; 2]) -> u32 {
    let half = |at: usize| {
        u64::from_ne_bytes([
            addr[at],
            addr[at + 1],
            addr[at + 2],
            addr[at + 3],
            addr[at + 4],
            addr[at + 5],
            addr[at + 6],
            addr[at + 7],
        ])
    };
    let folded = half(0) ^ half(8).rotate_left(32) ^ u64::from(u16::from_ne_bytes(port)) << 32;
    let mixed = folded.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mixed = (mixed ^ mixed >> 32).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (mixed >> (64 - VIP_FILTER_BITS.trailing_zeros())) as u32
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn the_vip_filter_spreads_neighbouring_addresses_and_ports() {
        let mut bits = std::collections::BTreeSet::new();
        for host in 0..64u8 {
            for port in [80u16, 443, 8080, 9000] {
                let addr = [10, 0, 0, host, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                bits.insert(vip_filter_bit(&addr, port.to_be_bytes()));
            }
        }
        assert!(
            bits.len() >= 250,
            "only {} distinct bits of 256",
            bits.len()
        );
    }

    #[test]
    fn addresses_next_to_a_run_of_vips_pass_the_vip_filter_at_chance() {
        let address = |n: u32| {
            let mut addr = [0; 16];
            addr[..4].copy_from_slice(&(0x0ac8_0000 + n).to_be_bytes());
            addr
        };
        let port = 80u16.to_be_bytes();
        let vips = 10_000;
        let bits: std::collections::BTreeSet<u32> = (0..vips)
            .map(|n| vip_filter_bit(&address(n), port))
            .collect();
        let chance = bits.len() as f64 / f64::from(VIP_FILTER_BITS);
        let neighbours = 50_000;
        let passed = (vips..vips + neighbours)
            .filter(|&n| bits.contains(&vip_filter_bit(&address(n), port)))
            .count();
        let rate = passed as f64 / f64::from(neighbours);
        assert!(
            rate < 2.0 * chance,
            "{passed} of {neighbours} neighbouring addresses pass ({:.2} %), chance is {:.2} %",
            rate * 100.0,
            chance * 100.0
        );
    }
}
