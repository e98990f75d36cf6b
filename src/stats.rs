//! Pure drift statistics for driftd.
//!
//! Everything in this module is a pure function of its arguments: no I/O, no
//! clock, no logging, no global state, and no panics on data. The reference
//! implementation for every number produced here is SciPy 1.17.1 / NumPy 2.x;
//! where a textbook formula and SciPy disagree, SciPy is right. The golden
//! tests (`tests/golden/gen_golden.py`) pin this.
//!
//! # Definitions
//!
//! * **Missing values.** For a numeric feature, NaN and ±inf are *missing*:
//!   they are counted and excluded from every statistic. `r` denotes the
//!   non-missing reference values and `c` the non-missing current values.
//!   [`finite_sorted`] splits a raw column into the sorted finite values and
//!   the missing count; most functions below take such sorted, finite slices.
//! * **Missing share** ([`missing_share`]): `n_missing / (n_missing +
//!   n_non_missing)`, `None` for an empty sample.
//! * **KS** ([`ks_2samp`]): statistic `D = max |F_r(x) - F_c(x)|` with ECDFs
//!   that count ties with `<=`, and the two-sided p-value exactly as
//!   `scipy.stats.ks_2samp(r, c, alternative='two-sided', method='auto')`:
//!   exact lattice-path p-value when `max(n, m) <= 10000` (with `D = h /
//!   lcm(n, m)`), otherwise `kstwo.sf(D, round(n*m/(n+m)))`, the one-sample
//!   Kolmogorov distribution of Simard & L'Ecuyer.
//! * **Bins** ([`quantile_edges`], [`bin_index`], [`bin_counts`]): edges are
//!   the reference quantiles at `q_i = i/B` (`i = 1..B-1`, computed as
//!   `(i as f64) / (B as f64)`), computed bit for bit like
//!   `numpy.quantile(r, q)` with the default `'linear'` method, then sorted
//!   and de-duplicated like `numpy.unique`. A value `x` falls in bin `i` =
//!   number of edges strictly below `x` (`numpy.searchsorted(edges, x,
//!   side='left')`): bins are closed on the right, the outer bins are open to
//!   ±inf.
//! * **PSI** ([`psi`]): with bin proportions `p` (reference) and `q`
//!   (current), every proportion that is exactly 0 is replaced by `epsilon`
//!   (default [`DEFAULT_EPSILON`]) without renormalisation, and
//!   `PSI = sum((q - p) * ln(q / p))`. For categorical features there is one
//!   bin per category of the sorted union of both samples
//!   ([`align_categories`]).
//! * **Chi-square** ([`chi2_contingency`]): `scipy.stats.chi2_contingency` on
//!   the 2 x k table (reference counts, current counts) with
//!   `correction=False`; a single category gives `dof = 0`, statistic 0 and
//!   p-value 1, like SciPy.
//! * **Jensen-Shannon distance** ([`js_distance`]):
//!   `scipy.spatial.distance.jensenshannon(p, q, base=2)` over the bins,
//!   without epsilon.
//! * **Wasserstein-1** ([`wasserstein`]): `scipy.stats.wasserstein_distance(r,
//!   c)` on the raw values; [`wasserstein_norm`] divides it by the sample
//!   standard deviation of the reference (`ddof = 1`) and is `None` when the
//!   reference has fewer than 2 values or all of them are identical.
//! * **Hellinger distance** ([`hellinger`]): `H = ||sqrt(p) - sqrt(q)||_2 /
//!   sqrt(2)`, which equals `sqrt(1 - sum(sqrt(p_i q_i)))`; the norm form is
//!   used because it does not cancel catastrophically when `p ≈ q`.
//! * **Cramér-von Mises** ([`cvm_2samp`]):
//!   `scipy.stats.cramervonmises_2samp(r, c, method='auto')`: exact p-value
//!   when both sizes are <= 20, otherwise the asymptotic one.
//! * **KS, CvM and Wasserstein together** ([`sample_stats`]): the three
//!   results above from one pass over both samples; KS and CvM bit for bit,
//!   Wasserstein within ~1e-16 of the values' range (see [`fused`]).
//! * **Binned KS** ([`binned_ks`]): `max |P_i - Q_i|` over the cumulative
//!   reference / current proportions at the bin edges.

pub mod binning;
pub mod chi2;
pub mod cvm;
pub mod fused;
pub mod hellinger;
pub mod js;
pub mod ks;
pub mod psi;
pub mod wasserstein;

#[cfg(test)]
mod tests;

pub use binning::{align_categories, bin_counts, bin_index, quantile_edges};
pub use chi2::{chi2_contingency, Chi2Result};
pub use cvm::{cvm_2samp, CvmMethod, CvmResult};
pub use fused::{sample_stats, SampleStats};
pub use hellinger::hellinger;
pub use js::js_distance;
pub use ks::{ks_2samp, kstwo_sf, KsMethod, KsResult};
pub use psi::psi;
pub use wasserstein::{std_ddof1, wasserstein, wasserstein_norm};

/// Default number of quantile bins for numeric features.
pub const DEFAULT_BINS: usize = 10;

/// Default replacement for empty-bin proportions in [`psi`].
pub const DEFAULT_EPSILON: f64 = 1e-4;

/// Splits a raw numeric column into its finite values, sorted ascending, and
/// the number of missing (NaN or ±inf) entries.
pub fn finite_sorted(values: &[f64]) -> (Vec<f64>, usize) {
    let mut finite: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let n_missing = values.len() - finite.len();
    // total_cmp is a total order; on finite values it only differs from
    // `<` by ordering -0.0 before +0.0, which no statistic here can observe.
    sort_total(&mut finite);
    (finite, n_missing)
}

/// Sorts values ascending in `f64::total_cmp` order (the same bits in the
/// same order as `sort_unstable_by(f64::total_cmp)`), through
/// unsigned integer keys with the same order: integer comparisons are
/// cheaper than `total_cmp`'s, and long columns take an LSD radix sort,
/// O(n) instead of O(n log n).
pub fn sort_total(values: &mut [f64]) {
    const SIGN: u64 = 1 << 63;
    // Negative numbers: flip every bit (larger magnitudes sort first);
    // others: set the sign bit (above every negative).
    let key = |x: f64| {
        let b = x.to_bits();
        if b & SIGN != 0 {
            !b
        } else {
            b | SIGN
        }
    };
    let unkey = |k: u64| f64::from_bits(if k & SIGN != 0 { k & !SIGN } else { !k });
    let mut keys: Vec<u64> = values.iter().map(|&x| key(x)).collect();
    if keys.len() < RADIX_MIN {
        keys.sort_unstable();
    } else {
        radix_sort(&mut keys);
    }
    for (v, k) in values.iter_mut().zip(keys) {
        *v = unkey(k);
    }
}

/// Below this length a comparison sort beats the radix sort's fixed cost
/// (clearing and scanning its six 2048-bucket histograms).
pub(crate) const RADIX_MIN: usize = 1 << 12;

/// LSD radix sort, 11-bit digits (six passes cover 64 bits), with all
/// digit histograms counted in one read of the keys. A pass whose digit is
/// the same for every key is skipped: it would not move anything.
fn radix_sort(keys: &mut Vec<u64>) {
    const BITS: usize = 11;
    const BUCKETS: usize = 1 << BITS;
    const PASSES: usize = 64usize.div_ceil(BITS);
    let mask = (BUCKETS - 1) as u64;
    let n = keys.len();
    let mut counts = vec![[0usize; BUCKETS]; PASSES];
    for &k in keys.iter() {
        for (p, c) in counts.iter_mut().enumerate() {
            c[((k >> (p * BITS)) & mask) as usize] += 1;
        }
    }
    let mut src = std::mem::take(keys);
    let mut dst = vec![0u64; n];
    for (p, c) in counts.iter_mut().enumerate() {
        if c.contains(&n) {
            continue;
        }
        let mut sum = 0;
        for slot in c.iter_mut() {
            let count = *slot;
            *slot = sum;
            sum += count;
        }
        for &k in &src {
            let d = ((k >> (p * BITS)) & mask) as usize;
            dst[c[d]] = k;
            c[d] += 1;
        }
        std::mem::swap(&mut src, &mut dst);
    }
    *keys = src;
}

/// Share of missing values in a sample: `n_missing / (n_missing +
/// n_present)`, or `None` when the sample is empty.
pub fn missing_share(n_missing: usize, n_present: usize) -> Option<f64> {
    let total = n_missing + n_present;
    if total == 0 {
        None
    } else {
        Some(n_missing as f64 / total as f64)
    }
}

/// Binned Kolmogorov-Smirnov distance: the largest absolute difference
/// between the cumulative reference and current proportions at the bin
/// edges.
///
/// Returns NaN when the slices differ in length or either total is zero
/// (the proportions are undefined then).
pub fn binned_ks(ref_counts: &[u64], cur_counts: &[u64]) -> f64 {
    let Some((n_ref, n_cur)) = totals(ref_counts, cur_counts) else {
        return f64::NAN;
    };
    let (mut cum_r, mut cum_c) = (0u64, 0u64);
    let mut best = 0.0f64;
    for (&a, &b) in ref_counts.iter().zip(cur_counts) {
        cum_r += a;
        cum_c += b;
        // Same operation order as NumPy: integer cumsum, then one division.
        let d = (cum_r as f64 / n_ref - cum_c as f64 / n_cur).abs();
        best = best.max(d);
    }
    best
}

/// Totals of two aligned count vectors as floats, or `None` when the lengths
/// differ or either total is zero.
pub(crate) fn totals(ref_counts: &[u64], cur_counts: &[u64]) -> Option<(f64, f64)> {
    if ref_counts.len() != cur_counts.len() {
        return None;
    }
    let n_ref: u64 = ref_counts.iter().sum();
    let n_cur: u64 = cur_counts.iter().sum();
    if n_ref == 0 || n_cur == 0 {
        return None;
    }
    Some((n_ref as f64, n_cur as f64))
}

/// Sum with NumPy's pairwise summation (`np.sum` on a contiguous float64
/// array), so that our sums round like SciPy's and also stay accurate on
/// long inputs.
pub(crate) fn pairwise_sum(a: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |acc, &x| acc + x)
    } else if n <= BLOCK {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for (k, rk) in r.iter_mut().enumerate() {
                *rk += a[i + k];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[i..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// Proportions `count / total` of a count vector (NumPy's `c / c.sum()`).
pub(crate) fn proportions(counts: &[u64], total: f64) -> Vec<f64> {
    counts.iter().map(|&c| c as f64 / total).collect()
}
