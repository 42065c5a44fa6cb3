//! `--probe-memory`: how long this machine takes for the memory accesses an operation cannot
//! avoid, measured the way RsKv lays out memory (two buffers of transparent huge pages, like
//! the index and the log).
//!
//! An in-memory operation of an uncached key makes two dependent accesses: the index bucket,
//! then the record the bucket points at. The probe times such steps, each a random line of
//! buffer A whose contents pick a random line of buffer B:
//! - *chained*: the next step's line depends on the previous step's loads, so nothing
//!   overlaps: the floor for a store that finishes one operation before the next can start;
//! - *independent*: steps do not depend on each other, so the CPU overlaps as many as its
//!   out-of-order window allows: the ceiling when consecutive operations overlap;
//! - *independent, padded*: the same with rounds of independent arithmetic before each step's
//!   loads (four add-and-xor pairs per round; about 8.5 instructions once the compiler pairs
//!   them into SSE2 registers), showing how the overlap fades as an operation gets longer and
//!   the next one's loads enter the out-of-order window later (why RsKv's one-word fast paths
//!   are kept short).

use std::hint::black_box;
use std::time::Instant;

use rskv::core::alloc::AlignedBuf;

const LINE_WORDS: usize = 8;

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// A buffer of `bytes` whose lines each hold a random number in their first word.
fn filled(bytes: usize, seed: &mut u64) -> AlignedBuf {
    let mut buf = AlignedBuf::zeroed(bytes, 64);
    let words: &mut [u64] = bytemuck::cast_slice_mut(buf.as_mut_slice());
    for line in words.chunks_exact_mut(LINE_WORDS) {
        line[0] = xorshift(seed);
    }
    buf
}

/// Nanoseconds per two-access step over buffers of `bytes` each, chained or independent,
/// after `pad` rounds of independent arithmetic. `CHAINED` is a constant so that the
/// independent loop cannot pick up a dependency through a conditional move on `carry`.
fn time_steps<const CHAINED: bool>(a: &[u64], b: &[u64], steps: u64, pad: u64) -> f64 {
    let lines = (a.len() / LINE_WORDS) as u64;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut carry = 0u64;
    // Every loaded word and every padding result feeds `sum` (additions only, no addresses),
    // so no load or padding is dead code and independent steps stay independent.
    let mut sum = 0u64;
    let pad = black_box(pad);
    let start = Instant::now();
    for _ in 0..steps {
        let (mut p, mut q, mut s, mut t) = (x, x ^ 1, x ^ 2, x ^ 3);
        for i in 0..pad {
            p = p.wrapping_add(i) ^ 7;
            q = q.wrapping_add(i) ^ 5;
            s = s.wrapping_add(i) ^ 3;
            t = t.wrapping_add(i) ^ 9;
        }
        let r = xorshift(&mut x) ^ if CHAINED { carry } else { 0 };
        let i = (r % lines) as usize * LINE_WORDS;
        let j = (a[i] % lines) as usize * LINE_WORDS;
        let v = b[j];
        // Only the lowest bit feeds the next step: enough to make it wait for this one.
        carry = v & 1;
        sum = sum.wrapping_add(v ^ p ^ q ^ s ^ t);
    }
    black_box(sum);
    start.elapsed().as_nanos() as f64 / steps as f64
}

/// Runs the probe over two buffers of `bytes` each and prints the results.
pub fn run(bytes: u64) {
    let bytes = usize::try_from(bytes).unwrap_or(usize::MAX).max(1 << 20);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let a = filled(bytes, &mut seed);
    let b = filled(bytes, &mut seed);
    let (a, b): (&[u64], &[u64]) = (
        bytemuck::cast_slice(a.as_slice()),
        bytemuck::cast_slice(b.as_slice()),
    );
    let steps = 4_000_000;
    time_steps::<true>(a, b, steps / 4, 0); // warm up the page tables
    println!(
        "memory probe: two buffers of {} (transparent huge pages where the kernel allows)",
        crate::sysinfo::human_bytes(bytes as u64)
    );
    for (name, ns) in [
        ("chained", time_steps::<true>(a, b, steps, 0)),
        ("independent", time_steps::<false>(a, b, steps, 0)),
    ] {
        println!(
            "  {name:<12} two dependent accesses per step: {ns:7.1} ns/step = {:6.2} M steps/s",
            1e3 / ns
        );
    }
    for pad in [4, 8, 12, 16, 20, 24] {
        let ns = time_steps::<false>(a, b, steps, pad);
        println!(
            "  independent, {pad:>2} rounds of padding:      {ns:7.1} ns/step = {:6.2} M steps/s",
            1e3 / ns
        );
    }
}
