//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table
//! of prime size in which each backend owns a share of the entries in
//! proportion to its weight, filled so that removing one backend moves
//! only the entries it owned (and a few more), and adding it back restores
//! the table.

use std::net::SocketAddr;

/// Entries per backend at least, so that one backend leaving moves close
/// to 1/N of the new flows and the shares stay within about 1 % of even.
const ENTRIES_PER_BACKEND: u32 = 100;

/// The table size for `backends` backends: the smallest prime at least
/// [`ENTRIES_PER_BACKEND`] times as large (101 for one backend).
pub fn table_size(backends: usize) -> u32 {
    let mut size = ENTRIES_PER_BACKEND * backends.max(1) as u32;
    while !is_prime(size) {
        size += 1;
    }
    size
}

/// The table size for `backends` backends when the pool's table has
/// `current` entries: kept while it is still large enough, so that a pool
/// that shrinks keeps its mapping (only the leaving backend's entries move).
pub fn table_size_keeping(current: Option<u32>, backends: usize) -> u32 {
    match current {
        Some(size) if is_prime(size) && size >= ENTRIES_PER_BACKEND * backends.max(1) as u32 => {
            size
        }
        _ => table_size(backends),
    }
}

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// splitmix64's finaliser: every input bit reaches every output bit.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A backend's identity hash with `seed`: from its address and port only,
/// so its preferences do not depend on where it sits in the pool.
fn identity_hash(backend: SocketAddr, seed: u64) -> u64 {
    let bytes = match backend.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    let high = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
    let low = u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes"));
    mix(mix(mix(seed ^ high) ^ low) ^ u64::from(backend.port()))
}

/// Builds the lookup table of `size` entries (a prime, see [`table_size`])
/// for `backends`, each with a weight; an entry is the index of its backend
/// in `backends`. Backends of weight 0 (drained) own no entry. An empty
/// table when no backend has a weight.
pub fn build(backends: &[(SocketAddr, u32)], size: u32) -> Vec<u8> {
    assert!(backends.len() <= 256, "a pool has at most 256 backends");
    assert!(is_prime(size), "the table size {size} is not a prime");
    // Filled in the order of the backends' identities, not of the pool, so
    // the same set of backends always gives the same table.
    let mut order: Vec<usize> = (0..backends.len())
        .filter(|&index| backends[index].1 > 0)
        .collect();
    if order.is_empty() {
        return Vec::new();
    }
    order.sort_by_key(|&index| (identity_hash(backends[index].0, 0), backends[index].0));
    let size = u64::from(size);
    let preferences: Vec<(u64, u64)> = order
        .iter()
        .map(|&index| {
            let offset = identity_hash(backends[index].0, 0x6d61_676c_6576) % size;
            let skip = identity_hash(backends[index].0, 0x736b_6970) % (size - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_weight = order
        .iter()
        .map(|&index| backends[index].1)
        .max()
        .expect("not empty");
    let mut table = vec![None::<u8>; size as usize];
    let mut next = vec![0u64; order.len()];
    // Weighted turns: in each round a backend of weight w takes w/max of a
    // turn on average (credits carry over), so its share follows its weight.
    let mut credit = vec![0u32; order.len()];
    let mut filled = 0;
    while filled < table.len() {
        for (turn, &index) in order.iter().enumerate() {
            credit[turn] += backends[index].1;
            if credit[turn] < max_weight {
                continue;
            }
            credit[turn] -= max_weight;
            let (offset, skip) = preferences[turn];
            let entry = loop {
                let candidate = ((offset + next[turn] * skip) % size) as usize;
                next[turn] += 1;
                if table[candidate].is_none() {
                    break candidate;
                }
            };
            table[entry] = Some(index as u8);
            filled += 1;
            if filled == table.len() {
                break;
            }
        }
    }
    table
        .into_iter()
        .map(|entry| entry.expect("every entry filled"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(count: usize) -> Vec<(SocketAddr, u32)> {
        (0..count)
            .map(|index| {
                let addr = format!("10.0.{}.{}:8080", index / 250, index % 250 + 1);
                (addr.parse().expect("literal"), 1)
            })
            .collect()
    }

    fn shares(table: &[u8], backends: usize) -> Vec<usize> {
        let mut shares = vec![0; backends];
        for &entry in table {
            shares[usize::from(entry)] += 1;
        }
        shares
    }

    #[test]
    fn table_sizes_are_primes_a_hundred_times_the_pool() {
        assert_eq!(table_size(0), 101);
        assert_eq!(table_size(1), 101);
        assert_eq!(table_size(2), 211);
        assert_eq!(table_size(8), 809);
        assert_eq!(table_size(256), 25601);
        assert_eq!(
            table_size_keeping(Some(809), 7),
            809,
            "a shrinking pool keeps its size"
        );
        assert_eq!(
            table_size_keeping(Some(809), 9),
            907,
            "a growing pool outgrows it"
        );
        assert_eq!(
            table_size_keeping(Some(0), 1),
            101,
            "an emptied pool starts afresh"
        );
        assert_eq!(table_size_keeping(None, 2), 211);
    }

    #[test]
    fn equal_weights_get_equal_shares() {
        for count in [1, 3, 8, 64, 256] {
            let table = build(&backends(count), table_size(count));
            let shares = shares(&table, count);
            let (least, most) = (
                *shares.iter().min().expect("backends"),
                *shares.iter().max().expect("backends"),
            );
            assert!(
                most - least <= 1,
                "{count} backends: shares from {least} to {most}"
            );
        }
    }

    #[test]
    fn shares_follow_weights_and_drained_backends_get_none() {
        let mut pool = backends(4);
        pool[0].1 = 100;
        pool[1].1 = 50;
        pool[2].1 = 50;
        pool[3].1 = 0;
        let size = table_size(400);
        let shares = shares(&build(&pool, size), 4);
        assert_eq!(shares[3], 0, "drained");
        let half = size as usize / 2;
        assert!(shares[0].abs_diff(half) <= half / 50, "{shares:?}");
        assert!(shares[1].abs_diff(shares[2]) <= 2, "{shares:?}");
        assert!(build(&[(pool[3].0, 0)], 101).is_empty());
    }

    #[test]
    fn removing_one_backend_moves_little_more_than_its_share_and_adding_it_back_restores() {
        let pool = backends(8);
        let size = table_size(8);
        let before = build(&pool, size);
        let mut without = pool.clone();
        without[3].1 = 0;
        let after = build(&without, size);
        let moved_others = before
            .iter()
            .zip(&after)
            .filter(|(was, now)| **was != 3 && was != now)
            .count();
        assert!(
            moved_others * 100 <= size as usize * 5,
            "{moved_others} of {size} entries of the other backends moved"
        );
        assert!(after.iter().all(|&entry| entry != 3));
        assert_eq!(build(&pool, size), before, "adding it back restores");
    }

    #[test]
    fn the_table_depends_on_the_backends_not_on_their_order_in_the_pool() {
        let pool = backends(5);
        let mut reversed = pool.clone();
        reversed.reverse();
        let forward = build(&pool, 503);
        let backward = build(&reversed, 503);
        let owner =
            |table: &[u8], pool: &[(SocketAddr, u32)], at: usize| pool[usize::from(table[at])].0;
        assert!((0..503).all(|at| owner(&forward, &pool, at) == owner(&backward, &reversed, at)));
    }
}
