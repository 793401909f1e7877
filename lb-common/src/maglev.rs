//! Weighted Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and
//! Reliable Software Network Load Balancer", NSDI 2016), in the weighted
//! variant where each member fills table slots in proportion to its weight.
//!
//! # Contract (part of the on-wire behaviour)
//!
//! Every node of a cluster must compute the same table for the same input, or
//! a flow would land on different backends depending on which node sees it.
//! The table is therefore a pure function of the table size and of the *set*
//! of `(identity, weight)` pairs (not of their order), defined exactly as
//! follows. Changing any step changes the placement of flows and needs a
//! coordinated rollout.
//!
//! 1. **Members.** Only members with `weight > 0` take part. They are ranked
//!    by weight (larger first), then by identity (bytewise lexicographic,
//!    smaller first). Identities are unique.
//! 2. **Preference list.** For identity bytes `id`, `h(seed, id)` is 64-bit
//!    FNV-1a (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) over
//!    the 8 little-endian bytes of `seed` followed by `id`, passed through the
//!    MurmurHash3 `fmix64` finalizer. Then
//!    `offset = h(OFFSET_SEED, id) % size` and
//!    `skip = h(SKIP_SEED, id) % (size - 1) + 1`, and the member's preference
//!    list is `offset, offset + skip, offset + 2·skip, … (mod size)`. As
//!    `size` is prime, the list visits every slot once.
//! 3. **Quotas** (Hamilton / largest remainder). With `W = Σ weight`, member
//!    `i` has the exact share `size·wᵢ / W`. It gets `⌊size·wᵢ / W⌋` slots;
//!    the `size − Σ⌊…⌋` slots left over go one each to the members with the
//!    largest remainder `size·wᵢ mod W`, equal remainders in rank order. So
//!    every member owns its exact share rounded down or up: less than one
//!    slot away from it.
//! 4. **Fill.** Member `i` gets turns `k = 0, 1, 2, …` at virtual time
//!    `(2k + 1) / (2·wᵢ)` (stride scheduling: a member of weight `w` has `w`
//!    turns per unit of time). Turns are taken in increasing time, equal
//!    times in rank order. On its turn a member that owns fewer slots than
//!    its quota takes the first slot of its preference list that is still
//!    free, and its next turn continues the list after that slot; a member at
//!    its quota passes. The fill ends when every slot is owned.
//!
//! With equal weights this is exactly the original Maglev population loop
//! (round robin over the members, the last partial round going to the first
//! members in rank order).

use core::fmt;

use crate::maps::NO_BACKEND;

/// Seed of the hash that gives a member's first preferred slot (`"mglv-off"`).
const OFFSET_SEED: u64 = u64::from_le_bytes(*b"mglv-off");
/// Seed of the hash that gives a member's step through the table (`"mglv-skp"`).
const SKIP_SEED: u64 = u64::from_le_bytes(*b"mglv-skp");
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Most members a table can name: positions are `u16` and `NO_BACKEND`
/// (`u16::MAX`) is reserved.
const MAX_MEMBERS: usize = NO_BACKEND as usize - 1;

/// A member of a Maglev table: a stable identity (e.g. the server's address
/// bytes or name) and a weight.
///
/// The identity, not the member's position in the slice, decides where the
/// member lands, so it must be the same on every node and stay the same for
/// as long as the member exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member<'a> {
    /// Bytes naming the member; unique within a table.
    pub identity: &'a [u8],
    /// Relative share of the table; `0` means the member owns no slot.
    pub weight: u32,
}

/// Why a table could not be built.
///
/// Sizes are `u32`, so a size beyond the `u32` range cannot be expressed in
/// the first place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MaglevError {
    /// The size is below 2 (a table needs at least two slots for a skip in
    /// `1..size`).
    SizeTooSmall {
        /// The size asked for.
        size: u32,
    },
    /// The size is not prime (use [`next_prime`]).
    SizeNotPrime {
        /// The size asked for.
        size: u32,
    },
    /// More members than `u16` positions can name (at most 65 534).
    TooManyMembers {
        /// Number of members given.
        count: usize,
    },
    /// Two members have the same identity.
    DuplicateIdentity {
        /// Positions of the two members in the caller's slice (`first < second`).
        first: usize,
        /// See `first`.
        second: usize,
    },
    /// The output buffer's length is not the table size.
    OutputLength {
        /// The table size.
        expected: u32,
        /// The buffer's length.
        actual: usize,
    },
}

impl fmt::Display for MaglevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SizeTooSmall { size } => {
                write!(f, "Maglev table size {size} is too small (minimum 2)")
            }
            Self::SizeNotPrime { size } => write!(
                f,
                "Maglev table size {size} is not prime (next prime: {})",
                next_prime(*size)
            ),
            Self::TooManyMembers { count } => write!(
                f,
                "{count} Maglev members, at most {MAX_MEMBERS} are supported"
            ),
            Self::DuplicateIdentity { first, second } => write!(
                f,
                "Maglev members {first} and {second} have the same identity"
            ),
            Self::OutputLength { expected, actual } => write!(
                f,
                "Maglev output buffer has {actual} cells, the table size is {expected}"
            ),
        }
    }
}

impl std::error::Error for MaglevError {}

/// Whether `n` is prime (deterministic trial division by `6k ± 1`; at most
/// ~22 000 divisions for a `u32`).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d = 5u64;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// Smallest prime `>= n` (`2` for `n <= 2`).
///
/// # Panics
///
/// If `n` exceeds the largest `u32` prime, 4 294 967 291.
pub fn next_prime(n: u32) -> u32 {
    let mut c = n.max(2);
    while !is_prime(c) {
        c = c
            .checked_add(1)
            .expect("no u32 prime at or above the requested size");
    }
    c
}

/// `h(seed, data)` of the module contract: FNV-1a 64 over `seed` (little
/// endian) then `data`, finished with MurmurHash3's `fmix64`.
fn member_hash(seed: u64, data: &[u8]) -> u64 {
    let mut h = FNV_OFFSET_BASIS;
    for &b in seed.to_le_bytes().iter().chain(data) {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Build the Maglev table of `size` slots for `members`.
///
/// `result[i]` is the position in `members` of the member owning slot `i`, or
/// [`NO_BACKEND`] for every slot when no member has a weight above zero. The
/// table depends only on `size` and the set of `(identity, weight)` pairs; see
/// the module documentation for the exact definition. Each member with a
/// positive weight owns its exact share `size·w / Σw` rounded down or up.
///
/// `size` must be a prime `>= 2` (see [`next_prime`]); at most 65 534 members
/// are accepted and identities must be unique.
///
/// Cost: `O(n log n)` set-up for `n` members plus about `size · ln(size)`
/// table probes for the fill, with no allocation in the fill loop; members of
/// equal weight are scheduled as one group, so the scheduling overhead grows
/// with the number of *distinct* weights only. Around 1 ms for 65 537 slots
/// and 1 000 members (release build, one core); the project's benchmark
/// harness tracks the actual figures.
pub fn build_table(members: &[Member<'_>], size: u32) -> Result<Vec<u16>, MaglevError> {
    check_size(size)?;
    let mut out = vec![NO_BACKEND; size as usize];
    build_into(members, size, &mut out)?;
    Ok(out)
}

/// Same as [`build_table`], writing into `out`, whose length must be `size`
/// (no allocation of the output, e.g. to fill a memory-mapped map slot
/// directly). On error `out` is left untouched.
pub fn build_into(members: &[Member<'_>], size: u32, out: &mut [u16]) -> Result<(), MaglevError> {
    check_size(size)?;
    if members.len() > MAX_MEMBERS {
        return Err(MaglevError::TooManyMembers {
            count: members.len(),
        });
    }
    if out.len() != size as usize {
        return Err(MaglevError::OutputLength {
            expected: size,
            actual: out.len(),
        });
    }
    check_unique(members)?;

    let plan = Plan::new(members, size);
    out.fill(NO_BACKEND);
    plan.fill(out, size);
    Ok(())
}

fn check_size(size: u32) -> Result<(), MaglevError> {
    if size < 2 {
        return Err(MaglevError::SizeTooSmall { size });
    }
    if !is_prime(size) {
        return Err(MaglevError::SizeNotPrime { size });
    }
    Ok(())
}

/// Rejects duplicate identities (including among zero-weight members: the
/// input must be a set).
fn check_unique(members: &[Member<'_>]) -> Result<(), MaglevError> {
    let mut by_identity: Vec<usize> = (0..members.len()).collect();
    by_identity.sort_unstable_by(|&a, &b| members[a].identity.cmp(members[b].identity));
    for pair in by_identity.windows(2) {
        if members[pair[0]].identity == members[pair[1]].identity {
            return Err(MaglevError::DuplicateIdentity {
                first: pair[0].min(pair[1]),
                second: pair[0].max(pair[1]),
            });
        }
    }
    Ok(())
}

/// Fill state of one member with a positive weight.
#[derive(Clone, Copy)]
struct Cursor {
    /// Next slot of the preference list to try.
    next: u32,
    /// Step through the table, in `1..size`.
    skip: u32,
    /// Slots still to take before the quota is reached.
    left: u32,
    /// Position in the caller's slice.
    position: u16,
}

/// Members of equal weight: a contiguous run of `Plan::cursors` that takes its
/// turns together.
#[derive(Clone, Copy)]
struct Group {
    start: usize,
    end: usize,
}

/// The next turn of a group: at virtual time `(2·round + 1) / (2·weight)`.
#[derive(Clone, Copy)]
struct Turn {
    round: u32,
    /// Turns the group still has (the largest quota among its members).
    rounds: u32,
    weight: u32,
    group: u32,
}

impl Turn {
    /// Whether `self` comes strictly before `other`: earlier time, or the
    /// same time and a lower group (larger weight, as groups are ranked).
    #[inline(always)]
    fn before(&self, other: &Turn) -> bool {
        let lhs = u128::from(2 * u64::from(self.round) + 1) * u128::from(other.weight);
        let rhs = u128::from(2 * u64::from(other.round) + 1) * u128::from(self.weight);
        lhs < rhs || (lhs == rhs && self.group < other.group)
    }
}

/// Everything the fill needs, in rank order.
struct Plan {
    cursors: Vec<Cursor>,
    groups: Vec<Group>,
    /// Binary min-heap of the groups' next turns.
    turns: Vec<Turn>,
}

impl Plan {
    fn new(members: &[Member<'_>], size: u32) -> Self {
        // Rank: weight descending, then identity ascending (unique, so the
        // order is total and independent of the input order).
        let mut ranked: Vec<usize> = (0..members.len())
            .filter(|&i| members[i].weight > 0)
            .collect();
        ranked.sort_unstable_by(|&a, &b| {
            let (ma, mb) = (&members[a], &members[b]);
            mb.weight
                .cmp(&ma.weight)
                .then_with(|| ma.identity.cmp(mb.identity))
        });

        // Quotas by largest remainder.
        let total: u64 = ranked.iter().map(|&i| u64::from(members[i].weight)).sum();
        let size64 = u64::from(size);
        let mut quotas: Vec<u32> = Vec::with_capacity(ranked.len());
        let mut remainders: Vec<(u64, u32)> = Vec::with_capacity(ranked.len());
        let mut assigned = 0u64;
        for (rank, &i) in ranked.iter().enumerate() {
            // size < 2^32 and weight < 2^32: the product fits in a u64.
            let share = size64 * u64::from(members[i].weight);
            let quota = share / total;
            assigned += quota;
            quotas.push(quota as u32);
            remainders.push((share % total, rank as u32));
        }
        let leftover = if total == 0 {
            0
        } else {
            (size64 - assigned) as usize
        };
        if leftover > 0 {
            // Largest remainder first, equal remainders in rank order.
            remainders.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            for &(_, rank) in &remainders[..leftover] {
                quotas[rank as usize] += 1;
            }
        }

        let cursors: Vec<Cursor> = ranked
            .iter()
            .zip(&quotas)
            .map(|(&i, &quota)| {
                let identity = members[i].identity;
                Cursor {
                    next: (member_hash(OFFSET_SEED, identity) % size64) as u32,
                    skip: (member_hash(SKIP_SEED, identity) % (size64 - 1)) as u32 + 1,
                    left: quota,
                    // MAX_MEMBERS keeps every position below NO_BACKEND.
                    position: i as u16,
                }
            })
            .collect();

        let mut groups = Vec::new();
        let mut turns = Vec::new();
        let mut start = 0;
        while start < ranked.len() {
            let weight = members[ranked[start]].weight;
            let mut end = start;
            let mut rounds = 0;
            while end < ranked.len() && members[ranked[end]].weight == weight {
                rounds = rounds.max(quotas[end]);
                end += 1;
            }
            if rounds > 0 {
                turns.push(Turn {
                    round: 0,
                    rounds,
                    weight,
                    group: groups.len() as u32,
                });
                groups.push(Group { start, end });
            }
            start = end;
        }
        // Every group starts at round 0, so time 1/(2·weight) increases with
        // the group index: `turns` is already a valid heap.
        Plan {
            cursors,
            groups,
            turns,
        }
    }

    /// Runs the fill into `out` (all `NO_BACKEND`, length `size`).
    fn fill(mut self, out: &mut [u16], size: u32) {
        while let Some(&turn) = self.turns.first() {
            let group = self.groups[turn.group as usize];
            for cursor in &mut self.cursors[group.start..group.end] {
                if cursor.left == 0 {
                    continue;
                }
                cursor.left -= 1;
                // `room` = size - skip: adding `skip` to `next < size` wraps
                // exactly when `next >= room` (no overflow, no modulo).
                let room = size - cursor.skip;
                let mut next = cursor.next;
                // Quotas sum to `size` and this member is below its quota, so
                // a free slot exists and the full-cycle list reaches it.
                while out[next as usize] != NO_BACKEND {
                    next = if next >= room {
                        next - room
                    } else {
                        next + cursor.skip
                    };
                }
                out[next as usize] = cursor.position;
                cursor.next = if next >= room {
                    next - room
                } else {
                    next + cursor.skip
                };
            }
            let top = &mut self.turns[0];
            top.round += 1;
            if top.round == top.rounds {
                let last = self.turns.pop().expect("heap is not empty");
                if self.turns.is_empty() {
                    break;
                }
                self.turns[0] = last;
            }
            sift_down(&mut self.turns);
        }
    }
}

/// Restores the min-heap property of `heap` after its root changed.
fn sift_down(heap: &mut [Turn]) {
    let len = heap.len();
    let item = heap[0];
    let mut hole = 0;
    loop {
        let left = 2 * hole + 1;
        if left >= len {
            break;
        }
        let right = left + 1;
        let child = if right < len && heap[right].before(&heap[left]) {
            right
        } else {
            left
        };
        if !heap[child].before(&item) {
            break;
        }
        heap[hole] = heap[child];
        hole = child;
    }
    heap[hole] = item;
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u32 = 65537;

    /// Distinct 16-byte identities (IPv6-like addresses).
    fn identities(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let mut id = vec![0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                id[12..].copy_from_slice(&(i as u32 + 1).to_be_bytes());
                id
            })
            .collect()
    }

    fn members<'a>(ids: &'a [Vec<u8>], weights: &[u32]) -> Vec<Member<'a>> {
        ids.iter()
            .zip(weights)
            .map(|(id, &weight)| Member {
                identity: id,
                weight,
            })
            .collect()
    }

    /// Weights 1..=10 cycling.
    fn mixed_weights(n: usize) -> Vec<u32> {
        (0..n).map(|i| (i % 10) as u32 + 1).collect()
    }

    fn counts(table: &[u16], n: usize) -> Vec<u64> {
        let mut counts = vec![0u64; n];
        for &cell in table {
            counts[usize::from(cell)] += 1;
        }
        counts
    }

    /// Simple deterministic LCG (Knuth's MMIX constants).
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 33) % n as u64) as usize
        }

        fn shuffle<T>(&mut self, items: &mut [T]) {
            for i in (1..items.len()).rev() {
                items.swap(i, self.below(i + 1));
            }
        }
    }

    /// Largest |count − exact share| / exact share over the members.
    fn max_relative_error(table: &[u16], weights: &[u32]) -> f64 {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let counts = counts(table, weights.len());
        weights
            .iter()
            .zip(&counts)
            .filter(|(w, _)| **w > 0)
            .map(|(&w, &c)| {
                let exact = table.len() as f64 * f64::from(w) / total as f64;
                (c as f64 - exact).abs() / exact
            })
            .fold(0.0, f64::max)
    }

    /// Fraction of slots whose owner (by identity) differs between two tables.
    fn changed_fraction(
        before: &[u16],
        before_members: &[Member<'_>],
        after: &[u16],
        after_members: &[Member<'_>],
    ) -> f64 {
        let changed = before
            .iter()
            .zip(after)
            .filter(|&(&b, &a)| {
                before_members[usize::from(b)].identity != after_members[usize::from(a)].identity
            })
            .count();
        changed as f64 / before.len() as f64
    }

    #[test]
    fn share_within_one_percent_up_to_100_members() {
        for n in [1usize, 2, 3, 7, 10, 50, 100] {
            for weights in [vec![1; n], mixed_weights(n)] {
                let ids = identities(n);
                let ms = members(&ids, &weights);
                let table = build_table(&ms, SIZE).unwrap();
                assert!(table.iter().all(|&c| usize::from(c) < n));
                let err = max_relative_error(&table, &weights);
                assert!(err <= 0.01, "n={n} weights={weights:?}: error {err}");
            }
        }
    }

    #[test]
    fn thousand_members_within_one_slot_of_exact_share() {
        let n = 1000;
        let ids = identities(n);
        // Mixed small weights, plus a few heavy and weight-0 members.
        let weights: Vec<u32> = (0..n)
            .map(|i| match i % 97 {
                0 => 0,
                1 => 1000,
                _ => (i % 13) as u32 + 1,
            })
            .collect();
        for weights in [vec![1; n], weights] {
            let ms = members(&ids, &weights);
            let table = build_table(&ms, SIZE).unwrap();
            let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            for (i, &c) in counts(&table, n).iter().enumerate() {
                let exact = u64::from(SIZE) * u64::from(weights[i]);
                // floor(exact share) <= count <= ceil(exact share)
                assert!(c * total <= exact + total - 1 && exact < (c + 1) * total);
            }
        }
    }

    #[test]
    fn removing_a_member_disrupts_little() {
        for n in [3usize, 10, 100] {
            let ids = identities(n);
            for weights in [vec![1; n], mixed_weights(n)] {
                let ms = members(&ids, &weights);
                let table = build_table(&ms, SIZE).unwrap();
                let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
                // Every member for small n, a spread of ten for n = 100.
                let step = n.div_ceil(10);
                for gone in (0..n).step_by(step) {
                    let mut rest = ms.clone();
                    rest.remove(gone);
                    let after = build_table(&rest, SIZE).unwrap();
                    let changed = changed_fraction(&table, &ms, &after, &rest);
                    let share = f64::from(weights[gone]) / total as f64;
                    // Equal weights: share = 1/n.
                    assert!(
                        changed <= share + 0.007,
                        "n={n} weights={weights:?} removing {gone}: {changed} > {share} + 0.7%"
                    );
                }
            }
        }
    }

    #[test]
    fn independent_of_member_order() {
        let mut rng = Lcg(0x5eed);
        for n in [2usize, 10, 100, 1000] {
            let ids = identities(n);
            let mut weights = mixed_weights(n);
            weights[n / 2] = 0;
            let ms = members(&ids, &weights);
            let table = build_table(&ms, SIZE).unwrap();
            for _ in 0..3 {
                let mut shuffled = ms.clone();
                rng.shuffle(&mut shuffled);
                let other = build_table(&shuffled, SIZE).unwrap();
                for (&a, &b) in table.iter().zip(&other) {
                    assert_eq!(
                        ms[usize::from(a)].identity,
                        shuffled[usize::from(b)].identity
                    );
                }
            }
        }
    }

    #[test]
    #[ignore]
    fn adhoc_stats() {
        for n in [3usize, 10, 30, 100, 300, 1000] {
            let ids = identities(n);
            for (label, weights) in [("equal", vec![1; n]), ("mixed", mixed_weights(n))] {
                let ms = members(&ids, &weights);
                let table = build_table(&ms, SIZE).unwrap();
                let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
                let step = n.div_ceil(40);
                let (mut max_ex, mut sum_ex, mut cnt) = (f64::MIN, 0.0, 0);
                for gone in (0..n).step_by(step) {
                    let mut rest = ms.clone();
                    rest.remove(gone);
                    let after = build_table(&rest, SIZE).unwrap();
                    let changed = changed_fraction(&table, &ms, &after, &rest);
                    let share = f64::from(weights[gone]) / total as f64;
                    let ex = changed - share;
                    max_ex = max_ex.max(ex);
                    sum_ex += ex;
                    cnt += 1;
                }
                let err = max_relative_error(&table, &weights);
                println!(
                    "n={n} {label}: rel err {:.4}% excess max {:.3}% mean {:.3}%",
                    err * 100.0,
                    max_ex * 100.0,
                    sum_ex / cnt as f64 * 100.0
                );
            }
        }
        let ids = identities(1000);
        for weights in [
            vec![1u32; 1000],
            mixed_weights(1000),
            (0..1000).map(|i| i as u32 * 7 + 1).collect(),
        ] {
            let ms = members(&ids, &weights);
            let mut out = vec![0u16; SIZE as usize];
            let t = std::time::Instant::now();
            let reps = 50;
            for _ in 0..reps {
                build_into(&ms, SIZE, &mut out).unwrap();
            }
            println!("1000 members: {:?} per build", t.elapsed() / reps);
        }
        for n in [10usize, 100] {
            let ids = identities(n);
            let ms = members(&ids, &mixed_weights(n));
            let mut out = vec![0u16; SIZE as usize];
            let t = std::time::Instant::now();
            let reps = 50;
            for _ in 0..reps {
                build_into(&ms, SIZE, &mut out).unwrap();
            }
            println!("{n} members: {:?} per build", t.elapsed() / reps);
        }
    }

    #[test]
    fn zero_weights_and_empty() {
        let ids = identities(4);
        let ms = members(&ids, &[3, 0, 1, 0]);
        let table = build_table(&ms, 1009).unwrap();
        let c = counts(&table, 4);
        assert_eq!((c[1], c[3]), (0, 0));
        assert_eq!(c[0] + c[2], 1009);

        assert_eq!(build_table(&[], 13).unwrap(), vec![NO_BACKEND; 13]);
        let zeros = members(&ids, &[0, 0, 0, 0]);
        assert_eq!(build_table(&zeros, 13).unwrap(), vec![NO_BACKEND; 13]);

        // More members than slots: the table is still full and exact.
        let ids = identities(20);
        let ms = members(&ids, &[1; 20]);
        let table = build_table(&ms, 7).unwrap();
        let c = counts(&table, 20);
        assert!(c.iter().all(|&c| c <= 1));
        assert_eq!(c.iter().sum::<u64>(), 7);
    }

    #[test]
    fn build_into_matches_build_table() {
        let ids = identities(10);
        let ms = members(&ids, &mixed_weights(10));
        let mut out = vec![7u16; 65537];
        build_into(&ms, SIZE, &mut out).unwrap();
        assert_eq!(out, build_table(&ms, SIZE).unwrap());
        let mut short = vec![0u16; 100];
        assert_eq!(
            build_into(&ms, 101, &mut short),
            Err(MaglevError::OutputLength {
                expected: 101,
                actual: 100
            })
        );
        assert_eq!(short, vec![0u16; 100]);
    }

    #[test]
    fn errors() {
        let ids = identities(3);
        let ms = members(&ids, &[1, 1, 1]);
        assert_eq!(
            build_table(&ms, 65536),
            Err(MaglevError::SizeNotPrime { size: 65536 })
        );
        assert_eq!(
            build_table(&ms, 1),
            Err(MaglevError::SizeTooSmall { size: 1 })
        );
        assert_eq!(
            build_table(&ms, 0),
            Err(MaglevError::SizeTooSmall { size: 0 })
        );
        let mut dup = ms.clone();
        dup.push(Member {
            identity: &ids[1],
            weight: 0,
        });
        assert_eq!(
            build_table(&dup, 13),
            Err(MaglevError::DuplicateIdentity {
                first: 1,
                second: 3
            })
        );
        let id = [1u8];
        let many = vec![
            Member {
                identity: &id,
                weight: 1
            };
            MAX_MEMBERS + 1
        ];
        assert_eq!(
            build_table(&many, 13),
            Err(MaglevError::TooManyMembers {
                count: MAX_MEMBERS + 1
            })
        );
        assert!(
            MaglevError::SizeNotPrime { size: 100 }
                .to_string()
                .contains("101")
        );
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..60).filter(|&n| is_prime(n)).collect();
        assert_eq!(
            small,
            [
                2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59
            ]
        );
        // Agrees with a sieve up to 100 000.
        let limit = 100_000usize;
        let mut sieve = vec![true; limit];
        sieve[0] = false;
        sieve[1] = false;
        for i in 2..limit {
            if sieve[i] {
                for j in (i * i..limit).step_by(i) {
                    sieve[j] = false;
                }
            }
        }
        for (n, &p) in sieve.iter().enumerate() {
            assert_eq!(is_prime(n as u32), p, "{n}");
        }
        assert!(is_prime(65537));
        assert!(is_prime(4_294_967_291));
        assert!(!is_prime(4_294_967_295));
        assert!(!is_prime(65521 * 65519)); // product of two large primes
        assert_eq!(next_prime(0), 2);
        assert_eq!(next_prime(2), 2);
        assert_eq!(next_prime(14), 17);
        assert_eq!(next_prime(65536), 65537);
        assert_eq!(next_prime(65537), 65537);
        assert_eq!(next_prime(4_294_967_280), 4_294_967_291);
    }
}
