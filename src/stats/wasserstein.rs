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
    let (fu, fv) = (nu as f64, nv as f64);
    // The merge is streamed instead of materialised: term `k` is
    // `|F_r(x_k) - F_c(x_k)| * (x_{k+1} - x_k)` over the merged values, and
    // the terms are produced in SciPy's order straight into the pairwise
    // summation, so the sum is bit for bit the one over a term array.
    //
    // When `x_{k+1} > x_k`, every value `<= x_k` has been merged, so the
    // merge positions are the ECDF counts (searchsorted side='right'). When
    // `x_{k+1} == x_k` the term is `d * 0 = +0` whatever the counts are.
    // The inputs are finite, so +inf marks an exhausted side.
    let (mut i, mut j) = (0usize, 0usize);
    let next = |i: &mut usize, j: &mut usize| {
        let a = sorted_ref.get(*i).copied().unwrap_or(f64::INFINITY);
        let b = sorted_cur.get(*j).copied().unwrap_or(f64::INFINITY);
        // Equal values go to the reference first, as a stable merge does;
        // which side a tie comes from does not change any term.
        let take_cur = b < a;
        *j += usize::from(take_cur);
        *i += usize::from(!take_cur);
        a.min(b)
    };
    let mut x = next(&mut i, &mut j);
    let mut term = || {
        let d = (i as f64 / fu - j as f64 / fv).abs();
        let y = next(&mut i, &mut j);
        let t = d * (y - x);
        x = y;
        t
    };
    pairwise_sum_from(nu + nv - 1, &mut term)
}

/// [`wasserstein`] divided by the reference's sample standard deviation
/// (`ddof = 1`), making it scale-free.
///
/// `None` when the reference has fewer than 2 values, all reference values
/// are identical (zero spread) or the current sample is empty.
pub fn wasserstein_norm(sorted_ref: &[f64], sorted_cur: &[f64]) -> Option<f64> {
    wasserstein_and_norm(sorted_ref, sorted_cur).1
}

/// [`wasserstein`] and [`wasserstein_norm`] together, computing the
/// distance once (callers that want both would otherwise merge twice).
pub fn wasserstein_and_norm(sorted_ref: &[f64], sorted_cur: &[f64]) -> (f64, Option<f64>) {
    let w = wasserstein(sorted_ref, sorted_cur);
    let n = sorted_ref.len();
    if n < 2 || sorted_cur.is_empty() || sorted_ref[0] == sorted_ref[n - 1] {
        return (w, None);
    }
    (w, Some(w / std_ddof1(sorted_ref)))
}

/// Sample standard deviation like `numpy.std(x, ddof=1)` (two-pass), with
/// the squared deviations streamed into the pairwise sum rather than
/// collected first; the grouping, and so the result, is the same.
pub fn std_ddof1(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    let mean = pairwise_sum(x) / n;
    let mut it = x.iter();
    let mut sq = || {
        let d = it.next().map_or(0.0, |&v| v - mean);
        d * d
    };
    (pairwise_sum_from(x.len(), &mut sq) / (n - 1.0)).sqrt()
}

/// [`super::pairwise_sum`] of `n` values taken in order from `next`, grouped
/// exactly as `super::pairwise_sum` groups a slice of them, so callers can stream
/// the values instead of collecting them first. The leaves are summed from
/// a stack block of 128, so nothing is allocated.
pub(crate) fn pairwise_sum_from(n: usize, next: &mut impl FnMut() -> f64) -> f64 {
    const BLOCK: usize = 128;
    if n <= BLOCK {
        let mut block = [0.0f64; BLOCK];
        for v in &mut block[..n] {
            *v = next();
        }
        pairwise_sum(&block[..n])
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        // Rust evaluates the left operand first, so the values arrive in
        // slice order.
        let left = pairwise_sum_from(n2, next);
        left + pairwise_sum_from(n - n2, next)
    }
}
