#![expect(
    clippy::cast_precision_loss,
    reason = "shares of a table of at most 2^20 cells, as f64"
)]
use super::hash::*;
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
