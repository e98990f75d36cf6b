use std::{fs::File, io::Write};

use super::*;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    let mut f = File::create(&path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    path
}

#[test]
fn plain_decimal_matches_the_pattern_exactly() {
    for ok in [
        "0", "-1", "+1", "1.", "1.5", ".5", "-.5", "1e5", "1E-05", "+1.5e+10", "007", "1.e3",
        ".5e1", "1e999",
    ] {
        assert!(is_plain_decimal(ok.as_bytes()), "{ok}");
    }
    for bad in [
        "", "+", "-", ".", "e5", ".e5", "1e", "1e+", "1.5.", "1..5", " 1", "1 ", "nan", "inf",
        "-inf", "NaN", "1_000", "0x10", "1,5", "++1", "1e5.0", "١", "1f",
    ] {
        assert!(!is_plain_decimal(bad.as_bytes()), "{bad:?}");
    }
}

#[test]
fn parse_plain_decimal_is_correctly_rounded_and_exact_to_the_pattern() {
    let mut texts: Vec<String> = [
        "0",
        "-0",
        "+0.0",
        "1.",
        ".5",
        "-.5",
        "1e5",
        "1E-05",
        "+1.5e+10",
        "007",
        "1.e3",
        ".5e1",
        "1e999",
        "-1e999",
        "1e-999",
        "9007199254740993",
        "9007199254740992.0",
        "0.1",
        "123456789012345678901234567890",
        "2.2250738585072011e-308",
        "4.9e-324",
        "1e22",
        "1e23",
        "1.7976931348623157e308",
        "0.000000000000000000000000001e27",
        "1e0000000000000000005",
        "",
        "+",
        ".",
        "e5",
        "1e",
        "1e+",
        "1..5",
        " 1",
        "nan",
        "inf",
        "1e5.0",
        "1f",
        "--1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // A deterministic spread of mantissas, fraction lengths and exponents.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let digits = (seed % 10_u64.pow(1 + (seed >> 60) as u32 % 19)).to_string();
        let cut = (seed >> 20) as usize % (digits.len() + 1);
        let exp = (seed >> 40) as i64 % 60 - 30;
        texts.push(format!("{}.{}e{exp}", &digits[..cut], &digits[cut..]));
        texts.push(format!("-{}", &digits));
    }
    for t in &texts {
        let want = if is_plain_decimal(t.as_bytes()) {
            Some(t.parse::<f64>().unwrap())
        } else {
            None
        };
        let got = parse_plain_decimal(t.as_bytes());
        assert_eq!(got.map(f64::to_bits), want.map(f64::to_bits), "{t:?}");
    }
}

#[test]
fn sorted_bin_counts_agree_with_stats_bin_counts() {
    let values: Vec<f64> = (0..200).map(|i| ((i * 37) % 101) as f64 / 7.0).collect();
    let mut sorted = values.clone();
    sorted.sort_unstable_by(f64::total_cmp);
    for bins in [1, 2, 3, 10, 50] {
        let edges = stats::quantile_edges(&sorted, NonZeroUsize::new(bins).unwrap());
        assert_eq!(
            sorted_bin_counts(&edges, &sorted),
            stats::bin_counts(&edges, &values)
        );
        // Values that sit exactly on edges go to the lower bin.
        assert_eq!(
            sorted_bin_counts(&edges, &edges),
            stats::bin_counts(&edges, &edges)
        );
    }
}

fn feature(n: usize, psi: Option<f64>, pvalue: Option<f64>) -> Feature {
    Feature {
        name: "x".into(),
        n_ref: n,
        n_cur: n,
        n_missing_ref: 0,
        n_missing_cur: 0,
        stats: Stats::Categorical(CategoricalStats {
            chi2: pvalue.map(|p| Chi2Result {
                statistic: 1.0,
                pvalue: p,
                dof: 1,
            }),
            psi,
            js: None,
            hellinger: None,
        }),
        verdict: Verdict::Ok,
    }
}

#[test]
fn verdict_rule_uses_psi_threshold_bonferroni_and_min_samples() {
    let mut fs = vec![
        feature(500, Some(0.21), Some(0.5)),
        feature(500, Some(0.2), Some(0.5)),
        // k = 5 columns with a p-value: alpha = 0.01 / 5 = 0.002.
        feature(500, Some(0.0), Some(0.0019)),
        feature(500, Some(0.0), Some(0.0021)),
        feature(499, Some(0.9), Some(0.0)),
        feature(500, None, None),
    ];
    apply_verdicts(&mut fs, 500);
    let v: Vec<_> = fs.iter().map(|f| f.verdict).collect();
    use Verdict::*;
    assert_eq!(v, [Drift, Ok, Drift, Ok, InsufficientData, Ok]);
}

#[test]
fn report_json_keeps_header_order_and_shape() {
    let dir = tempfile::tempdir().unwrap();
    let r = write(&dir, "r.csv", "z,a,m\n1,x,\n2,y,3\n3,x,4\n");
    let c = write(&dir, "c.csv", "m,a,z,extra\n5,y,2,q\n,x,1.5,q\n");
    let report = run(&Args::new(&r, &c)).unwrap();
    let json = serde_json::to_value(&report).unwrap();
    let text = serde_json::to_string(&report).unwrap();
    let (z, a, m) = (
        text.find("\"z\"").unwrap(),
        text.find("\"a\"").unwrap(),
        text.find("\"m\"").unwrap(),
    );
    assert!(z < a && a < m, "{text}");
    let z = &json["features"]["z"];
    assert_eq!(z["kind"], "numeric");
    assert_eq!(z["n_ref"], 3);
    assert_eq!(z["verdict"], "insufficient_data");
    let keys: Vec<&str> = z.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want = vec![
        "n_ref",
        "n_cur",
        "n_missing_ref",
        "n_missing_cur",
        "kind",
        "ks",
        "psi",
        "js",
        "wasserstein",
        "wasserstein_norm",
        "hellinger",
        "cvm",
        "verdict",
    ];
    want.sort_unstable();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, want);
    assert_eq!(json["features"]["a"]["kind"], "categorical");
    assert!(json["features"]["a"]["chi2"]["dof"].is_number());
    let m = &json["features"]["m"];
    assert_eq!(
        (m["n_missing_ref"].clone(), m["n_missing_cur"].clone()),
        (1.into(), 1.into())
    );
    // One value on the current side: CvM needs two.
    assert!(m["cvm"].is_null());
}

#[test]
fn forced_categorical_and_non_decimal_text_make_a_column_categorical() {
    let dir = tempfile::tempdir().unwrap();
    let r = write(&dir, "r.csv", "a,b,c\n1,1,1\n2,2,2\n");
    let c = write(&dir, "c.csv", "a,b,c\n1,nan,1.0\n2,2,2\n");
    let mut args = Args::new(&r, &c);
    args.categorical = vec!["c".into()];
    let report = run(&args).unwrap();
    let kinds: Vec<_> = report
        .features
        .iter()
        .map(|f| matches!(f.stats, Stats::Numeric(_)))
        .collect();
    assert_eq!(kinds, [true, false, false]);
    // "1" and "1.0" are different categories.
    let Stats::Categorical(s) = &report.features[2].stats else {
        unreachable!()
    };
    assert_eq!(s.chi2.unwrap().dof, 2);
}

#[test]
fn errors_have_distinct_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(&dir, "good.csv", "a,b\n1,2\n");
    let cases = [
        ("missing.csv", None, 66),
        ("empty.csv", Some(""), 67),
        ("numbers.csv", Some("1,2\n3,4\n"), 68),
        ("blank.csv", Some("a,\n1,2\n"), 68),
        ("dup.csv", Some("a,a\n1,2\n"), 69),
        ("ragged.csv", Some("a,b\n1,2\n3\n"), 65),
    ];
    for (name, text, code) in cases {
        let path = match text {
            Some(t) => write(&dir, name, t),
            None => dir.path().join(name),
        };
        let err = run(&Args::new(&path, &good)).unwrap_err();
        assert_eq!(err.exit_code(), code, "{name}: {err}");
        assert!(err.to_string().contains(name), "{err}");
    }
    let ragged = dir.path().join("ragged.csv");
    let err = run(&Args::new(&good, &ragged)).unwrap_err();
    assert!(err.to_string().contains("line 3"), "{err}");
    let only_a = write(&dir, "only_a.csv", "a\n1\n");
    let err = run(&Args::new(&good, &only_a)).unwrap_err();
    assert_eq!(err.exit_code(), 70);
    assert!(err.to_string().contains("\"b\""), "{err}");
    let mut args = Args::new(&good, &good);
    args.categorical = vec!["nope".into()];
    assert_eq!(run(&args).unwrap_err().exit_code(), 71);
}

#[test]
fn table_lists_every_column() {
    let dir = tempfile::tempdir().unwrap();
    let r = write(&dir, "r.csv", "price,colour\n1,red\n2,blue\n");
    let report = run(&Args::new(&r, &r)).unwrap();
    let table = render_table(&report);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(
        lines[1].starts_with("price ") && lines[2].starts_with("colour "),
        "{table}"
    );
    assert!(lines[2].contains("categorical"));
}

#[test]
fn split_in_place_agrees_with_the_csv_reader() {
    let dir = tempfile::tempdir().unwrap();
    let rows_r = "\n1,x,2.5,\n-3e2,y,,7\n\n4,x,1e999,8\n0.5,z,3,9\n";
    let rows_c = "1,y,2,5\n2,x,3.5,\n3,x,4,6\n";
    // The same tables; a quoted header name forces the csv reader.
    let plain = (
        write(&dir, "r1.csv", &format!("n,k,m,t{rows_r}")),
        write(&dir, "c1.csv", &format!("t,k,m,n\n{rows_c}")),
    );
    let quoted = (
        write(&dir, "r2.csv", &format!("\"n\",k,m,t{rows_r}")),
        write(&dir, "c2.csv", &format!("t,k,m,\"n\"\n{rows_c}")),
    );
    let mut a = Args::new(&plain.0, &plain.1);
    let mut b = Args::new(&quoted.0, &quoted.1);
    a.categorical = vec!["t".into()];
    b.categorical = vec!["t".into()];
    assert!(plain_body(&std::fs::read(&plain.0).unwrap(), 4).is_some());
    assert!(plain_body(&std::fs::read(&quoted.0).unwrap(), 4).is_none());
    assert_eq!(run(&a).unwrap(), run(&b).unwrap());

    // A ragged row leaves the split to the csv reader, which reports it.
    let r = write(&dir, "r3.csv", "a,b\n1,2\n3\n");
    let c = write(&dir, "c3.csv", "a,b\n1,2\n");
    let err = run(&Args::new(&r, &c)).unwrap_err();
    assert!(matches!(err, Error::RaggedRow { line: 3, .. }), "{err:?}");
}
