//! Reads a reference CSV file into batches: a header row of feature names,
//! one row per record. A column whose non-empty fields all parse as numbers
//! is numeric (empty fields are missing values); any other column is
//! categorical (empty fields are missing). Columns named in `outputs` are
//! model outputs, the rest inputs. Used for `reference = "file:..."`
//! sources and by `driftd reference import`.

use std::path::{Path, PathBuf};

use crate::domain::{self, Batch, Column, ModelKey, NameRules, Role, Values};

/// Rows per batch handed to the engine or sent over gRPC.
pub const ROWS_PER_BATCH: usize = 10_000;

/// Why a reference file was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line is not valid UTF-8.
    #[error("{path}: line {line}: not valid UTF-8")]
    Utf8 {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
    },
    /// A row has a different number of fields than the header.
    #[error("{path}: line {line}: {found} fields, the header has {expected}")]
    Ragged {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// Fields in the header.
        expected: u64,
        /// Fields in the row.
        found: u64,
    },
    /// No header or no rows.
    #[error("{path}: {reason}")]
    Empty {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: &'static str,
    },
    /// A column name is not a valid feature name.
    #[error("{path}: column {column} {name:?}: {reason}")]
    Name {
        /// The file.
        path: PathBuf,
        /// 0-based column.
        column: usize,
        /// The name.
        name: String,
        /// Why.
        reason: domain::NameError,
    },
    /// An output column is not in the header.
    #[error("{path}: output column {column:?} is not in the header")]
    UnknownOutput {
        /// The file.
        path: PathBuf,
        /// The missing column.
        column: String,
    },
    /// More rows than allowed.
    #[error("{path}: more than {max} rows")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: usize,
    },
}

/// Reads `path` into batches of `key` of at most [`ROWS_PER_BATCH`] rows.
///
/// # Errors
/// [`Error`] naming the file and, where it applies, the line.
pub fn read(
    path: &Path,
    key: &ModelKey,
    outputs: &[String],
    max_rows: usize,
    names: &NameRules,
) -> Result<Vec<Batch>, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&bytes, path, key, outputs, max_rows, names)
}

/// The 1-based line on which the record at `pos` starts in `bytes`.
///
/// The csv crate's own `Position::line` is one too low after a `\r\n`
/// line end (rust-csv issue 395): the reader consumes the `\r` with the
/// previous record and leaves the `\n`, so the next record's position
/// points at that `\n`. Counting from the byte offset, past any line-end
/// bytes (the leftover `\n`, blank lines the reader skips), gives the line
/// the record really starts on, whatever the line ends. Lines are counted
/// by `\n`, as the csv crate counts them. Without a position, 0.
pub fn record_line(bytes: &[u8], pos: Option<&csv::Position>) -> u64 {
    let Some(pos) = pos else { return 0 };
    let from = usize::try_from(pos.byte()).map_or(bytes.len(), |b| b.min(bytes.len()));
    let start = bytes[from..]
        .iter()
        .position(|&b| b != b'\n' && b != b'\r')
        .map_or(bytes.len(), |i| from + i);
    1 + bytes[..start].iter().filter(|&&b| b == b'\n').count() as u64
}

/// [`read`] on bytes already in memory; `path` only names them in errors.
///
/// # Errors
/// As [`read`].
pub fn parse(
    bytes: &[u8],
    path: &Path,
    key: &ModelKey,
    outputs: &[String],
    max_rows: usize,
    rules: &NameRules,
) -> Result<Vec<Batch>, Error> {
    let p = || path.to_owned();
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(bytes);
    let map_err = |e: csv::Error| match e.kind() {
        csv::ErrorKind::Utf8 { pos, .. } => Error::Utf8 {
            path: p(),
            line: record_line(bytes, pos.as_ref()),
        },
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => Error::Ragged {
            path: p(),
            line: record_line(bytes, pos.as_ref()),
            expected: *expected_len,
            found: *len,
        },
        _ => Error::Read {
            path: p(),
            source: std::io::Error::other(e.to_string()),
        },
    };
    let names: Vec<String> = rdr
        .headers()
        .map_err(map_err)?
        .iter()
        .map(|s| s.trim().to_string())
        .collect();
    if names.is_empty() || names.iter().all(String::is_empty) {
        return Err(Error::Empty {
            path: p(),
            reason: "no header row",
        });
    }
    for (i, n) in names.iter().enumerate() {
        rules.check(n).map_err(|reason| Error::Name {
            path: p(),
            column: i,
            name: n.clone(),
            reason,
        })?;
    }
    if let Some(o) = outputs.iter().find(|o| !names.contains(o)) {
        return Err(Error::UnknownOutput {
            path: p(),
            column: o.clone(),
        });
    }
    let mut fields: Vec<Vec<String>> = vec![Vec::new(); names.len()];
    let mut record = csv::StringRecord::new();
    let mut rows = 0usize;
    while rdr.read_record(&mut record).map_err(map_err)? {
        rows += 1;
        if rows > max_rows {
            return Err(Error::TooLarge {
                path: p(),
                max: max_rows,
            });
        }
        for (col, f) in fields.iter_mut().zip(record.iter()) {
            col.push(f.to_string());
        }
    }
    if rows == 0 {
        return Err(Error::Empty {
            path: p(),
            reason: "no rows after the header",
        });
    }
    let columns: Vec<(String, Role, Values)> = names
        .into_iter()
        .zip(fields)
        .map(|(name, f)| {
            let role = if outputs.contains(&name) {
                Role::Output
            } else {
                Role::Input
            };
            let numeric: Option<Vec<f64>> = f
                .iter()
                .map(|s| {
                    let s = s.trim();
                    if s.is_empty() {
                        Some(f64::NAN)
                    } else {
                        s.parse::<f64>().ok()
                    }
                })
                .collect();
            let values = match numeric {
                Some(v) if f.iter().any(|s| !s.trim().is_empty()) => Values::Numeric(v),
                _ => Values::Categorical(f),
            };
            (name, role, values)
        })
        .collect();
    let mut batches = Vec::new();
    let mut lo = 0;
    while lo < rows {
        let hi = rows.min(lo + ROWS_PER_BATCH);
        batches.push(Batch {
            key: key.clone(),
            columns: columns
                .iter()
                .map(|(name, role, values)| Column {
                    name: name.clone(),
                    role: *role,
                    values: match values {
                        Values::Numeric(v) => Values::Numeric(v[lo..hi].to_vec()),
                        Values::Categorical(v) => Values::Categorical(v[lo..hi].to_vec()),
                    },
                })
                .collect(),
            n_rows: hi - lo,
        });
        lo = hi;
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ModelKey {
        ModelKey {
            model: "m".into(),
            version: "v".into(),
        }
    }

    fn parse_str(s: &[u8], outputs: &[&str]) -> Result<Vec<Batch>, Error> {
        let outputs: Vec<String> = outputs.iter().map(|s| s.to_string()).collect();
        parse(
            s,
            Path::new("ref.csv"),
            &key(),
            &outputs,
            100,
            &NameRules::default(),
        )
    }

    #[test]
    fn columns_get_kinds_roles_and_missing_values() {
        let b = parse_str(b"x,c,score\n1.5,a,0.1\n,b,0.2\n-2e3,,0.3\n", &["score"]).unwrap();
        assert_eq!(b.len(), 1);
        let cols = &b[0].columns;
        assert_eq!(b[0].n_rows, 3);
        let Values::Numeric(x) = &cols[0].values else {
            panic!("x is numeric")
        };
        assert_eq!(x[0], 1.5);
        assert!(x[1].is_nan());
        assert_eq!(x[2], -2000.0);
        assert_eq!(
            cols[1].values,
            Values::Categorical(vec!["a".into(), "b".into(), String::new()])
        );
        assert_eq!(cols[2].role, Role::Output);
        assert_eq!(cols[0].role, Role::Input);
    }

    #[test]
    fn bad_files_name_the_line() {
        let e = parse_str(b"x,y\n1,2\n3\n", &[]).unwrap_err().to_string();
        assert!(
            e.contains("ref.csv: line 3: 1 fields, the header has 2"),
            "{e}"
        );
        let e = parse_str(b"x,c\n1,a\n2,\xff\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3: not valid UTF-8"), "{e}");
        let e = parse_str(b"x,y\n", &[]).unwrap_err().to_string();
        assert!(e.contains("no rows"), "{e}");
        let e = parse_str(b"x,bad name\n1,2\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("column 1 \"bad name\""), "{e}");
        let e = parse_str(b"x\n1\n", &["y"]).unwrap_err().to_string();
        assert!(e.contains("output column \"y\""), "{e}");
        let many = format!("x\n{}", "1\n".repeat(101));
        let e = parse_str(many.as_bytes(), &[]).unwrap_err().to_string();
        assert!(e.contains("more than 100 rows"), "{e}");
    }
}
