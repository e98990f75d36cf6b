//! `driftd compare` as users run it: the JSON report matches SciPy on the
//! golden CSV files of `tests/golden/gen_compare.py`, each input error exits
//! with its own code naming the file, line or column, and the table lists
//! every column.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

fn driftd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_driftd"));
    // The test environment may carry DRIFTD_* variables of its own.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DRIFTD_")) {
        c.env_remove(k);
    }
    c
}

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/compare")
        .join(name)
}

fn compare(reference: &Path, current: &Path, extra: &[&str]) -> Output {
    driftd()
        .arg("compare")
        .arg("--reference")
        .arg(reference)
        .arg("--current")
        .arg(current)
        .args(extra)
        .output()
        .unwrap()
}

/// Relative 1e-9 (SciPy reference, as in the stats golden tests); exact
/// zeros must come out <= 1e-15; a CvM asymptotic p-value (`1 - cdf`) may
/// also be off by a few ulp of 1.0.
fn close(path: &str, got: &Value, want: &Value, failures: &mut Vec<String>) {
    let (Some(g), Some(w)) = (got.as_f64(), want.as_f64()) else {
        failures.push(format!("{path}: got {got}, want {want}"));
        return;
    };
    let diff = (g - w).abs();
    let ok = if w == 0.0 {
        g.abs() <= 1e-15
    } else {
        diff <= 1e-9 * w.abs() || (path.ends_with("cvm.pvalue") && diff <= 4e-15)
    };
    if !ok {
        failures.push(format!("{path}: got {g:e}, want {w:e}"));
    }
}

fn check(path: &str, got: &Value, want: &Value, failures: &mut Vec<String>) {
    match want {
        Value::Object(w) => {
            let Some(g) = got.as_object() else {
                failures.push(format!("{path}: got {got}, want an object"));
                return;
            };
            let mut gk: Vec<_> = g.keys().collect();
            let mut wk: Vec<_> = w.keys().collect();
            gk.sort();
            wk.sort();
            if gk != wk {
                failures.push(format!("{path}: keys {gk:?}, want {wk:?}"));
            }
            for (k, wv) in w {
                check(&format!("{path}.{k}"), &got[k], wv, failures);
            }
        }
        Value::Number(n) if n.is_f64() => close(path, got, want, failures),
        _ => {
            if got != want {
                failures.push(format!("{path}: got {got}, want {want}"));
            }
        }
    }
}

#[test]
fn json_report_matches_scipy() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(golden("expected.json")).unwrap()).unwrap();
    let args: Vec<&str> = expected["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let mut extra = vec!["--format", "json"];
    extra.extend(&args);
    let out = compare(&golden("reference.csv"), &golden("current.csv"), &extra);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let text = String::from_utf8(out.stdout).unwrap();
    let got: Value = serde_json::from_str(&text).unwrap();
    let mut failures = Vec::new();
    check("", &got["features"], &expected["features"], &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Columns come out in reference-header order.
    let reference = std::fs::read_to_string(golden("reference.csv")).unwrap();
    let names: Vec<&str> = reference.lines().next().unwrap().split(',').collect();
    let positions: Vec<usize> = names
        .iter()
        .map(|n| text.find(&format!("\"{n}\": {{")).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
}

#[test]
fn compare_ignores_a_broken_daemon_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("driftd.toml");
    std::fs::write(&cfg, "this is not toml = = =").unwrap();
    let csv = dir.path().join("a.csv");
    std::fs::write(&csv, "x\n1\n2\n").unwrap();
    let out = driftd()
        .arg("compare")
        .arg("--config")
        .arg(&cfg)
        .arg("--reference")
        .arg(&csv)
        .arg("--current")
        .arg(&csv)
        .env("DRIFTD_SERVER__GRPC_ADDR", "not an address")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn table_lists_every_column() {
    let out = compare(
        &golden("reference.csv"),
        &golden("current.csv"),
        &["--format", "table"],
    );
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("column"), "{text}");
    for (line, name) in lines[1..]
        .iter()
        .zip(["age", "colour", "income", "code", "small", "flag"])
    {
        assert!(line.starts_with(&format!("{name} ")), "{text}");
    }
    assert_eq!(lines.len(), 7, "{text}");
}

#[test]
fn each_input_error_has_its_exit_code_and_names_the_culprit() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let good = file("good.csv", "a,b\n1,x\n2,y\n");
    // (reference, current, exit code, text the message must contain)
    let cases: Vec<(PathBuf, PathBuf, i32, &str)> = vec![
        (
            dir.path().join("absent.csv"),
            good.clone(),
            66,
            "absent.csv",
        ),
        (good.clone(), dir.path().join("gone.csv"), 66, "gone.csv"),
        (file("empty.csv", ""), good.clone(), 67, "empty.csv"),
        (
            good.clone(),
            file("nohdr.csv", "1,2\n3,4\n"),
            68,
            "nohdr.csv",
        ),
        (
            file("blank.csv", "a,,b\n1,2,3\n"),
            good.clone(),
            68,
            "column 2",
        ),
        (file("dup.csv", "a,b,a\n1,2,3\n"), good.clone(), 69, "\"a\""),
        (
            good.clone(),
            file("ragged.csv", "a,b\n1,x\n2,y\n3\n"),
            65,
            "ragged.csv: line 4",
        ),
        (good.clone(), file("only_a.csv", "a\n1\n"), 70, "\"b\""),
    ];
    for (reference, current, code, needle) in cases {
        let out = compare(&reference, &current, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{needle}: {stderr}");
        assert!(stderr.starts_with("driftd compare: "), "{stderr}");
        assert!(stderr.contains(needle), "{needle}: {stderr}");
        assert!(out.stdout.is_empty());
    }
    let out = compare(&good, &good, &["--categorical", "nope"]);
    assert_eq!(out.status.code(), Some(71));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    // Bad option values are usage errors (clap's exit code 2).
    for bad in [&["--epsilon", "0"][..], &["--bins", "0"][..]] {
        assert_eq!(compare(&good, &good, bad).status.code(), Some(2), "{bad:?}");
    }
}
