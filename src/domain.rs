//! The vocabulary shared by every module: model versions, validated batches
//! of records, feature kinds and verdicts. Plain data, no behaviour that
//! touches I/O, and no protobuf types (those stop at `server::grpc`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The version used when a client leaves it empty.
pub const DEFAULT_VERSION: &str = "default";

/// Longest accepted model, version or feature name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// One model version: the unit that owns windows, a reference and rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ModelKey {
    /// Model name, validated by [`validate_name`].
    pub model: String,
    /// Model version, validated by [`validate_name`].
    pub version: String,
}

impl fmt::Display for ModelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.model, self.version)
    }
}

/// Whether a column is something the model sees or something it produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// An input feature.
    Input,
    /// A model output: prediction, score or class.
    Output,
}

impl Role {
    /// Stable lowercase name, used in JSON and on disk.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Input => "input",
            Role::Output => "output",
        }
    }
}

/// The statistical kind of a feature, fixed by the first batch that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Real numbers; NaN and ±inf are missing values.
    Numeric,
    /// Strings; the empty string is a missing value.
    Categorical,
}

impl Kind {
    /// Stable lowercase name, used in JSON, messages and on disk.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Numeric => "numeric",
            Kind::Categorical => "categorical",
        }
    }
}

/// The values of one column.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// Numeric values, missing ones included as NaN or ±inf.
    Numeric(Vec<f64>),
    /// Categorical values, missing ones included as empty strings.
    Categorical(Vec<String>),
}

impl Values {
    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            Values::Numeric(v) => v.len(),
            Values::Categorical(v) => v.len(),
        }
    }

    /// True when the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The kind these values carry.
    pub fn kind(&self) -> Kind {
        match self {
            Values::Numeric(_) => Kind::Numeric,
            Values::Categorical(_) => Kind::Categorical,
        }
    }

    /// Missing values: non-finite numbers or empty strings.
    pub fn n_missing(&self) -> u64 {
        match self {
            Values::Numeric(v) => v.iter().filter(|x| !x.is_finite()).count() as u64,
            Values::Categorical(v) => v.iter().filter(|s| s.is_empty()).count() as u64,
        }
    }
}

/// One named column of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Feature or output name, validated by [`validate_name`].
    pub name: String,
    /// Input or output.
    pub role: Role,
    /// The column's values.
    pub values: Values,
}

/// A validated batch: every column has `n_rows` values and a unique name.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The model version the rows belong to.
    pub key: ModelKey,
    /// Columns with distinct names.
    pub columns: Vec<Column>,
    /// Number of rows, at least 1.
    pub n_rows: usize,
}

impl Batch {
    /// Missing values over all columns.
    pub fn n_missing(&self) -> u64 {
        self.columns.iter().map(|c| c.values.n_missing()).sum()
    }
}

/// The outcome of evaluating a feature or a model version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Enough data, and no rule condition holds.
    Ok,
    /// Enough data, and a rule condition holds.
    Drift,
    /// Fewer samples than `min_samples`, or no reference yet.
    InsufficientData,
}

impl Verdict {
    /// Stable snake_case name, used as a metric label value and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Drift => "drift",
            Verdict::InsufficientData => "insufficient_data",
        }
    }
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("must not be empty")]
    Empty,
    /// The name is longer than the limit.
    #[error("is {len} bytes, longer than the limit of {max} (limits.max_name_bytes)")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name holds a character outside the allowed alphabet.
    #[error("character {char:?} is not allowed (use A-Z, a-z, 0-9 and {allowed:?}, limits.name_punctuation)")]
    BadChar {
        /// The first character refused.
        char: char,
        /// The punctuation allowed besides letters and digits.
        allowed: String,
    },
}

/// What model, version and feature names may be: ASCII letters, digits and
/// a configured set of ASCII punctuation, up to a length. Names become
/// metric label values and store keys, so the alphabet stays printable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRules {
    /// Longest name, in bytes.
    pub max_bytes: usize,
    /// ASCII punctuation allowed besides letters and digits.
    pub punctuation: String,
}

impl Default for NameRules {
    fn default() -> Self {
        Self {
            max_bytes: MAX_NAME_LEN,
            punctuation: "_.:-".into(),
        }
    }
}

impl NameRules {
    /// Checks a model, version or feature name.
    ///
    /// # Errors
    /// Returns the first reason the name is unacceptable.
    pub fn check(&self, name: &str) -> Result<(), NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > self.max_bytes {
            return Err(NameError::TooLong {
                len: name.len(),
                max: self.max_bytes,
            });
        }
        if let Some(c) = name
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || self.punctuation.contains(c)))
        {
            return Err(NameError::BadChar {
                char: c,
                allowed: self.punctuation.clone(),
            });
        }
        Ok(())
    }
}

/// Checks a name against the default [`NameRules`]: 1-128 bytes of
/// `[A-Za-z0-9_.:-]`. Used for names the configuration gives (rules,
/// webhook targets), which no limit changes.
///
/// # Errors
/// Returns the first reason the name is unacceptable.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    NameRules::default().check(name)
}

/// What one daemon accepts, so that memory, disk and series stay bounded
/// whatever clients send (`[limits]` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most rows in one batch.
    pub max_rows_per_batch: usize,
    /// Most columns in one batch.
    pub max_columns_per_batch: usize,
    /// Most distinct models.
    pub max_models: usize,
    /// Most versions of one model.
    pub max_versions_per_model: usize,
    /// Most distinct features (columns) of one model version.
    pub max_features_per_model: usize,
    /// Longest categorical value, in bytes.
    pub max_category_bytes: usize,
    /// Model, version and feature names.
    pub names: NameRules,
    /// A batch for a model not seen before registers it; when false only
    /// models matching `models` are accepted.
    pub auto_register: bool,
    /// Model name globs accepted when `auto_register` is false.
    pub models: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_rows_per_batch: 100_000,
            max_columns_per_batch: 1_000,
            max_models: 1_000,
            max_versions_per_model: 100,
            max_features_per_model: 1_000,
            max_category_bytes: 1_024,
            names: NameRules::default(),
            auto_register: true,
            models: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(
            validate_name(&"a".repeat(129)),
            Err(NameError::TooLong { len: 129, max: 128 })
        );
        let bad = |c| NameError::BadChar {
            char: c,
            allowed: "_.:-".into(),
        };
        assert_eq!(validate_name("a b"), Err(bad(' ')));
        assert_eq!(validate_name("fraud\u{0}"), Err(bad('\u{0}')));
        assert_eq!(validate_name("fraud-model_v1.2:x"), Ok(()));
        let wide = NameRules {
            max_bytes: 4,
            punctuation: "/".into(),
        };
        assert_eq!(wide.check("a/b"), Ok(()));
        assert!(matches!(
            wide.check("a.b"),
            Err(NameError::BadChar { char: '.', .. })
        ));
        assert!(matches!(
            wide.check("abcde"),
            Err(NameError::TooLong { len: 5, max: 4 })
        ));
    }

    #[test]
    fn missing_values_are_counted() {
        let v = Values::Numeric(vec![1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0]);
        assert_eq!(v.n_missing(), 3);
        let c = Values::Categorical(vec!["a".into(), String::new()]);
        assert_eq!(c.n_missing(), 1);
    }
}
