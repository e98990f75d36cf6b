//! Two-sample Cramér-von Mises test, matching
//! `scipy.stats.cramervonmises_2samp(x, y, method='auto')`.
//!
//! Statistic: Anderson's `T = U / (nm(n+m)) - (4nm - 1) / (6(n+m))` with
//! `U = n sum (r_i - i)^2 + m sum (s_j - j)^2` over mid-ranks in the pooled
//! sample. p-value: exact (Xiao, Gordon & Yakovlev 2006) when both sizes are
//! <= 20, otherwise Anderson's normalisation of `T` fed to the limiting
//! one-sample CvM distribution (Csörgő & Faraway 1996).

use serde::{Deserialize, Serialize};

/// Which p-value computation produced a [`CvmResult`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CvmMethod {
    /// Exact permutation distribution (both sizes <= 20).
    Exact,
    /// Limiting distribution of the normalised statistic.
    Asymptotic,
}

/// Result of [`cvm_2samp`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CvmResult {
    /// The statistic `T`.
    pub statistic: f64,
    /// The p-value, in `[0, 1]`.
    pub pvalue: f64,
    /// How the p-value was computed.
    pub method: CvmMethod,
}

/// Two-sample Cramér-von Mises test on sorted, finite samples.
///
/// Returns `None` when either sample has fewer than 2 values (SciPy returns
/// NaN / raises there).
///
/// The asymptotic p-value is `1 - cdf`, so like SciPy's it carries an
/// absolute (not relative) error of a few 1e-16 and is clipped at 0; SciPy
/// documents the limiting cdf as inaccurate for large statistics.
pub fn cvm_2samp(sorted_x: &[f64], sorted_y: &[f64]) -> Option<CvmResult> {
    let (nx, ny) = (sorted_x.len(), sorted_y.len());
    if nx < 2 || ny < 2 {
        return None;
    }
    debug_assert!(sorted_x.windows(2).all(|w| w[0] <= w[1]));
    debug_assert!(sorted_y.windows(2).all(|w| w[0] <= w[1]));
    let (sx4, sy4) = rank_sums(sorted_x, sorted_y);
    Some(from_rank_sums(nx, ny, sx4, sy4))
}

/// The test result from the doubled-rank sums `sx4 = 4 sum (r_i - i)^2`
/// and `sy4 = 4 sum (s_j - j)^2` (mid-ranks in the pooled sample) of
/// samples of `nx >= 2` and `ny >= 2` values.
pub(crate) fn from_rank_sums(nx: usize, ny: usize, sx4: u128, sy4: u128) -> CvmResult {
    // 4U is an exact integer; one rounding when converting.
    let u = (nx as u128 * sx4 + ny as u128 * sy4) as f64 / 4.0;
    let k = nx as u128 * ny as u128;
    let big_n = (nx + ny) as u128;
    let t = u / (k * big_n) as f64 - (4 * k - 1) as f64 / (6 * big_n) as f64;
    if nx.max(ny) <= 20 {
        let p = pval_exact(u, nx as u64, ny as u64);
        CvmResult {
            statistic: t,
            pvalue: p,
            method: CvmMethod::Exact,
        }
    } else {
        let p = pval_asymptotic(t, nx as u128, ny as u128);
        CvmResult {
            statistic: t,
            pvalue: p,
            method: CvmMethod::Asymptotic,
        }
    }
}

/// `4 * sum (r_i - i)^2` for each sample, with mid-ranks for ties, in exact
/// integer arithmetic (twice a mid-rank is an integer).
fn rank_sums(x: &[f64], y: &[f64]) -> (u128, u128) {
    // Each doubled deviation is at most 2N in magnitude, so each sum is at
    // most N * (2N)^2 = 4N^3; while that fits in a u64 (N up to ~1.6
    // million) the cheaper 64-bit path gives the same exact integers.
    let n = (x.len() + y.len()) as u128;
    if 4 * n * n * n <= u128::from(u64::MAX) {
        let (sx, sy) = rank_sums_u64(x, y);
        return (sx.into(), sy.into());
    }
    rank_sums_u128(x, y)
}

/// [`rank_sums`] for pooled sizes whose sums fit in a u64.
///
/// Values without ties (the common case for continuous data) take one
/// branch-free merge step each: a lone value's mid-rank is its pooled rank
/// `i + j + 1`, so its deviation from its own rank is the number of values
/// of the *other* sample before it. Tie groups take the general route.
fn rank_sums_u64(x: &[f64], y: &[f64]) -> (u64, u64) {
    // The inputs are finite, so +inf marks an exhausted sample.
    let at = |s: &[f64], k: usize| s.get(k).copied().unwrap_or(f64::INFINITY);
    let (nx, ny) = (x.len(), y.len());
    let (mut i, mut j) = (0usize, 0usize);
    let (mut sx, mut sy) = (0u64, 0u64);
    while i < nx || j < ny {
        let (a, b) = (at(x, i), at(y, j));
        let v = a.min(b);
        let take_y = b < a;
        let (ni, nj) = (i + usize::from(!take_y), j + usize::from(take_y));
        if at(x, ni).min(at(y, nj)) != v {
            let d = (if take_y { i } else { j }) as u64;
            let dd = 4 * d * d;
            sx += if take_y { 0 } else { dd };
            sy += if take_y { dd } else { 0 };
            (i, j) = (ni, nj);
            continue;
        }
        let start = (i + j) as i64;
        let (i0, j0) = (i, j);
        while i < nx && x[i] == v {
            i += 1;
        }
        while j < ny && y[j] == v {
            j += 1;
        }
        let two_rank = start + 1 + (i + j) as i64;
        for idx in i0..i {
            let d = two_rank - 2 * (idx as i64 + 1);
            sx += (d * d) as u64;
        }
        for idx in j0..j {
            let d = two_rank - 2 * (idx as i64 + 1);
            sy += (d * d) as u64;
        }
    }
    (sx, sy)
}

/// [`rank_sums`] in 128-bit arithmetic, for pooled sizes beyond the u64
/// bound.
fn rank_sums_u128(x: &[f64], y: &[f64]) -> (u128, u128) {
    let (mut i, mut j) = (0usize, 0usize);
    let (mut sx, mut sy) = (0u128, 0u128);
    while i < x.len() || j < y.len() {
        let v = match (x.get(i), y.get(j)) {
            (Some(&a), Some(&b)) => a.min(b),
            (Some(&a), None) => a,
            (None, Some(&b)) => b,
            (None, None) => break,
        };
        let start = (i + j) as i128; // pooled 0-based position of the tie group
        let (i0, j0) = (i, j);
        while i < x.len() && x[i] == v {
            i += 1;
        }
        while j < y.len() && y[j] == v {
            j += 1;
        }
        let end = (i + j) as i128;
        // average of ranks start+1 ..= end, doubled
        let two_rank = start + 1 + end;
        for idx in i0..i {
            let d = two_rank - 2 * (idx as i128 + 1);
            sx += (d * d) as u128;
        }
        for idx in j0..j {
            let d = two_rank - 2 * (idx as i128 + 1);
            sy += (d * d) as u128;
        }
    }
    (sx, sy)
}

/// NumPy's float `//` (npy_divmod): floor of `a / b`, with NumPy's
/// correction for the rounding of the quotient.
fn floor_divide(a: f64, b: f64) -> f64 {
    let m = a % b; // C fmod
    let mut div = (a - m) / b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        div -= 1.0;
    }
    if div != 0.0 {
        let mut fl = div.floor();
        if div - fl > 0.5 {
            fl += 1.0;
        }
        fl
    } else {
        0.0f64.copysign(a / b)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Exact p-value `P(U >= u)` (SciPy's `_pval_cvm_2samp_exact`): a dynamic
/// programme over lattice paths from (0,0) to (m,n) that tracks, per cell,
/// the frequency table of the partial sums of `(a v - b u)^2`.
fn pval_exact(s: f64, m: u64, n: u64) -> f64 {
    let lcm = m / gcd(m, n) * n;
    let a = lcm / m;
    let b = lcm / n;
    let mn = m * n;
    // SciPy evaluates zeta in float64 (s is a float), then float `//`.
    let zeta = floor_divide(
        (lcm * lcm * (m + n)) as f64 * (6.0 * s - (mn * (4 * mn - 1)) as f64),
        (6 * mn * mn) as f64,
    );
    // gs[v]: sorted (value, frequency) pairs for the current column u.
    let mut gs: Vec<Vec<(u64, u64)>> = vec![Vec::new(); (m + 1) as usize];
    gs[0].push((0, 1));
    for u in 0..=n {
        let mut next: Vec<Vec<(u64, u64)>> = Vec::with_capacity(gs.len());
        let mut tmp: Vec<(u64, u64)> = Vec::new();
        for (v, g) in gs.iter().enumerate() {
            tmp = merge_tables(&tmp, g);
            let d = (a * v as u64) as i64 - (b * u) as i64;
            let res = (d * d) as u64;
            for e in tmp.iter_mut() {
                e.0 += res;
            }
            next.push(tmp.clone());
        }
        gs = next;
    }
    let total: u64 = gs[m as usize]
        .iter()
        .filter(|(v, _)| *v as f64 >= zeta)
        .map(|(_, f)| f)
        .sum();
    total as f64 / binom(m + n, m) as f64
}

/// Merges two sorted frequency tables, adding frequencies of equal values.
fn merge_tables(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push((a[i].0, a[i].1 + b[j].1));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// Binomial coefficient for the small sizes of the exact test (<= C(40,20)).
fn binom(n: u64, k: u64) -> u64 {
    let k = k.min(n - k);
    // Each partial product r * (n - i) / (i + 1) is itself a binomial
    // coefficient, so the division is exact and nothing overflows for n <= 40.
    (0..k).fold(1u64, |r, i| r * (n - i) / (i + 1))
}

/// Asymptotic p-value (SciPy's `_pval_cvm_2samp_asymptotic`).
fn pval_asymptotic(t: f64, nx: u128, ny: u128) -> f64 {
    let k = nx * ny;
    let big_n = nx + ny;
    let nf = big_n as f64;
    let et = (1.0 + 1.0 / nf) / 6.0;
    // Integer numerator/denominator like Python's int arithmetic.
    let num = (big_n as i128 + 1)
        * (4 * k as i128 * big_n as i128 - 3 * (nx * nx + ny * ny) as i128 - 2 * k as i128);
    let den = 45 * big_n * big_n * 4 * k;
    let vt = num as f64 / den as f64;
    let tn = 1.0 / 6.0 + (t - et) / (45.0 * vt).sqrt();
    if tn >= 0.003 {
        (1.0 - cdf_cvm_inf(tn)).max(0.0)
    } else {
        1.0
    }
}

/// CDF of the limiting one-sample CvM distribution (Csörgő & Faraway 1996,
/// eq. 1.2), summing terms until one is below 1e-7 exactly like SciPy (the
/// truncation point matters at our tolerance).
fn cdf_cvm_inf(x: f64) -> f64 {
    use std::f64::consts::PI;
    let pi15 = PI.powf(1.5);
    let mut tot = 0.0;
    // Gamma(k + 1/2) / Gamma(k + 1), by recurrence from sqrt(pi).
    let mut gratio = PI.sqrt();
    let mut k = 0u32;
    loop {
        let kf = k as f64;
        if k > 0 {
            gratio *= (kf - 0.5) / kf;
        }
        let u = gratio / (pi15 * x.sqrt());
        let y = 4.0 * kf + 1.0;
        let q = y * y / (16.0 * x);
        let z = u * y.sqrt() * exp_neg_kv_quarter(q);
        tot += z;
        if z.abs() < 1e-7 || k > 10_000 {
            break;
        }
        k += 1;
    }
    tot
}

/// `exp(-q) * K_{1/4}(q)` for `q > 0`, from the integral
/// `K_nu(q) = int_0^inf exp(-q cosh t) cosh(nu t) dt`.
///
/// The trapezoidal rule converges geometrically for this analytic, doubly
/// exponentially decaying integrand; the step is chosen from the width of
/// the strip of analyticity that keeps the integrand bounded, which gives
/// ~1e-16 relative accuracy for all `q`.
fn exp_neg_kv_quarter(q: f64) -> f64 {
    if q.is_nan() || q <= 0.0 {
        return f64::NAN;
    }
    // Underflows to 0 in SciPy too (exp(-q) * K ~ exp(-2q)).
    if q > 400.0 {
        return 0.0;
    }
    // f(t) = exp(-q (cosh t - 1)) cosh(t/4); result = exp(-2q) * int f.
    let d = (60.0 / q).sqrt().min(1.5);
    let h = 0.09 * d;
    let f = |t: f64| {
        let s = (t / 2.0).sinh();
        (-q * 2.0 * s * s).exp() * (t / 4.0).cosh()
    };
    let mut sum = 0.5 * f(0.0);
    let mut j = 1u32;
    loop {
        let t = j as f64 * h;
        let s = (t / 2.0).sinh();
        let expo = q * 2.0 * s * s;
        let v = f(t);
        sum += v;
        if expo > 45.0 + t / 4.0 || j > 100_000 {
            break;
        }
        j += 1;
    }
    (-2.0 * q).exp() * sum * h
}

#[cfg(test)]
mod tests {
    #[test]
    fn u64_rank_sums_equal_the_u128_ones() {
        // Heavy ties, lone values and an exhausted side in one sample pair.
        let x: Vec<f64> = (0..500).map(|i| f64::from(i / 3)).collect();
        let y: Vec<f64> = (0..300).map(|i| f64::from(i) * 0.7 - 20.0).collect();
        let (a, b) = super::rank_sums_u64(&x, &y);
        assert_eq!(
            (u128::from(a), u128::from(b)),
            super::rank_sums_u128(&x, &y)
        );
        let (a, b) = super::rank_sums_u64(&y, &x);
        assert_eq!(
            (u128::from(a), u128::from(b)),
            super::rank_sums_u128(&y, &x)
        );
    }
}
