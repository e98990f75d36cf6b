//! The CSV readers: `refcsv::parse` (reference files, `driftd reference
//! import`) and `compare::compare` (`driftd compare`, with its in-place fast
//! path and the csv-crate path). The outcome must be well-formed batches or
//! a report, or an error that names the file and, for a bad row, a line
//! that exists; never a panic. The two paths of `compare` must agree.

use std::path::Path;

use driftd::{
    compare::{self, Args},
    domain::{ModelKey, NameRules},
    refcsv,
};
use proptest::prelude::*;

use crate::{arbitrary_bytes, config, corpus, guarded, mutate, mutated};

/// Rows a reference may have here; small, so the limit is reached too.
const MAX_ROWS: usize = 200;

/// Lines of `bytes` as the csv reader counts them (it counts `\n`).
fn n_lines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64 + 1
}

pub fn check_refcsv(bytes: &[u8], outputs: &[String]) {
    let key = ModelKey {
        model: "m".into(),
        version: "v".into(),
    };
    let rules = NameRules::default();
    match refcsv::parse(
        bytes,
        Path::new("fuzz.csv"),
        &key,
        outputs,
        MAX_ROWS,
        &rules,
    ) {
        Ok(batches) => {
            assert!(!batches.is_empty());
            let rows: usize = batches.iter().map(|b| b.n_rows).sum();
            assert!(rows <= MAX_ROWS);
            for b in &batches {
                assert!(b.n_rows > 0 && b.n_rows <= refcsv::ROWS_PER_BATCH);
                assert!(!b.columns.is_empty());
                for c in &b.columns {
                    assert_eq!(rules.check(&c.name), Ok(()));
                    assert_eq!(c.values.len(), b.n_rows, "column {:?}", c.name);
                }
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("fuzz.csv: "), "{msg}");
            match e {
                refcsv::Error::Ragged { line, .. } | refcsv::Error::Utf8 { line, .. } => {
                    assert!(
                        (1..=n_lines(bytes)).contains(&line),
                        "line {line} of {}: {msg}",
                        n_lines(bytes)
                    );
                }
                refcsv::Error::Read { .. } => panic!("reading from memory failed: {msg}"),
                _ => {}
            }
        }
    }
}

/// Compares the two inputs and checks the outcome; returns the report as
/// JSON, or the error's exit code and message, for differential checks.
pub fn check_compare(reference: &[u8], current: &[u8]) -> Result<String, (u8, String)> {
    let args = Args {
        min_samples: 3,
        ..Args::new("ref.csv", "cur.csv")
    };
    match compare::compare(&args, reference, current) {
        Ok(report) => {
            assert!(!report.features.is_empty());
            let mut names = std::collections::HashSet::new();
            for f in &report.features {
                assert!(!f.name.is_empty());
                assert!(names.insert(&f.name), "duplicate feature {:?}", f.name);
            }
            Ok(serde_json::to_string(&report).expect("a report serialises"))
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with("ref.csv: ") || msg.starts_with("cur.csv: "),
                "{msg}"
            );
            match &e {
                compare::Error::RaggedRow { path, line, .. } => {
                    let file = if path == Path::new("ref.csv") {
                        reference
                    } else {
                        current
                    };
                    assert!(
                        (1..=n_lines(file)).contains(line),
                        "line {line} of {}: {msg}",
                        n_lines(file)
                    );
                }
                compare::Error::Read { .. } => panic!("reading from memory failed: {msg}"),
                _ => {}
            }
            Err((e.exit_code(), msg))
        }
    }
}

/// `compare` of two files without quotes or carriage returns takes the fast
/// path; with every `\n` made `\r\n` the same files go through the csv
/// reader, which must read the same thing.
fn check_compare_paths_agree(reference: &[u8], current: &[u8]) {
    let plain = |b: &[u8]| !b.contains(&b'"') && !b.contains(&b'\r');
    let fast = check_compare(reference, current);
    if !(plain(reference) && plain(current)) {
        return;
    }
    let crlf = |b: &[u8]| {
        b.iter().fold(Vec::with_capacity(b.len()), |mut v, &c| {
            if c == b'\n' {
                v.push(b'\r');
            }
            v.push(c);
            v
        })
    };
    let slow = check_compare(&crlf(reference), &crlf(current));
    // Line numbers included: the csv crate's own are one too low after
    // `\r\n` (rust-csv issue 395), which `refcsv::record_line` corrects.
    assert_eq!(fast, slow, "fast path and csv reader disagree");
}

fn check_csv(bytes: &[u8], other: &[u8]) {
    check_refcsv(bytes, &[]);
    check_refcsv(bytes, &["y".to_string()]);
    check_compare_paths_agree(bytes, other);
    check_compare_paths_agree(other, bytes);
    check_compare_paths_agree(bytes, bytes);
}

/// The valid CSV seeds, read once.
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| corpus("csv").into_iter().map(|(_, b)| b).collect())
}

/// A valid file to compare against.
fn partner() -> &'static [u8] {
    b"x,y,c\n1,0.5,a\n2,0.25,b\n3,,a\n4,1e3,c\n"
}

#[test]
fn corpus_regressions() {
    for (path, bytes) in corpus("csv") {
        eprintln!("{}", path.display());
        check_csv(&bytes, partner());
    }
    // Pairs: NAME.ref.csv with NAME.cur.csv.
    for (path, reference) in corpus("compare") {
        let name = path.to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".ref.csv") else {
            continue;
        };
        eprintln!("{name}");
        let current = std::fs::read(format!("{stem}.cur.csv")).expect("pair");
        check_compare_paths_agree(&reference, &current);
    }
}

#[test]
fn csv_errors_name_the_line() {
    let e = check_compare(partner(), b"x,y,c\n1,2,3\n4,5\n").unwrap_err();
    assert_eq!(e.0, 65);
    assert!(e.1.contains("cur.csv: line 3"), "{}", e.1);
    // With `\r\n` line ends (the csv crate's own count says line 2), with
    // blank lines before the row, and in a reference file.
    let e = check_compare(b"x,y\r\n1,2\r\n\"3\"\r\n", partner()).unwrap_err();
    assert_eq!(e.0, 65);
    assert!(e.1.contains("ref.csv: line 3:"), "{}", e.1);
    let e = check_compare(b"x,y\r\n1,2\r\n\r\n\r\n\"3\"\r\n", partner()).unwrap_err();
    assert!(e.1.contains("ref.csv: line 5:"), "{}", e.1);
    let e = check_compare(b"x,y\n1,2\n\n\"3\"\n", partner()).unwrap_err();
    assert!(e.1.contains("ref.csv: line 4:"), "{}", e.1);
    let key = ModelKey {
        model: "m".into(),
        version: "v".into(),
    };
    let rules = NameRules::default();
    for (file, line) in [
        (&b"x,y\r\n1,2\r\n3\r\n"[..], 3),
        (b"x,y\n1,2\n3\n", 3),
        (b"x,y\r\n\r\n1,2\r\n\r\n3\r\n", 5),
        (b"x,y\r\n1,\"2\r\n2\"\r\n3\r\n", 4),
    ] {
        let e = refcsv::parse(file, Path::new("r.csv"), &key, &[], 10, &rules).unwrap_err();
        assert!(
            matches!(e, refcsv::Error::Ragged { line: l, .. } if l == line),
            "{file:?}: {e}"
        );
    }
}

// === structured generator ===

fn header_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => "[a-z]{1,2}".prop_map(String::into_bytes),
        1 => Just(b"y".to_vec()),
        1 => Just(Vec::new()),
        1 => Just(b"a b".to_vec()),
        1 => Just(b"1".to_vec()),
        1 => Just(vec![0xff, b'x']),
        1 => Just(b"\"q,\"\"n\"".to_vec()),
    ]
}

fn field() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => "-?[0-9]{1,4}(\\.[0-9]{0,3})?([eE][+-]?[0-9]{1,3})?".prop_map(String::into_bytes),
        2 => Just(Vec::new()),
        2 => prop::sample::select(vec![
            "1e999", "-1e999", "nan", "NaN", "inf", " 1", "1 ", "+.5", ".", "-", "1e", "0x10",
            "1_000", "\u{661}", "1.7976931348623157e308", "4.9e-324",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        3 => "[a-c ]{0,4}".prop_map(String::into_bytes),
        1 => "\"([a-z,\n\r]|\"\"){0,6}\"".prop_map(String::into_bytes),
        1 => prop::sample::select(vec!["\"abc", "a\"b", "\"a\"b", "\"\"\""])
            .prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::sample::select(vec![vec![0xff], vec![0xc3], vec![b'a', 0xe2, 0x82]]),
        1 => prop::sample::select(vec![b'9', b'z']).prop_map(|b| vec![b; 100_000]),
    ]
}

/// A header and two bodies of rows (mostly as wide as the header), with
/// one line ending, maybe a BOM and maybe no final newline.
fn csv_pair() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (1usize..5)
        .prop_flat_map(|width| {
            let row = prop_oneof![
                8 => prop::collection::vec(field(), width),
                1 => prop::collection::vec(field(), 0..7),
            ];
            (
                prop::collection::vec(header_name(), width),
                prop::collection::vec(row.clone(), 0..40),
                prop::collection::vec(row, 0..40),
                prop::sample::select(vec!["\n", "\n", "\r\n", "\r"]),
                any::<bool>(),
                prop::bool::weighted(0.05),
            )
        })
        .prop_map(|(header, r, c, eol, final_eol, bom)| {
            let render = |rows: &[Vec<Vec<u8>>]| {
                let mut out = Vec::new();
                if bom {
                    out.extend_from_slice("\u{feff}".as_bytes());
                }
                let lines = std::iter::once(&header).chain(rows);
                for (i, line) in lines.enumerate() {
                    if i > 0 {
                        out.extend_from_slice(eol.as_bytes());
                    }
                    out.extend_from_slice(&line.join(&b","[..]));
                }
                if final_eol {
                    out.extend_from_slice(eol.as_bytes());
                }
                out
            };
            (render(&r), render(&c))
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_read_or_name_the_line(bytes in arbitrary_bytes()) {
        guarded("csv-bytes", &[("csv", &bytes[..])], || check_csv(&bytes, partner()));
    }

    #[test]
    fn mutated_seeds_read_or_name_the_line((seed, edits) in mutated(64), other in 0usize..64) {
        let seeds = seeds();
        let bytes = mutate(&seeds[seed % seeds.len()], &edits, seeds);
        let other = &seeds[other % seeds.len()];
        guarded("csv-mutated", &[("csv", &bytes[..]), ("other.csv", &other[..])], || {
            check_csv(&bytes, other)
        });
    }

    #[test]
    fn structured_files_read_or_name_the_line((r, c) in csv_pair()) {
        guarded("csv-structured", &[("ref.csv", &r[..]), ("cur.csv", &c[..])], || {
            check_refcsv(&r, &[]);
            check_refcsv(&r, &["y".to_string()]);
            check_compare_paths_agree(&r, &c);
        });
    }
}
