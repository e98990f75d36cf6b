//! Jensen-Shannon distance (base 2) over bin counts.

use super::{pairwise_sum, proportions, totals};

/// `scipy.spatial.distance.jensenshannon(p, q, base=2)` where `p` and `q`
/// are the normalised counts (no epsilon). The result lies in `[0, 1]`.
///
/// Returns NaN when the slices differ in length or either total is zero.
/// A sum that rounds to a tiny negative number is clamped to 0 (SciPy would
/// return NaN there).
pub fn js_distance(ref_counts: &[u64], cur_counts: &[u64]) -> f64 {
    let Some((n_ref, n_cur)) = totals(ref_counts, cur_counts) else {
        return f64::NAN;
    };
    let p = proportions(ref_counts, n_ref);
    let q = proportions(cur_counts, n_cur);
    let m: Vec<f64> = p.iter().zip(&q).map(|(&a, &b)| (a + b) / 2.0).collect();
    let left: Vec<f64> = p.iter().zip(&m).map(|(&a, &b)| rel_entr(a, b)).collect();
    let right: Vec<f64> = q.iter().zip(&m).map(|(&a, &b)| rel_entr(a, b)).collect();
    let js = (pairwise_sum(&left) + pairwise_sum(&right)) / std::f64::consts::LN_2;
    (js / 2.0).max(0.0).sqrt()
}

/// `scipy.special.rel_entr`: `x ln(x/y)`, with `0 ln(0/y) = 0`.
fn rel_entr(x: f64, y: f64) -> f64 {
    if x > 0.0 && y > 0.0 {
        x * (x / y).ln()
    } else if x == 0.0 && y >= 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}
