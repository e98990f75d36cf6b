//! The foundation's promise, end to end: reference-like traffic, then one
//! feature shifted by one standard deviation; PSI read from a real scrape of
//! /metrics; the firing webhook received by a real HTTP server; state read
//! back through the status RPC after a restart on the same data directory.

use std::time::Duration;

use driftd::proto::{self as pb, ColumnRole};

use crate::support::*;

const N: usize = 2000;

fn rows(rng: &mut rand::rngs::StdRng, shift: f64) -> Vec<pb::Column> {
    vec![
        numeric("stable", ColumnRole::Input, normal(rng, 500, 0.0, 1.0)),
        numeric("shifted", ColumnRole::Input, normal(rng, 500, shift, 1.0)),
        numeric("score", ColumnRole::Output, normal(rng, 500, 0.5, 0.1)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shifted_feature_drifts_fires_webhook_and_state_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hook = WebhookReceiver::start().await;
    let overrides = [
        ("DRIFTD_WINDOW__WINDOWS", format!("count:{N}")),
        ("DRIFTD_REFERENCE__WARMUP_SAMPLES", N.to_string()),
        ("DRIFTD_RULES__FOR_EVALUATIONS", "2".to_string()),
        ("DRIFTD_WEBHOOK__URLS", hook.url.clone()),
    ];
    let daemon = TestDaemon::start(test_config(dir.path(), &overrides)).await;
    let mut client = daemon.client().await;
    let mut rng = rng(7);

    // Reference-like traffic over the client-streaming RPC.
    let reqs: Vec<pb::IngestRequest> = (0..N / 500)
        .map(|_| batch("fraud", "v1", rows(&mut rng, 0.0)))
        .collect();
    let summary = client
        .ingest(tokio_stream::iter(reqs))
        .await
        .expect("stream accepted")
        .into_inner();
    assert_eq!(summary.batches, 4);
    assert_eq!(summary.records, N as u64);

    // Shifted traffic over the unary RPC, each batch acknowledged.
    for _ in 0..N / 500 {
        let ack = client
            .ingest_batch(batch("fraud", "v1", rows(&mut rng, 1.0)))
            .await
            .expect("batch accepted")
            .into_inner();
        assert_eq!(ack.records, 500);
    }

    // PSI from a real scrape, once an evaluation has seen the full window.
    let labels = |f: &'static str| [("model", "fraud"), ("version", "v1"), ("feature", f)];
    wait_until("shifted PSI on /metrics", Duration::from_secs(15), || {
        let d = &daemon;
        async move {
            let s = d.scrape().await;
            sample(&s, "driftd_psi", &labels("shifted")).is_some_and(|v| v > 0.2)
        }
    })
    .await;
    // The window no longer changes, so every later evaluation agrees.
    let scrape = daemon.scrape().await;
    let psi_shifted = sample(&scrape, "driftd_psi", &labels("shifted")).unwrap();
    let psi_stable = sample(&scrape, "driftd_psi", &labels("stable")).unwrap();
    assert!(psi_shifted > 0.2, "shifted PSI {psi_shifted}");
    assert!(psi_stable < 0.1, "stable PSI {psi_stable}");
    assert_eq!(
        sample(&scrape, "driftd_window_samples", &labels("shifted")),
        Some(N as f64)
    );
    let ks_p = sample(&scrape, "driftd_ks_p_value", &labels("shifted")).unwrap();
    assert!(
        ks_p < 1e-6,
        "KS p-value of a 1-sd shift on 2000 samples: {ks_p}"
    );
    assert_eq!(
        sample(
            &scrape,
            "driftd_ingest_records_total",
            &[("model", "fraud"), ("version", "v1")]
        ),
        Some(2.0 * N as f64)
    );
    assert!(scrape.contains("driftd_build_info{version=\""));
    assert!(scrape.contains("driftd_evaluation_duration_seconds_count"));

    // The firing webhook, with the documented JSON.
    // Both default rules fire: PSI > 0.2 and KS p < 0.01 after Bonferroni.
    wait_until("firing webhooks", Duration::from_secs(15), || {
        let h = hook.clone();
        async move { h.events("firing").len() >= 2 }
    })
    .await;
    let firing = hook.events("firing");
    assert_eq!(firing.len(), 2, "{firing:?}");
    let e = firing
        .iter()
        .find(|e| e["rule"] == "psi")
        .expect("psi rule fired");
    let ks = firing
        .iter()
        .find(|e| e["rule"] == "ks")
        .expect("ks rule fired");
    assert_eq!(ks["statistic"], "ks_pvalue");
    assert_eq!(ks["features"][0]["feature"], "shifted");
    assert!(ks["features"][0]["value"].as_f64().unwrap() < 0.01 / 3.0);
    assert_eq!(e["model"], "fraud");
    assert_eq!(e["version"], "v1");
    assert_eq!(e["statistic"], "psi");
    assert_eq!(e["op"], ">");
    assert_eq!(e["threshold"], 0.2);
    assert_eq!(e["verdict"], "drift");
    let scrape = daemon.scrape().await;
    for rule in ["psi", "ks"] {
        let labels = [("model", "fraud"), ("rule", rule)];
        assert_eq!(sample(&scrape, "driftd_rule_firing", &labels), Some(1.0));
        let firing = [("model", "fraud"), ("rule", rule), ("state", "firing")];
        assert_eq!(sample(&scrape, "driftd_rule_state", &firing), Some(1.0));
    }
    assert_eq!(e["window"], format!("last_{N}"));
    let features = e["features"].as_array().unwrap();
    assert_eq!(
        features.len(),
        1,
        "only the shifted feature tripped: {features:?}"
    );
    assert_eq!(features[0]["feature"], "shifted");
    assert!(features[0]["value"].as_f64().unwrap() > 0.2);
    assert_eq!(features[0]["threshold"], 0.2);
    assert_eq!(features[0]["window_samples"], N as u64);
    for field in ["id", "summary", "started_at", "timestamp"] {
        assert!(e[field].is_string(), "{field} missing in {e}");
    }
    assert!(e["resolved_at"].is_null());

    daemon.stop().await.expect("clean shutdown");

    // Restart on the same directory: reference, window and rule state survive.
    let daemon = TestDaemon::start(test_config(dir.path(), &overrides)).await;
    let mut client = daemon.client().await;
    let status = client
        .get_status(pb::GetStatusRequest {
            model: "fraud".into(),
            version: String::new(),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.versions.len(), 1);
    let v = &status.versions[0];
    assert_eq!(v.version, "v1");
    assert_eq!(v.records_ingested, 2 * N as u64);
    assert_eq!(v.reference_records, N as u64);
    assert_eq!(v.reference_source, "warmup");
    assert_eq!(v.window_records, N as u64);
    assert_eq!(v.rules.len(), 2);
    for r in &v.rules {
        assert_eq!(r.state, pb::RuleState::Firing as i32, "{}", r.name);
    }
    let shifted = v.features.iter().find(|f| f.name == "shifted").unwrap();
    assert_eq!(shifted.window_samples, N as u64);
    assert_eq!(shifted.reference_samples, N as u64);
    let score = v.features.iter().find(|f| f.name == "score").unwrap();
    assert_eq!(score.role, ColumnRole::Output as i32);

    // The window is the shifted traffic, so a fresh evaluation still sees
    // drift; traffic like the reference again resolves the rule exactly once.
    wait_until("evaluation after restart", Duration::from_secs(15), || {
        let d = &daemon;
        async move {
            let s = d.scrape().await;
            sample(&s, "driftd_psi", &labels("shifted")).is_some_and(|v| v > 0.2)
        }
    })
    .await;
    for _ in 0..N / 500 {
        client
            .ingest_batch(batch("fraud", "v1", rows(&mut rng, 0.0)))
            .await
            .expect("batch accepted");
    }
    wait_until("resolved webhooks", Duration::from_secs(15), || {
        let h = hook.clone();
        async move { h.events("resolved").len() >= 2 }
    })
    .await;
    // Give a spurious duplicate the chance to arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hook.events("firing").len(), 2, "restart must not re-fire");
    let resolved = hook.events("resolved");
    assert_eq!(resolved.len(), 2);
    let r = resolved.iter().find(|r| r["rule"] == "psi").unwrap();
    assert_eq!(r["started_at"], e["started_at"]);
    assert!(r["resolved_at"].is_string());

    // The JSON status API agrees.
    let json: serde_json::Value = reqwest::get(daemon.url("/api/v1/models/fraud/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["versions"][0]["rules"][0]["state"], "inactive");
    daemon.stop().await.expect("clean shutdown");
}
