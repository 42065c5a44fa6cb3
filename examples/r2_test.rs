//! R2Kv, the two-tier store, on data ten times larger than its memory: every operation under
//! zipf access, every result checked against a model, a checkpoint and a recovery, and the
//! tier statistics (also in the Prometheus format) at the end.
//!
//! `cargo run --release --example r2_test [keys]` (default 1,000,000 keys of 64-byte values,
//! about 100 MB of records, in 10 MiB of memory).

use std::time::Instant;

use rskv::device::file_system_disk::FileSystemDisk;
use rskv::{Config, LogCompaction, R2Config, R2Kv};

/// The value of `key` at `version` (64 bytes), so that the model only keeps versions.
fn value(key: u64, version: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    while v.len() < 64 {
        v.extend_from_slice(&(key ^ (u64::from(version) << 40) ^ v.len() as u64).to_le_bytes());
    }
    v
}

/// xorshift64*: a small deterministic generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// YCSB's zipfian generator (Gray et al.), constant 0.99, scrambled over the key space so the
/// hot keys are spread over the whole log.
struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}
impl Zipf {
    fn new(n: u64, theta: f64) -> Self {
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let (zetan, zeta2) = (zeta(n), zeta(2));
        Self {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta: (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan),
        }
    }
    fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        let uz = u * self.zetan;
        let rank = if uz < 1.0 {
            0
        } else if uz < 1.0 + 0.5f64.powf(self.theta) {
            1
        } else {
            ((self.n as f64) * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64
        };
        // Scramble (an odd multiplier is a bijection modulo 2^64; then fold into range).
        (rank.min(self.n - 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 7) % self.n
    }
}

fn config() -> R2Config {
    R2Config::new()
        .hot(
            Config::new()
                .table_size(1 << 16)
                .page_size(1 << 20)
                .log_memory_size(8 << 20)
                .read_cache(1 << 20),
        )
        .hot_to_cold(LogCompaction::with_budget(16 << 20).max_pass(4 << 20))
        .cold_to_cold(LogCompaction::with_budget(256 << 20))
        .cold_log_memory(4 << 20)
}

fn check(kv: &R2Kv<u64, Vec<u8>>, model: &[u32], key: u64) -> Result<(), String> {
    let got = kv.get(&key).map_err(|e| e.to_string())?;
    let want = match model[key as usize] {
        0 => None,
        v => Some(value(key, v)),
    };
    if got != want {
        return Err(format!(
            "key {key}: read {:?}, expected version {}",
            got.map(|v| v[..8].to_vec()),
            model[key as usize]
        ));
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let kv: R2Kv<u64, Vec<u8>> = R2Kv::open(config(), FileSystemDisk::new(dir.path())?)?;
    let mut model = vec![0u32; keys as usize];

    let t = Instant::now();
    for k in 0..keys {
        kv.insert(&k, &value(k, 1))?;
        model[k as usize] = 1;
    }
    println!(
        "loaded {keys} keys in {:.1} s ({:.2} Mops/s)",
        t.elapsed().as_secs_f64(),
        keys as f64 / t.elapsed().as_secs_f64() / 1e6
    );

    // Every operation under zipf access: reads, upserts, RMWs (a new version from the old
    // value), deletes; each result checked.
    let zipf = Zipf::new(keys, 0.99);
    let mut rng = Rng(0x5eed);
    let ops = keys;
    let t = Instant::now();
    for i in 0..ops {
        let k = zipf.sample(&mut rng);
        match i % 10 {
            0..=5 => check(&kv, &model, k)?,
            6 | 7 => {
                let v = model[k as usize] + 1;
                kv.insert(&k, &value(k, v))?;
                model[k as usize] = v;
            }
            8 => {
                let expected = model[k as usize];
                let mut seen = None;
                let new = kv.rmw(&k, |old| {
                    seen = Some(old.clone());
                    let version = match &old {
                        // The version is recoverable from the value's first word.
                        Some(v) => {
                            let w = u64::from_le_bytes(v[..8].try_into().unwrap());
                            ((w ^ k) >> 40) as u32 + 1
                        }
                        None => 1,
                    };
                    value(k, version)
                })?;
                let had = seen.flatten();
                let want_old = (expected != 0).then(|| value(k, expected));
                if had != want_old {
                    return Err(format!("rmw of key {k} saw a wrong old value").into());
                }
                model[k as usize] = expected + 1;
                if new != value(k, expected + 1) {
                    return Err(format!("rmw of key {k} returned a wrong value").into());
                }
            }
            _ => {
                kv.remove(&k)?;
                model[k as usize] = 0;
            }
        }
    }
    println!(
        "{ops} zipf operations checked in {:.1} s ({:.2} Mops/s)",
        t.elapsed().as_secs_f64(),
        ops as f64 / t.elapsed().as_secs_f64() / 1e6
    );

    let token = kv.checkpoint()?;
    let stats = kv.stats();
    drop(kv);
    let kv: R2Kv<u64, Vec<u8>> = R2Kv::open(config(), FileSystemDisk::new(dir.path())?)?;
    let t = Instant::now();
    for k in 0..keys {
        check(&kv, &model, k)?;
    }
    println!(
        "recovered checkpoint {token} and checked all {keys} keys in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    println!("\nTier statistics before the recovery:");
    println!(
        "  hot: {} reads answered ({} by the read cache), log {} MB, disk {} MB, index {} KB",
        stats.hot_hits,
        stats.hot.read_cache.map_or(0, |c| c.hits),
        stats.hot.log_bytes >> 20,
        stats.hot.disk_bytes >> 20,
        stats.hot.index_memory >> 10
    );
    println!(
        "  cold: {} reads, {} found, {} RMWs from cold, log {} MB, disk {} MB, {} device reads",
        stats.cold_reads,
        stats.cold_hits,
        stats.cold_rmws,
        stats.cold_log_bytes >> 20,
        stats.cold_disk_bytes >> 20,
        stats.cold_device_reads
    );
    println!(
        "  passes: hot-to-cold {:?}\n          cold-to-cold {:?}",
        stats.hot_to_cold, stats.cold_to_cold
    );
    println!("  cold index: {:?}", stats.cold_index);
    println!("\nPrometheus export:\n{}", stats.prometheus());
    Ok(())
}
