//! A store driftd cannot read: refused by default with a message naming the
//! directory and the way out; with `store.on_corruption = "quarantine"`
//! moved aside, counted, and replaced by an empty one. No panic either way.

use std::{io::Write, path::Path};

use driftd::proto::ColumnRole;

use crate::support::*;

async fn fill(dir: &Path) {
    let d = TestDaemon::start(test_config(dir, &[])).await;
    let mut client = d.client().await;
    for i in 0..20 {
        client
            .ingest_batch(batch(
                "m",
                "v",
                vec![numeric("x", ColumnRole::Input, vec![i as f64; 200])],
            ))
            .await
            .unwrap();
    }
    d.stop().await.unwrap();
}

/// Overwrites the middle of every sled file with garbage.
fn corrupt(dir: &Path) {
    for name in ["conf", "db"] {
        let path = dir.join(name);
        let len = std::fs::metadata(&path).unwrap().len();
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(len / 4)).unwrap();
        f.write_all(&vec![0xA5; (len / 2).max(1) as usize]).unwrap();
    }
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("snap.")
        {
            std::fs::write(&p, b"garbage").unwrap();
        }
    }
}

async fn run_once(cfg: driftd::config::Config) -> anyhow::Result<()> {
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // Resolves at once: a store that opens leads to a clean shutdown.
    driftd::app::run(cfg, driftd::app::Listeners { grpc, http }, async {}).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_store_is_refused_by_default_and_quarantined_on_request() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    fill(&data).await;
    corrupt(&data);

    let err = run_once(test_config(&data, &[]))
        .await
        .expect_err("a corrupt store is refused");
    let msg = format!("{err:#}");
    assert!(msg.contains(&data.display().to_string()), "{msg}");
    assert!(msg.contains("on_corruption = \"quarantine\""), "{msg}");
    assert!(data.exists(), "refusing leaves the data where it is");

    let cfg = test_config(
        &data,
        &[("DRIFTD_STORE__ON_CORRUPTION", "quarantine".to_string())],
    );
    let d = TestDaemon::start(cfg).await;
    let scrape = d.scrape().await;
    assert_eq!(
        sample(&scrape, "driftd_store_quarantined_total", &[]),
        Some(1.0)
    );
    assert!(
        status_json(&d, "m").await.is_none(),
        "the new store starts empty"
    );
    let aside: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("data.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    // The fresh store works.
    d.client()
        .await
        .ingest_batch(batch(
            "m",
            "v",
            vec![numeric("x", ColumnRole::Input, vec![1.0])],
        ))
        .await
        .unwrap();
    d.stop().await.unwrap();
}
