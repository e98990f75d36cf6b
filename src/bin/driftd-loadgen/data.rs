//! Synthetic columnar batches, encoded once, and the drift schedule that
//! picks between the normal and the drifted ones.

use std::time::Duration;

use prost::{bytes::Bytes, Message};
use rand::{rngs::StdRng, Rng, SeedableRng};

use driftd::proto as pb;

/// The shape of the generated batches.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Models; batches go to `model-000`, `model-001`, ... in turn.
    pub models: usize,
    /// Model version of every batch.
    pub version: String,
    /// Rows per batch.
    pub rows: usize,
    /// Numeric features per batch (`f000`, `f001`, ...).
    pub features: usize,
    /// Categorical features per batch (`c000`, ...), on top of the numeric
    /// ones.
    pub categorical: usize,
    /// Distinct categories of each categorical feature.
    pub categories: usize,
    /// Distinct batches per model and drift state; the generator cycles
    /// through them.
    pub pool: usize,
    /// Features that drift when drift is on (the first ones).
    pub drift_features: usize,
    /// How far a drifting numeric feature's mean moves, in standard
    /// deviations.
    pub drift_shift: f64,
}

impl Shape {
    /// The name of model `i`.
    pub fn model_name(i: usize) -> String {
        format!("model-{i:03}")
    }
}

/// Pre-encoded `IngestRequest`s: per model, `pool` normal batches and, when
/// drift is scheduled, `pool` drifted ones.
pub struct Batches {
    normal: Vec<Vec<Bytes>>,
    drifted: Vec<Vec<Bytes>>,
}

impl Batches {
    /// Generates and encodes every batch (seeded, so runs are repeatable).
    pub fn generate(shape: &Shape, with_drift: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(0x6c6f_6164_6765_6e00);
        let mut make = |drift: bool| -> Vec<Vec<Bytes>> {
            (0..shape.models)
                .map(|m| {
                    (0..shape.pool.max(1))
                        .map(|_| encode(shape, m, drift, &mut rng))
                        .collect()
                })
                .collect()
        };
        let normal = make(false);
        let drifted = if with_drift { make(true) } else { Vec::new() };
        Self { normal, drifted }
    }

    /// Batch number `n` of `model`, drifted or not.
    pub fn get(&self, model: usize, n: u64, drift: bool) -> Bytes {
        let set = if drift && !self.drifted.is_empty() {
            &self.drifted
        } else {
            &self.normal
        };
        let pool = &set[model % set.len()];
        pool[(n % pool.len() as u64) as usize].clone()
    }

    /// Bytes of one encoded batch (the first model's first).
    pub fn encoded_len(&self) -> usize {
        self.normal
            .first()
            .and_then(|p| p.first())
            .map_or(0, Bytes::len)
    }
}

/// A standard normal deviate (Box-Muller; `rand_distr` is not worth a
/// dependency here).
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn encode(shape: &Shape, model: usize, drift: bool, rng: &mut StdRng) -> Bytes {
    let mut columns = Vec::with_capacity(shape.features + shape.categorical);
    for j in 0..shape.features {
        let mean = (j % 5) as f64;
        let sd = 1.0 + (j % 3) as f64;
        let shift = if drift && j < shape.drift_features {
            shape.drift_shift * sd
        } else {
            0.0
        };
        let values = (0..shape.rows)
            .map(|_| mean + shift + sd * normal(rng))
            .collect();
        columns.push(pb::Column {
            name: format!("f{j:03}"),
            role: pb::ColumnRole::Input as i32,
            values: Some(pb::column::Values::Numeric(pb::NumericValues { values })),
        });
    }
    for j in 0..shape.categorical {
        let k = shape.categories.max(1);
        let drifts = drift && shape.features + j < shape.drift_features;
        let values = (0..shape.rows)
            .map(|_| {
                // Skewed: category i with weight ~ 1/(i+1), the order
                // reversed under drift.
                let u: f64 = rng.random();
                let i = ((k as f64).powf(u) - 1.0) as usize % k;
                let i = if drifts { k - 1 - i } else { i };
                format!("v{i}")
            })
            .collect();
        columns.push(pb::Column {
            name: format!("c{j:03}"),
            role: pb::ColumnRole::Input as i32,
            values: Some(pb::column::Values::Categorical(pb::CategoricalValues {
                values,
            })),
        });
    }
    let req = pb::IngestRequest {
        batch: Some(pb::RecordBatch {
            model: Shape::model_name(model),
            version: shape.version.clone(),
            columns,
            ..Default::default()
        }),
    };
    Bytes::from(req.encode_to_vec())
}

/// When drift is on: from `after` on, for `length` (forever when `None`),
/// repeating every `every` when set.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Start of the first drift period, from the start of the run.
    pub after: Option<Duration>,
    /// Length of a drift period; `None`: until the end.
    pub length: Option<Duration>,
    /// Period of repetition; `None`: once.
    pub every: Option<Duration>,
}

impl Schedule {
    /// Whether any drift is scheduled.
    pub fn any(&self) -> bool {
        self.after.is_some()
    }

    /// Whether drift is on at `t` since the start.
    pub fn on(&self, t: Duration) -> bool {
        let Some(after) = self.after else {
            return false;
        };
        if t < after {
            return false;
        }
        let mut since = t - after;
        if let Some(every) = self.every.filter(|e| !e.is_zero()) {
            since = Duration::from_nanos((since.as_nanos() % every.as_nanos()) as u64);
        }
        self.length.is_none_or(|l| since < l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_repeats() {
        let s = Schedule {
            after: Some(Duration::from_secs(10)),
            length: Some(Duration::from_secs(5)),
            every: Some(Duration::from_secs(20)),
        };
        let on = |t| s.on(Duration::from_secs(t));
        assert!(!on(9));
        assert!(on(10) && on(14));
        assert!(!on(15) && !on(29));
        assert!(on(30) && !on(35));
        let never = Schedule {
            after: None,
            length: None,
            every: None,
        };
        assert!(!never.on(Duration::from_secs(100)));
    }

    #[test]
    fn batches_decode_with_the_requested_shape() {
        let shape = Shape {
            models: 2,
            version: "v1".into(),
            rows: 10,
            features: 3,
            categorical: 1,
            categories: 4,
            pool: 2,
            drift_features: 1,
            drift_shift: 3.0,
        };
        let b = Batches::generate(&shape, true);
        let req = pb::IngestRequest::decode(b.get(1, 3, true)).unwrap();
        let batch = req.batch.unwrap();
        assert_eq!(batch.model, "model-001");
        assert_eq!(batch.columns.len(), 4);
        assert!(batch.columns.iter().all(|c| match &c.values {
            Some(pb::column::Values::Numeric(v)) => v.values.len() == 10,
            Some(pb::column::Values::Categorical(v)) => v.values.len() == 10,
            None => false,
        }));
    }
}
