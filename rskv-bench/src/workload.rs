//! What a run does: the operations its mix and key distribution (`spec`) make, the load order,
//! and the pre-generated per-thread operation streams.
//!
//! Everything here is a pure function of the seed and the run's parameters (never of the
//! store), so every store sees exactly the same keys in the same order.

use crate::spec::{Distribution, Mix, Workload};

// ---- operations ------------------------------------------------------------------------------

/// One run-phase operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Read,
    Upsert,
    Rmw,
    Delete,
}

/// An operation packed into one word (kind in the top 2 bits, key below), so a stream of
/// tens of millions of operations stays small and is read sequentially.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct Op(u64);

const KIND_SHIFT: u32 = 62;
const KEY_MASK: u64 = (1 << KIND_SHIFT) - 1;

impl Op {
    pub fn new(kind: OpKind, key: u64) -> Op {
        debug_assert!(key <= KEY_MASK);
        Op((kind as u64) << KIND_SHIFT | key)
    }
    #[inline]
    pub fn kind(self) -> OpKind {
        match self.0 >> KIND_SHIFT {
            0 => OpKind::Read,
            1 => OpKind::Upsert,
            2 => OpKind::Rmw,
            _ => OpKind::Delete,
        }
    }
    #[inline]
    pub fn key(self) -> u64 {
        self.0 & KEY_MASK
    }
}

// ---- randomness -------------------------------------------------------------------------------

/// SplitMix64: seeds other generators and doubles as a strong 64-bit mixer.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// xoshiro256**: our own copy so streams never change with a dependency's version.
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut s = [0; 4];
        let mut x = seed;
        for w in &mut s {
            x = splitmix64(x);
            *w = x;
        }
        Rng(s)
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-40 for our n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// YCSB's 64-bit FNV-1a over the 8 bytes of `v`, low byte first.
pub fn fnv1a64(mut v: u64) -> u64 {
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    for _ in 0..8 {
        hash ^= v & 0xFF;
        hash = hash.wrapping_mul(0x0100_0000_01B3);
        v >>= 8;
    }
    hash
}

// ---- load order -------------------------------------------------------------------------------

/// A seeded bijection on `0..n`: position in the load order -> key.
///
/// A balanced Feistel network over the smallest even-bit power of two >= n, with cycle walking
/// to stay below n. It needs no memory (a shuffled array of 8M keys would add 64 MiB to every
/// run's peak RSS) and costs a few nanoseconds per key.
#[derive(Debug, Clone, Copy)]
pub struct Permutation {
    n: u64,
    half_bits: u32,
    keys: [u64; 4],
}

impl Permutation {
    pub fn new(n: u64, seed: u64) -> Permutation {
        let bits = (64 - n.saturating_sub(1).leading_zeros()).max(2);
        let half_bits = bits.div_ceil(2);
        let mut keys = [0; 4];
        let mut x = seed ^ 0x005E_ED0F_10AD;
        for k in &mut keys {
            x = splitmix64(x);
            *k = x;
        }
        Permutation { n, half_bits, keys }
    }

    fn feistel(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut l, mut r) = (x >> self.half_bits, x & mask);
        for k in self.keys {
            let f = splitmix64(r ^ k) & mask;
            (l, r) = (r, l ^ f);
        }
        l << self.half_bits | r
    }

    /// The key loaded at position `i` (`i < n`).
    pub fn at(&self, i: u64) -> u64 {
        let mut x = self.feistel(i);
        while x >= self.n {
            x = self.feistel(x);
        }
        x
    }
}

// ---- key generators ---------------------------------------------------------------------------

/// YCSB's ZipfianGenerator (Gray et al., "Quickly generating billion-record synthetic
/// databases"): ranks in `0..n`, rank 0 the most popular.
pub struct Zipfian {
    n: u64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
    half_pow_theta: f64,
}

impl Zipfian {
    pub fn new(n: u64, theta: f64) -> Zipfian {
        let zeta_n = zeta(n, theta);
        let zeta_2 = zeta(2, theta);
        Zipfian {
            n,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            eta: (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n),
            half_pow_theta: 0.5f64.powf(theta),
        }
    }

    pub fn next(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + self.half_pow_theta {
            return 1;
        }
        let rank = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.n - 1)
    }
}

/// zeta(n, theta) = sum over i in 1..=n of 1 / i^theta. O(n), ~0.1 s for 8M keys.
fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

/// Draws run-phase keys.
pub enum KeyGen {
    Uniform { n: u64 },
    Zipf { zipf: Zipfian },
    Latest { zipf: Zipfian, order: Permutation },
}

impl KeyGen {
    /// `order` is the load order, so "latest" can favour the keys loaded last.
    pub fn new(dist: Distribution, n: u64, order: Permutation) -> KeyGen {
        match dist {
            Distribution::Uniform => KeyGen::Uniform { n },
            Distribution::Zipf { theta } => KeyGen::Zipf {
                zipf: Zipfian::new(n, theta),
            },
            Distribution::Latest { theta } => KeyGen::Latest {
                zipf: Zipfian::new(n, theta),
                order,
            },
        }
    }

    #[inline]
    pub fn next(&self, rng: &mut Rng) -> u64 {
        match self {
            KeyGen::Uniform { n } => rng.below(*n),
            KeyGen::Zipf { zipf } => fnv1a64(zipf.next(rng)) % zipf.n,
            KeyGen::Latest { zipf, order } => order.at(zipf.n - 1 - zipf.next(rng)),
        }
    }
}

/// The seed of thread `thread`'s stream. Depends on the run's parameters, never on the store.
pub fn stream_seed(seed: u64, thread: usize, workload: &Workload, dist: Distribution) -> u64 {
    let mut h = splitmix64(seed ^ 0xA5A5_0000 ^ thread as u64);
    for b in workload.name.bytes() {
        h = splitmix64(h ^ u64::from(b));
    }
    let m = &workload.mix;
    h = splitmix64(
        h ^ u64::from(m.read) << 24
            ^ u64::from(m.upsert) << 16
            ^ u64::from(m.rmw) << 8
            ^ u64::from(m.delete),
    );
    let d = match dist {
        Distribution::Uniform => 1,
        Distribution::Zipf { theta } => 2 ^ theta.to_bits(),
        Distribution::Latest { theta } => 3 ^ theta.to_bits().rotate_left(7),
    };
    splitmix64(h ^ d)
}

/// Generates `len` operations of one thread.
pub fn generate_stream(len: usize, mix: Mix, keys: &KeyGen, seed: u64) -> Vec<Op> {
    let mut rng = Rng::new(seed);
    let (r, u, m) = (
        mix.read,
        mix.read + mix.upsert,
        mix.read + mix.upsert + mix.rmw,
    );
    (0..len)
        .map(|_| {
            let pick = rng.below(100) as u32;
            let kind = if pick < r {
                OpKind::Read
            } else if pick < u {
                OpKind::Upsert
            } else if pick < m {
                OpKind::Rmw
            } else {
                OpKind::Delete
            };
            Op::new(kind, keys.next(&mut rng))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_bijection() {
        for n in [1u64, 2, 3, 7, 100, 1000, 4097] {
            let p = Permutation::new(n, 42);
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let k = p.at(i);
                assert!(k < n);
                assert!(!seen[k as usize], "n={n} key {k} twice");
                seen[k as usize] = true;
            }
        }
    }

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let n = 10_000;
        let z = Zipfian::new(n, 0.99);
        let mut rng = Rng::new(1);
        let mut zeros = 0;
        for _ in 0..100_000 {
            let r = z.next(&mut rng);
            assert!(r < n);
            zeros += u32::from(r == 0);
        }
        // P(rank 0) = 1 / zeta(10000, 0.99), about 10%.
        assert!((7_000..13_000).contains(&zeros), "{zeros}");
    }

    #[test]
    fn ops_pack_and_mix_parses() {
        let op = Op::new(OpKind::Rmw, 123_456_789);
        assert_eq!((op.kind(), op.key()), (OpKind::Rmw, 123_456_789));
        let m = Mix::parse("read=50, upsert=30,rmw=10,delete=10").unwrap();
        assert_eq!(m.label(), "r50/u30/m10/d10");
        assert!(Mix::parse("read=50").is_err());
        assert!(Mix::parse("reed=100").is_err());
    }

    #[test]
    fn streams_are_deterministic() {
        let w = Workload::parse("a", None).unwrap();
        let d = Distribution::Zipf { theta: 0.99 };
        let keys = KeyGen::new(d, 1000, Permutation::new(1000, 7));
        let s1 = generate_stream(1000, w.mix, &keys, stream_seed(7, 0, &w, d));
        let s2 = generate_stream(1000, w.mix, &keys, stream_seed(7, 0, &w, d));
        assert_eq!(s1, s2);
        let reads = s1.iter().filter(|o| o.kind() == OpKind::Read).count();
        assert!((400..600).contains(&reads));
    }
}
