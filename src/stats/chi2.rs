//! Pearson chi-square test of homogeneity on a 2 x k table.

use serde::{Deserialize, Serialize};

use super::pairwise_sum;

/// Result of [`chi2_contingency`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Chi2Result {
    /// Pearson chi-square statistic.
    pub statistic: f64,
    /// Upper-tail p-value of the statistic under chi2(`dof`).
    pub pvalue: f64,
    /// Degrees of freedom, `k - 1` for `k` categories.
    pub dof: usize,
}

/// `scipy.stats.chi2_contingency([ref_counts, cur_counts],
/// correction=False)`.
///
/// Returns `None` where SciPy raises: slices of different length, no
/// categories, an empty sample or a category with zero total count (a zero
/// expected frequency). With a single category (`dof = 0`) the result is
/// statistic 0 and p-value 1, as in SciPy.
pub fn chi2_contingency(ref_counts: &[u64], cur_counts: &[u64]) -> Option<Chi2Result> {
    let k = ref_counts.len();
    if k == 0 || cur_counts.len() != k {
        return None;
    }
    let row = [
        ref_counts.iter().map(|&x| x as u128).sum::<u128>(),
        cur_counts.iter().map(|&x| x as u128).sum::<u128>(),
    ];
    let total = row[0] + row[1];
    if row[0] == 0
        || row[1] == 0
        || ref_counts
            .iter()
            .zip(cur_counts)
            .any(|(&a, &b)| a == 0 && b == 0)
    {
        return None;
    }
    let dof = k - 1;
    if dof == 0 {
        return Some(Chi2Result {
            statistic: 0.0,
            pvalue: 1.0,
            dof,
        });
    }
    // Same order as SciPy: expected = row * col / total; terms summed over the
    // row-major flattened table.
    let mut terms = Vec::with_capacity(2 * k);
    for (r, counts) in [ref_counts, cur_counts].into_iter().enumerate() {
        for (j, &obs) in counts.iter().enumerate() {
            let col = ref_counts[j] as u128 + cur_counts[j] as u128;
            let expected = (row[r] * col) as f64 / total as f64;
            let d = obs as f64 - expected;
            terms.push(d * d / expected);
        }
    }
    let statistic = pairwise_sum(&terms);
    Some(Chi2Result {
        statistic,
        pvalue: chi2_sf(statistic, dof as f64),
        dof,
    })
}

/// Chi-square survival function, `Q(dof/2, x/2)` (SciPy's `chdtrc`).
///
/// statrs's `gamma_ur` is used directly rather than `ChiSquared::sf`; it is
/// the same regularized upper incomplete gamma but avoids building a
/// distribution object (whose constructor returns a `Result`).
pub(crate) fn chi2_sf(x: f64, dof: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    if x.is_infinite() {
        return 0.0;
    }
    statrs::function::gamma::gamma_ur(dof / 2.0, x / 2.0)
}
