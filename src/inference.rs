//! Decoding of what model servers send into driftd columns: KServe v1 JSON
//! (`{"instances": [...]}` / `{"predictions": [...]}`), Open Inference
//! Protocol v2 JSON (`{"inputs": [...]}` / `{"outputs": [...]}`) and OIP
//! tensors from the gRPC messages (converted to [`Tensor`] by
//! `server::grpc`).
//!
//! Mapping rules: the first dimension of a tensor is the batch (rows); the
//! remaining dimensions are flattened into columns named
//! `<tensor>_<index>` (or just `<tensor>` when there is one), unless the
//! model has configured names. Object rows (`{"age": 3, ...}`) give one
//! column per key. Numbers and booleans (as 0/1) are numeric; strings are
//! categorical; `null` is a missing value. Characters that are not allowed
//! in names become `_`.
//!
//! Pure: no I/O, no clock.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::domain::{self, Column, Role, Values};

/// A decoding failure; the message names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, Error> {
    Err(Error(msg.into()))
}

/// Characters of client text an error message repeats.
const SHOWN_CHARS: usize = 64;
/// Dimensions of a shape an error message repeats.
const SHOWN_DIMS: usize = 8;

/// `s` for an error message, cut to [`SHOWN_CHARS`] characters: messages
/// travel in a gRPC status header and must not echo unbounded input.
pub fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(SHOWN_CHARS) {
        None => s.into(),
        Some((at, _)) => format!("{}...", &s[..at]).into(),
    }
}

/// A shape for an error message, at most [`SHOWN_DIMS`] dimensions of it.
fn clip_shape(shape: &[i64]) -> String {
    if shape.len() <= SHOWN_DIMS {
        return format!("{shape:?}");
    }
    let head: Vec<String> = shape[..SHOWN_DIMS].iter().map(i64::to_string).collect();
    format!("[{}, ... ({} dimensions)]", head.join(", "), shape.len())
}

/// Element data of one tensor, flattened row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// Any numeric or boolean datatype, widened to f64.
    Numeric(Vec<f64>),
    /// BYTES elements, as UTF-8 strings.
    Bytes(Vec<String>),
}

impl Data {
    fn len(&self) -> usize {
        match self {
            Data::Numeric(v) => v.len(),
            Data::Bytes(v) => v.len(),
        }
    }
}

/// One named tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Tensor name.
    pub name: String,
    /// Shape; the first dimension is the batch.
    pub shape: Vec<i64>,
    /// Elements.
    pub data: Data,
}

/// Decoded columns and their common row count.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Columns, all of `n_rows` values.
    pub columns: Vec<Column>,
    /// Rows.
    pub n_rows: usize,
}

/// Turns a name into one [`domain::validate_name`] accepts.
pub fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(domain::MAX_NAME_LEN);
    if s.is_empty() {
        s.push('_');
    }
    s
}

/// Maps tensors to columns of `role`. `names`, when given and when there is
/// exactly one tensor with that many columns, names its columns.
///
/// # Errors
/// A tensor whose element count does not match its shape, tensors that
/// disagree on the batch size, or no tensors at all.
pub fn tensors_to_columns(
    tensors: Vec<Tensor>,
    role: Role,
    names: Option<&[String]>,
    field: &str,
) -> Result<Decoded, Error> {
    if tensors.is_empty() {
        return err(format!("{field}: no tensors"));
    }
    let single = tensors.len() == 1;
    let mut columns = Vec::new();
    let mut n_rows: Option<usize> = None;
    for (i, t) in tensors.into_iter().enumerate() {
        if t.shape.iter().any(|&d| d < 0) {
            return err(format!(
                "{field}[{i}].shape: negative dimension in {}",
                clip_shape(&t.shape)
            ));
        }
        let dims: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let total = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let Some(total) = total else {
            return err(format!(
                "{field}[{i}].shape: {} overflows",
                clip_shape(&t.shape)
            ));
        };
        if total != t.data.len() {
            return err(format!(
                "{field}[{i}] ({}): shape {} needs {total} elements, data has {}",
                clip(&t.name),
                clip_shape(&t.shape),
                t.data.len()
            ));
        }
        let rows = dims.first().copied().unwrap_or(1);
        // Without rows nothing bounds the other dimensions: [0, 2^40]
        // would ask for 2^40 column names.
        if rows == 0 {
            return err(format!(
                "{field}[{i}].shape: {} has no rows (batch size 0)",
                clip_shape(&t.shape)
            ));
        }
        // Cannot overflow: it divides a product that did not overflow.
        let width: usize = dims.iter().skip(1).product();
        // A tensor of width 0 gives no column; alone it would make a batch
        // with rows and no columns.
        if width == 0 {
            return err(format!(
                "{field}[{i}].shape: {} has no columns (a dimension after the first is 0)",
                clip_shape(&t.shape)
            ));
        }
        match n_rows {
            None => n_rows = Some(rows),
            Some(n) if n != rows => {
                return err(format!(
                    "{field}[{i}] ({}): batch size {rows} differs from {n} of the first tensor",
                    clip(&t.name)
                ))
            }
            Some(_) => {}
        }
        let base = sanitize(&t.name);
        let col_names: Vec<String> = match names {
            Some(n) if single && n.len() == width => n.iter().map(|s| sanitize(s)).collect(),
            _ if width == 1 => vec![base.clone()],
            _ => (0..width)
                .map(|j| sanitize(&format!("{base}_{j}")))
                .collect(),
        };
        for (j, name) in col_names.into_iter().enumerate() {
            let values = match &t.data {
                Data::Numeric(v) => Values::Numeric((0..rows).map(|r| v[r * width + j]).collect()),
                Data::Bytes(v) => {
                    Values::Categorical((0..rows).map(|r| v[r * width + j].clone()).collect())
                }
            };
            columns.push(Column { name, role, values });
        }
    }
    Ok(Decoded {
        columns,
        n_rows: n_rows.unwrap_or(0),
    })
}

/// Decodes one `raw_input_contents` / `raw_output_contents` blob:
/// little-endian elements of `datatype`, flattened row-major; BYTES
/// elements are a 4-byte little-endian length and the bytes.
///
/// # Errors
/// A blob whose length is not a multiple of the element size, a truncated
/// BYTES element, invalid UTF-8, or an unsupported datatype.
pub fn decode_raw(datatype: &str, raw: &[u8], field: &str) -> Result<Data, Error> {
    fn fixed<const N: usize>(
        raw: &[u8],
        field: &str,
        f: impl Fn([u8; N]) -> f64,
    ) -> Result<Data, Error> {
        if raw.len() % N != 0 {
            return err(format!(
                "{field}: {} bytes is not a whole number of {N}-byte elements",
                raw.len()
            ));
        }
        Ok(Data::Numeric(
            raw.chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    f(a)
                })
                .collect(),
        ))
    }
    match datatype {
        "BOOL" => fixed::<1>(raw, field, |b| f64::from(u8::from(b[0] != 0))),
        "INT8" => fixed::<1>(raw, field, |b| f64::from(i8::from_le_bytes(b))),
        "UINT8" => fixed::<1>(raw, field, |b| f64::from(b[0])),
        "INT16" => fixed::<2>(raw, field, |b| f64::from(i16::from_le_bytes(b))),
        "UINT16" => fixed::<2>(raw, field, |b| f64::from(u16::from_le_bytes(b))),
        "INT32" => fixed::<4>(raw, field, |b| f64::from(i32::from_le_bytes(b))),
        "UINT32" => fixed::<4>(raw, field, |b| f64::from(u32::from_le_bytes(b))),
        "INT64" => fixed::<8>(raw, field, |b| i64::from_le_bytes(b) as f64),
        "UINT64" => fixed::<8>(raw, field, |b| u64::from_le_bytes(b) as f64),
        "FP32" => fixed::<4>(raw, field, |b| f64::from(f32::from_le_bytes(b))),
        "FP64" => fixed::<8>(raw, field, f64::from_le_bytes),
        "BYTES" => {
            let mut out = Vec::new();
            let mut rest = raw;
            while !rest.is_empty() {
                if rest.len() < 4 {
                    return err(format!("{field}: truncated BYTES length prefix"));
                }
                let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                rest = &rest[4..];
                if rest.len() < n {
                    return err(format!(
                        "{field}: BYTES element of {n} bytes runs past the end"
                    ));
                }
                let s = std::str::from_utf8(&rest[..n])
                    .map_err(|_| Error(format!("{field}: BYTES element is not valid UTF-8")))?;
                out.push(s.to_string());
                rest = &rest[n..];
            }
            Ok(Data::Bytes(out))
        }
        other => err(format!("{field}: unsupported datatype {:?}", clip(other))),
    }
}

/// Joins the decoded sides of one exchange (request first) into one column
/// list. A later side's column whose name an earlier side already uses gets
/// an `_output` suffix (then `_output_2`, `_output_3`, ... while that is
/// taken too, the base cut to keep the name within the length limit), so
/// both survive. Two columns of one side with one name stay as they are:
/// [`duplicate_column`] finds them, for the caller to refuse.
pub fn join_columns(parts: Vec<Decoded>) -> Vec<Column> {
    let taken = |name: &str, columns: &[Column]| columns.iter().any(|o| o.name == name);
    let mut columns: Vec<Column> = Vec::new();
    for d in parts {
        let earlier = columns.len();
        for mut c in d.columns {
            if taken(&c.name, &columns[..earlier]) {
                let base = c.name.clone();
                let mut n = 1usize;
                loop {
                    let suffix = if n == 1 {
                        "_output".to_string()
                    } else {
                        format!("_output_{n}")
                    };
                    let mut name = base.clone();
                    // Names are ASCII once sanitised, so any cut is a boundary.
                    name.truncate(domain::MAX_NAME_LEN.saturating_sub(suffix.len()));
                    name.push_str(&suffix);
                    if !taken(&name, &columns) {
                        c.name = name;
                        break;
                    }
                    n += 1;
                }
            }
            columns.push(c);
        }
    }
    columns
}

/// The first column name that `columns` holds twice, if any: distinct
/// tensor names can give one column name once sanitised (`a b`, `a_b`).
pub fn duplicate_column(columns: &[Column]) -> Option<&str> {
    let mut seen = std::collections::HashSet::with_capacity(columns.len());
    columns
        .iter()
        .find(|c| !seen.insert(c.name.as_str()))
        .map(|c| c.name.as_str())
}

/// Which side of an exchange a JSON body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The request: input features.
    Request,
    /// The response: model outputs.
    Response,
}

/// Decodes a KServe v1 or OIP v2 JSON body of the given side.
///
/// # Errors
/// Invalid JSON, a body of neither format, or inconsistent shapes.
pub fn decode_json(body: &[u8], side: Side, names: Option<&[String]>) -> Result<Decoded, Error> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| Error(format!("body: invalid JSON ({e})")))?;
    let role = match side {
        Side::Request => Role::Input,
        Side::Response => Role::Output,
    };
    let (v2_key, v1_key) = match side {
        Side::Request => ("inputs", "instances"),
        Side::Response => ("outputs", "predictions"),
    };
    if let Some(tensors) = v.get(v2_key) {
        let tensors = v2_tensors(tensors, v2_key)?;
        let decoded = tensors_to_columns(tensors, role, names, v2_key)?;
        // v1 rows refuse a repeated name per row as they read it.
        if let Some(name) = duplicate_column(&decoded.columns) {
            return err(format!(
                "{v2_key}: names give column {:?} twice once sanitised",
                clip(name)
            ));
        }
        return Ok(decoded);
    }
    if let Some(rows) = v.get(v1_key) {
        return v1_rows(rows, v1_key, role, names);
    }
    err(format!(
        "body: expected an object with \"{v1_key}\" (KServe v1) or \"{v2_key}\" (Open Inference Protocol v2)"
    ))
}

fn v2_tensors(v: &Value, field: &str) -> Result<Vec<Tensor>, Error> {
    let Some(arr) = v.as_array() else {
        return err(format!("{field}: must be an array of tensors"));
    };
    arr.iter()
        .enumerate()
        .map(|(i, t)| {
            let name = t
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| Error(format!("{field}[{i}].name: required string")))?;
            let shape = t
                .get("shape")
                .and_then(Value::as_array)
                .ok_or_else(|| Error(format!("{field}[{i}].shape: required array")))?
                .iter()
                .map(|d| d.as_i64().filter(|&d| d >= 0))
                .collect::<Option<Vec<i64>>>()
                .ok_or_else(|| Error(format!("{field}[{i}].shape: non-negative integers")))?;
            let datatype = t
                .get("datatype")
                .and_then(Value::as_str)
                .ok_or_else(|| Error(format!("{field}[{i}].datatype: required string")))?;
            let raw = t
                .get("data")
                .ok_or_else(|| Error(format!("{field}[{i}].data: required")))?;
            let mut flat = Vec::new();
            flatten(raw, &mut flat);
            let data = if datatype == "BYTES" {
                Data::Bytes(
                    flat.into_iter()
                        .map(|e| match e {
                            Value::String(s) => Ok(s.clone()),
                            other => Ok(other.to_string()),
                        })
                        .collect::<Result<_, Error>>()?,
                )
            } else if is_numeric_datatype(datatype) {
                Data::Numeric(
                    flat.into_iter()
                        .map(|e| match e {
                            Value::Number(n) => n.as_f64().ok_or(()),
                            Value::Bool(b) => Ok(f64::from(u8::from(*b))),
                            Value::Null => Ok(f64::NAN),
                            _ => Err(()),
                        })
                        .collect::<Result<_, ()>>()
                        .map_err(|_| {
                            Error(format!(
                                "{field}[{i}].data: {datatype} tensor holds a non-number"
                            ))
                        })?,
                )
            } else {
                return err(format!(
                    "{field}[{i}].datatype: unsupported datatype {:?}",
                    clip(datatype)
                ));
            };
            Ok(Tensor {
                name: name.to_string(),
                shape,
                data,
            })
        })
        .collect()
}

/// Datatypes decoded as numbers.
pub fn is_numeric_datatype(dt: &str) -> bool {
    matches!(
        dt,
        "BOOL"
            | "INT8"
            | "INT16"
            | "INT32"
            | "INT64"
            | "UINT8"
            | "UINT16"
            | "UINT32"
            | "UINT64"
            | "FP32"
            | "FP64"
    )
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(a) => a.iter().for_each(|e| flatten(e, out)),
        other => out.push(other),
    }
}

enum Cell {
    Num(f64),
    Str(String),
    Missing,
}

fn cell(v: &Value) -> Result<Cell, ()> {
    match v {
        Value::Number(n) => n.as_f64().map(Cell::Num).ok_or(()),
        Value::Bool(b) => Ok(Cell::Num(f64::from(u8::from(*b)))),
        Value::String(s) => Ok(Cell::Str(s.clone())),
        Value::Null => Ok(Cell::Missing),
        _ => Err(()),
    }
}

fn v1_rows(
    rows: &Value,
    field: &str,
    role: Role,
    names: Option<&[String]>,
) -> Result<Decoded, Error> {
    let Some(rows) = rows.as_array() else {
        return err(format!("{field}: must be an array of rows"));
    };
    if rows.is_empty() {
        return err(format!("{field}: has no rows"));
    }
    // Column name -> one cell per row (None: the row lacks the key).
    let mut cols: BTreeMap<String, Vec<Option<Cell>>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let n_rows = rows.len();
    for (r, row) in rows.iter().enumerate() {
        let cells: Vec<(String, &Value)> = match row {
            Value::Object(m) => {
                let mut out = Vec::new();
                for (k, v) in m {
                    match v {
                        Value::Array(_) => {
                            let mut flat = Vec::new();
                            flatten(v, &mut flat);
                            out.extend(
                                flat.into_iter()
                                    .enumerate()
                                    .map(|(j, e)| (sanitize(&format!("{k}_{j}")), e)),
                            );
                        }
                        _ => out.push((sanitize(k), v)),
                    }
                }
                out
            }
            Value::Array(_) => {
                let mut flat = Vec::new();
                flatten(row, &mut flat);
                let width = flat.len();
                flat.into_iter()
                    .enumerate()
                    .map(|(j, e)| {
                        let name = match names {
                            Some(n) if n.len() == width => sanitize(&n[j]),
                            _ if width == 1 => field.to_string(),
                            _ => format!("{field}_{j}"),
                        };
                        (name, e)
                    })
                    .collect()
            }
            other => vec![(
                names
                    .filter(|n| n.len() == 1)
                    .map(|n| sanitize(&n[0]))
                    .unwrap_or_else(|| field.to_string()),
                other,
            )],
        };
        for (name, v) in cells {
            let c = cell(v)
                .map_err(|_| Error(format!("{field}[{r}].{name}: unsupported value {v}")))?;
            let col = cols.entry(name.clone()).or_insert_with(|| {
                order.push(name.clone());
                (0..n_rows).map(|_| None).collect()
            });
            // Distinct keys can give one name once sanitised (`a b`, `a_b`).
            if col[r].is_some() {
                return err(format!(
                    "{field}[{r}]: names give column {:?} twice once sanitised",
                    clip(&name)
                ));
            }
            col[r] = Some(c);
        }
    }
    let mut columns = Vec::with_capacity(order.len());
    for name in order {
        let cells = cols.remove(&name).unwrap_or_default();
        let categorical = cells.iter().any(|c| matches!(c, Some(Cell::Str(_))));
        let values = if categorical {
            Values::Categorical(
                cells
                    .into_iter()
                    .map(|c| match c {
                        Some(Cell::Str(s)) => s,
                        Some(Cell::Num(x)) => x.to_string(),
                        Some(Cell::Missing) | None => String::new(),
                    })
                    .collect(),
            )
        } else {
            Values::Numeric(
                cells
                    .into_iter()
                    .map(|c| match c {
                        Some(Cell::Num(x)) => x,
                        _ => f64::NAN,
                    })
                    .collect(),
            )
        };
        columns.push(Column { name, role, values });
    }
    Ok(Decoded { columns, n_rows })
}

#[cfg(test)]
mod tests;
