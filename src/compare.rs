//! `driftd compare`: the offline comparison of two CSV files, column by
//! column, with every statistic of [`crate::stats`] that applies and a drift
//! verdict per column.
//!
//! This module owns reading the two CSV files, deciding each column's kind,
//! the per-column report, the verdict rule, the exit codes of the command and
//! the human-readable table. Reading the two files is its only I/O: it does
//! not print, log, read the daemon configuration or touch the store. The
//! statistics themselves live in [`crate::stats`]; their definitions (SciPy
//! 1.17.1) are stated there and not repeated here.
//!
//! # Input
//!
//! Both files are CSV (RFC 4180 quoting, `,` separator) with a header row.
//! The columns compared are those of the reference header, in its order; the
//! current file may hold them in any order and may hold extra columns, which
//! are ignored. Every row must have as many fields as its header.
//!
//! * An **empty field is missing**. For a numeric column a number that
//!   overflows `f64` (e.g. `1e999`) reads as ±inf and is missing too, as
//!   `stats` defines.
//! * A column is **numeric** when every non-empty field of it, in both files,
//!   is a plain decimal number, i.e. matches the whole of
//!   `[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?` (ASCII digits, no surrounding
//!   spaces, so `nan`, `inf` or ` 1` make a column categorical). Otherwise it
//!   is **categorical**, as is any column named with `--categorical`. A
//!   category is the exact text of the field (`1` and `1.0` differ).
//! * Numbers are parsed with Rust's `str::parse::<f64>`, which is correctly
//!   rounded, so a value reads exactly as NumPy/pandas (round-trip) read it.
//!
//! # Per-column statistics
//!
//! Numeric: `ks`, `psi`, `js`, `wasserstein`, `wasserstein_norm`,
//! `hellinger` and `cvm`, with `psi`, `js` and `hellinger` over the reference
//! quantile bins ([`Args::bins`] bins, [`Args::epsilon`] for PSI's empty
//! bins). Categorical: `chi2`, `psi`, `js` and `hellinger` over the sorted
//! union of categories. A statistic that cannot be computed (an empty side,
//! fewer than 2 values for CvM, a NaN) is `None` (JSON `null`).
//!
//! # Verdict
//!
//! Let `k` be the number of columns that have a p-value (KS for numeric
//! columns, chi-square for categorical ones). A column's verdict is
//!
//! 1. `insufficient_data` when `n_ref` or `n_cur` (non-missing values) is
//!    below [`Args::min_samples`] (default 500);
//! 2. otherwise `drift` when `psi > 0.2` ([`PSI_THRESHOLD`]) or its p-value
//!    is below `0.01 / k` ([`ALPHA`], Bonferroni-corrected over the `k`
//!    columns);
//! 3. otherwise `ok`.
//!
//! # Speed
//!
//! Each file is read with one `std::fs::read`. When neither file holds a
//! `"` or a `\r` (no quoting, `\n` line ends), rows and fields are split in
//! place and numeric columns are parsed while splitting, one thread per
//! file; only columns that turn out categorical are copied out, in a second
//! pass. Any other file, or a malformed row, goes through the csv reader
//! (one pass per file with reused [`csv::ByteRecord`]s, copying fields into
//! one byte arena per column), which also reports errors exactly. Columns
//! are then classified where still needed, sorted once (radix sort on
//! integer keys) and measured on a small pool of scoped threads that take
//! columns from a shared queue; results are put back in header order, so
//! the output does not depend on scheduling.

use std::{
    collections::HashMap,
    num::NonZeroUsize,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use serde::{ser::SerializeMap, Serialize, Serializer};

use crate::stats::{self, Chi2Result, KsResult};

#[cfg(test)]
mod tests;

/// PSI above this marks a column as drifted (the daemon's default rule).
pub const PSI_THRESHOLD: f64 = 0.2;

/// Family-wise significance level of the KS / chi-square tests, before the
/// Bonferroni correction.
pub const ALPHA: f64 = 0.01;

/// Default minimum number of non-missing values on each side for a verdict
/// (the daemon's `evaluation.min_samples` default).
pub const DEFAULT_MIN_SAMPLES: usize = 500;

/// What to compare and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    /// The reference CSV file; its header selects the columns.
    pub reference: PathBuf,
    /// The current CSV file.
    pub current: PathBuf,
    /// Columns to treat as categorical even when every value is a number.
    pub categorical: Vec<String>,
    /// Number of reference quantile bins for numeric columns.
    pub bins: NonZeroUsize,
    /// PSI's replacement for empty-bin proportions. Precondition: finite and
    /// positive (the command line checks it).
    pub epsilon: f64,
    /// Minimum non-missing values on each side for a verdict other than
    /// `insufficient_data`.
    pub min_samples: usize,
}

impl Args {
    /// Arguments with the default bins, epsilon and minimum sample size and
    /// no forced categorical columns.
    pub fn new(reference: impl Into<PathBuf>, current: impl Into<PathBuf>) -> Self {
        Self {
            reference: reference.into(),
            current: current.into(),
            categorical: Vec::new(),
            bins: NonZeroUsize::new(stats::DEFAULT_BINS).unwrap_or(NonZeroUsize::MIN),
            epsilon: stats::DEFAULT_EPSILON,
            min_samples: DEFAULT_MIN_SAMPLES,
        }
    }
}

/// Why a comparison could not run. Each variant has its own process exit
/// code ([`Error::exit_code`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is missing or cannot be read (exit 66).
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no rows at all, not even a header (exit 67).
    #[error("{}: empty file, expected a header row", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The first row is not a usable header (exit 68).
    #[error("{}: no header row: {reason}", path.display())]
    NoHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong with the first row.
        reason: String,
    },
    /// Two header fields have the same name (exit 69).
    #[error("{}: duplicate column {name:?} in the header", path.display())]
    DuplicateColumn {
        /// The file.
        path: PathBuf,
        /// The repeated name.
        name: String,
    },
    /// A row has a different number of fields than the header (exit 65).
    #[error(
        "{}: line {line}: ragged row: {found} fields, the header has {expected}",
        path.display()
    )]
    RaggedRow {
        /// The file.
        path: PathBuf,
        /// 1-based line on which the row starts.
        line: u64,
        /// Fields in the header.
        expected: u64,
        /// Fields in the row.
        found: u64,
    },
    /// A column of the reference header is absent from the current file
    /// (exit 70).
    #[error("{}: column {column:?} of the reference is missing", path.display())]
    MissingColumn {
        /// The current file.
        path: PathBuf,
        /// The absent column.
        column: String,
    },
    /// `--categorical` names a column that is not in the reference header
    /// (exit 71).
    #[error("--categorical {column:?}: no such column in {}", path.display())]
    UnknownCategorical {
        /// The reference file.
        path: PathBuf,
        /// The unknown name.
        column: String,
    },
}

impl Error {
    /// The process exit code for this error; distinct per variant and
    /// distinct from 64 (configuration / usage) and clap's 2.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::RaggedRow { .. } => 65,
            Error::Read { .. } => 66,
            Error::Empty { .. } => 67,
            Error::NoHeader { .. } => 68,
            Error::DuplicateColumn { .. } => 69,
            Error::MissingColumn { .. } => 70,
            Error::UnknownCategorical { .. } => 71,
        }
    }
}

/// The result of a comparison: one [`Feature`] per reference column, in
/// reference-header order.
///
/// Serialises as `{"features": {"<column>": {...}}}`, the map keeping the
/// header order.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Per-column reports in reference-header order.
    pub features: Vec<Feature>,
}

impl Serialize for Report {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Features<'a>(&'a [Feature]);
        impl Serialize for Features<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.0.len()))?;
                for f in self.0 {
                    map.serialize_entry(&f.name, f)?;
                }
                map.end()
            }
        }
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("features", &Features(&self.features))?;
        map.end()
    }
}

/// The comparison of one column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Feature {
    /// Column name (the key of the JSON map, not a field).
    #[serde(skip)]
    pub name: String,
    /// Non-missing reference values.
    pub n_ref: usize,
    /// Non-missing current values.
    pub n_cur: usize,
    /// Missing reference values.
    pub n_missing_ref: usize,
    /// Missing current values.
    pub n_missing_cur: usize,
    /// The kind (JSON `kind`) and the statistics that apply to it.
    #[serde(flatten)]
    pub stats: Stats,
    /// The verdict under the rule of the module documentation.
    pub verdict: Verdict,
}

/// A column's kind with its statistics; JSON `"kind": "numeric" |
/// "categorical"` next to the statistic keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Stats {
    /// Every non-empty value is a plain decimal number.
    Numeric(NumericStats),
    /// Compared category by category.
    Categorical(CategoricalStats),
}

impl Stats {
    /// The p-value used by the verdict: KS for numeric, chi-square for
    /// categorical columns.
    pub fn pvalue(&self) -> Option<f64> {
        match self {
            Stats::Numeric(s) => s.ks.map(|ks| ks.pvalue),
            Stats::Categorical(s) => s.chi2.map(|c| c.pvalue),
        }
        .filter(|p| !p.is_nan())
    }

    /// The PSI of either kind.
    pub fn psi(&self) -> Option<f64> {
        match self {
            Stats::Numeric(s) => s.psi,
            Stats::Categorical(s) => s.psi,
        }
    }
}

/// Statistics of a numeric column; `None` where not computable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NumericStats {
    /// Two-sample KS test.
    pub ks: Option<KsResult>,
    /// PSI over the reference quantile bins.
    pub psi: Option<f64>,
    /// Jensen-Shannon distance (base 2) over the same bins.
    pub js: Option<f64>,
    /// Wasserstein-1 distance on the raw values.
    pub wasserstein: Option<f64>,
    /// Wasserstein-1 over the reference's sample standard deviation.
    pub wasserstein_norm: Option<f64>,
    /// Hellinger distance over the bins.
    pub hellinger: Option<f64>,
    /// Two-sample Cramér-von Mises test.
    pub cvm: Option<Cvm>,
}

/// Cramér-von Mises statistic and p-value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cvm {
    /// The statistic `T`.
    pub statistic: f64,
    /// Its p-value.
    pub pvalue: f64,
}

/// Statistics of a categorical column; `None` where not computable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CategoricalStats {
    /// Chi-square test of homogeneity (no continuity correction).
    pub chi2: Option<Chi2Result>,
    /// PSI over the categories.
    pub psi: Option<f64>,
    /// Jensen-Shannon distance (base 2) over the categories.
    pub js: Option<f64>,
    /// Hellinger distance over the categories.
    pub hellinger: Option<f64>,
}

/// A column's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No rule tripped.
    Ok,
    /// PSI above the threshold or a significant test.
    Drift,
    /// Fewer than `min_samples` values on one side.
    InsufficientData,
}

impl Verdict {
    /// The JSON spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Drift => "drift",
            Verdict::InsufficientData => "insufficient_data",
        }
    }
}

/// Compares the two files of `args`.
///
/// # Errors
///
/// Any [`Error`]: an unreadable, empty or header-less file, duplicate or
/// missing columns, a ragged row, or an unknown `--categorical` column. The
/// reference file's problems are reported before the current file's.
pub fn run(args: &Args) -> Result<Report, Error> {
    // Both files at once: most of a read is the kernel copying and
    // faulting in pages, which the two cores can do side by side.
    let (ref_buf, cur_buf) = both(|| read(&args.reference), || read(&args.current));
    let (ref_buf, cur_buf) = (ref_buf?, cur_buf?);
    compare(args, &ref_buf, &cur_buf)
}

/// [`run`] on the two files' contents already in memory; the paths of
/// `args` only name them in errors.
///
/// # Errors
///
/// As [`run`], except that nothing is read.
pub fn compare(args: &Args, ref_buf: &[u8], cur_buf: &[u8]) -> Result<Report, Error> {
    let mut reference = reader(ref_buf);
    let mut current = reader(cur_buf);
    let names = header(&args.reference, ref_buf, &mut reference)?;
    let cur_names = header(&args.current, cur_buf, &mut current)?;
    if let Some(unknown) = args.categorical.iter().find(|c| !names.contains(c)) {
        return Err(Error::UnknownCategorical {
            path: args.reference.clone(),
            column: unknown.clone(),
        });
    }
    // For each current-file column, the slot of the reference column it
    // feeds, if any.
    let mut cur_slots = vec![None; cur_names.len()];
    for (slot, name) in names.iter().enumerate() {
        let Some(pos) = cur_names.iter().position(|c| c == name) else {
            return Err(Error::MissingColumn {
                path: args.current.clone(),
                column: name.clone(),
            });
        };
        cur_slots[pos] = Some(slot);
    }
    let ref_slots: Vec<Option<usize>> = (0..names.len()).map(Some).collect();
    let forced: Vec<bool> = names.iter().map(|n| args.categorical.contains(n)).collect();

    let fast = read_plain(ref_buf, &ref_slots, cur_buf, &cur_slots, &forced);
    let pairs = match fast {
        Some(pairs) => pairs,
        None => {
            // Quoted fields, carriage returns or a malformed row: the csv
            // reader handles the first two and reports the last exactly.
            let (ref_cols, cur_cols) = std::thread::scope(|s| {
                let cur =
                    s.spawn(|| body(&args.current, cur_buf, current, &cur_slots, names.len()));
                let r = body(&args.reference, ref_buf, reference, &ref_slots, names.len());
                // A panic in the reader thread is a bug; propagate it as one.
                let c = cur.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                (r, c)
            });
            let (ref_cols, cur_cols) = (ref_cols?, cur_cols?);
            ref_cols
                .into_iter()
                .zip(cur_cols)
                .map(|(r, c)| Pair::Raw { r, c })
                .collect()
        }
    };

    let mut features = measure_all(&names, pairs, &forced, args);
    apply_verdicts(&mut features, args.min_samples);
    Ok(Report { features })
}

/// Verdicts for all columns (see the module documentation); `k` counts the
/// columns that have a p-value.
pub fn apply_verdicts(features: &mut [Feature], min_samples: usize) {
    let k = features
        .iter()
        .filter(|f| f.stats.pvalue().is_some())
        .count();
    let alpha = ALPHA / k.max(1) as f64;
    for f in features {
        f.verdict = if f.n_ref < min_samples || f.n_cur < min_samples {
            Verdict::InsufficientData
        } else if f.stats.psi().is_some_and(|p| p > PSI_THRESHOLD)
            || f.stats.pvalue().is_some_and(|p| p < alpha)
        {
            Verdict::Drift
        } else {
            Verdict::Ok
        };
    }
}

/// Whether `s` matches the whole of
/// `[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?` with ASCII digits.
pub fn is_plain_decimal(s: &[u8]) -> bool {
    let n = s.len();
    let digits = |mut i: usize| {
        while i < n && s[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut i = usize::from(matches!(s.first(), Some(b'+' | b'-')));
    let int_end = digits(i);
    if int_end > i {
        i = int_end;
        if s.get(i) == Some(&b'.') {
            i = digits(i + 1);
        }
    } else {
        if s.get(i) != Some(&b'.') {
            return false;
        }
        let frac_end = digits(i + 1);
        if frac_end == i + 1 {
            return false;
        }
        i = frac_end;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_end = digits(i);
        if exp_end == i {
            return false;
        }
        i = exp_end;
    }
    i == n
}

/// One column's fields, concatenated: field `i` is
/// `bytes[ends[i - 1]..ends[i]]` (with `ends[-1] = 0`).
#[derive(Debug, Default)]
struct Column {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Column {
    fn fields(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let f = &self.bytes[start..end];
            start = end;
            f
        })
    }
}

type Reader<'a> = csv::Reader<&'a [u8]>;

/// The whole file in one read: the fast path splits it in place, and one
/// big read is cheaper than a buffered reader's many small ones.
fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

fn reader(buf: &[u8]) -> Reader<'_> {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .buffer_capacity(1 << 16)
        .from_reader(buf)
}

/// Maps a CSV reading error of the file `path` holding `buf`: unequal
/// lengths are ragged rows, everything else is an I/O problem (with
/// `ByteRecord`s no UTF-8 error can occur).
fn csv_error(path: &Path, buf: &[u8], error: csv::Error) -> Error {
    if let csv::ErrorKind::UnequalLengths {
        pos,
        expected_len,
        len,
    } = error.kind()
    {
        return Error::RaggedRow {
            path: path.to_owned(),
            line: crate::refcsv::record_line(buf, pos.as_ref()),
            expected: *expected_len,
            found: *len,
        };
    }
    Error::Read {
        path: path.to_owned(),
        source: error.into(),
    }
}

/// Reads and checks the header row.
fn header(path: &Path, buf: &[u8], reader: &mut Reader<'_>) -> Result<Vec<String>, Error> {
    let record = reader.byte_headers().map_err(|e| csv_error(path, buf, e))?;
    if record.is_empty() {
        return Err(Error::Empty {
            path: path.to_owned(),
        });
    }
    let no_header = |reason: String| Error::NoHeader {
        path: path.to_owned(),
        reason,
    };
    if record.iter().all(is_plain_decimal) {
        return Err(no_header(
            "every field of the first row is a number; a header row is required".into(),
        ));
    }
    let mut names: Vec<String> = Vec::with_capacity(record.len());
    for (i, field) in record.iter().enumerate() {
        let name = std::str::from_utf8(field)
            .map_err(|_| no_header(format!("column {} name is not valid UTF-8", i + 1)))?;
        if name.is_empty() {
            return Err(no_header(format!("column {} has an empty name", i + 1)));
        }
        if names.iter().any(|n| n == name) {
            return Err(Error::DuplicateColumn {
                path: path.to_owned(),
                name: name.to_owned(),
            });
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

/// Reads the data rows, copying field `j` into column `slots[j]` when it is
/// `Some`.
fn body(
    path: &Path,
    buf: &[u8],
    mut reader: Reader<'_>,
    slots: &[Option<usize>],
    n_columns: usize,
) -> Result<Vec<Column>, Error> {
    let mut columns: Vec<Column> = (0..n_columns).map(|_| Column::default()).collect();
    let mut record = csv::ByteRecord::new();
    while reader
        .read_byte_record(&mut record)
        .map_err(|e| csv_error(path, buf, e))?
    {
        // The reader is not flexible, so the record has exactly
        // `slots.len()` fields.
        for (field, slot) in record.iter().zip(slots) {
            if let Some(col) = slot.and_then(|s| columns.get_mut(s)) {
                col.bytes.extend_from_slice(field);
                col.ends.push(col.bytes.len());
            }
        }
    }
    Ok(columns)
}

/// The data rows of a file for the fast path, or `None` when the file
/// needs the csv reader: it holds a `"` (quoting) or a `\r` (CR or CRLF
/// line ends), or its header line does not have `n_fields` fields.
///
/// Without those bytes a record is a non-empty line and a field is the text
/// between commas, which is exactly how the csv reader splits such a file
/// (it skips empty lines too, and a byte order mark at the start).
fn plain_body(buf: &[u8], n_fields: usize) -> Option<&[u8]> {
    // A branch-free fold per chunk vectorises; an early-exit `any` over the
    // whole file does not.
    let special = buf.chunks(4096).any(|c| {
        c.iter()
            .fold(false, |acc, &b| acc | (b == b'"') | (b == b'\r'))
    });
    if special {
        return None;
    }
    // The csv reader drops a UTF-8 byte order mark at the very start of the
    // file, before it skips empty lines to the header.
    let buf = buf.strip_prefix(b"\xef\xbb\xbf").unwrap_or(buf);
    let start = buf.iter().position(|&b| b != b'\n')?;
    let rest = &buf[start..];
    let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let commas = rest[..end].iter().filter(|&&b| b == b',').count();
    if commas + 1 != n_fields {
        return None;
    }
    Some(rest.get(end + 1..).unwrap_or_default())
}

/// Calls `each(row_field_index, field)` for every field of every row of a
/// [`plain_body`]; `None` as soon as a row has other than `n_fields`
/// fields, leaving the error report to the csv reader.
fn for_each_field(body: &[u8], n_fields: usize, mut each: impl FnMut(usize, &[u8])) -> Option<()> {
    for line in body.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let mut k = 0;
        for field in line.split(|&b| b == b',') {
            if k == n_fields {
                return None;
            }
            each(k, field);
            k += 1;
        }
        if k != n_fields {
            return None;
        }
    }
    Some(())
}

/// A column of one file parsed while splitting (the fast path).
struct Parsed {
    /// Finite values, unsorted.
    values: Vec<f64>,
    /// Empty fields and numbers that overflow to ±inf.
    missing: usize,
    /// False once a field is not a plain decimal number (or from the start
    /// for a forced categorical column); `values` is then dropped.
    numeric: bool,
}

/// Splits a [`plain_body`] and parses field `j` into column `slots[j]`;
/// `skip` marks columns not to parse (forced categorical).
fn parse_plain(body: &[u8], slots: &[Option<usize>], skip: &[bool]) -> Option<Vec<Parsed>> {
    // Newlines bound the row count, so the value vectors never grow.
    let rows = body.iter().filter(|&&b| b == b'\n').count() + 1;
    let mut cols: Vec<Parsed> = skip
        .iter()
        .map(|&skip| Parsed {
            values: if skip {
                Vec::new()
            } else {
                Vec::with_capacity(rows)
            },
            missing: 0,
            numeric: !skip,
        })
        .collect();
    for_each_field(body, slots.len(), |k, field| {
        let Some(col) = slots
            .get(k)
            .copied()
            .flatten()
            .and_then(|s| cols.get_mut(s))
        else {
            return;
        };
        if !col.numeric {
            return;
        }
        if field.is_empty() {
            col.missing += 1;
            return;
        }
        match parse_plain_decimal(field) {
            Some(x) if x.is_finite() => col.values.push(x),
            Some(_) => col.missing += 1,
            None => {
                col.numeric = false;
                col.values = Vec::new();
            }
        }
    })?;
    Some(cols)
}

/// Copies the fields of the columns marked in `want` out of a
/// [`plain_body`], as [`body`] does for the csv reader.
fn raw_plain(body: &[u8], slots: &[Option<usize>], want: &[bool]) -> Option<Vec<Column>> {
    let mut cols: Vec<Column> = want.iter().map(|_| Column::default()).collect();
    for_each_field(body, slots.len(), |k, field| {
        let Some(s) = slots.get(k).copied().flatten() else {
            return;
        };
        if let (Some(true), Some(col)) = (want.get(s), cols.get_mut(s)) {
            col.bytes.extend_from_slice(field);
            col.ends.push(col.bytes.len());
        }
    })?;
    Some(cols)
}

/// The fast path: both files checked for [`plain_body`], then split in
/// place and their numeric columns parsed while splitting, one thread per
/// file for each step; categorical columns are then copied out in a second
/// pass. `None` when a file is not plain or a row is ragged.
fn read_plain(
    ref_buf: &[u8],
    ref_slots: &[Option<usize>],
    cur_buf: &[u8],
    cur_slots: &[Option<usize>],
    forced: &[bool],
) -> Option<Vec<Pair>> {
    // The check first, on both files at once, so that neither is parsed
    // when the other needs the csv reader anyway.
    let (ref_body, cur_body) = both(
        || plain_body(ref_buf, ref_slots.len()),
        || plain_body(cur_buf, cur_slots.len()),
    );
    let (ref_body, cur_body) = (ref_body?, cur_body?);
    let (r, c) = both(
        || parse_plain(ref_body, ref_slots, forced),
        || parse_plain(cur_body, cur_slots, forced),
    );
    let (r, c) = (r?, c?);
    let raw: Vec<bool> = r
        .iter()
        .zip(&c)
        .map(|(r, c)| !(r.numeric && c.numeric))
        .collect();
    // One entry per column (empty where not wanted), so they zip with `r`
    // and `c`.
    let (r_raw, c_raw) = if raw.contains(&true) {
        let (r_raw, c_raw) = both(
            || raw_plain(ref_body, ref_slots, &raw),
            || raw_plain(cur_body, cur_slots, &raw),
        );
        (r_raw?, c_raw?)
    } else {
        let empty = || raw.iter().map(|_| Column::default()).collect::<Vec<_>>();
        (empty(), empty())
    };
    let pairs = r
        .into_iter()
        .zip(c)
        .zip(r_raw.into_iter().zip(c_raw))
        .map(|((r, c), (r_raw, c_raw))| {
            if r.numeric && c.numeric {
                Pair::Numeric {
                    r: (r.values, r.missing),
                    c: (c.values, c.missing),
                }
            } else {
                Pair::Raw { r: r_raw, c: c_raw }
            }
        })
        .collect();
    Some(pairs)
}

/// Runs `a` on a scoped thread and `b` on this one.
fn both<A: Send, B>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B) -> (A, B) {
    std::thread::scope(|s| {
        let a = s.spawn(a);
        let b = b();
        // A panic in the other thread is a bug; propagate it as one.
        (a.join().unwrap_or_else(|p| std::panic::resume_unwind(p)), b)
    })
}

/// One column of both files, as read.
enum Pair {
    /// Parsed while reading (fast path), numeric in both files.
    Numeric {
        /// Reference values (unsorted) and missing count.
        r: (Vec<f64>, usize),
        /// Current values (unsorted) and missing count.
        c: (Vec<f64>, usize),
    },
    /// Raw fields, classified by [`measure`].
    Raw {
        /// Reference fields.
        r: Column,
        /// Current fields.
        c: Column,
    },
}

/// Measures every column on a pool of scoped threads; the result is in
/// column order. Verdicts are left as `Ok` for [`apply_verdicts`].
fn measure_all(names: &[String], pairs: Vec<Pair>, forced: &[bool], args: &Args) -> Vec<Feature> {
    let n = names.len();
    let workers = std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(n)
        .max(1);
    // Workers take columns (by value: they sort in place) from one queue.
    let queue = Mutex::new(pairs.into_iter().enumerate());
    let mut done: Vec<(usize, Feature)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        // The lock is only held to take the next item, which
                        // cannot panic, so poisoning is not a concern.
                        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
                        let Some((i, pair)) = next else {
                            break out;
                        };
                        let feature = measure(&names[i], pair, forced[i], args);
                        out.push((i, feature));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            // A panic in a worker is a bug; propagate it as one.
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, f)| f).collect()
}

/// Non-missing numeric values of a column, unsorted, and the missing count;
/// `None` as soon as a non-empty field is not a plain decimal number.
fn parse_numeric(col: &Column) -> Option<(Vec<f64>, usize)> {
    let mut values = Vec::with_capacity(col.ends.len());
    let mut missing = 0;
    for field in col.fields() {
        if field.is_empty() {
            missing += 1;
            continue;
        }
        let x = parse_plain_decimal(field)?;
        if x.is_finite() {
            values.push(x);
        } else {
            missing += 1;
        }
    }
    Some((values, missing))
}

/// Exact powers of ten representable in `f64` (10^0 ..= 10^22).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The value of `s` when it is a plain decimal number ([`is_plain_decimal`]),
/// correctly rounded; `None` otherwise.
///
/// Validation and the common case are one pass: when the decimal digits form
/// an integer `m <= 2^53` and the decimal exponent `e` is within ±22, both
/// `m` and `10^|e|` are exact in `f64`, so the single multiplication or
/// division rounds correctly (Clinger's fast path). Anything else goes to
/// `str::parse::<f64>`, which is correctly rounded too.
pub fn parse_plain_decimal(s: &[u8]) -> Option<f64> {
    let n = s.len();
    let negative = s.first() == Some(&b'-');
    let mut i = usize::from(matches!(s.first(), Some(b'+' | b'-')));
    let (mut mantissa, mut n_digits, mut n_frac) = (0u64, 0usize, 0i64);
    let mut digits = |i: &mut usize, frac: bool| {
        let start = *i;
        while *i < n && s[*i].is_ascii_digit() {
            // Past 19 digits the mantissa may overflow; the slow path then
            // takes over, so wrapping here is harmless.
            mantissa = mantissa
                .wrapping_mul(10)
                .wrapping_add(u64::from(s[*i] - b'0'));
            *i += 1;
        }
        n_digits += *i - start;
        if frac {
            n_frac += (*i - start) as i64;
        }
        *i - start
    };
    let int_digits = digits(&mut i, false);
    if s.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i, true) == 0 && int_digits == 0 {
            return None;
        }
    } else if int_digits == 0 {
        return None;
    }
    let mut exp = 0i64;
    let mut exp_fits = true;
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        let exp_negative = s.get(i) == Some(&b'-');
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let start = i;
        while i < n && s[i].is_ascii_digit() {
            if i - start < 6 {
                exp = exp * 10 + i64::from(s[i] - b'0');
            } else {
                exp_fits = false;
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        if exp_negative {
            exp = -exp;
        }
    }
    if i != n {
        return None;
    }
    let e10 = exp - n_frac;
    if n_digits <= 19 && exp_fits && mantissa <= 1 << 53 && (-22..=22).contains(&e10) {
        let m = mantissa as f64;
        let pow = POW10[e10.unsigned_abs() as usize];
        let x = if e10 >= 0 { m * pow } else { m / pow };
        return Some(if negative { -x } else { x });
    }
    // Validated above: ASCII only, so from_utf8 succeeds, and the grammar is
    // a subset of Rust's float syntax, so parse succeeds.
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn measure(name: &str, pair: Pair, forced: bool, args: &Args) -> Feature {
    let ((mut r, r_missing), (mut c, c_missing)) = match pair {
        Pair::Numeric { r, c } => (r, c),
        Pair::Raw { r, c } => {
            let numeric = if forced {
                None
            } else {
                parse_numeric(&r).and_then(|pr| Some((pr, parse_numeric(&c)?)))
            };
            match numeric {
                Some(values) => values,
                None => return categorical(name, &r, &c, args),
            }
        }
    };
    stats::sort_total(&mut r);
    stats::sort_total(&mut c);
    Feature {
        name: name.to_owned(),
        n_ref: r.len(),
        n_cur: c.len(),
        n_missing_ref: r_missing,
        n_missing_cur: c_missing,
        stats: Stats::Numeric(numeric_stats(&r, &c, args)),
        verdict: Verdict::Ok,
    }
}

/// `Some(x)` unless `x` is NaN.
fn defined(x: f64) -> Option<f64> {
    (!x.is_nan()).then_some(x)
}

/// Counts of sorted values per bin of `edges` (bin `i` holds
/// `edges[i-1] < x <= edges[i]`, as [`stats::bin_index`]), by binary search
/// on the sorted values: O(B log n) instead of O(n log B).
fn sorted_bin_counts(edges: &[f64], sorted: &[f64]) -> Vec<u64> {
    let mut counts = Vec::with_capacity(edges.len() + 1);
    let mut below = 0;
    for &e in edges {
        let upto = sorted.partition_point(|&x| x <= e);
        counts.push((upto - below) as u64);
        below = upto;
    }
    counts.push((sorted.len() - below) as u64);
    counts
}

fn numeric_stats(r: &[f64], c: &[f64], args: &Args) -> NumericStats {
    let edges = stats::quantile_edges(r, args.bins);
    let rc = sorted_bin_counts(&edges, r);
    let cc = sorted_bin_counts(&edges, c);
    let (wasserstein, wasserstein_norm) = stats::wasserstein::wasserstein_and_norm(r, c);
    NumericStats {
        ks: stats::ks_2samp(r, c),
        psi: defined(stats::psi(&rc, &cc, args.epsilon)),
        js: defined(stats::js_distance(&rc, &cc)),
        wasserstein: defined(wasserstein),
        wasserstein_norm: wasserstein_norm.and_then(defined),
        hellinger: defined(stats::hellinger(&rc, &cc)),
        cvm: stats::cvm_2samp(r, c).map(|t| Cvm {
            statistic: t.statistic,
            pvalue: t.pvalue,
        }),
    }
}

fn category_counts(col: &Column) -> (HashMap<&[u8], u64>, usize) {
    let mut counts: HashMap<&[u8], u64> = HashMap::new();
    let mut missing = 0;
    for field in col.fields() {
        if field.is_empty() {
            missing += 1;
        } else {
            *counts.entry(field).or_default() += 1;
        }
    }
    (counts, missing)
}

fn categorical(name: &str, reference: &Column, current: &Column, args: &Args) -> Feature {
    let (r, r_missing) = category_counts(reference);
    let (c, c_missing) = category_counts(current);
    let (_, rc, cc) = stats::align_categories(&r, &c);
    Feature {
        name: name.to_owned(),
        n_ref: reference.ends.len() - r_missing,
        n_cur: current.ends.len() - c_missing,
        n_missing_ref: r_missing,
        n_missing_cur: c_missing,
        stats: Stats::Categorical(CategoricalStats {
            chi2: stats::chi2_contingency(&rc, &cc),
            psi: defined(stats::psi(&rc, &cc, args.epsilon)),
            js: defined(stats::js_distance(&rc, &cc)),
            hellinger: defined(stats::hellinger(&rc, &cc)),
        }),
        verdict: Verdict::Ok,
    }
}

/// The report as an aligned plain-text table, one row per column in header
/// order, for people (JSON is the machine format). `-` marks a statistic
/// that does not apply or could not be computed; `p` is the KS p-value for
/// numeric and the chi-square p-value for categorical columns.
pub fn render_table(report: &Report) -> String {
    const HEAD: [&str; 13] = [
        "column",
        "kind",
        "n_ref",
        "n_cur",
        "miss_ref",
        "miss_cur",
        "psi",
        "ks/chi2",
        "p",
        "js",
        "hellinger",
        "wass_norm",
        "verdict",
    ];
    let num = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
    let pval = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |v| format!("{v:.3e}"));
    let rows: Vec<[String; 13]> = report
        .features
        .iter()
        .map(|f| {
            let (kind, test, js, hellinger, wnorm) = match &f.stats {
                Stats::Numeric(s) => (
                    "numeric",
                    s.ks.map(|k| k.statistic),
                    s.js,
                    s.hellinger,
                    s.wasserstein_norm,
                ),
                Stats::Categorical(s) => (
                    "categorical",
                    s.chi2.map(|c| c.statistic),
                    s.js,
                    s.hellinger,
                    None,
                ),
            };
            [
                f.name.clone(),
                kind.to_owned(),
                f.n_ref.to_string(),
                f.n_cur.to_string(),
                f.n_missing_ref.to_string(),
                f.n_missing_cur.to_string(),
                num(f.stats.psi()),
                num(test),
                pval(f.stats.pvalue()),
                num(js),
                num(hellinger),
                num(wnorm),
                f.verdict.as_str().to_owned(),
            ]
        })
        .collect();
    let mut widths = HEAD.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.zip(widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            // Names and words left-aligned, numbers right-aligned.
            if i < 2 || i == 12 {
                text.push_str(&format!("{cell:<w$}"));
            } else {
                text.push_str(&format!("{cell:>w$}"));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut HEAD.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}
