//! Windows and references: time windows that expire and survive restarts,
//! their retention in the store, reference files, `driftd reference import`
//! and live references.

use std::{
    process::Command,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};

use driftd::proto::{self as pb, ColumnRole};

use crate::support::*;

async fn status(d: &TestDaemon, model: &str, version: &str) -> pb::VersionStatus {
    d.client()
        .await
        .get_status(pb::GetStatusRequest {
            model: model.into(),
            version: version.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions
        .remove(0)
}

fn window<'a>(s: &'a pb::VersionStatus, name: &str) -> &'a pb::WindowStatus {
    s.windows
        .iter()
        .find(|w| w.name == name)
        .unwrap_or_else(|| panic!("no window {name} in {s:?}"))
}

async fn send(d: &TestDaemon, version: &str, xs: Vec<f64>) {
    d.client()
        .await
        .ingest_batch(batch(
            "m",
            version,
            vec![numeric("x", ColumnRole::Input, xs)],
        ))
        .await
        .unwrap();
}

/// Time windows advance with the clock, expire, keep their contents across
/// a restart, and expired buckets leave the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_windows_expire_survive_restarts_and_are_deleted_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicI64::new(1_700_000_000_000));
    let config = || {
        let mut c = test_config(
            dir.path(),
            &[
                ("DRIFTD_WINDOW__WINDOWS", "5m/10s,1h/1m".into()),
                ("DRIFTD_REFERENCE__WARMUP_SAMPLES", "100".into()),
            ],
        );
        let now = now.clone();
        c.engine.clock = driftd::config::Clock::from_fn(move || now.load(Ordering::SeqCst));
        c
    };
    let minute = 60_000;
    let d = TestDaemon::start(config()).await;
    let mut rng = rng(3);
    // The first 100 records form the reference and stay out of the windows.
    send(&d, "v", normal(&mut rng, 100, 0.0, 1.0)).await;
    send(&d, "v", normal(&mut rng, 300, 0.0, 1.0)).await;
    now.fetch_add(2 * minute, Ordering::SeqCst);
    send(&d, "v", normal(&mut rng, 200, 0.0, 1.0)).await;
    let s = status(&d, "m", "v").await;
    assert_eq!(s.reference_source, "warmup");
    assert_eq!(s.reference_hash.len(), 16);
    assert_eq!(window(&s, "5m").records, 500);
    assert_eq!(window(&s, "1h").records, 500);

    // A restart restores both windows and the reference.
    d.stop().await.unwrap();
    let d = TestDaemon::start(config()).await;
    let s2 = status(&d, "m", "v").await;
    assert_eq!(window(&s2, "5m").records, 500);
    assert_eq!(window(&s2, "1h").records, 500);
    assert_eq!(s2.reference_hash, s.reference_hash);
    assert_eq!(s2.records_ingested, 600);

    // Four minutes on, the first 300 have left the 5-minute window only.
    now.fetch_add(4 * minute, Ordering::SeqCst);
    let s = status(&d, "m", "v").await;
    assert_eq!(window(&s, "5m").records, 200);
    assert_eq!(window(&s, "1h").records, 500);

    // The evaluation reports each window's sample size on /metrics.
    wait_until("evaluated", Duration::from_secs(10), || async {
        status(&d, "m", "v")
            .await
            .windows
            .iter()
            .all(|w| w.sample_rows > 0 || w.records == 0)
            && d.scrape().await.contains("driftd_window_sample_size{")
    })
    .await;
    let scrape = d.scrape().await;
    assert_eq!(
        sample(
            &scrape,
            "driftd_window_sample_size",
            &[("feature", "x"), ("window", "1h")]
        ),
        Some(500.0)
    );
    let s1h = status(&d, "m", "v").await;
    assert_eq!(window(&s1h, "1h").features[0].window_sample_size, 500);
    assert_eq!(
        sample(
            &scrape,
            "driftd_reference_info",
            &[
                ("version", "v"),
                ("source", "warmup"),
                ("hash", &s.reference_hash)
            ]
        ),
        Some(1.0)
    );
    assert!(sample(&scrape, "driftd_store_size_bytes", &[]).unwrap_or(0.0) > 0.0);

    // Two hours on, one more batch: every older bucket is gone from memory
    // and, once the daemon is stopped, from the store.
    now.fetch_add(120 * minute, Ordering::SeqCst);
    send(&d, "v", normal(&mut rng, 10, 0.0, 1.0)).await;
    let s = status(&d, "m", "v").await;
    assert_eq!(window(&s, "5m").records, 10);
    assert_eq!(window(&s, "1h").records, 10);
    d.stop().await.unwrap();
    {
        let store = driftd::store::Store::open(&test_config(dir.path(), &[]).store).unwrap();
        let loaded = store.load().unwrap();
        for (name, buckets) in &loaded[0].windows {
            assert_eq!(buckets.len(), 1, "window {name} keeps only its live bucket");
        }
    }

    // Buckets that expire while driftd is down leave the store at the next
    // start, though no batch arrives to move the windows.
    now.fetch_add(120 * minute, Ordering::SeqCst);
    let d = TestDaemon::start(config()).await;
    let s = status(&d, "m", "v").await;
    assert_eq!(window(&s, "1h").records, 0);
    d.stop().await.unwrap();
    let store = driftd::store::Store::open(&test_config(dir.path(), &[]).store).unwrap();
    let loaded = store.load().unwrap();
    assert!(
        loaded[0].windows.values().all(|b| b.is_empty()),
        "no bucket left: {:?}",
        loaded[0]
            .windows
            .iter()
            .map(|(w, b)| (
                w,
                b.iter()
                    .map(|(id, p)| (*id, p.whole.is_some(), p.deltas.len(), p.tau))
                    .collect::<Vec<_>>()
            ))
            .collect::<Vec<_>>()
    );
}

fn reference_csv(path: &std::path::Path, mean: f64, seed: u64) {
    let mut rng = rng(seed);
    let xs = normal(&mut rng, 2000, mean, 1.0);
    let mut text = String::from("x,segment\n");
    for (i, x) in xs.iter().enumerate() {
        text.push_str(&format!("{x},{}\n", ["a", "b", "c"][i % 3]));
    }
    std::fs::write(path, text).unwrap();
}

/// A reference file named in the configuration is in force from the start,
/// and a restart with the same file keeps the windows; `driftd reference
/// import` replaces a reference on a running daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_files_and_the_import_command() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("ref.csv");
    reference_csv(&csv, 0.0, 1);
    let toml = format!(
        "[window]\nwindows = [\"count:1000\"]\n\
         [[reference.sources]]\nmodel = \"m\"\nversion = \"v1\"\nreference = \"file:{}\"\n",
        csv.display()
    );
    let config = || test_config_with_file(dir.path(), &toml, &[]);
    let d = TestDaemon::start(config()).await;
    let s = status(&d, "m", "v1").await;
    assert_eq!(s.reference_source, "file");
    assert_eq!(s.reference_records, 2000);
    let hash = s.reference_hash.clone();
    // No warm-up: the very first records are window records.
    send(&d, "v1", vec![0.5; 300]).await;
    assert_eq!(
        window(&status(&d, "m", "v1").await, "last_1000").records,
        300
    );
    d.stop().await.unwrap();
    let d = TestDaemon::start(config()).await;
    let s = status(&d, "m", "v1").await;
    assert_eq!(s.reference_hash, hash, "same file, same reference");
    assert_eq!(window(&s, "last_1000").records, 300, "windows kept");

    // Import against the running daemon.
    let other = dir.path().join("other.csv");
    reference_csv(&other, 3.0, 2);
    let out = Command::new(env!("CARGO_BIN_EXE_driftd"))
        .args(["reference", "import", "--model", "m", "--version", "v2"])
        .args(["--addr", &format!("http://{}", d.grpc_addr)])
        .arg(&other)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2000 records"));
    let s = status(&d, "m", "v2").await;
    assert_eq!(s.reference_source, "set_reference");
    assert_eq!(s.reference_records, 2000);
    assert_ne!(s.reference_hash, hash);

    // A ragged file is refused before anything is sent, naming the line.
    std::fs::write(&other, "x,segment\n1,a\n2\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_driftd"))
        .args(["reference", "import", "--model", "m", "--version", "v2"])
        .args(["--addr", &format!("http://{}", d.grpc_addr)])
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3"));
    assert_eq!(status(&d, "m", "v2").await.reference_hash, s.reference_hash);
    d.stop().await.unwrap();
}

/// Whether the canary was evaluated after `after` (ms since the epoch)
/// with the verdict `want`.
async fn canary_is(d: &TestDaemon, want: pb::Verdict, after: i64) -> bool {
    let s = status(d, "m", "canary").await;
    s.last_evaluation_unix_ms > after && s.verdict == want as i32
}

/// A canary with `reference = "live:stable"` is judged against the stable
/// version's window of the same name (count and time windows): fine while
/// both see the same traffic, drift when the canary's shifts, and so again
/// after a restart. The source's pattern (`*`) also matches `stable`, which
/// warms up a reference of its own instead of judging itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_reference_judges_the_canary_against_stable_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let toml = "[window]\nwindows = [\"count:2000\", \"5m\"]\n\
         [rules]\nfor_evaluations = 1\n\
         [[reference.sources]]\nmodel = \"m\"\nversion = \"*\"\nreference = \"live:stable\"\n";
    let d = TestDaemon::start(test_config_with_file(dir.path(), toml, &[])).await;
    let mut rng = rng(9);
    // Stable warms up on its first 5000 records, then fills its window.
    send(&d, "stable", normal(&mut rng, 5000, 0.0, 1.0)).await;
    send(&d, "stable", normal(&mut rng, 2000, 0.0, 1.0)).await;
    send(&d, "canary", normal(&mut rng, 2000, 0.0, 1.0)).await;
    wait_until("canary ok against stable", Duration::from_secs(10), || {
        canary_is(&d, pb::Verdict::Ok, 0)
    })
    .await;
    let s = status(&d, "m", "canary").await;
    assert_eq!(s.reference_source, "live");
    assert_eq!(s.reference_hash.len(), 16);
    for name in ["last_2000", "5m"] {
        let f = &window(&s, name).features[0];
        assert_eq!(
            f.reference_samples, 2000,
            "stable's {name} window is the reference"
        );
    }
    // The canary drifts while stable does not.
    send(&d, "canary", normal(&mut rng, 2000, 1.0, 1.0)).await;
    wait_until("canary drifts", Duration::from_secs(10), || {
        canary_is(&d, pb::Verdict::Drift, 0)
    })
    .await;
    let stable = status(&d, "m", "stable").await;
    assert_eq!(stable.reference_source, "warmup");
    assert_eq!(stable.verdict, pb::Verdict::Ok as i32);
    let before = status(&d, "m", "canary").await.last_evaluation_unix_ms;
    d.stop().await.unwrap();

    // After a restart both windows come back and are judged again.
    let d = TestDaemon::start(test_config_with_file(dir.path(), toml, &[])).await;
    wait_until(
        "canary drifts after a restart",
        Duration::from_secs(10),
        || canary_is(&d, pb::Verdict::Drift, before),
    )
    .await;
    let s = status(&d, "m", "canary").await;
    assert_eq!(s.reference_source, "live");
    assert_eq!(window(&s, "5m").features[0].reference_samples, 2000);
    d.stop().await.unwrap();
}
