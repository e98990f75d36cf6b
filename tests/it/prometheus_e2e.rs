//! driftd under a real Prometheus (Debian's `prometheus` package: server
//! and promtool). Missing binaries skip these tests with a loud message, or
//! fail them under `DRIFTD_REQUIRE_E2E=1` (CI).
//!
//! - `promtool check metrics` on a scrape taken after traffic;
//! - `promtool check rules` and `promtool test rules` on deploy/prometheus/,
//!   with a unit test for every alert;
//! - three daemons with one reference and different slices of the traffic,
//!   scraped every second by a Prometheus running the recording rules: the
//!   fleet-wide PSI and binned KS equal the offline statistics of the union;
//!   then every dashboard query and every PromQL expression of the
//!   Kubernetes manifests is evaluated on that Prometheus.

use std::{num::NonZeroUsize, time::Duration};

use driftd::proto::{self as pb, ColumnRole};

use crate::support::{prom::*, *};

const MODEL: &str = "fraud";
const VERSION: &str = "v1";

fn columns(rng: &mut rand::rngs::StdRng, n: usize, shift: f64) -> Vec<pb::Column> {
    let countries = ["DE", "FR", "IT", "ES"];
    vec![
        numeric(
            "amount",
            ColumnRole::Input,
            normal(rng, n, 50.0 + shift * 10.0, 10.0),
        ),
        numeric("stable", ColumnRole::Input, normal(rng, n, 0.0, 1.0)),
        categorical(
            "country",
            (0..n)
                .map(|i| countries[(i * 7 + usize::from(shift > 0.0) * (i % 3)) % 4].to_string())
                .collect(),
        ),
        numeric(
            "score",
            ColumnRole::Output,
            normal(rng, n, 0.5 + shift * 0.1, 0.1),
        ),
    ]
}

fn numeric_values(cols: &[pb::Column], name: &str) -> Vec<f64> {
    cols.iter()
        .find(|c| c.name == name)
        .and_then(|c| match &c.values {
            Some(pb::column::Values::Numeric(v)) => Some(v.values.clone()),
            _ => None,
        })
        .expect("numeric column")
}

async fn set_reference(d: &TestDaemon, cols: Vec<pb::Column>) {
    let req = pb::SetReferenceRequest {
        batch: batch(MODEL, VERSION, cols).batch,
    };
    let resp = d
        .client()
        .await
        .set_reference(tokio_stream::iter(vec![req]))
        .await
        .expect("reference accepted")
        .into_inner();
    assert!(resp.records > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_check_metrics_passes_on_a_scrape_after_traffic() {
    let Some(promtool_bin) = require("promtool", "promtool_check_metrics") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::start(test_config(
        dir.path(),
        &[("DRIFTD_EVALUATION__MIN_SAMPLES", "100".into())],
    ))
    .await;
    let mut rng = rng(11);
    set_reference(&daemon, columns(&mut rng, 1000, 0.0)).await;
    let mut client = daemon.client().await;
    client
        .ingest_batch(batch(MODEL, VERSION, columns(&mut rng, 600, 1.0)))
        .await
        .expect("batch accepted");
    // A rejected request too, so the reject counters move.
    let _ = client.ingest_batch(batch("", VERSION, vec![])).await;
    wait_until("bins and PSI on /metrics", Duration::from_secs(15), || {
        let d = &daemon;
        async move {
            let s = d.scrape().await;
            sample(&s, "driftd_psi", &[("feature", "country")]).is_some()
                && sample(&s, "driftd_window_values_count", &[("feature", "amount")]) == Some(600.0)
        }
    })
    .await;
    let scrape = daemon.scrape().await;
    for family in [
        "driftd_window_values_bucket",
        "driftd_window_bin_samples",
        "driftd_reference_bin_ratio",
        "driftd_reference_cumulative_ratio",
        "driftd_ks_p_value",
        "driftd_chi2_p_value",
        "driftd_ingest_ack_duration_seconds_bucket",
    ] {
        assert!(scrape.contains(family), "{family} missing from the scrape");
    }
    // The bucket at +Inf equals the count, and the per-bin samples add up.
    let amount = [("feature", "amount")];
    let inf = sample(
        &scrape,
        "driftd_window_values_bucket",
        &[("feature", "amount"), ("le", "+Inf"), ("window", "5m")],
    );
    assert_eq!(inf, Some(600.0));
    let bins: f64 = scrape
        .lines()
        .filter(|l| {
            l.starts_with("driftd_window_bin_samples{")
                && l.contains("feature=\"amount\"")
                && l.contains("window=\"5m\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(bins, 600.0, "per-bin samples add up to the window");
    assert!(sample(&scrape, "driftd_reference_bin_ratio", &amount).is_some());

    let out = promtool(&promtool_bin, &["check", "metrics"], Some(scrape.as_str()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim().is_empty(),
        "promtool check metrics: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
}

#[tokio::test]
async fn promtool_checks_and_unit_tests_the_rules() {
    let Some(promtool_bin) = require("promtool", "promtool_rules") else {
        return;
    };
    let out = promtool(
        &promtool_bin,
        &[
            "check",
            "rules",
            "deploy/prometheus/recording.yml",
            "deploy/prometheus/alerts.yml",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = promtool(
        &promtool_bin,
        &[
            "test",
            "rules",
            "deploy/prometheus/tests/alerts_test.yml",
            "deploy/prometheus/tests/fleet_test.yml",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every alert has a unit test that expects it to fire and one that
/// expects silence (an empty `exp_alerts`).
#[test]
fn every_alert_has_a_firing_and_a_silent_unit_test() {
    let root = repo_root().join("deploy/prometheus");
    let alerts: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("alerts.yml")).unwrap()).unwrap();
    let names: Vec<String> = alerts["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect();
    assert!(names.len() >= 8, "{names:?}");
    let mut cases: Vec<(String, bool)> = Vec::new();
    for file in ["tests/alerts_test.yml", "tests/fleet_test.yml"] {
        let t: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(root.join(file)).unwrap()).unwrap();
        for group in t["tests"].as_sequence().unwrap() {
            for case in group["alert_rule_test"].as_sequence().into_iter().flatten() {
                let fires = case["exp_alerts"]
                    .as_sequence()
                    .is_some_and(|a| !a.is_empty());
                cases.push((case["alertname"].as_str().unwrap().to_string(), fires));
            }
        }
    }
    for name in &names {
        for fires in [true, false] {
            assert!(
                cases.contains(&(name.clone(), fires)),
                "alert {name} lacks a unit test where it {}",
                if fires { "fires" } else { "stays silent" }
            );
        }
    }
}

/// Three daemons, one reference, different slices of the same traffic; a
/// real Prometheus scrapes them every second with the recording rules. The
/// fleet-wide PSI equals the PSI of the union computed offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_psi_from_prometheus_equals_offline_psi_of_the_union() {
    let Some(prom_bin) = require("prometheus", "fleet_psi_e2e") else {
        return;
    };
    let slices = [600usize, 700, 800];
    let mut rng = rng(2024);
    let reference = columns(&mut rng, 3000, 0.0);
    let traffic: Vec<Vec<pb::Column>> = slices.iter().map(|&n| columns(&mut rng, n, 0.6)).collect();

    let mut dirs = Vec::new();
    let mut daemons = Vec::new();
    for (cols, &n) in traffic.iter().zip(&slices) {
        let dir = tempfile::tempdir().unwrap();
        // The window (5000 by default) holds everything a replica receives.
        let d = TestDaemon::start(test_config(dir.path(), &[])).await;
        set_reference(&d, reference.clone()).await;
        d.client()
            .await
            .ingest_batch(batch(MODEL, VERSION, cols.clone()))
            .await
            .expect("batch accepted");
        wait_until("window bins exported", Duration::from_secs(15), || {
            let d = &d;
            async move {
                let s = d.scrape().await;
                sample(&s, "driftd_window_values_count", &[("feature", "amount")]) == Some(n as f64)
            }
        })
        .await;
        dirs.push(dir);
        daemons.push(d);
    }

    let root = repo_root().join("deploy/prometheus");
    let targets: Vec<String> = daemons
        .iter()
        .map(|d| format!("'{}'", d.http_addr))
        .collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - '{}'\n  - '{}'\n\
         scrape_configs:\n  - job_name: driftd\n    static_configs:\n      - targets: [{}]\n",
        root.join("recording.yml").display(),
        root.join("alerts.yml").display(),
        targets.join(", ")
    );
    let prom = Prometheus::start(&prom_bin, &config).await;
    let total: usize = slices.iter().sum();

    // Offline: reference counts over the reference's bins against the
    // summed counts of the union of the three windows, with driftd::stats.
    let offline = |feature: &str| {
        let mut r = numeric_values(&reference, feature);
        r.sort_by(f64::total_cmp);
        let edges = driftd::stats::quantile_edges(&r, NonZeroUsize::new(10).unwrap());
        let union: Vec<f64> = traffic
            .iter()
            .flat_map(|cols| numeric_values(cols, feature))
            .collect();
        let ref_counts = driftd::stats::bin_counts(&edges, &r);
        let cur_counts = driftd::stats::bin_counts(&edges, &union);
        (
            driftd::stats::psi(&ref_counts, &cur_counts, driftd::stats::DEFAULT_EPSILON),
            driftd::stats::binned_ks(&ref_counts, &cur_counts),
        )
    };

    for feature in ["amount", "stable", "score"] {
        let (psi, ks) = offline(feature);
        let sel = format!("{{model=\"{MODEL}\",version=\"{VERSION}\",feature=\"{feature}\"}}");
        let mut got = (None, None);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let n = first_value(
                &prom
                    .query(&format!("model_feature:driftd_window_bin_samples:sum{sel}"))
                    .await
                    .unwrap(),
            );
            if n == Some(total as f64) {
                // The rule group writes its series one after the other; let
                // two more evaluations pass so PSI and KS come from an
                // evaluation that saw every replica (the data is static).
                tokio::time::sleep(Duration::from_millis(2500)).await;
                got = (
                    first_value(
                        &prom
                            .query(&format!("model_feature:driftd_psi:fleet{sel}"))
                            .await
                            .unwrap(),
                    ),
                    first_value(
                        &prom
                            .query(&format!("model_feature:driftd_binned_ks:fleet{sel}"))
                            .await
                            .unwrap(),
                    ),
                );
                if got.0.is_some() && got.1.is_some() {
                    break;
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "no fleet PSI for {feature} within 60 s (samples {n:?}, got {got:?}); targets {:?}\n{}",
                    prom.targets().await,
                    prom.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let (fleet_psi, fleet_ks) = (got.0.unwrap(), got.1.unwrap());
        assert!(
            (fleet_psi - psi).abs() < 1e-6,
            "{feature}: fleet PSI {fleet_psi} vs offline PSI of the union {psi}"
        );
        assert!(
            (fleet_ks - ks).abs() < 1e-6,
            "{feature}: fleet binned KS {fleet_ks} vs offline {ks}"
        );
        if feature == "amount" {
            assert!(psi > 0.2, "the shifted feature drifts: {psi}");
        }
    }

    // With data in Prometheus: every dashboard query and every PromQL
    // expression of the manifests parses and (unless listed) returns data.
    crate::deploy::check_queries_against(&prom, MODEL, VERSION).await;
    drop(prom);
    for d in daemons {
        d.stop().await.expect("clean shutdown");
    }
}
