//! Weighted Maglev consistent hashing: the lookup table that maps a flow hash
//! to a backend (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016), with weights (each member owns table
//! slots in proportion to its weight, as in Katran).
//!
//! As in Maglev, every member walks its own pseudo-random preference list of
//! slots, and members compete for slots. Two refinements over the paper's
//! round-robin fill keep tables exact and stable:
//!
//! - **Exact shares.** Each member's slot count is fixed up front (its exact
//!   share rounded down or up, largest-remainder method), so every member is
//!   less than one slot away from `size · weight / Σ weight`.
//! - **Order-free competition.** Instead of "first come, first served" in
//!   round-robin order, each (member, list position) pair has a score, and a
//!   slot goes to the best-scored member that still needs slots: the unique
//!   *stable assignment*. Removing a member then mostly hands its own slots to
//!   the runners-up, instead of rippling through the late rounds of the fill;
//!   measured extra disruption is about half the round-robin fill's.
//!
//! # Contract (part of the on-wire behaviour)
//!
//! Every node of a cluster must compute the same table for the same input, or
//! a flow would land on different backends depending on which node sees it.
//! The table is a pure function of `size` and of the *set* of
//! `(identity, weight)` pairs (not their order), using integer arithmetic
//! only. It is defined as follows; changing any step moves flows and needs a
//! coordinated rollout (the tests pin hashes and a reference table).
//!
//! Let `M = size` (a prime).
//!
//! 1. **Members.** Members with `weight = 0` take no part. The others are
//!    ranked by identity, bytewise lexicographic (identities are unique).
//! 2. **Preference lists.** `base = FNV-1a-64(identity)` (offset basis
//!    `0xcbf29ce484222325`, prime `0x100000001b3`), and with `fmix64` the
//!    MurmurHash3 finalizer: `offset = fmix64(base ^ OFFSET_SEED) % M`,
//!    `skip = fmix64(base ^ SKIP_SEED) % (M − 1) + 1`,
//!    `shift = fmix64(base ^ SHIFT_SEED) % M`. The member's list is
//!    `list(j) = (π[(offset + j·skip) mod M] + shift) mod M` for
//!    `j = 0 … M−1`, where `π` is the permutation of `0 … M−1` made by a
//!    Fisher–Yates shuffle driven by SplitMix64 seeded with
//!    `PERMUTATION_SEED ^ M` ([`Permutation`]). Every list visits every slot
//!    once. (The plain Maglev list `offset + j·skip` alone makes the lists of
//!    two members affine images of each other; when their skips happen to be
//!    in a small ratio the pair competes badly. The shared shuffle removes
//!    that structure.)
//! 3. **Quotas.** With `W = Σ weight`, a member of weight `w` has the exact
//!    share `M·w / W` and gets `⌊M·w / W⌋` slots; the `M − Σ⌊…⌋` slots left
//!    go one each to the members with the largest remainder `M·w mod W`,
//!    equal remainders in rank order.
//! 4. **Scores.** List position `j` of a member of weight `w` scores
//!    `E(j) / w`, lower is better, where
//!    `E(j) = Λ(2M) − Λ(2M − 2j − 1)` and `Λ` is a fixed-point `log2`
//!    ([`log2_fixed`]). `E(j)` is the `(j + ½)/M` quantile of the
//!    exponential distribution (in `log2` units), so with no quotas a member
//!    would win a share of slots proportional to its weight, like a weighted
//!    rendezvous hash. Pair `(a, j)` beats pair `(b, k)` when
//!    `E(j)·w_b < E(k)·w_a`, ties going to the lower rank, then the lower
//!    position.
//! 5. **Assignment.** The table is the unique assignment in which every
//!    member owns exactly its quota and no member would rather have (lower
//!    list position) a slot whose owner holds it with a worse-scored pair.
//!    Equivalently: go through all pairs best first and give the slot to the
//!    member if the slot is free and the member is below its quota. It is
//!    computed by member-proposing deferred acceptance (Gale–Shapley), whose
//!    result does not depend on the processing order.
//!
//! With equal weights, step 4 reduces to "lower list position wins, ties to
//! the lower rank".

use core::fmt;

use crate::maps::NO_BACKEND;

/// Largest table size accepted (`2^24` slots; the largest usable prime is
/// 16 777 213). Bounds the scratch memory (16 bytes per slot) and keeps the
/// fixed-point scores within 32 bits.
pub const MAX_SIZE: u32 = 1 << 24;

/// Most members a table can name: positions are `u16` and `NO_BACKEND`
/// (`u16::MAX`) is reserved.
const MAX_MEMBERS: usize = NO_BACKEND as usize - 1;

/// Seed of the first preferred slot's hash (`"mglv-off"`).
const OFFSET_SEED: u64 = u64::from_le_bytes(*b"mglv-off");
/// Seed of the step's hash (`"mglv-skp"`).
const SKIP_SEED: u64 = u64::from_le_bytes(*b"mglv-skp");
/// Seed of the shift applied after the shared permutation (`"mglv-sft"`).
const SHIFT_SEED: u64 = u64::from_le_bytes(*b"mglv-sft");
/// Seed of the shared permutation, xor-ed with the table size (`"mglv-prm"`).
const PERMUTATION_SEED: u64 = u64::from_le_bytes(*b"mglv-prm");

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Fractional bits of [`log2_fixed`].
const LOG_FRAC_BITS: u32 = 27;
/// `log2(1 + i/256)` in `LOG_FRAC_BITS` fixed point, `i = 0 ..= 256`.
static LOG2_TABLE: [u32; 257] = log2_table();

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

/// Whether `n` is prime (trial division by `6k ± 1`; at most ~11 000
/// divisions for a `u32`).
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
/// table depends only on `size` and the set of `(identity, weight)` pairs
/// (see the module documentation for the exact definition); each member with
/// a positive weight owns its exact share `size · w / Σw` rounded down or up.
///
/// `size` must be a prime in `2 ..= MAX_SIZE` (see [`next_prime`]), there may
/// be at most 65 534 members, and identities must be unique.
///
/// Speed: `O(n log n)` for `n` members plus, for the fill, `O(size)` set-up
/// and about `size · ln(size / n)`-ish list probes (well under a million for
/// 65 537 slots), with no allocation in the fill loop. About 2–3 ms for
/// 65 537 slots whatever the member count, in a release build on one core;
/// the project's benchmark harness tracks the actual figures.
pub fn build_table(members: &[Member<'_>], size: u32) -> Result<Vec<u16>, MaglevError> {
    check_size(size)?;
    let mut out = vec![NO_BACKEND; size as usize];
    build_into(members, size, &mut out)?;
    Ok(out)
}

/// Same as [`build_table`], writing into `out`, whose length must be `size`
/// (the output is not allocated, e.g. to fill a memory-mapped map slot in
/// place). On error `out` is left untouched.
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
    let ranked = rank(members)?;
    if ranked.is_empty() {
        out.fill(NO_BACKEND);
        return Ok(());
    }
    let mut scratch = Scratch::take(size);
    let mut fill = Fill::new(members, &ranked, size, &mut scratch);
    fill.run();
    fill.write(&ranked, out);
    scratch.put_back();
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

/// Positions of the members with a positive weight, in rank (identity)
/// order. Rejects duplicate identities among all members, zero weights
/// included: the input must be a set.
fn rank(members: &[Member<'_>]) -> Result<Vec<u16>, MaglevError> {
    // MAX_MEMBERS (checked by the caller) keeps positions below u16::MAX.
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

/// FNV-1a, 64 bits.
fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(FNV_OFFSET_BASIS, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// MurmurHash3's 64-bit finalizer.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// One SplitMix64 step.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The permutation `π` shared by all lists of a table of `size` slots:
/// start from the identity, then for `i = size − 1` down to `1` swap `π[i]`
/// with `π[(r · (i + 1)) >> 64]`, `r` being the next SplitMix64 output of the
/// state seeded with `PERMUTATION_SEED ^ size`.
struct Permutation;

impl Permutation {
    fn build(size: u32, out: &mut Vec<u32>) {
        out.clear();
        out.extend(0..size);
        let mut state = PERMUTATION_SEED ^ u64::from(size);
        for i in (1..size as usize).rev() {
            let r = splitmix64(&mut state);
            let j = ((u128::from(r) * (i as u128 + 1)) >> 64) as usize;
            out.swap(i, j);
        }
    }
}

/// Builds [`LOG2_TABLE`]: `log2(1 + i/256)` by repeated squaring in 62-bit
/// fixed point, truncated to `LOG_FRAC_BITS` bits.
const fn log2_table() -> [u32; 257] {
    let mut table = [0u32; 257];
    let mut i = 0;
    while i < 256 {
        let one: u128 = 1 << 62;
        let mut x: u128 = (256 + i as u128) << (62 - 8);
        let mut bits = 0u32;
        let mut b = 0;
        while b < LOG_FRAC_BITS {
            x = (x * x) >> 62;
            bits <<= 1;
            if x >= 2 * one {
                x >>= 1;
                bits |= 1;
            }
            b += 1;
        }
        table[i] = bits;
        i += 1;
    }
    table[256] = 1 << LOG_FRAC_BITS;
    table
}

/// `Λ(n)`: `log2(n)` for `n >= 1`, in fixed point with 27 fractional bits.
/// The integer part is exact; the fraction interpolates [`LOG2_TABLE`]
/// linearly on the 24 mantissa bits after its 8 index bits (truncating).
/// Non-decreasing in `n`.
fn log2_fixed(n: u64) -> u64 {
    debug_assert!(n > 0);
    let int = 63 - n.leading_zeros();
    // Mantissa bits below the leading one, left-aligned.
    let frac = (n << (63 - int)) << 1;
    let index = (frac >> 56) as usize;
    let rest = (frac >> 32) & 0x00ff_ffff;
    let lo = u64::from(LOG2_TABLE[index]);
    let hi = u64::from(LOG2_TABLE[index + 1]);
    (u64::from(int) << LOG_FRAC_BITS) + lo + (((hi - lo) * rest) >> 24)
}

/// Fills `out` with `E(j)` for `j = 0 .. size` (see the module contract).
fn exponential_scores(size: u32, out: &mut Vec<u32>) {
    let two_m = 2 * u64::from(size);
    let top = log2_fixed(two_m);
    out.clear();
    // For size <= MAX_SIZE, E < 26 · 2^27 < 2^32.
    out.extend((0..u64::from(size)).map(|j| (top - log2_fixed(two_m - 2 * j - 1)) as u32));
}

/// A cell of the working table: owner rank (high half) and the `E` of the
/// owner's list position (low half). A free cell names the sentinel rank
/// `n` (one past the members, weight 1) with score `u32::MAX`, which every
/// pair beats.
fn free_cell(members: usize) -> u64 {
    ((members as u64) << 32) | u64::from(u32::MAX)
}

/// Fill state of one member with a positive weight.
#[derive(Clone, Copy)]
struct Cursor {
    /// Next index into `π` of the list (`offset + j·skip mod M`).
    x: u32,
    skip: u32,
    shift: u32,
    /// Next list position.
    j: u32,
    quota: u32,
    weight: u32,
}

pub static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static CONTESTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static DISPLACED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Per-size tables and the working table, kept between builds (see
/// [`Scratch::take`]).
#[derive(Default)]
struct Scratch {
    /// Size `permutation` and `scores` were built for (0: none yet).
    size: u32,
    permutation: Vec<u32>,
    scores: Vec<u32>,
    cells: Vec<u64>,
}

/// The scratch of the last build, reused by the next one: the shared
/// permutation and the score table depend only on the size, and reusing the
/// buffers avoids faulting in fresh pages (together about half a millisecond
/// for 65 537 slots). Concurrent builds each get their own; only one is kept.
static SCRATCH: std::sync::Mutex<Option<Scratch>> = std::sync::Mutex::new(None);

/// Scratch above this size is not kept (16 bytes per slot).
const SCRATCH_KEEP_MAX: u32 = 1 << 20;

impl Scratch {
    /// The kept scratch (or a new one), with the tables for `size`.
    fn take(size: u32) -> Self {
        let kept = SCRATCH.lock().ok().and_then(|mut kept| kept.take());
        let mut scratch = kept.unwrap_or_default();
        if scratch.size != size {
            Permutation::build(size, &mut scratch.permutation);
            exponential_scores(size, &mut scratch.scores);
            scratch.size = size;
        }
        scratch
    }

    /// Keeps `self` for the next build, unless it is large.
    fn put_back(self) {
        if self.size <= SCRATCH_KEEP_MAX
            && let Ok(mut kept) = SCRATCH.lock()
        {
            *kept = Some(self);
        }
    }
}

/// Deferred-acceptance state for one table.
struct Fill<'s> {
    size: u32,
    cursors: Vec<Cursor>,
    /// Slots each member holds (separate from `cursors`: touched for the
    /// displaced owner while the proposer's cursor is in registers).
    held: Vec<u32>,
    /// Weight by rank, for the owner side of comparisons.
    weights: Vec<u32>,
    permutation: &'s [u32],
    scores: &'s [u32],
    cells: &'s mut [u64],
}

impl<'s> Fill<'s> {
    fn new(members: &[Member<'_>], ranked: &[u16], size: u32, scratch: &'s mut Scratch) -> Self {
        let size64 = u64::from(size);
        // Weights by rank, then the free-cell sentinel's weight.
        let mut weights: Vec<u32> = ranked
            .iter()
            .map(|&i| members[usize::from(i)].weight)
            .collect();
        weights.push(1);

        // Quotas, largest remainder; equal remainders in rank order.
        let weights_by_rank = &weights[..ranked.len()];
        let total: u64 = weights_by_rank.iter().map(|&w| u64::from(w)).sum();
        let mut quotas = Vec::with_capacity(ranked.len());
        let mut remainders = Vec::with_capacity(ranked.len());
        let mut assigned = 0u64;
        for (rank, &w) in weights_by_rank.iter().enumerate() {
            // size <= 2^24 and w < 2^32: no overflow.
            let share = size64 * u64::from(w);
            quotas.push((share / total) as u32);
            assigned += share / total;
            remainders.push((share % total, rank as u32));
        }
        // Fewer leftovers than members: each floor loses less than one slot.
        let leftover = (size64 - assigned) as usize;
        if leftover > 0 {
            remainders.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            for &(_, rank) in &remainders[..leftover] {
                quotas[rank as usize] += 1;
            }
        }

        let cursors = ranked
            .iter()
            .zip(&quotas)
            .map(|(&i, &quota)| {
                let member = &members[usize::from(i)];
                let base = fnv1a64(member.identity);
                Cursor {
                    x: (fmix64(base ^ OFFSET_SEED) % size64) as u32,
                    skip: (fmix64(base ^ SKIP_SEED) % (size64 - 1)) as u32 + 1,
                    shift: (fmix64(base ^ SHIFT_SEED) % size64) as u32,
                    j: 0,
                    quota,
                    weight: member.weight,
                }
            })
            .collect();

        let Scratch {
            permutation,
            scores,
            cells,
            ..
        } = scratch;
        cells.clear();
        cells.resize(size as usize, free_cell(ranked.len()));
        Fill {
            size,
            cursors,
            held: vec![0; ranked.len()],
            weights,
            permutation,
            scores,
            cells,
        }
    }

    /// Member-proposing deferred acceptance: each member below its quota
    /// walks its list, taking free slots and slots whose owner holds them
    /// with a worse pair; a displaced owner resumes its own walk later.
    fn run(&mut self) {
        let Fill {
            size,
            cursors,
            held,
            weights,
            permutation,
            scores,
            cells,
        } = self;
        let size = *size;
        let len = size as usize;
        let (permutation, scores, cells) = (&permutation[..len], &scores[..len], &mut cells[..len]);
        let free_owner = cursors.len();
        // Members waiting to propose (any order gives the same result).
        let mut pending: Vec<u32> = (0..cursors.len() as u32).rev().collect();
        while let Some(rank) = pending.pop() {
            let r = rank as usize;
            let Cursor {
                mut x,
                skip,
                shift,
                mut j,
                quota,
                weight,
            } = cursors[r];
            let weight = u64::from(weight);
            let mut count = held[r];
            // `room` = size - skip: adding `skip` to `x < size` wraps exactly
            // when `x >= room` (no overflow, no division).
            let room = size - skip;
            while count < quota {
                let mut slot = permutation[x as usize] + shift;
                if slot >= size {
                    slot -= size;
                }
                x = if x >= room { x - room } else { x + skip };
                let score = scores[j as usize];
                j += 1;
                let cell = cells[slot as usize];
                let owner = (cell >> 32) as usize;
                if owner != free_owner {
                    let mine = u64::from(score) * u64::from(weights[owner]);
                    let theirs = (cell & 0xffff_ffff) * weight;
                    if mine > theirs || (mine == theirs && r > owner) {
                        continue;
                    }
                    if held[owner] == cursors[owner].quota {
                        pending.push(owner as u32);
                    }
                    held[owner] -= 1;
                }
                cells[slot as usize] = (u64::from(rank) << 32) | u64::from(score);
                count += 1;
            }
            let c = &mut cursors[r];
            c.x = x;
            c.j = j;
            held[r] = count;
        }
    }

    /// Writes the caller positions of the owners into `out`.
    fn write(&self, ranked: &[u16], out: &mut [u16]) {
        for (cell, out) in self.cells.iter().zip(out) {
            *out = ranked[(cell >> 32) as usize];
        }
    }
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
    fn adhoc_bench() {
        let mut line = String::new();
        for n in [10usize, 100, 1000] {
            let ids = identities(n);
            let distinct: Vec<u32> = (0..n as u32).map(|i| i * 7 + 1).collect();
            for (label, weights) in [
                ("eq", vec![1; n]),
                ("mix", mixed_weights(n)),
                ("dist", distinct),
            ] {
                let ms = members(&ids, &weights);
                let mut out = vec![0u16; SIZE as usize];
                let mut best = std::time::Duration::MAX;
                let mut sum = std::time::Duration::ZERO;
                for _ in 0..30 {
                    let t = std::time::Instant::now();
                    build_into(&ms, SIZE, &mut out).unwrap();
                    let e = t.elapsed();
                    best = best.min(e);
                    sum += e;
                }
                line += &format!(
                    "{n}{label}: min {:.2} avg {:.2} | ",
                    best.as_secs_f64() * 1e3,
                    sum.as_secs_f64() * 1e3 / 30.0
                );
            }
        }
        println!("BENCH {line}");
        for n in [10usize, 1000] {
            let ids = identities(n);
            let ms = members(&ids, &mixed_weights(n));
            let ranked = rank(&ms).unwrap();
            let (mut tn, mut tr, mut tw, mut tp, mut ts) = (
                std::time::Duration::MAX,
                std::time::Duration::MAX,
                std::time::Duration::MAX,
                std::time::Duration::MAX,
                std::time::Duration::MAX,
            );
            let mut out = vec![0u16; SIZE as usize];
            let mut v = Vec::new();
            for _ in 0..30 {
                let t = std::time::Instant::now();
                Permutation::build(SIZE, &mut v);
                tp = tp.min(t.elapsed());
                let t = std::time::Instant::now();
                exponential_scores(SIZE, &mut v);
                ts = ts.min(t.elapsed());
                let mut sc = Scratch::take(SIZE);
                let t = std::time::Instant::now();
                let mut f = Fill::new(&ms, &ranked, SIZE, &mut sc);
                tn = tn.min(t.elapsed());
                let t = std::time::Instant::now();
                f.run();
                tr = tr.min(t.elapsed());
                let t = std::time::Instant::now();
                f.write(&ranked, &mut out);
                tw = tw.min(t.elapsed());
                sc.put_back();
            }
            println!("n={n}: new {tn:?} (perm {tp:?} scores {ts:?}) run {tr:?} write {tw:?}");
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
