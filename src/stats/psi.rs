//! Population Stability Index over pre-computed bin (or category) counts.

use super::{pairwise_sum, proportions, totals};

/// PSI = `sum((q - p) * ln(q / p))` where `p` and `q` are the reference and
/// current proportions per bin; a proportion that is exactly 0 is replaced
/// by `epsilon` (no renormalisation).
///
/// Returns NaN when the slices differ in length or either total is zero.
pub fn psi(ref_counts: &[u64], cur_counts: &[u64], epsilon: f64) -> f64 {
    let Some((n_ref, n_cur)) = totals(ref_counts, cur_counts) else {
        return f64::NAN;
    };
    let fix = |x: f64| if x == 0.0 { epsilon } else { x };
    let p = proportions(ref_counts, n_ref);
    let q = proportions(cur_counts, n_cur);
    let terms: Vec<f64> = p
        .iter()
        .zip(&q)
        .map(|(&p, &q)| {
            let (p, q) = (fix(p), fix(q));
            (q - p) * (q / p).ln()
        })
        .collect();
    pairwise_sum(&terms)
}
