//! Proof-of-work solve times: how long a client needs for a join's
//! challenge at a given difficulty (docs/FAIRNESS.md, docs/BENCHMARKS.md).
//!
//! ```text
//! cargo run --release -p loadtest --bin pow_solve -- [bits ...]   # default 16 20 24
//! ```
//!
//! Solves fresh challenges (signed as the service signs them) the way a
//! client does — sha256(challenge ‖ decimal counter) until the leading
//! zero bits suffice — on one core, and prints per difficulty the
//! attempts' mean and median wall time and the hash rate. The solve time
//! is geometric (mean 2^bits hashes), so the spread is as wide as the
//! mean. A browser hashing with WebCrypto or a JS SHA-256 manages roughly
//! 1–5 M hashes/s per core against the ~10–20 M/s of this native loop: the
//! printed browser estimate divides 2^bits by 2 M/s.

use std::time::Instant;

use boxoffice::{
    fair::challenge::{ChallengeSigner, leading_zero_bits, solve},
    ids::EventId,
};

fn main() {
    let bits: Vec<u8> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let bits = if bits.is_empty() {
        vec![16, 20, 24]
    } else {
        bits
    };
    let signer = ChallengeSigner::new("pow-solve-bench");
    let event = EventId::parse("pow").expect("valid id");
    println!("bits  runs  mean_s   median_s  hashes_per_s  browser_estimate_s(2M/s)");
    for b in bits {
        let runs = match b {
            0..=16 => 40,
            17..=20 => 12,
            _ => 4,
        };
        let mut times = Vec::with_capacity(runs);
        let mut hashes = 0u64;
        for i in 0..runs {
            let (c, _) = signer.issue(&event, b, i as i64);
            let t = Instant::now();
            let nonce = solve(&c, b);
            times.push(t.elapsed().as_secs_f64());
            assert!(leading_zero_bits(&c, &nonce) >= u32::from(b));
            hashes += nonce.parse::<u64>().expect("decimal nonce") + 1;
        }
        let total: f64 = times.iter().sum();
        times.sort_by(f64::total_cmp);
        let expected = f64::from(1u32 << b.min(31));
        println!(
            "{b:>4}  {runs:>4}  {:>7.3}  {:>8.3}  {:>12.0}  {:>8.1}",
            total / runs as f64,
            times[runs / 2],
            hashes as f64 / total,
            expected / 2.0e6
        );
    }
}
