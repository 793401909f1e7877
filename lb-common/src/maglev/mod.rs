//! Weighted Maglev consistent hashing: the lookup table that maps a flow hash
//! to a backend (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016), weighted as in Katran: each member owns
//! table slots in proportion to its weight.
//!
//! As in Maglev, every member walks its own pseudo-random preference list of
//! slots and members compete for slots. Two refinements over the paper's
//! round-robin fill make tables exact and more stable:
//!
//! - **Exact shares.** Each member's slot count is fixed up front: its exact
//!   share `size · w / Σw` rounded down or up (largest remainder), so no
//!   member is a whole slot away from its share.
//! - **Order-free competition.** Instead of "first come, first served" in
//!   round-robin order, every (member, list position) pair has a score and a
//!   slot goes to the best-scored member that still needs slots: the unique
//!   *stable assignment*. Removing a member then mostly hands its own slots
//!   to the runners-up instead of rippling through the late rounds of a
//!   round-robin fill. With 65 537 slots, removing one of 100 members moves
//!   about 0.3 % of the table beyond the removed member's own share, against
//!   0.6–0.9 % for the round-robin fill.
//!
//! # Contract (part of the on-wire behaviour)
//!
//! Every node of a cluster must compute the same table for the same input,
//! or a flow would land on different backends depending on the node that
//! sees it. The table is a pure function of `size` and of the *set* of
//! `(identity, weight)` pairs (not of their order), computed with integer
//! arithmetic only, and defined as follows. Changing any step moves flows and
//! needs a coordinated rollout; the tests pin hashes and reference tables.
//!
//! Let `M = size` (a prime).
//!
//! 1. **Members.** Members of weight 0 take no part. The others are ranked by
//!    identity, bytewise lexicographic (identities are unique).
//! 2. **Preference lists.** `base = FNV-1a-64(identity)` (offset basis
//!    `0xcbf29ce484222325`, prime `0x100000001b3`), and with `fmix64` the
//!    `MurmurHash3` 64-bit finalizer: `offset = fmix64(base ^ OFFSET_SEED) % M`,
//!    `skip = fmix64(base ^ SKIP_SEED) % (M − 1) + 1` and
//!    `shift = fmix64(base ^ SHIFT_SEED) % M`. A member's list is
//!    `list(j) = (π[(offset + j·skip) mod M] + shift) mod M`, `j = 0 … M−1`,
//!    where `π` is the permutation of `0 … M−1` made by a Fisher–Yates
//!    shuffle: starting from the identity, for `i = M−1` down to `1` swap
//!    `π[i]` and `π[(r·(i+1)) >> 64]`, `r` being the next `SplitMix64` output
//!    of the state seeded with `PERMUTATION_SEED ^ M`. Every list visits each
//!    slot once. (With plain Maglev lists `offset + j·skip`, the lists of two
//!    members are affine images of each other, and a pair whose skips happen
//!    to be in a small ratio competes badly; the shared shuffle breaks that
//!    structure.)
//! 3. **Quotas.** With `W = Σ weight`, a member of weight `w` gets
//!    `⌊M·w / W⌋` slots; the `M − Σ⌊…⌋` slots left over go one each to the
//!    members with the largest remainder `M·w mod W`, equal remainders in rank
//!    order.
//! 4. **Scores.** Position `j` in the list of a member of weight `w` scores
//!    `E(j) / w`, lower is better. `E(j) = Λ(2M) − Λ(2M − 2j − 1)` where `Λ`
//!    is a fixed-point `log2` with 27 fractional bits (`log2_fixed`: exact
//!    integer part, linear interpolation of a 257-entry table of
//!    `log2(1 + i/256)`); `E(j)` is the `(j + ½)/M` quantile of the
//!    exponential distribution in `log2` units, so without quotas a member
//!    would win slots in proportion to its weight (a weighted rendezvous).
//!    Pair `(a, j)` beats pair `(b, k)` when `E(j)·w_b < E(k)·w_a`, ties
//!    going to the lower rank, then to the lower position.
//! 5. **Assignment.** The table is the unique assignment in which every
//!    member owns exactly its quota and no member would rather have (at a
//!    lower position of its list) a slot whose owner holds it with a pair
//!    that its own pair beats. Equivalently: go through all pairs, best
//!    first, and give the slot to the pair's member if the slot is free and
//!    the member is below its quota. It is computed by member-proposing
//!    deferred acceptance (Gale–Shapley), whose result does not depend on the
//!    order in which members propose.
//!
//! With equal weights, step 4 reduces to "the lower list position wins, ties
//! to the lower rank" (`E` is strictly increasing for every allowed size).

use core::fmt;
use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use crate::maps::NO_BACKEND;

mod fill;
mod hash;
#[cfg(test)]
mod tests;

use fill::{Fill, Scratch};

/// Largest table size accepted: `2^24` slots (the largest usable prime is
/// 16 777 213). Bounds the working memory (16 bytes per slot) and keeps the
/// fixed-point scores within 32 bits.
pub const MAX_SIZE: u32 = 1 << 24;

/// Most members a table can name: positions are `u16` and [`NO_BACKEND`]
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MaglevError {
    /// The size is below 2 (a table needs a step in `1..size`).
    SizeTooSmall {
        /// The size asked for.
        size: u32,
    },
    /// The size is above [`MAX_SIZE`].
    SizeTooLarge {
        /// The size asked for.
        size: u32,
    },
    /// The size is not prime (see [`next_prime`]).
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
        /// Position of one of them in the caller's slice.
        first: usize,
        /// Position of the other (`first < second`).
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
            Self::SizeTooLarge { size } => {
                write!(
                    f,
                    "Maglev table size {size} is above the maximum {MAX_SIZE}"
                )
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

/// Whether `n` is prime (trial division by `6k ± 1`: at most ~22 000
/// divisions for a `u32`).
#[must_use]
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
/// If `n` is above the largest `u32` prime, 4 294 967 291.
#[must_use]
pub fn next_prime(n: u32) -> u32 {
    let mut c = n.max(2);
    while !is_prime(c) {
        c = c
            .checked_add(1)
            .expect("no u32 prime at or above the requested size");
    }
    c
}

/// Build the Maglev table of `size` slots for `members`.
///
/// `result[i]` is the position in `members` of the member owning slot `i`, or
/// [`NO_BACKEND`] in every slot when no member has a weight above zero. The
/// table depends only on `size` and on the set of `(identity, weight)` pairs
/// (the module documentation defines it exactly). Each member of positive
/// weight `w` owns `size · w / Σw` slots rounded down or up.
///
/// `size` must be a prime in `2 ..= MAX_SIZE` (see [`next_prime`]); at most
/// 65 534 members are accepted and identities must be unique (zero-weight
/// members included).
///
/// Speed: `O(n log n)` for `n` members plus, for the fill, `O(size)` set-up
/// and about `size · ln(size)` list probes (fewer with few members), with no
/// allocation in the fill loop. On the reference 2-core VM, in a release
/// build, 65 537 slots take about 1.5 ms with 10 members, 2.5 ms with 100
/// and 3 ms with 1 000 on x86-64 with AVX2; nearly twice that with the
/// portable code, which also serves weights that do not all fit 16 bits once
/// divided by their greatest common divisor. The working memory (16 bytes
/// per slot, including the tables that depend only on `size`) is kept
/// between calls for sizes up to 2^20 slots, so repeated builds of one size
/// skip that set-up. The project's benchmark harness tracks the actual
/// figures.
///
/// # Errors
///
/// [`MaglevError`] when `size` is not a prime from 2 to [`MAX_SIZE`], there
/// are more members than `u16` positions can name, or two members have the
/// same identity.
pub fn build_table(members: &[Member<'_>], size: u32) -> Result<Vec<u16>, MaglevError> {
    check_size(size)?;
    let mut out = vec![NO_BACKEND; size as usize];
    build_into(members, size, &mut out)?;
    Ok(out)
}

/// Same as [`build_table`], writing into `out`, whose length must be `size`
/// (the output is not allocated, e.g. to fill a memory-mapped map slot in
/// place). On error `out` is left untouched.
///
/// # Errors
///
/// As [`build_table`], and [`MaglevError::OutputLength`] when `out` is not
/// `size` long.
pub fn build_into(members: &[Member<'_>], size: u32, out: &mut [u16]) -> Result<(), MaglevError> {
    build_into_using(members, size, out, true)
}

/// [`build_into`], with SIMD allowed or not (the tests compare both).
fn build_into_using(
    members: &[Member<'_>],
    size: u32,
    out: &mut [u16],
    simd: bool,
) -> Result<(), MaglevError> {
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
    let ranked = rank(members)?;
    if ranked.is_empty() {
        out.fill(NO_BACKEND);
        return Ok(());
    }
    let mut scratch = Scratch::take(size);
    let mut fill = Fill::new(members, &ranked, size, simd, &mut scratch);
    fill.run();
    fill.write(&ranked, out);
    scratch.keep();
    Ok(())
}

fn check_size(size: u32) -> Result<(), MaglevError> {
    if size < 2 {
        return Err(MaglevError::SizeTooSmall { size });
    }
    if size > MAX_SIZE {
        return Err(MaglevError::SizeTooLarge { size });
    }
    if !is_prime(size) {
        return Err(MaglevError::SizeNotPrime { size });
    }
    Ok(())
}

/// Positions of the members of positive weight, in rank (identity) order.
/// Rejects duplicate identities among all members, zero weights included:
/// the input must be a set.
fn rank(members: &[Member<'_>]) -> Result<Vec<u16>, MaglevError> {
    // The caller checked MAX_MEMBERS: positions fit in u16.
    let mut order: Vec<u16> = (0..members.len() as u16).collect();
    order.sort_unstable_by(|&a, &b| {
        members[usize::from(a)]
            .identity
            .cmp(members[usize::from(b)].identity)
    });
    for pair in order.windows(2) {
        let (a, b) = (usize::from(pair[0]), usize::from(pair[1]));
        if members[a].identity == members[b].identity {
            return Err(MaglevError::DuplicateIdentity {
                first: a.min(b),
                second: a.max(b),
            });
        }
    }
    order.retain(|&i| members[usize::from(i)].weight > 0);
    Ok(order)
}

/// Slot counts of members of the given weights (all positive): exact shares
/// rounded down, leftovers to the largest remainders, ties to the lower rank.
fn quotas(weights: &[u32], size: u32) -> Vec<u32> {
    let size = u64::from(size);
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let mut quotas = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    let mut assigned = 0u64;
    for (rank, &w) in weights.iter().enumerate() {
        // size <= 2^24 and w < 2^32: no overflow.
        let share = size * u64::from(w);
        quotas.push((share / total) as u32);
        assigned += share / total;
        remainders.push((share % total, rank as u32));
    }
    // Each floor drops less than one slot: fewer leftovers than members.
    let leftover = (size - assigned) as usize;
    if leftover > 0 {
        remainders.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, rank) in &remainders[..leftover] {
            quotas[rank as usize] += 1;
        }
    }
    quotas
}
