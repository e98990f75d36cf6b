//! Wasserstein-1 (earth mover's) distance between two empirical samples.

use super::pairwise_sum;

/// `scipy.stats.wasserstein_distance(r, c)`: the integral of
/// `|F_r(x) - F_c(x)|` over the merged sample, computed by one O(n + m)
/// merge.
///
/// Preconditions: both slices sorted ascending and finite. Returns NaN when
/// either is empty (SciPy raises).
pub fn wasserstein(sorted_ref: &[f64], sorted_cur: &[f64]) -> f64 {
    let (nu, nv) = (sorted_ref.len(), sorted_cur.len());
    if nu == 0 || nv == 0 {
        return f64::NAN;
    }
    debug_assert!(sorted_ref.windows(2).all(|w| w[0] <= w[1]));
    debug_assert!(sorted_cur.windows(2).all(|w| w[0] <= w[1]));
    let all = merge(sorted_ref, sorted_cur);
    let (fu, fv) = (nu as f64, nv as f64);
    let (mut i, mut j) = (0usize, 0usize);
    // One term per consecutive pair of the merged values, in SciPy's order,
    // so the pairwise sum groups them the same way.
    let mut terms = Vec::with_capacity(all.len() - 1);
    for w in all.windows(2) {
        let x = w[0];
        // ECDFs with `<=` (searchsorted side='right').
        while i < nu && sorted_ref[i] <= x {
            i += 1;
        }
        while j < nv && sorted_cur[j] <= x {
            j += 1;
        }
        let d = (i as f64 / fu - j as f64 / fv).abs();
        terms.push(d * (w[1] - w[0]));
    }
    pairwise_sum(&terms)
}

/// [`wasserstein`] divided by the reference's sample standard deviation
/// (`ddof = 1`), making it scale-free.
///
/// `None` when the reference has fewer than 2 values, all reference values
/// are identical (zero spread) or the current sample is empty.
pub fn wasserstein_norm(sorted_ref: &[f64], sorted_cur: &[f64]) -> Option<f64> {
    let n = sorted_ref.len();
    if n < 2 || sorted_cur.is_empty() || sorted_ref[0] == sorted_ref[n - 1] {
        return None;
    }
    Some(wasserstein(sorted_ref, sorted_cur) / std_ddof1(sorted_ref))
}

/// Sample standard deviation like `numpy.std(x, ddof=1)` (two-pass).
fn std_ddof1(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    let mean = pairwise_sum(x) / n;
    let sq: Vec<f64> = x
        .iter()
        .map(|&v| {
            let d = v - mean;
            d * d
        })
        .collect();
    (pairwise_sum(&sq) / (n - 1.0)).sqrt()
}

/// Merges two sorted slices into one sorted vector.
fn merge(a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if b[j] < a[i] {
            out.push(b[j]);
            j += 1;
        } else {
            out.push(a[i]);
            i += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}
