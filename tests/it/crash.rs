//! Crash safety of acknowledged ingest: the binary is killed with SIGKILL
//! at random moments (some during start-up) while idempotent producers
//! stream numbered batches; after every restart, every acknowledged record
//! is counted, and once every producer has resent what it had no
//! acknowledgement for, every record is counted exactly once.

use std::{collections::BTreeMap, time::Duration};

use driftd::proto::{self as pb, driftd_client::DriftdClient, ColumnRole};
use rand::Rng;

use crate::{
    binary::{spawn_daemon_with, wait_exit},
    support::*,
};

const ROWS: u64 = 20;
const PRODUCERS: usize = 3;
const ITERATIONS: usize = 24;
/// Records of the warm-up reference; they leave the windows once it forms.
const WARMUP: u64 = 200;

/// One producer's view: the next sequence number to send and how many it
/// has had acknowledged.
#[derive(Default, Clone, Copy)]
struct Producer {
    next: u64,
    acked: u64,
}

fn numbered(producer: usize, seq: u64) -> pb::IngestRequest {
    let mut req = batch(
        "crash",
        "v",
        vec![numeric(
            "x",
            ColumnRole::Input,
            (0..ROWS).map(|i| (seq * ROWS + i) as f64).collect(),
        )],
    );
    if let Some(b) = req.batch.as_mut() {
        b.producer_id = format!("producer-{producer}");
        b.sequence = seq + 1;
    }
    req
}

/// Sends numbered batches until the connection fails or `stop` fires;
/// advances `p` only on acknowledgements.
async fn produce(
    addr: String,
    id: usize,
    mut p: Producer,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Producer {
    let Ok(mut client) = DriftdClient::connect(addr).await else {
        return p;
    };
    while !*stop.borrow() {
        match client.ingest_batch(numbered(id, p.next)).await {
            Ok(_) => {
                p.next += 1;
                p.acked = p.next;
            }
            Err(_) => break,
        }
    }
    p
}

/// The version's status; `None` before its first batch.
async fn version_status(addr: &str) -> Option<pb::VersionStatus> {
    let mut client = DriftdClient::connect(addr.to_string()).await.unwrap();
    match client
        .get_status(pb::GetStatusRequest {
            model: "crash".into(),
            version: "v".into(),
        })
        .await
    {
        Ok(s) => Some(s.into_inner().versions.remove(0)),
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => panic!("status: {s}"),
    }
}

async fn records(addr: &str) -> u64 {
    version_status(addr).await.map_or(0, |s| s.records_ingested)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_record_is_counted_exactly_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let warmup = WARMUP.to_string();
    let env = [("DRIFTD_REFERENCE__WARMUP_SAMPLES", warmup.as_str())];
    let mut rng = rng(2024);
    let mut producers = [Producer::default(); PRODUCERS];
    let mut startup_kills = 0;
    for iteration in 0..ITERATIONS {
        if iteration % 4 == 3 {
            // Killed while starting: opening sled, restoring, binding.
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_driftd"))
                .env("DRIFTD_STORE__PATH", &data)
                .env("DRIFTD_SERVER__GRPC_ADDR", "127.0.0.1:0")
                .env("DRIFTD_SERVER__HTTP_ADDR", "127.0.0.1:0")
                .envs(env)
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..60))).await;
            child.kill().unwrap();
            child.wait().unwrap();
            startup_kills += 1;
            continue;
        }
        let (mut child, grpc, _) = spawn_daemon_with(&data, &env);
        let addr = format!("http://{grpc}");
        // Nothing acknowledged was lost by the previous kill.
        let acked: u64 = producers.iter().map(|p| p.acked).sum();
        let sent_at_most: u64 = producers.iter().map(|p| p.next + 1).sum();
        let counted = records(&addr).await;
        assert!(
            counted >= acked * ROWS,
            "iteration {iteration}: {counted} records counted, {} acknowledged",
            acked * ROWS
        );
        assert!(
            counted <= sent_at_most * ROWS,
            "iteration {iteration}: {counted} records counted, at most {} sent",
            sent_at_most * ROWS
        );
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let tasks: Vec<_> = producers
            .iter()
            .enumerate()
            .map(|(i, &p)| tokio::spawn(produce(addr.clone(), i, p, stop_rx.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
        // SIGKILL: no drain, no final flush.
        child.kill().unwrap();
        let _ = stop_tx.send(true);
        for (i, t) in tasks.into_iter().enumerate() {
            producers[i] = t.await.unwrap();
        }
        wait_exit(&mut child, Duration::from_secs(10));
    }
    assert!(startup_kills >= 5);

    // Every producer resends from its first unacknowledged batch: batches
    // that were written before the kill are recognised as duplicates.
    let (mut child, grpc, _) = spawn_daemon_with(&data, &env);
    let addr = format!("http://{grpc}");
    let mut client = DriftdClient::connect(addr.clone()).await.unwrap();
    let mut duplicates = 0;
    for (i, p) in producers.iter_mut().enumerate() {
        let ack = client
            .ingest_batch(numbered(i, p.next))
            .await
            .unwrap()
            .into_inner();
        duplicates += u64::from(ack.duplicate);
        p.next += 1;
        // A second send of the same batch is always a duplicate.
        let again = client
            .ingest_batch(numbered(i, p.next - 1))
            .await
            .unwrap()
            .into_inner();
        assert!(again.duplicate);
    }
    let total: u64 = producers.iter().map(|p| p.next).sum();
    let counted = records(&addr).await;
    println!(
        "{ITERATIONS} kills ({startup_kills} during start-up), {total} batches of {ROWS} rows, \
         {duplicates} resent batches were already stored"
    );
    assert_eq!(counted, total * ROWS, "each record counted exactly once");
    // The windows (5m and 1h by default; the test takes well under five
    // minutes) hold every record after the warm-up reference's, once: no
    // window delta was lost or applied twice by a reload.
    let s = version_status(&addr).await.unwrap();
    assert_eq!(s.windows.len(), 2, "{s:?}");
    for w in &s.windows {
        assert_eq!(w.records, counted - WARMUP, "window {}", w.name);
        let x = &w.features[0];
        assert_eq!(x.window_samples, counted - WARMUP, "window {}", w.name);
    }
    let per_producer: BTreeMap<usize, u64> = producers
        .iter()
        .enumerate()
        .map(|(i, p)| (i, p.next))
        .collect();
    assert!(per_producer.values().all(|&n| n > 0), "{per_producer:?}");
    child.kill().unwrap();
    wait_exit(&mut child, Duration::from_secs(10));
}
