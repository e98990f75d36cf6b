//! Fuzz tests of what driftd reads from outside: the decode-and-validate
//! path of the gRPC ingest messages (`ingest`) and the CSV readers of
//! reference files and `driftd compare` (`csv_readers`).
//!
//! cargo-fuzz needs a nightly compiler (`-Zsanitizer`), so these are
//! proptest properties instead, run by `cargo test` on stable: arbitrary
//! bytes, bytes made by mutating the committed seed corpus
//! (`tests/fuzz/corpus/<target>/`: bit flips, byte sets, truncation,
//! deletion, duplication, splices of two seeds), and structure-aware
//! generators. Every property says the same thing: the code under test
//! returns `Ok` or an error that names where the input is wrong (a field,
//! a file and line), and never panics. Every corpus file is also run once,
//! as a regression test.
//!
//! `DRIFTD_FUZZ_CASES` sets the cases per property (default 256: seconds);
//! CI runs more, and README's "Fuzzing" section says how to run for hours.
//! A failing case is shrunk, and its bytes are written to
//! `<target dir>/tmp/fuzz-crashes/` to be committed to the corpus with the
//! fix.

mod csv_readers;
mod ingest;

use std::{
    panic::{catch_unwind, resume_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
};

use proptest::{prelude::*, test_runner::Config};

/// Cases per property: `DRIFTD_FUZZ_CASES`, default 256.
pub fn cases() -> u32 {
    std::env::var("DRIFTD_FUZZ_CASES")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(256)
}

/// The proptest configuration of every property: [`cases`] cases, no
/// regression file (reproducers go to the corpus instead).
pub fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..Config::default()
    }
}

/// The committed corpus of `target`, sorted by name.
pub fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Runs `check` on `inputs`; if it panics, writes the inputs to
/// `<target dir>/tmp/fuzz-crashes/<name>.<suffix>` (overwritten by each
/// failure, so after shrinking they hold the smallest one) and panics on.
pub fn guarded(name: &str, inputs: &[(&str, &[u8])], check: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(check)) {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes");
        let _ = std::fs::create_dir_all(&dir);
        for (suffix, bytes) in inputs {
            let path = dir.join(format!("{name}.{suffix}"));
            if std::fs::write(&path, bytes).is_ok() {
                eprintln!("fuzz: failing input written to {}", path.display());
            }
        }
        resume_unwind(panic);
    }
}

/// One edit of a byte string. Positions and lengths are reduced modulo the
/// input's length when applied, so any value is valid for any input.
#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    Delete(usize, usize),
    Duplicate(usize, usize),
    Insert(usize, Vec<u8>),
    /// Replaces the tail from a position with the tail of another seed.
    Splice(usize, usize, usize),
}

/// Bytes that matter to the formats: protobuf varint continuation and
/// wire-type bits, zero, CSV separators and quotes, UTF-8 lead and
/// continuation bytes.
const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x02, 0x07, 0x08, 0x0a, 0x0d, 0x12, 0x1a, 0x22, 0x2c, 0x7f, 0x80, 0xbf, 0xc0, 0xe2,
    0xf0, 0xff, b'"', b',', b'\n', b'\r', b'e', b'-', b'.',
];

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![
        3 => prop::sample::select(INTERESTING),
        1 => any::<u8>(),
    ];
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(p, b)| Mutation::FlipBit(p, b)),
        3 => (any::<usize>(), byte.clone()).prop_map(|(p, b)| Mutation::SetByte(p, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        2 => (any::<usize>(), 1usize..64).prop_map(|(p, n)| Mutation::Delete(p, n)),
        1 => (any::<usize>(), 1usize..64).prop_map(|(p, n)| Mutation::Duplicate(p, n)),
        2 => (any::<usize>(), prop::collection::vec(byte, 1..16))
            .prop_map(|(p, b)| Mutation::Insert(p, b)),
        1 => (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(p, d, o)| Mutation::Splice(p, d, o)),
    ]
}

/// Applies `mutations` to a copy of `seed`; splices take from `donors`.
pub fn mutate(seed: &[u8], mutations: &[Mutation], donors: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in mutations {
        let at = |p: usize, len: usize| if len == 0 { 0 } else { p % len };
        match m {
            Mutation::FlipBit(p, bit) => {
                if !b.is_empty() {
                    let i = at(*p, b.len());
                    b[i] ^= 1 << bit;
                }
            }
            Mutation::SetByte(p, v) => {
                if !b.is_empty() {
                    let i = at(*p, b.len());
                    b[i] = *v;
                }
            }
            Mutation::Truncate(p) => {
                let n = at(*p, b.len() + 1);
                b.truncate(n);
            }
            Mutation::Delete(p, n) => {
                let i = at(*p, b.len() + 1);
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            Mutation::Duplicate(p, n) => {
                let i = at(*p, b.len() + 1);
                let end = (i + n).min(b.len());
                let tail = b.split_off(i);
                b.extend_from_slice(&tail[..end - i]);
                b.extend_from_slice(&tail);
            }
            Mutation::Insert(p, bytes) => {
                let i = at(*p, b.len() + 1);
                let tail = b.split_off(i);
                b.extend_from_slice(bytes);
                b.extend_from_slice(&tail);
            }
            Mutation::Splice(p, d, o) => {
                if let Some(donor) = donors.get(at(*d, donors.len())) {
                    let i = at(*p, b.len() + 1);
                    let from = at(*o, donor.len() + 1);
                    b.truncate(i);
                    b.extend_from_slice(&donor[from..]);
                }
            }
        }
    }
    b
}

/// A seed index and up to 8 mutations of it.
pub fn mutated(n_seeds: usize) -> impl Strategy<Value = (usize, Vec<Mutation>)> {
    (0..n_seeds, prop::collection::vec(mutation(), 1..8))
}

/// Arbitrary bytes, mostly short, sometimes long.
pub fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..64),
        2 => prop::collection::vec(prop::sample::select(INTERESTING), 0..256),
        1 => prop::collection::vec(any::<u8>(), 0..4096),
    ]
}

#[test]
fn mutations_stay_in_bounds() {
    let seed = b"abc".to_vec();
    let donors = vec![b"xyz".to_vec(), Vec::new()];
    let all = [
        Mutation::FlipBit(usize::MAX, 7),
        Mutation::SetByte(5, 0),
        Mutation::Truncate(usize::MAX),
        Mutation::Delete(usize::MAX, 63),
        Mutation::Duplicate(2, 63),
        Mutation::Insert(usize::MAX, vec![1]),
        Mutation::Splice(usize::MAX, usize::MAX, usize::MAX),
    ];
    for m in &all {
        mutate(&seed, std::slice::from_ref(m), &donors);
        mutate(&[], std::slice::from_ref(m), &donors);
    }
    assert_eq!(mutate(&seed, &[Mutation::Truncate(1)], &donors), b"a");
    assert_eq!(
        mutate(&seed, &[Mutation::Splice(1, 0, 1)], &donors),
        b"ayz".to_vec()
    );
}
