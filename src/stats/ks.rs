//! Two-sample Kolmogorov-Smirnov test, matching
//! `scipy.stats.ks_2samp(r, c, alternative='two-sided', method='auto')`.
//!
//! * `max(n, m) <= 10000`: exact p-value. `D` is rounded to `h / lcm(n, m)`
//!   and the probability of a lattice path leaving the band `|x/n - y/m| <
//!   D` is computed with Hodges' square method (`n == m`) or Viehmann's
//!   variant of the "inside" recursion that carries the exit probability
//!   directly (`n != m`). If that result is not a probability, SciPy falls
//!   back to the asymptotic branch, and so do we.
//! * otherwise: `kstwo.sf(D, round(n*m/(n+m)))`, the two-sided one-sample
//!   Kolmogorov distribution computed with the Simard & L'Ecuyer dispatch of
//!   SciPy's `_ksstats.py` (Ruben-Gambino, Durbin matrix (MTW), Pomeranz,
//!   Pelz-Good and `2 * smirnov`).

use serde::{Deserialize, Serialize};

/// Which p-value computation produced a [`KsResult`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KsMethod {
    /// Exact lattice-path probability.
    Exact,
    /// `kstwo.sf(D, round(n*m/(n+m)))`.
    Asymptotic,
}

/// Result of [`ks_2samp`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KsResult {
    /// Largest absolute ECDF difference, in `[0, 1]`.
    pub statistic: f64,
    /// Two-sided p-value, in `[0, 1]`.
    pub pvalue: f64,
    /// How the p-value was computed.
    pub method: KsMethod,
}

/// SciPy's `MAX_AUTO_N`: sizes up to this use the exact p-value.
const MAX_AUTO_N: usize = 10_000;

/// Two-sample two-sided KS test on sorted, finite samples (one O(n + m)
/// merge plus the p-value computation).
///
/// Returns `None` when either sample is empty (SciPy raises).
pub fn ks_2samp(sorted_ref: &[f64], sorted_cur: &[f64]) -> Option<KsResult> {
    let (n1, n2) = (sorted_ref.len(), sorted_cur.len());
    if n1 == 0 || n2 == 0 {
        return None;
    }
    debug_assert!(sorted_ref.windows(2).all(|w| w[0] <= w[1]));
    debug_assert!(sorted_cur.windows(2).all(|w| w[0] <= w[1]));
    Some(from_statistic(n1, n2, statistic(sorted_ref, sorted_cur)))
}

/// The test result for a statistic `d` computed as [`ks_2samp`] computes
/// it, on samples of `n1 >= 1` and `n2 >= 1` values: SciPy's choice of
/// p-value method and, on the exact path, its rounding of `d`.
pub(crate) fn from_statistic(n1: usize, n2: usize, d: f64) -> KsResult {
    let g = gcd(n1 as u64, n2 as u64);
    if n1.max(n2) <= MAX_AUTO_N {
        let (ok, d_exact, prob) = attempt_exact(n1 as u64, n2 as u64, g, d);
        if ok {
            return KsResult {
                statistic: d_exact,
                pvalue: prob,
                method: KsMethod::Exact,
            };
        }
        // SciPy keeps the rounded statistic when it falls back.
        return asymptotic(n1, n2, d_exact);
    }
    asymptotic(n1, n2, d)
}

/// The statistic exactly as SciPy computes it in floating point:
/// `max(cdf1 - cdf2)` vs `-min(cdf1 - cdf2)` with `cdf = count / n`,
/// evaluated at every pooled value (ties counted with `<=`).
fn statistic(a: &[f64], b: &[f64]) -> f64 {
    let (n1, n2) = (a.len(), b.len());
    let (f1, f2) = (n1 as f64, n2 as f64);
    // The inputs are finite, so +inf marks an exhausted sample.
    let at = |s: &[f64], k: usize| s.get(k).copied().unwrap_or(f64::INFINITY);
    let (mut i, mut j) = (0usize, 0usize);
    let (mut max_s, mut min_s) = (0.0f64, 0.0f64);
    let mut prev = f64::NEG_INFINITY;
    // One branch-free merge step per value. Before merging a value `v`
    // greater than the previous one, (i, j) count the values `<= prev`, the
    // ECDFs at the end of `prev`'s tie group, which is where SciPy evaluates
    // them; inside a tie group the difference is replaced by 0, which
    // cannot change a max that starts at 0 or a min that starts at 0. The
    // last group's difference is 1 - 1 = 0 and needs no evaluation.
    for _ in 0..n1 + n2 {
        let (x, y) = (at(a, i), at(b, j));
        let v = x.min(y);
        let diff = if v > prev {
            i as f64 / f1 - j as f64 / f2
        } else {
            0.0
        };
        max_s = max_s.max(diff);
        min_s = min_s.min(diff);
        let take_b = y < x;
        j += usize::from(take_b);
        i += usize::from(!take_b);
        prev = v;
    }
    // SciPy clips -min to [0, 1] and keeps max when they tie.
    let neg_min = (-min_s).clamp(0.0, 1.0);
    if neg_min > max_s {
        neg_min
    } else {
        max_s
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// SciPy's `_attempt_exact_2kssamp` for the two-sided alternative:
/// returns `(success, rounded D, probability)`.
fn attempt_exact(n1: u64, n2: u64, g: u64, d: f64) -> (bool, f64, f64) {
    let lcm = (n1 / g) * n2;
    // np.round is round-half-even; d * lcm is far from .5 ties in practice
    // but use the same rounding anyway.
    let h = (d * lcm as f64).round_ties_even();
    let d = h / lcm as f64;
    // 0 <= d <= 1 so 0 <= h <= lcm <= 1e8: the cast is exact.
    let h = h as u64;
    if h == 0 {
        return (true, d, 1.0);
    }
    let prob = if n1 == n2 {
        prob_outside_square(n1, h)
    } else {
        outer_prob_inside(n1, n2, g, h)
    };
    // `!(0 <= p <= 1)` also catches NaN.
    if !(0.0..=1.0).contains(&prob) {
        return (false, d, prob);
    }
    (true, d, prob)
}

/// `P(D_{n,n} >= h/n)` by Hodges' alternating series, evaluated with a
/// Horner-like nesting to avoid cancellation (SciPy's
/// `_compute_prob_outside_square`).
fn prob_outside_square(n: u64, h: u64) -> f64 {
    let (n, h) = (n as i64, h as i64);
    let mut p = 0.0f64;
    let mut k = (n as f64 / h as f64).floor() as i64;
    while k >= 0 {
        let mut p1 = 1.0f64;
        for j in 0..h {
            p1 = (n - k * h - j) as f64 * p1 / (n + k * h + j + 1) as f64;
        }
        p = p1 * (1.0 - p);
        k -= 1;
    }
    2.0 * p
}

/// Proportion of lattice paths from (0,0) to (m,n) that do *not* stay
/// strictly inside `|x/m - y/n| < h / lcm(m, n)`, with the recursion for
/// `1 - p` of Viehmann (arXiv:2102.08037) over a sliding column window
/// (SciPy's `_compute_outer_prob_inside_method`).
fn outer_prob_inside(m: u64, n: u64, g: u64, h: u64) -> f64 {
    let (m, n) = if m < n { (n, m) } else { (m, n) };
    let (m, n, g, h) = (m as i64, n as i64, g as i64, h as i64);
    let mg = m / g;
    let ng = n / g;
    let (hf, mgf, ngf) = (h as f64, mg as f64, ng as f64);
    let mut minj: i64 = 0;
    let mut maxj: i64 = ((hf / mgf).ceil() as i64).min(n + 1);
    let mut curlen = maxj - minj;
    let len_a = (2 * maxj + 2).min(n + 1) as usize;
    let mut a = vec![1.0f64; len_a];
    for v in a.iter_mut().take(maxj as usize) {
        *v = 0.0;
    }
    // SciPy evaluates val = (A * i + val * j) / (i + j), a serial chain with a
    // division in it. We use a reciprocal table instead, which takes the
    // division off the dependency chain (about 3x faster for large h). The
    // recursion is a convex combination (weights i/(i+j) and j/(i+j)), so
    // relative rounding errors only add up along a path: at most a few ulp
    // per step, i.e. ~1e-11 relative after m + n = 20000 steps.
    let inv: Vec<f64> = (0..=(m + n))
        .map(|k| if k == 0 { 0.0 } else { 1.0 / k as f64 })
        .collect();
    for i in 1..=m {
        let (lastminj, lastlen) = (minj, curlen);
        let fi = i as f64;
        minj = (((ngf * fi - hf) / mgf).floor() as i64 + 1).max(0).min(n);
        maxj = (((ngf * fi + hf) / mgf).ceil() as i64).min(n + 1);
        if maxj <= minj {
            return 1.0;
        }
        let mut val = if minj == 0 { 0.0 } else { 1.0 };
        for jj in 0..(maxj - minj) {
            let j = jj + minj;
            // Entries past the stored window stand for cells above the band,
            // whose exit probability is 1.
            let prev = a
                .get((jj + minj - lastminj) as usize)
                .copied()
                .unwrap_or(1.0);
            let r = inv.get((i + j) as usize).copied().unwrap_or(0.0);
            val = prev * (fi * r) + val * (j as f64 * r);
            if let Some(slot) = a.get_mut(jj as usize) {
                *slot = val;
            }
        }
        curlen = maxj - minj;
        if lastlen > curlen {
            let lo = (maxj - minj) as usize;
            let hi = ((maxj - minj + (lastlen - curlen)) as usize).min(len_a);
            for v in a.iter_mut().take(hi).skip(lo) {
                *v = 1.0;
            }
        }
    }
    a.get((maxj - minj - 1) as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Asymptotic branch: `kstwo.sf(d, round(n1*n2/(n1+n2)))`, clipped.
fn asymptotic(n1: usize, n2: usize, d: f64) -> KsResult {
    let (a, b) = (n1 as f64, n2 as f64);
    let (m, n) = if a >= b { (a, b) } else { (b, a) };
    let en = m * n / (m + n);
    let p = kstwo_sf(d, en.round_ties_even());
    KsResult {
        statistic: d,
        pvalue: p.clamp(0.0, 1.0),
        method: KsMethod::Asymptotic,
    }
}

// ---------------------------------------------------------------------------
// The one-sample two-sided Kolmogorov distribution (scipy.stats.kstwo).

const E128: i32 = 128;
const P128: f64 = 3.402_823_669_209_385e38; // 2^128
const M128: f64 = 2.938_735_877_055_719e-39; // 2^-128

/// `scipy.stats.kstwo.sf(x, n)`: survival function of the two-sided
/// one-sample KS statistic `D_n`. Outside the support `(0.5/n, 1)` it is 1
/// below and 0 above; NaN for NaN `x` or a non-integral / non-positive `n`.
pub fn kstwo_sf(x: f64, n: f64) -> f64 {
    if x.is_nan() || n.is_nan() || n < 1.0 || n.round() != n {
        return f64::NAN;
    }
    if x <= 0.5 / n {
        return 1.0;
    }
    if x >= 1.0 {
        return 0.0;
    }
    // n is a positive integer here; `as` saturates beyond u64 (irrelevant
    // for sample sizes).
    kolmogn_sf(n as u64, x)
}

fn clip01(p: f64) -> f64 {
    p.clamp(0.0, 1.0)
}

/// SciPy's `_kolmogn(n, x, cdf=False)` dispatch.
fn kolmogn_sf(n: u64, x: f64) -> f64 {
    let nf = n as f64;
    let t = nf * x;
    if t <= 1.0 {
        // Ruben-Gambino: exact for 1/(2n) <= x <= 1/n.
        if t <= 0.5 {
            return 1.0;
        }
        let prob = if n <= 140 {
            let inv = 1.0 / nf;
            let f = 2.0 * t - 1.0;
            (1..=n).fold(1.0, |acc, i| acc * (i as f64 * inv * f))
        } else {
            (log_nfactorial_div_n_pow_n(nf) + nf * (2.0 * t - 1.0).ln()).exp()
        };
        return clip01(1.0 - prob);
    }
    if t >= nf - 1.0 {
        // Ruben-Gambino: exact for x >= 1 - 1/n.
        return clip01(2.0 * (1.0 - x).powf(nf));
    }
    if x >= 0.5 {
        return clip01(2.0 * smirnov_sf(n, x));
    }
    let nxsquared = t * x;
    if n <= 140 {
        if nxsquared <= 0.754693 {
            return clip01(1.0 - kolmogn_dmtw_cdf(n, x));
        }
        if nxsquared <= 4.0 {
            return clip01(1.0 - kolmogn_pomeranz_cdf(n, x));
        }
        return clip01(2.0 * smirnov_sf(n, x));
    }
    if nxsquared >= 370.0 {
        return 0.0;
    }
    if nxsquared >= 2.2 {
        return clip01(2.0 * smirnov_sf(n, x));
    }
    let cdf = if nxsquared >= 18.0 {
        1.0
    } else if n <= 100_000 && nf * x.powf(1.5) <= 1.4 {
        kolmogn_dmtw_cdf(n, x)
    } else {
        kolmogn_pelz_good_cdf(n, x)
    };
    clip01(1.0 - clip01(cdf))
}

/// `log(n! / n^n)` by Stirling's series with the `n log n` removed up front.
fn log_nfactorial_div_n_pow_n(n: f64) -> f64 {
    // B_{2j} / (2j (2j-1)), j = 8..1, written with the digits SciPy uses;
    // they round to the same f64 values as shorter literals would.
    #[allow(clippy::excessive_precision)]
    const STIRLING: [f64; 8] = [
        -2.955_065_359_477_124_183e-2,
        6.410_256_410_256_410_256_4e-3,
        -1.917_526_917_526_917_526_9e-3,
        8.417_508_417_508_417_508_4e-4,
        -5.952_380_952_380_952_381e-4,
        7.936_507_936_507_936_507_9e-4,
        -2.777_777_777_777_777_777_8e-3,
        8.333_333_333_333_333_333_3e-2,
    ];
    let log_2pi = (2.0 * std::f64::consts::PI).ln();
    let rn = 1.0 / n;
    let z = rn / n;
    let poly = STIRLING.iter().fold(0.0, |y, &c| y * z + c);
    n.ln() / 2.0 - n + log_2pi / 2.0 + rn * poly
}

/// `x * 2^e` without intermediate overflow / underflow of the scale.
fn ldexp(mut x: f64, mut e: i64) -> f64 {
    while e > 1000 {
        x *= 2f64.powi(1000);
        e -= 1000;
        if x.is_infinite() {
            return x;
        }
    }
    while e < -1000 {
        x *= 2f64.powi(-1000);
        e += 1000;
        if x == 0.0 {
            return x;
        }
    }
    x * 2f64.powi(e as i32)
}

/// Square matrix product `a * b` (row-major, size `m`).
fn matmul(a: &[f64], b: &[f64], m: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * m];
    for i in 0..m {
        let row = &mut c[i * m..(i + 1) * m];
        for k in 0..m {
            let aik = a[i * m + k];
            if aik == 0.0 {
                continue;
            }
            for (cij, &bkj) in row.iter_mut().zip(&b[k * m..(k + 1) * m]) {
                *cij += aik * bkj;
            }
        }
    }
    c
}

/// `P(D_n <= d)` by the Durbin matrix algorithm in the Marsaglia-Tsang-Wang
/// form (SciPy's `_kolmogn_DMTW`): the k-th diagonal entry of
/// `(n!/n^n) H^n`, with power-of-two rescaling kept in a separate exponent.
fn kolmogn_dmtw_cdf(n: u64, d: f64) -> f64 {
    if d >= 1.0 {
        return 1.0;
    }
    let nf = n as f64;
    let nd = nf * d;
    if nd <= 0.5 {
        return 0.0;
    }
    let k = nd.ceil() as usize;
    let h = k as f64 - nd;
    let m = 2 * k - 1;

    // v[j] = (1 - h^(j+1)) / (j+1)!, w[j] = 1/j!
    let mut v: Vec<f64> = (1..=m).map(|j| 1.0 - h.powf(j as f64)).collect();
    let mut w = vec![0.0; m];
    let mut fac = 1.0f64;
    for j in 1..=m {
        w[j - 1] = fac;
        fac /= j as f64; // may underflow; harmless
        v[j - 1] *= fac;
    }
    let tt = (2.0 * h - 1.0).max(0.0).powf(m as f64) - 2.0 * h.powf(m as f64);
    v[m - 1] = (1.0 + tt) * fac;

    let mut hm = vec![0.0; m * m];
    for i in 1..m {
        // H[i-1:, i] = w[:m-i+1]
        for (r, &wv) in (i - 1..m).zip(w.iter()) {
            hm[r * m + i] = wv;
        }
    }
    for r in 0..m {
        hm[r * m] = v[r];
    }
    for c in 0..m {
        hm[(m - 1) * m + c] = v[m - 1 - c];
    }

    let mut hpwr = vec![0.0; m * m];
    for i in 0..m {
        hpwr[i * m + i] = 1.0;
    }
    let mut nn = n;
    let mut expnt: i64 = 0;
    let mut hexpnt: i64 = 0;
    while nn > 0 {
        if nn % 2 == 1 {
            hpwr = matmul(&hpwr, &hm, m);
            expnt += hexpnt;
        }
        hm = matmul(&hm, &hm, m);
        hexpnt *= 2;
        if hm[(k - 1) * m + (k - 1)].abs() > P128 {
            for x in hm.iter_mut() {
                *x /= P128;
            }
            hexpnt += E128 as i64;
        }
        nn /= 2;
    }
    let mut p = hpwr[(k - 1) * m + (k - 1)];
    for i in 1..=n {
        p = i as f64 * p / nf;
        if p.abs() < M128 {
            p *= P128;
            expnt -= E128 as i64;
        }
    }
    if expnt != 0 {
        p = ldexp(p, expnt);
    }
    clip01(p)
}

/// Row interval endpoints for the Pomeranz recursion.
fn pomeranz_j1j2(i: i64, n: i64, ll: i64, ceilf: i64, roundf: i64) -> (i64, i64) {
    let (j1, j2) = if i == 0 {
        (-ll - ceilf - 1, ll + ceilf - 1)
    } else {
        let (ip1div2, ip1mod2) = ((i + 1) / 2, (i + 1) % 2);
        if ip1mod2 == 0 {
            if ip1div2 == n + 1 {
                (n - ll - ceilf - 1, n + ll + ceilf - 1)
            } else {
                (ip1div2 - 1 - ll - roundf - 1, ip1div2 + ll - 1 + ceilf - 1)
            }
        } else {
            (ip1div2 - 1 - ll - 1, ip1div2 + ll + roundf - 1)
        }
    };
    ((j1 + 2).max(0), j2.min(n))
}

/// `P(D_n <= x)` by the Pomeranz (1974) recursion (SciPy's
/// `_kolmogn_Pomeranz`): two rows convolved with truncated Poisson weights.
fn kolmogn_pomeranz_cdf(n: u64, x: f64) -> f64 {
    let nf = n as f64;
    let ni = n as i64;
    let t = nf * x;
    let ll = t.floor() as i64;
    let f = t - ll as f64;
    let g = f.min(1.0 - f);
    let ceilf = i64::from(f > 0.0);
    let roundf = i64::from(f > 0.5);
    let npwrs = (2 * (ll + 1)) as usize;
    let mut gpower = vec![0.0; npwrs];
    let mut twogpower = vec![0.0; npwrs];
    let mut onem2gpower = vec![0.0; npwrs];
    gpower[0] = 1.0;
    twogpower[0] = 1.0;
    onem2gpower[0] = 1.0;
    let mut expnt: i64 = 0;
    let (g_over_n, two_g_over_n, one_minus_two_g_over_n) =
        (g / nf, 2.0 * g / nf, (1.0 - 2.0 * g) / nf);
    for m in 1..npwrs {
        let mf = m as f64;
        gpower[m] = gpower[m - 1] * g_over_n / mf;
        twogpower[m] = twogpower[m - 1] * two_g_over_n / mf;
        onem2gpower[m] = onem2gpower[m - 1] * one_minus_two_g_over_n / mf;
    }
    let mut v0 = vec![0.0; npwrs];
    let mut v1 = vec![0.0; npwrs];
    v1[0] = 1.0;
    let (mut v0s, mut v1s): (i64, i64) = (0, 0);
    let (mut j1, _) = pomeranz_j1j2(0, ni, ll, ceilf, roundf);
    let mut conv = Vec::with_capacity(2 * npwrs);
    for i in 1..(2 * ni + 2) {
        let k1 = j1;
        std::mem::swap(&mut v0, &mut v1);
        std::mem::swap(&mut v0s, &mut v1s);
        v1.fill(0.0);
        let (nj1, j2) = pomeranz_j1j2(i, ni, ll, ceilf, roundf);
        j1 = nj1;
        let pwrs = if i == 1 || i == 2 * ni + 1 {
            &gpower
        } else if i % 2 == 1 {
            &twogpower
        } else {
            &onem2gpower
        };
        let ln2 = j2 - k1 + 1;
        if ln2 > 0 {
            // np.convolve(V0[k1-V0s : k1-V0s+ln2], pwrs[:ln2]) with NumPy's
            // slice clipping; k1 - V0s is never negative (both track j1).
            let start = (k1 - v0s).max(0) as usize;
            let a = &v0[start.min(npwrs)..(start + ln2 as usize).min(npwrs)];
            let b = &pwrs[..(ln2 as usize).min(npwrs)];
            conv.clear();
            if !a.is_empty() {
                conv.resize(a.len() + b.len() - 1, 0.0);
                for (ia, &av) in a.iter().enumerate() {
                    for (ib, &bv) in b.iter().enumerate() {
                        conv[ia + ib] += av * bv;
                    }
                }
            }
            let conv_start = (j1 - k1).max(0) as usize;
            let conv_len = (j2 - j1 + 1).max(0) as usize;
            let src = conv
                .get(conv_start..(conv_start + conv_len).min(conv.len()))
                .unwrap_or(&[]);
            for (dst, &s) in v1.iter_mut().zip(src) {
                *dst = s;
            }
            let vmax = v1.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if 0.0 < vmax && vmax < M128 {
                for v in v1.iter_mut() {
                    *v *= P128;
                }
                expnt -= E128 as i64;
            }
            v1s = v0s + j1 - k1;
        }
    }
    let mut ans = v1.get((ni - v1s).max(0) as usize).copied().unwrap_or(0.0);
    for m in 1..=n {
        if ans.abs() > P128 {
            ans *= M128;
            expnt += E128 as i64;
        }
        ans *= m as f64;
    }
    if expnt != 0 {
        ans = ldexp(ans, expnt);
    }
    clip01(ans)
}

/// Pelz-Good asymptotic expansion of `P(D_n <= x)` (SciPy's
/// `_kolmogn_PelzGood`), the large-n branch for moderate `n x^2`.
fn kolmogn_pelz_good_cdf(n: u64, x: f64) -> f64 {
    use std::f64::consts::PI;
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let nf = n as f64;
    let sqrt2pi = (2.0 * PI).sqrt();
    let pi2 = PI * PI;
    let pi4 = PI.powf(4.0);
    let pi6 = PI.powf(6.0);
    let z = nf.sqrt() * x;
    let (z2, z3, z4, z6) = (z * z, z.powf(3.0), z.powf(4.0), z.powf(6.0));
    let qlog = -pi2 / 8.0 / z2;
    if qlog < -708.0 {
        return 0.0;
    }
    let q = qlog.exp();

    let k1a = -z2;
    let k1b = pi2 / 4.0;
    let k2a = 6.0 * z6 + 2.0 * z4;
    let k2b = (2.0 * z4 - 5.0 * z2) * pi2 / 4.0;
    let k2c = pi4 * (1.0 - 2.0 * z2) / 16.0;
    let k3d = pi6 * (5.0 - 30.0 * z2) / 64.0;
    let k3c = pi4 * (-60.0 * z2 + 212.0 * z4) / 16.0;
    let k3b = pi2 * (135.0 * z4 - 96.0 * z6) / 4.0;
    let k3a = -30.0 * z6 - 90.0 * z.powf(8.0);

    let mut k = [0.0f64; 4];
    let maxk = (16.0 * z / PI).ceil() as i64;
    for kk in (1..=maxk).rev() {
        let m = (2 * kk - 1) as f64;
        let (m2, m4, m6) = (m * m, m.powf(4.0), m.powf(6.0));
        let qpower = q.powf((8 * kk) as f64);
        let coeffs = [
            1.0,
            k1a + k1b * m2,
            k2a + k2b * m2 + k2c * m4,
            k3a + k3b * m2 + k3c * m4 + k3d * m6,
        ];
        for (kv, c) in k.iter_mut().zip(coeffs) {
            *kv = *kv * qpower + c;
        }
    }
    let div = [z, 6.0 * z4, 72.0 * z.powf(7.0), 6480.0 * z.powf(10.0)];
    for (kv, dv) in k.iter_mut().zip(div) {
        *kv = *kv * q * sqrt2pi / dv;
    }

    // Second sums over all integers k, no cancellation expected.
    let q = (-pi2 / 2.0 / z2).exp();
    let sqrt3z = 3f64.sqrt() * z;
    let mut t2 = Vec::with_capacity(maxk.max(0) as usize);
    let mut t3 = Vec::with_capacity(maxk.max(0) as usize);
    for kk in (1..=maxk).rev() {
        let ksq = (kk * kk) as f64;
        let qp = q.powf(ksq);
        let kspi = PI * kk as f64;
        t2.push(ksq * qp);
        t3.push((sqrt3z + kspi) * (sqrt3z - kspi) * ksq * qp);
    }
    k[2] += super::pairwise_sum(&t2) * (pi2 * sqrt2pi / (-36.0 * z3));
    k[3] += super::pairwise_sum(&t3) * (pi2 * sqrt2pi / (216.0 * z6));
    for (i, kv) in k.iter_mut().enumerate() {
        *kv /= nf.powf(i as f64 / 2.0);
    }
    0.0 + k[0] + k[1] + k[2] + k[3]
}

/// One-sided Smirnov survival function `P(D_n^+ >= x)` (SciPy's
/// `scipy.special.smirnov`), via the Birnbaum-Tingey sum
/// `x * sum_{v < n(1-x)} C(n,v) (x + v/n)^(v-1) (1 - x - v/n)^(n-v)`.
///
/// SciPy evaluates the terms in double-double arithmetic; here each term is
/// assembled in the log domain from an exactly split `n*x`, with the binomial
/// coefficient carried as mantissa and binary exponent. All terms are
/// positive, so the sum loses no precision; the result agrees with SciPy to
/// ~1e-12 relative, far inside the golden tolerance.
fn smirnov_sf(n: u64, x: f64) -> f64 {
    if !(0.0..=1.0).contains(&x) || n == 0 {
        return f64::NAN;
    }
    if n == 1 {
        return 1.0 - x;
    }
    if x == 0.0 {
        return 1.0;
    }
    if x == 1.0 {
        return 0.0;
    }
    let nf = n as f64;
    // n*x = hi + lo exactly (error-free product via FMA).
    let hi = nf * x;
    let lo = nf.mul_add(x, -hi);
    let mut nxfl = hi.floor();
    let mut alpha = (hi - nxfl) + lo;
    if alpha < 0.0 {
        nxfl -= 1.0;
        alpha += 1.0;
    }
    if alpha >= 1.0 {
        nxfl += 1.0;
        alpha = 0.0;
    }
    // x <= 1/n: cdf = x (1 + x)^(n-1).
    if nxfl == 0.0 || (nxfl == 1.0 && alpha == 0.0) {
        let cdf = x * ((nf - 1.0) * x.ln_1p()).exp();
        return clip01(1.0 - cdf);
    }
    // The sf underflows: cephes MINLOG.
    if -2.0 * nf * x * x < -7.451_332_191_019_412e2 {
        return 0.0;
    }
    // x >= 1 - 1/n: sf = (1 - x)^n.
    if nxfl >= nf - 1.0 {
        return clip01((nf * (-x).ln_1p()).exp());
    }
    if n > 1_000_000 {
        // SciPy's approximation for huge n: p ~ exp(-(6nx+1)^2 / 18n).
        let logp = -(6.0 * nf * x + 1.0).powi(2) / 18.0 / nf;
        return clip01(if logp < -std::f64::consts::LN_2 {
            logp.exp()
        } else {
            // SciPy: cdf = -expm1(logp); sf = 1 - cdf.
            1.0 - (-logp.exp_m1())
        });
    }
    let nxfl_i = nxfl as u64;
    let n_terms = n - nxfl_i; // v = 0 .. n - floor(nx) - 1, i.e. v < n(1-x)
                              // ln 2 split so that cexp * LN2_HI is exact for |cexp| < 2^21 (n is at
                              // most 1e6 here): the log of C(n, v) is large and cancels against the
                              // power terms, so a rounded ln 2 would cost ~n ulp.
                              // fdlibm's ln2_hi (low 21 mantissa bits zero) and ln2_lo.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    // Binomial coefficient C(n, v) = cman * 2^cexp, cman in [0.5, 1).
    let mut cman = 1.0f64;
    let mut cexp: i64 = 0;
    let mut sum = 0.0f64;
    let eps = f64::EPSILON;
    let vmid = n / 2;
    for v in 0..n_terms {
        let vf = v as f64;
        // s = x + v/n from the exact split of n*x; ln(1 - s) either by log1p
        // (s small) or from 1 - s = ((n - v - floor(nx)) - alpha) / n, which
        // has no cancellation (s close to 1).
        let s_num = (vf + nxfl) + alpha;
        let t2 = if s_num < 0.5 * nf {
            (-s_num / nf).ln_1p()
        } else {
            (((nf - vf - nxfl) - alpha) / nf).ln()
        };
        let term = if v == 0 {
            // (1 - x)^n / x
            (nf * t2).exp() / x
        } else {
            let t1 = (s_num / nf).ln();
            let ce = cexp as f64;
            // The mantissa of C(n, v) multiplies the exponential instead of
            // entering the exponent as a logarithm: one `ln` less per term,
            // and one rounding instead of the rounding of `ln(cman)`.
            let lg = ((ce * LN2_HI + (nf - vf) * t2) + (vf - 1.0) * t1) + ce * LN2_LO;
            cman * lg.exp()
        };
        if term.is_finite() {
            sum += term;
        }
        if term != 0.0 {
            if 4.0 * (n_terms - v) as f64 * term.abs() < eps * sum && v != n_terms - 1 {
                break;
            }
        } else if v > vmid {
            break;
        }
        // C(n, v+1) = C(n, v) * (n - v) / (v + 1)
        let (m, e) = frexp(cman * ((nf - vf) / (vf + 1.0)));
        cman = m;
        cexp += e;
    }
    clip01(x * sum)
}

/// Splits `x` into mantissa in `[0.5, 1)` and binary exponent, from the
/// bits (exact, and without a logarithm per call).
fn frexp(x: f64) -> (f64, i64) {
    if x == 0.0 || !x.is_finite() {
        return (x, 0);
    }
    // Scale subnormals into the normal range first (2^54).
    let (x, bias) = if x.abs() < f64::MIN_POSITIVE {
        (x * f64::from_bits(0x4350_0000_0000_0000), -54)
    } else {
        (x, 0)
    };
    let bits = x.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i64 - 1022;
    // Exponent field 1022 puts the magnitude in [0.5, 1).
    let m = f64::from_bits((bits & !(0x7ff << 52)) | (1022 << 52));
    (m, e + bias)
}

#[cfg(test)]
mod tests {
    #[test]
    fn frexp_splits_exactly() {
        for x in [
            1.0,
            0.5,
            0.75,
            3.0,
            1e-310,
            5e-324,
            1e300,
            -6.5,
            f64::MIN_POSITIVE,
        ] {
            let (m, e) = super::frexp(x);
            assert!((0.5..1.0).contains(&m.abs()), "{x}: {m}");
            assert_eq!(super::ldexp(m, e), x, "{x}");
        }
    }
}
