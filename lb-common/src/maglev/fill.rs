//! The fill: members compete for slots by score (step 5 of the module
//! doc), with the working memory kept between builds.

use super::hash::{exponential_scores, list_params, shared_permutation};
use super::{Member, Mutex, PoisonError, VecDeque, quotas};

/// Working memory of a build: the tables that depend only on the size and
/// the working table.
#[derive(Default)]
pub(super) struct Scratch {
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
pub(super) static SCRATCH: Mutex<Option<Scratch>> = Mutex::new(None);

/// Scratch for sizes above this is not kept (16 bytes per slot).
pub(super) const SCRATCH_KEEP_MAX: u32 = 1 << 20;

impl Scratch {
    /// The kept scratch (or a new one), with the tables for `size`.
    pub(super) fn take(size: u32) -> Self {
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
    pub(super) fn keep(self) {
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
pub(super) const BATCH: usize = 64;

/// `v mod size` for `v < 2·size`, without a branch (the wrap-around of list
/// positions and slots is unpredictable).
pub(super) fn wrap(v: u32, size: u32) -> u32 {
    core::hint::select_unpredictable(v >= size, v.wrapping_sub(size), v)
}

/// A member's walk through its list.
#[derive(Clone, Copy)]
pub(super) struct Cursor {
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
pub(super) enum Kernel {
    /// Portable; reads the holder's weight from a table.
    Scalar,
    /// AVX2 gathers, eight positions at a time; needs packed weights.
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    /// The fastest kernel this CPU runs for a build whose cells do (or do
    /// not) carry the weights.
    pub(super) fn choose(packed: bool, simd: bool) -> Self {
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
pub(super) struct Fill<'s> {
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
pub(super) struct Probe<'a> {
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
    pub(super) fn scan(
        &self,
        kernel: Kernel,
        scores: &[u32],
        x: u32,
        slots: &mut [u32; BATCH],
    ) -> (u64, u32) {
        match kernel {
            Kernel::Scalar => self.scan_scalar(scores, x, slots),
            // SAFETY: `Kernel::choose` picked AVX2 after detecting it.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::scan(self, scores, x, slots) },
        }
    }

    pub(super) fn scan_scalar(
        &self,
        scores: &[u32],
        mut x: u32,
        slots: &mut [u32; BATCH],
    ) -> (u64, u32) {
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
    use core::arch::x86_64::{
        _mm256_add_epi32, _mm256_and_si256, _mm256_castsi256_pd, _mm256_castsi256_si128,
        _mm256_cmpgt_epi64, _mm256_cvtepu32_epi64, _mm256_cvtsi256_si32, _mm256_extracti128_si256,
        _mm256_i32gather_epi32, _mm256_i32gather_epi64, _mm256_loadu_si256, _mm256_min_epu32,
        _mm256_movemask_pd, _mm256_mul_epu32, _mm256_set1_epi32, _mm256_set1_epi64x,
        _mm256_srli_epi64, _mm256_storeu_si256, _mm256_sub_epi64, _mm256_xor_si256,
    };

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
        let step_v = _mm256_set1_epi32(step.cast_signed());
        let step_m = _mm256_set1_epi32(step.wrapping_sub(size).cast_signed());
        let shift_v = _mm256_set1_epi32(probe.shift.cast_signed());
        let shift_m = _mm256_set1_epi32(probe.shift.wrapping_sub(size).cast_signed());
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
                // Four bits: 0..=15, never negative.
                let bits = u64::from(_mm256_movemask_pd(_mm256_castsi256_pd(wins)).cast_unsigned());
                mask |= bits << (group * 8 + half * 4);
            }
            xs = _mm256_min_epu32(_mm256_add_epi32(xs, step_v), _mm256_add_epi32(xs, step_m));
        }
        (mask, _mm256_cvtsi256_si32(xs).cast_unsigned())
    }
}

impl<'s> Fill<'s> {
    /// `simd`: whether a SIMD kernel may be used (the tests check both).
    pub(super) fn new(
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
    pub(super) fn run(&mut self) {
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
                let taken = take_wins(
                    wins,
                    &mut left,
                    Turn {
                        slots: &slots,
                        scores: &scores[base..],
                        tag,
                    },
                    cells,
                    want,
                    &mut pending,
                );
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
    pub(super) fn write(&self, ranked: &[u16], out: &mut [u16]) {
        for (cell, out) in self.cells.iter().zip(out) {
            *out = ranked[(cell & 0xffff) as usize];
        }
    }
}

/// What one batch of a member's turn found: the slots of its list
/// positions, their scores, and the member's tag in a cell.
struct Turn<'a> {
    slots: &'a [u32; BATCH],
    scores: &'a [u32],
    tag: u64,
}

/// Takes the winning slots (`wins`, one bit per position of the batch) in
/// list order, as long as `left` wants more, displacing their owners onto
/// `pending`; returns one past the last position used.
#[inline(always)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "inlined into the fill loop; a turn is a few words"
)]
fn take_wins(
    mut wins: u64,
    left: &mut u32,
    turn: Turn<'_>,
    cells: &mut [u64],
    want: &mut [u32],
    pending: &mut VecDeque<u32>,
) -> usize {
    let mut taken = 0;
    while wins != 0 && *left > 0 {
        let i = wins.trailing_zeros() as usize;
        wins &= wins - 1;
        let slot = turn.slots[i] as usize;
        let owner = (cells[slot] & 0xffff) as usize;
        // Displace the owner; it is pending at most once.
        if want[owner] == 0 {
            pending.push_back(owner as u32);
        }
        want[owner] += 1;
        cells[slot] = u64::from(turn.scores[i]) << 32 | turn.tag;
        *left -= 1;
        taken = i + 1;
    }
    taken
}

/// Greatest common divisor (`gcd(0, b) = b`).
pub(super) fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}
