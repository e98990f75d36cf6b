//! Quantile bin edges (NumPy `quantile`, method `'linear'`), bin assignment
//! (`searchsorted(side='left')`) and category alignment.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

/// Reference quantile edges for `bins` bins: the quantiles of `sorted_ref`
/// at `q_i = (i as f64) / (bins as f64)` for `i = 1..bins`, computed bit for
/// bit like `numpy.quantile(sorted_ref, q)` (default `'linear'` method),
/// then sorted and de-duplicated like `numpy.unique`.
///
/// Precondition: `sorted_ref` is sorted ascending and finite. An empty
/// reference yields no edges (a single bin).
pub fn quantile_edges(sorted_ref: &[f64], bins: NonZeroUsize) -> Vec<f64> {
    debug_assert!(sorted_ref.windows(2).all(|w| w[0] <= w[1]));
    let n = sorted_ref.len();
    let Some(&last) = sorted_ref.last() else {
        return Vec::new();
    };
    let b = bins.get() as f64;
    let nm1 = (n - 1) as f64;
    let mut edges: Vec<f64> = (1..bins.get())
        .map(|i| {
            let q = i as f64 / b;
            // NumPy: virtual index = (n - 1) * q; indexes at or past the last
            // element take the last element.
            let v = nm1 * q;
            if v >= nm1 {
                return last;
            }
            let prev = v.floor();
            let lo = prev as usize; // 0 <= prev < n - 1, so lo + 1 < n.
            lerp(sorted_ref[lo], sorted_ref[lo + 1], v - prev)
        })
        .collect();
    // The two-branch lerp is not guaranteed monotone in floating point, and
    // numpy.unique sorts, so sort before removing duplicates.
    edges.sort_unstable_by(f64::total_cmp);
    edges.dedup_by(|a, b| a == b);
    edges
}

/// NumPy's `_lerp`: `a + (b - a) * t`, or `b - (b - a) * (1 - t)` when
/// `t >= 0.5` (the second form is exact at `t = 1`).
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

/// Bin of `x`: the number of edges strictly below `x`
/// (`numpy.searchsorted(edges, x, side='left')`). Bins are closed on the
/// right; bin 0 is open to -inf and bin `edges.len()` open to +inf.
///
/// Precondition: `edges` sorted ascending; `x` not NaN (NaN lands in bin 0).
pub fn bin_index(edges: &[f64], x: f64) -> usize {
    // On sorted edges, the number of edges below `x` is both a count and a
    // partition point. For the usual few edges (10 bins: 9 edges) counting
    // is branch-free and independent from one value to the next, so the
    // CPU overlaps consecutive values; a binary search chains dependent
    // loads. Both give the same index (NaN: 0, as no comparison holds).
    if edges.len() <= 32 {
        edges.iter().map(|&e| usize::from(e < x)).sum()
    } else {
        edges.partition_point(|&e| e < x)
    }
}

/// Counts of `values` (sorted or not) per bin; the result has
/// `edges.len() + 1` entries. Non-finite values are missing by definition
/// and are skipped. Precondition: `edges` sorted ascending.
pub fn bin_counts(edges: &[f64], values: &[f64]) -> Vec<u64> {
    let mut counts = vec![0u64; edges.len() + 1];
    for &x in values.iter().filter(|x| x.is_finite()) {
        // bin_index <= edges.len(), always in range.
        counts[bin_index(edges, x)] += 1;
    }
    counts
}

/// Aligns two category -> count maps on the sorted union of their
/// categories, returning `(categories, reference_counts, current_counts)`.
///
/// Works with `&HashMap<K, u64>`, `&BTreeMap<K, u64>` or any iterator of
/// pairs; repeated keys are summed. Categories whose total count is zero in
/// both samples are dropped, since they carry no information and would make
/// the chi-square expected frequencies zero.
pub fn align_categories<'a, K, R, C>(reference: R, current: C) -> (Vec<K>, Vec<u64>, Vec<u64>)
where
    K: Ord + Clone + 'a,
    R: IntoIterator<Item = (&'a K, &'a u64)>,
    C: IntoIterator<Item = (&'a K, &'a u64)>,
{
    let mut table: BTreeMap<K, (u64, u64)> = BTreeMap::new();
    for (k, &n) in reference {
        table.entry(k.clone()).or_default().0 += n;
    }
    for (k, &n) in current {
        table.entry(k.clone()).or_default().1 += n;
    }
    let mut cats = Vec::with_capacity(table.len());
    let mut r = Vec::with_capacity(table.len());
    let mut c = Vec::with_capacity(table.len());
    for (k, (a, b)) in table {
        if a == 0 && b == 0 {
            continue;
        }
        cats.push(k);
        r.push(a);
        c.push(b);
    }
    (cats, r, c)
}
