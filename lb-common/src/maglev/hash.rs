//! The hashes and scores of the table's contract (steps 2 and 4 of the
//! module doc): preference-list parameters, the shared permutation, the
//! fixed-point logarithm behind the exponential scores.

/// Seed of a member's first list entry (`"mglv-off"`).
pub(super) const OFFSET_SEED: u64 = u64::from_le_bytes(*b"mglv-off");
/// Seed of a member's step (`"mglv-skp"`).
pub(super) const SKIP_SEED: u64 = u64::from_le_bytes(*b"mglv-skp");
/// Seed of a member's shift after the shared permutation (`"mglv-sft"`).
pub(super) const SHIFT_SEED: u64 = u64::from_le_bytes(*b"mglv-sft");
/// Seed of the shared permutation, xor-ed with the size (`"mglv-prm"`).
pub(super) const PERMUTATION_SEED: u64 = u64::from_le_bytes(*b"mglv-prm");

pub(super) const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
pub(super) const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Fractional bits of [`log2_fixed`].
pub(super) const LOG_FRAC_BITS: u32 = 27;
/// `log2(1 + i/256)` with `LOG_FRAC_BITS` fractional bits, `i = 0 ..= 256`.
pub(super) static LOG2_TABLE: [u32; 257] = log2_table();

/// FNV-1a, 64 bits.
pub(super) fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(FNV_OFFSET_BASIS, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// `MurmurHash3`'s 64-bit finalizer.
pub(super) fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// One `SplitMix64` step.
pub(super) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `(offset, skip, shift)` of an identity's list.
pub(super) fn list_params(identity: &[u8], size: u32) -> (u32, u32, u32) {
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
pub(super) fn shared_permutation(size: u32, out: &mut Vec<u32>) {
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
pub(super) const fn log2_table() -> [u32; 257] {
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
pub(super) fn log2_fixed(n: u64) -> u64 {
    debug_assert!(n > 0);
    let int = n.ilog2();
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
pub(super) fn exponential_score(size: u32, j: u32) -> u32 {
    let two_m = 2 * u64::from(size);
    // size <= MAX_SIZE: E <= Λ(2^25) = 25 · 2^27 < u32::MAX.
    (log2_fixed(two_m) - log2_fixed(two_m - 2 * u64::from(j) - 1)) as u32
}

/// Fills `out` with `E(j)` for `j = 0 .. size`.
pub(super) fn exponential_scores(size: u32, out: &mut Vec<u32>) {
    let two_m = 2 * u64::from(size);
    let top = log2_fixed(two_m);
    out.clear();
    out.extend((0..u64::from(size)).map(|j| (top - log2_fixed(two_m - 2 * j - 1)) as u32));
}
