//! Hellinger distance over bin counts.

use super::{pairwise_sum, proportions, totals};

/// Hellinger distance `H = ||sqrt(p) - sqrt(q)||_2 / sqrt(2)`, in `[0, 1]`,
/// equal to `sqrt(1 - sum(sqrt(p_i q_i)))`. The norm form is used because
/// `1 - BC` cancels catastrophically for similar distributions.
///
/// Returns NaN when the slices differ in length or either total is zero.
pub fn hellinger(ref_counts: &[u64], cur_counts: &[u64]) -> f64 {
    let Some((n_ref, n_cur)) = totals(ref_counts, cur_counts) else {
        return f64::NAN;
    };
    let p = proportions(ref_counts, n_ref);
    let q = proportions(cur_counts, n_cur);
    let sq: Vec<f64> = p
        .iter()
        .zip(&q)
        .map(|(&a, &b)| {
            let d = a.sqrt() - b.sqrt();
            d * d
        })
        .collect();
    pairwise_sum(&sq).sqrt() / std::f64::consts::SQRT_2
}
