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
//!    MurmurHash3 64-bit finalizer: `offset = fmix64(base ^ OFFSET_SEED) % M`,
//!    `skip = fmix64(base ^ SKIP_SEED) % (M − 1) + 1` and
//!    `shift = fmix64(base ^ SHIFT_SEED) % M`. A member's list is
//!    `list(j) = (π[(offset + j·skip) mod M] + shift) mod M`, `j = 0 … M−1`,
//!    where `π` is the permutation of `0 … M−1` made by a Fisher–Yates
//!    shuffle: starting from the identity, for `i = M−1` down to `1` swap
//!    `π[i]` and `π[(r·(i+1)) >> 64]`, `r` being the next SplitMix64 output
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

/// Largest table size accepted: `2^24` slots (the largest usable prime is
/// 16 777 213). Bounds the working memory (16 bytes per slot) and keeps the
/// fixed-point scores within 32 bits.
pub const MAX_SIZE: u32 = 1 << 24;

/// Most members a table can name: positions are `u16` and [`NO_BACKEND`]
/// (`u16::MAX`) is reserved.
const MAX_MEMBERS: usize = NO_BACKEND as usize - 1;

/// Seed of a member's first list entry (`"mglv-off"`).
const OFFSET_SEED: u64 = u64::from_le_bytes(*b"mglv-off");
/// Seed of a member's step (`"mglv-skp"`).
const SKIP_SEED: u64 = u64::from_le_bytes(*b"mglv-skp");
/// Seed of a member's shift after the shared permutation (`"mglv-sft"`).
const SHIFT_SEED: u64 = u64::from_le_bytes(*b"mglv-sft");
/// Seed of the shared permutation, xor-ed with the size (`"mglv-prm"`).
const PERMUTATION_SEED: u64 = u64::from_le_bytes(*b"mglv-prm");

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Fractional bits of [`log2_fixed`].
const LOG_FRAC_BITS: u32 = 27;
/// `log2(1 + i/256)` with `LOG_FRAC_BITS` fractional bits, `i = 0 ..= 256`.
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

/// Whether `n` is prime (trial division by `6k ± 1`: at most ~22 000
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

/// `(offset, skip, shift)` of an identity's list.
fn list_params(identity: &[u8], size: u32) -> (u32, u32, u32) {
    let base = fnv1a64(identity);
    let size = u64::from(size);
    (
        (fmix64(base ^ OFFSET_SEED) % size) as u32,
        (fmix64(base ^ SKIP_SEED) % (size - 1)) as u32 + 1,
        (fmix64(base ^ SHIFT_SEED) % size) as u32,
    )
}

/// Fills `out` with the permutation `π` shared by the lists of a table of
/// `size` slots (contract step 2).
fn shared_permutation(size: u32, out: &mut Vec<u32>) {
    out.clear();
    out.extend(0..size);
    let mut state = PERMUTATION_SEED ^ u64::from(size);
    for i in (1..size as usize).rev() {
        let r = splitmix64(&mut state);
        let j = ((u128::from(r) * (i as u128 + 1)) >> 64) as usize;
        out.swap(i, j);
    }
}

/// Builds [`LOG2_TABLE`]: `log2(1 + i/256)` by repeated squaring in 62-bit
/// fixed point, truncated to `LOG_FRAC_BITS` bits.
const fn log2_table() -> [u32; 257] {
    const ONE: u128 = 1 << 62;
    let mut table = [0u32; 257];
    let mut i = 0;
    while i < 256 {
        let mut x: u128 = (256 + i as u128) << (62 - 8);
        let mut bits = 0u32;
        let mut b = 0;
        while b < LOG_FRAC_BITS {
            x = (x * x) >> 62;
            bits <<= 1;
            if x >= 2 * ONE {
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

/// `Λ(n)`: `log2(n)` for `n >= 1` with 27 fractional bits. The integer part
/// is exact; the fraction interpolates [`LOG2_TABLE`] linearly over the 24
/// mantissa bits after the 8 index bits, truncating. Non-decreasing in `n`.
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

/// `E(j)` of contract step 4 for a table of `size` slots (the fill reads
/// them from the table `exponential_scores` makes).
#[cfg(test)]
fn exponential_score(size: u32, j: u32) -> u32 {
    let two_m = 2 * u64::from(size);
    // size <= MAX_SIZE: E <= Λ(2^25) = 25 · 2^27 < u32::MAX.
    (log2_fixed(two_m) - log2_fixed(two_m - 2 * u64::from(j) - 1)) as u32
}

/// Fills `out` with `E(j)` for `j = 0 .. size`.
fn exponential_scores(size: u32, out: &mut Vec<u32>) {
    let two_m = 2 * u64::from(size);
    let top = log2_fixed(two_m);
    out.clear();
    out.extend((0..u64::from(size)).map(|j| (top - log2_fixed(two_m - 2 * j - 1)) as u32));
}

/// Working memory of a build: the tables that depend only on the size and
/// the working table.
#[derive(Default)]
struct Scratch {
    /// Size `permutation` and `scores` are for (0: none yet).
    size: u32,
    permutation: Vec<u32>,
    /// `E(j)` for `j < size`, then [`BATCH`] entries of padding: a scan
    /// always reads a whole batch of scores.
    scores: Vec<u32>,
    cells: Vec<u64>,
}

/// The scratch of the last build, reused by the next one: rebuilding the
/// size-dependent tables and faulting in fresh pages would cost about half a
/// millisecond for 65 537 slots. Concurrent builds each get their own; one
/// is kept.
static SCRATCH: Mutex<Option<Scratch>> = Mutex::new(None);

/// Scratch for sizes above this is not kept (16 bytes per slot).
const SCRATCH_KEEP_MAX: u32 = 1 << 20;

impl Scratch {
    /// The kept scratch (or a new one), with the tables for `size`.
    fn take(size: u32) -> Self {
        let kept = SCRATCH
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let mut scratch = kept.unwrap_or_default();
        if scratch.size != size {
            shared_permutation(size, &mut scratch.permutation);
            exponential_scores(size, &mut scratch.scores);
            scratch.scores.resize(size as usize + BATCH, u32::MAX);
            scratch.size = size;
        }
        scratch
    }

    /// Keeps `self` for the next build, unless it is large.
    fn keep(self) {
        if self.size <= SCRATCH_KEEP_MAX {
            *SCRATCH.lock().unwrap_or_else(PoisonError::into_inner) = Some(self);
        }
    }
}

/// List positions a member checks at a time, one bit each of a `u64`.
///
/// Checking a position changes nothing, and during a member's turn only that
/// member writes cells (at its own, distinct slots), so a member checks a
/// whole batch first, without branches, then takes the winning slots in
/// list order. A branch per position on the outcome (taken about one time in
/// seven, unpredictably) cost about as much as the two random reads of the
/// position. Positions checked past the last one a turn uses are wasted:
/// about 17 % more checks with 1 000 members, 3 % with 100.
const BATCH: usize = 64;

/// `v mod size` for `v < 2·size`, without a branch (the wrap-around of list
/// positions and slots is unpredictable).
fn wrap(v: u32, size: u32) -> u32 {
    core::hint::select_unpredictable(v >= size, v.wrapping_sub(size), v)
}

/// A member's walk through its list.
#[derive(Clone, Copy)]
struct Cursor {
    /// Next index into `π` (`offset + j·skip mod M`).
    x: u32,
    skip: u32,
    shift: u32,
    /// Next list position.
    j: u32,
    /// Reduced weight (see [`Fill::new`]).
    weight: u32,
    /// Low half of the member's cells: packed weight and rank.
    tag: u64,
}

/// How a batch of positions is checked.
#[derive(Clone, Copy)]
enum Kernel {
    /// Portable; reads the holder's weight from a table.
    Scalar,
    /// AVX2 gathers, eight positions at a time; needs packed weights.
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    /// The fastest kernel this CPU runs for a build whose cells do (or do
    /// not) carry the weights.
    fn choose(packed: bool, simd: bool) -> Self {
        #[cfg(target_arch = "x86_64")]
        if simd && packed && std::arch::is_x86_feature_detected!("avx2") {
            return Kernel::Avx2;
        }
        let _ = (packed, simd);
        Kernel::Scalar
    }
}

/// Deferred-acceptance state of one build; members are indexed by rank.
///
/// A cell is one `u64`: the holder's `E` in bits 32–63, its reduced weight
/// in bits 16–31 when every reduced weight fits 16 bits (else 0), and its
/// rank in bits 0–15. A free cell holds `E = u32::MAX`, weight 0 and the
/// rank `n` (one past the last member; `n <= MAX_MEMBERS` fits 16 bits).
///
/// Pair (`r`, `E_j`, `w`) beats the holder (`o`, `E_o`, `w_o`) when
/// `E_j·w_o < E_o·w + [r < o]`: step 4 of the contract, the `+ 1` turning
/// `<` into `<=` when the rank breaks the tie. The products of two `u32`
/// fit a `u64`, and `E_o·w <= (2^32 − 1)^2` leaves room for the `+ 1`. A free
/// cell (`w_o = 0`) is beaten by any pair.
struct Fill<'s> {
    size: u32,
    cursors: Vec<Cursor>,
    /// Slots each member still wants (its quota minus the slots it holds);
    /// one more entry for the free marker, large so that it never reaches 0
    /// and taking a free slot needs no branch.
    want: Vec<u32>,
    /// Reduced weights, and 0 for the free marker (for [`Kernel::Scalar`]).
    weights: Vec<u64>,
    kernel: Kernel,
    permutation: &'s [u32],
    scores: &'s [u32],
    cells: &'s mut [u64],
}

/// What a scan needs besides the scores and the position in the list.
struct Probe<'a> {
    size: u32,
    skip: u32,
    shift: u32,
    weight: u32,
    rank: u32,
    permutation: &'a [u32],
    weights: &'a [u64],
    cells: &'a [u64],
}

impl Probe<'_> {
    /// Checks the [`BATCH`] list positions starting at `π` index `x`, whose
    /// `E` are `scores[..BATCH]`: bit `i` of the result is set when position
    /// `i` beats its slot's holder, `slots[i]` is its slot. Also returns the
    /// `π` index after the batch.
    fn scan(&self, kernel: Kernel, scores: &[u32], x: u32, slots: &mut [u32; BATCH]) -> (u64, u32) {
        match kernel {
            Kernel::Scalar => self.scan_scalar(scores, x, slots),
            // SAFETY: `Kernel::choose` picked AVX2 after detecting it.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::scan(self, scores, x, slots) },
        }
    }

    fn scan_scalar(&self, scores: &[u32], mut x: u32, slots: &mut [u32; BATCH]) -> (u64, u32) {
        let (size, w, rank) = (self.size, u64::from(self.weight), u64::from(self.rank));
        let mut mask = 0;
        let mut bit = 1u64;
        for (&e, slot) in scores[..BATCH].iter().zip(slots) {
            *slot = wrap(self.permutation[x as usize] + self.shift, size);
            x = wrap(x + self.skip, size);
            let cell = self.cells[*slot as usize];
            let owner = cell & 0xffff;
            let mine = u64::from(e) * self.weights[owner as usize];
            let theirs = (cell >> 32) * w + u64::from(rank < owner);
            mask = core::hint::select_unpredictable(mine < theirs, mask | bit, mask);
            bit <<= 1;
        }
        (mask, x)
    }
}

/// [`Probe::scan`] with AVX2: eight positions per step, their `π` entries
/// and cells fetched by gathers. About twice as fast as the scalar scan on
/// the reference VM: the time goes to the two dependent random reads per
/// position (`π`, then the cell), and the gathers keep more of them in
/// flight with fewer instructions.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use core::arch::x86_64::*;

    use super::{BATCH, Probe, wrap};

    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn scan(
        probe: &Probe<'_>,
        scores: &[u32],
        x: u32,
        slots: &mut [u32; BATCH],
    ) -> (u64, u32) {
        let size = probe.size;
        // The gathers below rely on these lengths.
        assert!(probe.permutation.len() == size as usize && probe.cells.len() == size as usize);
        let scores = &scores[..BATCH];
        // π indices of positions 0..8 in lanes 0..8; each step adds 8·skip.
        let mut lanes = [0u32; 8];
        let mut next = x;
        for lane in &mut lanes {
            *lane = next;
            next = wrap(next + probe.skip, size);
        }
        let step = wrap(next + size - x, size);
        // SAFETY: reads the 32 bytes of `lanes`.
        let mut xs = unsafe { _mm256_loadu_si256(lanes.as_ptr().cast()) };
        // `a + b mod size` for `a, b < size` is the unsigned minimum of
        // `a + b` and `a + b − size` (the latter wraps when `a + b < size`).
        let step_v = _mm256_set1_epi32(step as i32);
        let step_m = _mm256_set1_epi32(step.wrapping_sub(size) as i32);
        let shift_v = _mm256_set1_epi32(probe.shift as i32);
        let shift_m = _mm256_set1_epi32(probe.shift.wrapping_sub(size) as i32);
        let weight = _mm256_set1_epi64x(i64::from(probe.weight));
        let rank = _mm256_set1_epi64x(i64::from(probe.rank));
        let low16 = _mm256_set1_epi64x(0xffff);
        // Flipping the sign bit turns the signed 64-bit compare into an
        // unsigned one.
        let sign = _mm256_set1_epi64x(i64::MIN);
        let mut mask = 0u64;
        for (group, (scores, slots)) in scores
            .chunks_exact(8)
            .zip(slots.chunks_exact_mut(8))
            .enumerate()
        {
            // SAFETY: every lane of `xs` is below `size`, the length of
            // `permutation`.
            let p = unsafe { _mm256_i32gather_epi32::<4>(probe.permutation.as_ptr().cast(), xs) };
            // π is a permutation of 0..size and shift < size: slots < size.
            let slot = _mm256_min_epu32(_mm256_add_epi32(p, shift_v), _mm256_add_epi32(p, shift_m));
            // SAFETY: `slots` and `scores` are 8 `u32` long.
            let e = unsafe {
                _mm256_storeu_si256(slots.as_mut_ptr().cast(), slot);
                _mm256_loadu_si256(scores.as_ptr().cast())
            };
            let halves = [
                (_mm256_castsi256_si128(slot), _mm256_castsi256_si128(e)),
                (
                    _mm256_extracti128_si256::<1>(slot),
                    _mm256_extracti128_si256::<1>(e),
                ),
            ];
            for (half, (slot, e)) in halves.into_iter().enumerate() {
                // SAFETY: every slot is below `size`, the length of `cells`.
                let cell =
                    unsafe { _mm256_i32gather_epi64::<8>(probe.cells.as_ptr().cast(), slot) };
                let owner = _mm256_and_si256(cell, low16);
                let owner_weight = _mm256_and_si256(_mm256_srli_epi64::<16>(cell), low16);
                // `_mm256_mul_epu32` multiplies the low 32 bits of each lane.
                let mine = _mm256_mul_epu32(_mm256_cvtepu32_epi64(e), owner_weight);
                let theirs = _mm256_mul_epu32(_mm256_srli_epi64::<32>(cell), weight);
                // All-ones (−1) where rank < owner: subtracting adds 1.
                let theirs = _mm256_sub_epi64(theirs, _mm256_cmpgt_epi64(owner, rank));
                let wins = _mm256_cmpgt_epi64(
                    _mm256_xor_si256(theirs, sign),
                    _mm256_xor_si256(mine, sign),
                );
                let bits = _mm256_movemask_pd(_mm256_castsi256_pd(wins)) as u64;
                mask |= bits << (group * 8 + half * 4);
            }
            xs = _mm256_min_epu32(_mm256_add_epi32(xs, step_v), _mm256_add_epi32(xs, step_m));
        }
        (mask, _mm256_cvtsi256_si32(xs) as u32)
    }
}

impl<'s> Fill<'s> {
    /// `simd`: whether a SIMD kernel may be used (the tests check both).
    fn new(
        members: &[Member<'_>],
        ranked: &[u16],
        size: u32,
        simd: bool,
        scratch: &'s mut Scratch,
    ) -> Self {
        let weights: Vec<u32> = ranked
            .iter()
            .map(|&i| members[usize::from(i)].weight)
            .collect();
        // Comparisons only depend on weight ratios: dividing the weights by
        // their greatest common divisor lets more builds pack them into the
        // cells (equal weights all become 1).
        let divisor = weights.iter().fold(0, |g, &w| gcd(g, w));
        let reduced: Vec<u32> = weights.iter().map(|&w| w / divisor).collect();
        let packed = reduced.iter().all(|&w| w <= 0xffff);
        let cursors = ranked
            .iter()
            .zip(&reduced)
            .enumerate()
            .map(|(rank, (&i, &weight))| {
                let (x, skip, shift) = list_params(members[usize::from(i)].identity, size);
                let packed_weight = if packed { u64::from(weight) } else { 0 };
                Cursor {
                    x,
                    skip,
                    shift,
                    j: 0,
                    weight,
                    tag: packed_weight << 16 | rank as u64,
                }
            })
            .collect();
        let mut want = quotas(&weights, size);
        want.push(u32::MAX / 2);
        let mut weights: Vec<u64> = reduced.iter().map(|&w| u64::from(w)).collect();
        weights.push(0);
        let Scratch {
            permutation,
            scores,
            cells,
            ..
        } = scratch;
        let free = u64::from(u32::MAX) << 32 | ranked.len() as u64;
        cells.clear();
        cells.resize(size as usize, free);
        Fill {
            size,
            cursors,
            want,
            weights,
            kernel: Kernel::choose(packed, simd),
            permutation,
            scores,
            cells,
        }
    }

    /// Member-proposing deferred acceptance: a member below its quota walks
    /// its list, taking free slots and slots whose owner holds them with a
    /// pair its own beats; a displaced owner resumes its walk later.
    fn run(&mut self) {
        let Fill {
            size,
            cursors,
            want,
            weights,
            kernel,
            permutation,
            scores,
            cells,
        } = self;
        let (size, kernel) = (*size, *kernel);
        let len = size as usize;
        // Members waiting to propose. Any order gives the same result;
        // first in, first out lets a displaced member collect several
        // displacements before its next turn, so turns are few and long
        // (about 3 300 instead of 28 000 with 1 000 members), which keeps
        // the positions checked past a turn's end few.
        let mut pending: VecDeque<u32> = (0..cursors.len() as u32).collect();
        let mut slots = [0u32; BATCH];
        while let Some(rank) = pending.pop_front() {
            let r = rank as usize;
            let Cursor {
                mut x,
                skip,
                shift,
                mut j,
                weight,
                tag,
            } = cursors[r];
            let mut left = want[r];
            // A member below its quota never runs out of list: had it
            // proposed to every slot, all slots would be held, yet the quotas
            // sum to `size`. So `j < size` below.
            while left > 0 {
                let base = j as usize;
                assert!(base < len, "a member below its quota ran out of list");
                let probe = Probe {
                    size,
                    skip,
                    shift,
                    weight,
                    rank,
                    permutation,
                    weights,
                    cells,
                };
                let (mut wins, x_after) = probe.scan(kernel, &scores[base..], x, &mut slots);
                // Positions past the end of the list do not exist.
                let checked = BATCH.min(len - base);
                if checked < BATCH {
                    wins &= (1 << checked) - 1;
                }
                // Take the winning slots in list order, as long as wanted;
                // `taken` ends one past the last position used.
                let mut taken = 0;
                while wins != 0 && left > 0 {
                    let i = wins.trailing_zeros() as usize;
                    wins &= wins - 1;
                    let slot = slots[i] as usize;
                    let owner = (cells[slot] & 0xffff) as usize;
                    // Displace the owner; it is pending at most once.
                    if want[owner] == 0 {
                        pending.push_back(owner as u32);
                    }
                    want[owner] += 1;
                    cells[slot] = u64::from(scores[base + i]) << 32 | tag;
                    left -= 1;
                    taken = i + 1;
                }
                if left > 0 {
                    x = x_after;
                    j += checked as u32;
                } else {
                    let x_next = u64::from(x) + taken as u64 * u64::from(skip);
                    x = (x_next % u64::from(size)) as u32;
                    j += taken as u32;
                }
            }
            want[r] = 0;
            let cursor = &mut cursors[r];
            cursor.x = x;
            cursor.j = j;
        }
    }

    /// Writes the caller positions of the owners into `out`.
    fn write(&self, ranked: &[u16], out: &mut [u16]) {
        for (cell, out) in self.cells.iter().zip(out) {
            *out = ranked[(cell & 0xffff) as usize];
        }
    }
}

/// Greatest common divisor (`gcd(0, b) = b`).
fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
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

    /// Deterministic LCG (Knuth's MMIX constants) for shuffles.
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

    /// Largest |count − exact share| / exact share over the members of
    /// positive weight.
    fn max_relative_error(table: &[u16], weights: &[u32]) -> f64 {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        weights
            .iter()
            .zip(counts(table, weights.len()))
            .filter(|(w, _)| **w > 0)
            .map(|(&w, c)| {
                let exact = table.len() as f64 * f64::from(w) / total as f64;
                (c as f64 - exact).abs() / exact
            })
            .fold(0.0, f64::max)
    }

    /// Fraction of slots whose owner (by identity) differs between tables.
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

    /// The contract's definition, step 5, done the slow way: every pair,
    /// sorted best first, greedily assigned.
    fn reference_table(members: &[Member<'_>], size: u32) -> Vec<u16> {
        let mut ranked: Vec<usize> = (0..members.len())
            .filter(|&i| members[i].weight > 0)
            .collect();
        ranked.sort_by(|&a, &b| members[a].identity.cmp(members[b].identity));
        if ranked.is_empty() {
            return vec![NO_BACKEND; size as usize];
        }
        let weights: Vec<u64> = ranked
            .iter()
            .map(|&i| u64::from(members[i].weight))
            .collect();
        // Quotas: floors, then leftovers by largest remainder, lower rank first.
        let total: u64 = weights.iter().sum();
        let exact: Vec<(u64, u64)> = weights
            .iter()
            .map(|&w| (u64::from(size) * w / total, u64::from(size) * w % total))
            .collect();
        let mut quota: Vec<u64> = exact.iter().map(|e| e.0).collect();
        let mut by_remainder: Vec<usize> = (0..ranked.len()).collect();
        by_remainder.sort_by_key(|&r| (std::cmp::Reverse(exact[r].1), r));
        let leftover = u64::from(size) - quota.iter().sum::<u64>();
        for &r in &by_remainder[..leftover as usize] {
            quota[r] += 1;
        }

        let mut permutation = Vec::new();
        shared_permutation(size, &mut permutation);
        // (rank, position, slot, E)
        let mut pairs = Vec::new();
        for (r, &i) in ranked.iter().enumerate() {
            let (offset, skip, shift) = list_params(members[i].identity, size);
            for j in 0..size {
                let x = (u64::from(offset) + u64::from(j) * u64::from(skip)) % u64::from(size);
                let slot = (permutation[x as usize] + shift) % size;
                pairs.push((r, j, slot, u64::from(exponential_score(size, j))));
            }
        }
        pairs.sort_by(|a, b| {
            (a.3 * weights[b.0])
                .cmp(&(b.3 * weights[a.0]))
                .then(a.0.cmp(&b.0))
                .then(a.1.cmp(&b.1))
        });
        let mut table = vec![NO_BACKEND; size as usize];
        let mut held = vec![0u64; ranked.len()];
        for (r, _, slot, _) in pairs {
            if table[slot as usize] == NO_BACKEND && held[r] < quota[r] {
                table[slot as usize] = ranked[r] as u16;
                held[r] += 1;
            }
        }
        table
    }

    #[test]
    fn matches_the_reference_definition() {
        let ids = identities(25);
        let cases: [&[u32]; 6] = [
            &[5],
            &[1, 2, 3],
            &[1; 7],
            &[3, 0, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 0, 9, 7, 9, 3, 2, 3, 8],
            &[1, 1000, 1, 7, 1],
            &[2; 25],
        ];
        for size in [2, 3, 13, 101, 1009] {
            for weights in cases {
                let ms = members(&ids[..weights.len()], weights);
                assert_eq!(
                    build_table(&ms, size).unwrap(),
                    reference_table(&ms, size),
                    "size {size} weights {weights:?}"
                );
            }
        }
    }

    #[test]
    fn share_within_one_percent_up_to_100_members() {
        for n in [1usize, 2, 3, 7, 10, 50, 100] {
            let ids = identities(n);
            for weights in [vec![1; n], mixed_weights(n)] {
                let ms = members(&ids, &weights);
                let table = build_table(&ms, SIZE).unwrap();
                let err = max_relative_error(&table, &weights);
                assert!(err <= 0.01, "n={n} weights={weights:?}: error {err}");
            }
        }
    }

    #[test]
    fn thousand_members_within_one_slot_of_exact_share() {
        let n = 1000;
        let ids = identities(n);
        // Mixed small weights, a few heavy members and a few of weight 0.
        let mixed: Vec<u32> = (0..n)
            .map(|i| match i % 97 {
                0 => 0,
                1 => 1000,
                _ => (i % 13) as u32 + 1,
            })
            .collect();
        for weights in [vec![1; n], mixed] {
            let ms = members(&ids, &weights);
            let table = build_table(&ms, SIZE).unwrap();
            let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            for (&w, c) in weights.iter().zip(counts(&table, n)) {
                // floor(exact) <= count <= ceil(exact), exact = SIZE·w/total.
                let exact = u64::from(SIZE) * u64::from(w);
                assert!(c * total < exact + total && exact < (c + 1) * total);
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
                // Every member for n <= 10; for n = 100 ten members, one of
                // each weight.
                for gone in (0..n).step_by(n / 10 + 1) {
                    let mut rest = ms.clone();
                    rest.remove(gone);
                    let after = build_table(&rest, SIZE).unwrap();
                    let changed = changed_fraction(&table, &ms, &after, &rest);
                    // The removed member's share: 1/n with equal weights.
                    let share = f64::from(weights[gone]) / total as f64;
                    assert!(
                        changed <= share + 0.007,
                        "n={n} weights={weights:?} removing {gone}: {changed} > {share} + 0.7%"
                    );
                    // Its own slots must move; nothing else needs to.
                    assert!(changed >= share - 1.0 / f64::from(SIZE));
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
            for _ in 0..2 {
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
    fn zero_weights_and_empty() {
        let ids = identities(4);
        let ms = members(&ids, &[3, 0, 1, 0]);
        let table = build_table(&ms, 1009).unwrap();
        let c = counts(&table, 4);
        assert_eq!((c[0], c[1], c[2], c[3]), (757, 0, 252, 0));

        assert_eq!(build_table(&[], 13).unwrap(), vec![NO_BACKEND; 13]);
        let zeros = members(&ids, &[0, 0, 0, 0]);
        assert_eq!(build_table(&zeros, 13).unwrap(), vec![NO_BACKEND; 13]);
        let mut out = vec![0u16; 13];
        build_into(&zeros, 13, &mut out).unwrap();
        assert_eq!(out, vec![NO_BACKEND; 13]);

        // More members than slots: the table is still full, one slot each.
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
        let mut out = vec![7u16; SIZE as usize];
        build_into(&ms, SIZE, &mut out).unwrap();
        assert_eq!(out, build_table(&ms, SIZE).unwrap());
        // Kept scratch of another size does not leak into a build.
        let small = build_table(&ms, 101).unwrap();
        build_into(&ms, SIZE, &mut out).unwrap();
        assert_eq!(out, build_table(&ms, SIZE).unwrap());
        assert_eq!(small, reference_table(&ms, 101));

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
    fn scalar_and_simd_kernels_agree() {
        let ids = identities(1000);
        let mut weights = mixed_weights(1000);
        weights[7] = 0;
        for (n, size) in [(3, SIZE), (100, SIZE), (1000, SIZE), (1000, 1009), (25, 13)] {
            let ms = members(&ids[..n], &weights[..n]);
            let mut scalar = vec![0u16; size as usize];
            let mut simd = vec![0u16; size as usize];
            build_into_using(&ms, size, &mut scalar, false).unwrap();
            build_into_using(&ms, size, &mut simd, true).unwrap();
            assert_eq!(scalar, simd, "n={n} size={size}");
        }
    }

    #[test]
    fn weights_above_16_bits_match_the_reference() {
        let ids = identities(6);
        let cases: [&[u32]; 4] = [
            // Not packable: only the scalar kernel.
            &[1, 100_000, 3, 65_536, 0, 7],
            &[u32::MAX, 1, u32::MAX - 1, 2, 3, 4],
            // Reduced by the common divisor 65 536: packable.
            &[65_536, 131_072, 196_608, 65_536, 0, 262_144],
            &[1 << 31; 6],
        ];
        for size in [13, 101, 1009] {
            for weights in cases {
                let ms = members(&ids, weights);
                assert_eq!(
                    build_table(&ms, size).unwrap(),
                    reference_table(&ms, size),
                    "size {size} weights {weights:?}"
                );
            }
        }
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
        assert_eq!(
            build_table(&ms, 4_294_967_291),
            Err(MaglevError::SizeTooLarge {
                size: 4_294_967_291
            })
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
        let message = MaglevError::SizeNotPrime { size: 100 }.to_string();
        assert!(message.contains("101"), "{message}");
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
        // Agrees with a sieve below 100 000.
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
        assert!(is_prime(16_777_213));
        assert!(is_prime(4_294_967_291));
        assert!(!is_prime(4_294_967_295));
        assert!(!is_prime(65521 * 65519));
        assert_eq!(next_prime(0), 2);
        assert_eq!(next_prime(2), 2);
        assert_eq!(next_prime(14), 17);
        assert_eq!(next_prime(65536), 65537);
        assert_eq!(next_prime(65537), 65537);
        assert_eq!(next_prime(MAX_SIZE - 3), 16_777_213);
        assert_eq!(next_prime(4_294_967_280), 4_294_967_291);
    }

    #[test]
    fn log2_fixed_is_accurate_and_monotonic() {
        let unit = f64::from(1u32 << LOG_FRAC_BITS);
        assert_eq!(log2_fixed(1), 0);
        assert_eq!(log2_fixed(2), 1 << LOG_FRAC_BITS);
        assert_eq!(log2_fixed(1 << 25), 25 << LOG_FRAC_BITS);
        let mut last = 0;
        for n in (1..200_000u64).chain((1 << 25) - 100_000..(1 << 25) + 2) {
            let fixed = log2_fixed(n);
            assert!(fixed >= last || n == (1 << 25) - 100_000, "{n}");
            last = fixed;
            let err = (fixed as f64 / unit - (n as f64).log2()).abs();
            assert!(err < 4e-6, "{n}: {err}");
        }
    }

    #[test]
    fn scores_strictly_increase() {
        let mut scores = Vec::new();
        for size in [2, 3, 13, SIZE] {
            exponential_scores(size, &mut scores);
            assert!(scores.windows(2).all(|w| w[0] < w[1]), "{size}");
            assert_eq!(scores[1], exponential_score(size, 1));
        }
        // Steps are smallest at the start of the largest table.
        let largest = next_prime(MAX_SIZE - 3);
        let mut last = 0;
        for j in (0..1 << 16).chain(largest - 1000..largest) {
            let e = exponential_score(largest, j);
            assert!(e > last || j == largest - 1000, "{j}");
            last = e;
        }
        assert!(exponential_score(largest, largest - 1) < u32::MAX);
    }

    #[test]
    fn shared_permutation_is_a_permutation() {
        let mut perm = Vec::new();
        for size in [2, 3, 13, 101, SIZE] {
            shared_permutation(size, &mut perm);
            let mut seen = vec![false; size as usize];
            for &p in &perm {
                assert!(!seen[p as usize]);
                seen[p as usize] = true;
            }
            assert_eq!(perm.len(), size as usize);
        }
    }

    /// Pins the on-wire contract: any change here moves flows between nodes
    /// running different versions.
    #[test]
    fn contract_is_pinned() {
        // Standard FNV-1a 64 vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(LOG2_TABLE[128], PINNED_LOG2_128);
        assert_eq!(list_params(b"10.0.0.1", SIZE), PINNED_PARAMS);
        let mut perm = Vec::new();
        shared_permutation(SIZE, &mut perm);
        assert_eq!([perm[0], perm[1], perm[65536]], PINNED_PERMUTATION);
        assert_eq!(
            [exponential_score(SIZE, 0), exponential_score(SIZE, 65536)],
            PINNED_SCORES
        );

        let names: Vec<Vec<u8>> = (1..=5)
            .map(|i| format!("10.0.0.{i}").into_bytes())
            .collect();
        let ms = members(&names, &[1, 2, 3, 4, 5]);
        assert_eq!(build_table(&ms, 13).unwrap(), PINNED_SMALL);
        let table = build_table(&ms, SIZE).unwrap();
        let bytes: Vec<u8> = table.iter().flat_map(|c| c.to_le_bytes()).collect();
        assert_eq!(fnv1a64(&bytes), PINNED_TABLE_HASH);
    }

    const PINNED_LOG2_128: u32 = 78_512_337; // floor(log2(1.5) · 2^27)
    const PINNED_PARAMS: (u32, u32, u32) = (55404, 45932, 26180);
    const PINNED_PERMUTATION: [u32; 3] = [7540, 30104, 41129];
    const PINNED_SCORES: [u32; 2] = [1474, 2_281_704_324];
    const PINNED_SMALL: [u16; 13] = [0, 2, 2, 1, 4, 1, 2, 3, 4, 4, 3, 4, 3];
    const PINNED_TABLE_HASH: u64 = 0x5f12_584c_484c_2084;
}
