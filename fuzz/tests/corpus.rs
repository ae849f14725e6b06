//! The fuzz smoke run CI does: every target on every file of its committed seed
//! corpus, then on seeded random mutations of them (byte flips, insertions, deletions,
//! splices of two seeds) for a bounded time. libFuzzer runs (`scripts/fuzz`) go much
//! further; every crash they find is added to the corpus, so it is replayed here.

use attnc_ir::Rng;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("entry").path();
            let bytes = std::fs::read(&path).expect("readable seed");
            (path.display().to_string(), bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
}

fn mutate(rng: &mut Rng, seeds: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut data = seeds[rng.below(seeds.len() as u64) as usize].1.clone();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len() as u64 + 1) as usize;
        match rng.below(5) {
            0 if at < data.len() => data[at] ^= 1 << rng.below(8),
            1 if at < data.len() => {
                let end = (at + 1 + rng.below(16) as usize).min(data.len());
                data.drain(at..end);
            }
            2 => {
                // Interesting bytes: digits, brackets, quotes, operators, newlines.
                let bytes = b"0123456789[]{}\"'=<>&|!-+*/%(),.\n \0xyzqkbh";
                data.insert(at, bytes[rng.below(bytes.len() as u64) as usize]);
            }
            3 => {
                let other = &seeds[rng.below(seeds.len() as u64) as usize].1;
                let from = rng.below(other.len() as u64 + 1) as usize;
                let end = (from + rng.below(64) as usize).min(other.len());
                data.splice(at..at, other[from..end].iter().copied());
            }
            _ => {
                // A long run of one byte: deep nesting, huge numbers.
                let b = b"([{9-!"[rng.below(6) as usize];
                data.splice(at..at, std::iter::repeat_n(b, 1 + rng.below(400) as usize));
            }
        }
    }
    data
}

/// Seeds, then mutations until `budget` runs out; returns the inputs run.
fn smoke(target: &str, body: fn(&[u8]), budget: Duration) -> usize {
    let seeds = corpus(target);
    for (name, bytes) in &seeds {
        let run = std::panic::catch_unwind(|| body(bytes));
        assert!(run.is_ok(), "{target}: seed {name} crashes");
    }
    let mut rng = Rng::new(11);
    let start = Instant::now();
    let mut runs = seeds.len();
    while start.elapsed() < budget {
        let data = mutate(&mut rng, &seeds);
        if std::panic::catch_unwind(|| body(&data)).is_err() {
            let path = std::env::temp_dir().join(format!("attnc-fuzz-{target}-crash"));
            let _ = std::fs::write(&path, &data);
            panic!(
                "{target}: a mutated input crashes; written to {}",
                path.display()
            );
        }
        runs += 1;
    }
    runs
}

#[test]
fn spec_seeds_and_mutations() {
    let n = smoke("spec", attnc_fuzz::spec, Duration::from_secs(4));
    eprintln!("spec: {n} inputs");
}

#[test]
fn ir_text_seeds_and_mutations() {
    let n = smoke("ir_text", attnc_fuzz::ir_text, Duration::from_secs(4));
    eprintln!("ir_text: {n} inputs");
}

#[test]
fn mask_seeds_and_mutations() {
    let n = smoke("mask", attnc_fuzz::mask, Duration::from_secs(3));
    eprintln!("mask: {n} inputs");
}

#[test]
fn pipeline_seeds_and_mutations() {
    let n = smoke("pipeline", attnc_fuzz::pipeline, Duration::from_secs(6));
    eprintln!("pipeline: {n} inputs");
}
