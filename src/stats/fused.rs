//! KS, Cramér-von Mises and Wasserstein-1 from one pass over two sorted
//! samples, for callers that want all three (the detector).
//!
//! The separate functions ([`super::ks_2samp`], [`super::cvm_2samp`],
//! [`super::wasserstein`]) each merge the two samples value by value. Here
//! the pass walks the *current* sample's distinct values and, between two
//! of them, the run of reference values that lies there, where the counts
//! of the current sample are constant:
//!
//! * KS: `F_r - F_c` can only reach its maximum just before a current value
//!   and its minimum just after one, so it is evaluated at those two points
//!   per distinct current value, with the same floating-point expression as
//!   [`super::ks_2samp`] (the statistic is bit for bit the same).
//! * CvM: a reference value in a run has a fixed deviation from its own
//!   rank (the number of current values below it), so a run adds
//!   `len * (2J)^2` plus `(g^3 - g) / 3` per group of `g` tied reference
//!   values; tie groups that include current values take the general
//!   route. The integer rank sums, and so the result, are the same.
//! * Wasserstein: the terms `|F_r - F_c| * (x_{k+1} - x_k)` of the merged
//!   sample are formed with the CDF difference as the exact integer
//!   `i m - j n` over `n m`, and summed in blocks of 128 with the pairwise
//!   sum. SciPy rounds each CDF and their difference instead, so the two
//!   differ by at most a few ulp of 1 per term times the gap, i.e. about
//!   `1e-16 * (max - min)` in absolute terms.

use super::{
    cvm::{self, CvmResult},
    ks::{self, KsResult},
    pairwise_sum,
};

/// The three sample-based statistics of one reference / current pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleStats {
    /// As [`super::ks_2samp`] returns it.
    pub ks: Option<KsResult>,
    /// As [`super::cvm_2samp`] returns it.
    pub cvm: Option<CvmResult>,
    /// As [`super::wasserstein`] returns it (within the rounding described
    /// in the module documentation).
    pub wasserstein: f64,
}

/// [`super::ks_2samp`], [`super::cvm_2samp`] and [`super::wasserstein`] of
/// two sorted, finite samples from one pass over them.
///
/// The pass costs O(m) steps per distinct current value plus a short,
/// branch-light loop per reference value, against three full merges for
/// the separate functions.
pub fn sample_stats(sorted_ref: &[f64], sorted_cur: &[f64]) -> SampleStats {
    let (n, m) = (sorted_ref.len(), sorted_cur.len());
    if n == 0 || m == 0 {
        return SampleStats {
            ks: None,
            cvm: None,
            wasserstein: f64::NAN,
        };
    }
    debug_assert!(sorted_ref.windows(2).all(|w| w[0] <= w[1]));
    debug_assert!(sorted_cur.windows(2).all(|w| w[0] <= w[1]));
    let p = pass(sorted_ref, sorted_cur);
    SampleStats {
        ks: Some(ks::from_statistic(n, m, p.ks_statistic)),
        cvm: (n >= 2 && m >= 2).then(|| cvm::from_rank_sums(n, m, p.sx4, p.sy4)),
        wasserstein: p.wasserstein,
    }
}

/// What one pass produces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Pass {
    /// The KS statistic before the exact path's rounding.
    pub ks_statistic: f64,
    /// CvM's doubled-rank sum of the reference sample.
    pub sx4: u128,
    /// CvM's doubled-rank sum of the current sample.
    pub sy4: u128,
    /// Wasserstein-1.
    pub wasserstein: f64,
}

/// Terms summed in blocks of 128 (the leaves of NumPy's pairwise sum), the
/// block sums kept and summed pairwise at the end: for non-negative terms
/// the relative error stays within a few dozen ulp however many there are.
struct BlockSum {
    block: [f64; 128],
    len: usize,
    sums: Vec<f64>,
}

impl BlockSum {
    fn new() -> Self {
        Self {
            block: [0.0; 128],
            len: 0,
            sums: Vec::new(),
        }
    }

    #[inline(always)]
    fn push(&mut self, x: f64) {
        self.block[self.len] = x;
        self.len += 1;
        if self.len == self.block.len() {
            self.sums.push(pairwise_sum(&self.block));
            self.len = 0;
        }
    }

    fn total(mut self) -> f64 {
        self.sums.push(pairwise_sum(&self.block[..self.len]));
        pairwise_sum(&self.sums)
    }
}

/// The pass proper; both samples non-empty, sorted and finite.
pub(crate) fn pass(r: &[f64], c: &[f64]) -> Pass {
    let (n, m) = (r.len(), c.len());
    let (f1, f2) = (n as f64, m as f64);
    let (n_i, m_i) = (n as i64, m as i64);
    // KS extremes of F_r - F_c, as `ks::statistic` tracks them. The
    // candidates are first compared by their exact numerators
    // `n m (F_r - F_c) = i m - j n`: while n m <= 2^50 the rationals of two
    // different numerators differ by more than the rounding of the float
    // expression (3 half-ulp of 1 each), so only candidates that reach the
    // best numerator so far can change the float extreme, and only they
    // need the two divisions. Larger samples evaluate every candidate.
    let (mut max_s, mut min_s) = (0.0f64, 0.0f64);
    let (mut kmax, mut kmin) = (0i64, 0i64);
    let keys = (n as u128) * (m as u128) <= 1u128 << 50;
    let (mut sx, mut sy) = (0u128, 0u128);
    let mut terms = BlockSum::new();
    // The last merged value whose Wasserstein term waits for the next
    // value, and `n m (F_r - F_c)` just after it. Starting at the smallest
    // value with a zero difference makes the first term 0.
    let mut px = r[0].min(c[0]);
    let mut pnum: i64 = 0;
    let (mut i, mut j) = (0usize, 0usize);
    loop {
        // The run of reference values below the next current value (all of
        // them once the current sample is exhausted), with j current
        // values below each of them.
        let w = c.get(j).copied().unwrap_or(f64::INFINITY);
        let start = i;
        let jn = j as i64 * n_i;
        let mut ties = 0usize;
        let mut prev = f64::NAN;
        while i < n {
            let x = r[i];
            if x >= w {
                break;
            }
            // |i m - j n| < 2^63 is exact in f64 below 2^53, far beyond any
            // sample in memory.
            terms.push(pnum.abs() as f64 * (x - px));
            ties += usize::from(x == prev);
            prev = x;
            px = x;
            i += 1;
            pnum = i as i64 * m_i - jn;
        }
        // Each reference value's doubled deviation from its own rank is 2j.
        let jj = j as u64;
        sx += u128::from(jj * jj) * 4 * (i - start) as u128;
        if ties > 0 {
            sx += run_tie_correction(&r[start..i]);
        }
        if j == m {
            break;
        }
        // Just before w: the largest F_r - F_c with j current values below.
        if !keys || pnum >= kmax {
            max_s = max_s.max(i as f64 / f1 - j as f64 / f2);
            kmax = kmax.max(pnum);
        }
        terms.push(pnum.abs() as f64 * (w - px));
        // The tie group at w: reference values equal to it, then the
        // current ones.
        let l = i;
        while i < n && r[i] == w {
            i += 1;
        }
        let mut g = 1;
        while j + g < m && c[j + g] == w {
            g += 1;
        }
        if i == l && g == 1 {
            // A lone current value's deviation is the number of reference
            // values below it.
            let ll = l as u64;
            sy += u128::from(ll * ll) * 4;
        } else {
            // Mid-ranks, doubled: positions start+1 ..= end averaged.
            let two_rank = (l + j) as i128 + 1 + (i + j + g) as i128;
            for idx in l..i {
                let d = two_rank - 2 * (idx as i128 + 1);
                sx += (d * d) as u128;
            }
            for idx in j..j + g {
                let d = two_rank - 2 * (idx as i128 + 1);
                sy += (d * d) as u128;
            }
        }
        j += g;
        // Just after w: the smallest F_r - F_c with j current values below.
        pnum = i as i64 * m_i - j as i64 * n_i;
        if !keys || pnum <= kmin {
            min_s = min_s.min(i as f64 / f1 - j as f64 / f2);
            kmin = kmin.min(pnum);
        }
        px = w;
    }
    // SciPy clips -min to [0, 1] and keeps max when they tie.
    let neg_min = (-min_s).clamp(0.0, 1.0);
    let ks_statistic = if neg_min > max_s { neg_min } else { max_s };
    Pass {
        ks_statistic,
        sx4: sx,
        sy4: sy,
        // n m is exact in f64 for any sample sizes that fit in memory.
        wasserstein: terms.total() / (f1 * f2),
    }
}

/// `sum (g^3 - g) / 3` over the groups of `g` equal values of a sorted run
/// of reference values: what ties inside the run add to its doubled-rank
/// sum.
fn run_tie_correction(run: &[f64]) -> u128 {
    let mut total = 0u128;
    let mut k = 0;
    while k < run.len() {
        let mut g = 1;
        while k + g < run.len() && run[k + g] == run[k] {
            g += 1;
        }
        let g = g as u128;
        total += (g * g * g - g) / 3;
        k += g as usize;
    }
    total
}
