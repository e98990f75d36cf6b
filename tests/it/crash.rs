//! Crash safety of acknowledged ingest: the binary is killed with SIGKILL
//! at random moments (some during start-up) while idempotent producers
//! stream numbered batches; after every restart, every acknowledged record
//! is counted, and once every producer has resent what it had no
//! acknowledgement for, every record is counted exactly once.

use std::{
    collections::BTreeMap,
    io::Read,
    time::{Duration, Instant},
};

use driftd::proto::{self as pb, driftd_client::DriftdClient, ColumnRole};
use rand::Rng;

use crate::{
    binary::{daemon, spawn_daemon_with, wait_exit},
    support::*,
};

const ROWS: u64 = 20;
const PRODUCERS: usize = 3;
const ITERATIONS: usize = 24;
/// Records of the warm-up reference; they leave the windows once it forms.
const WARMUP: u64 = 200;

/// How far a start had come when it was killed, from its log.
#[derive(Clone, Copy)]
enum StartPhase {
    /// Nothing logged: the process was loading or reading its config.
    Launching,
    /// "Starting driftd" logged: binding the listeners, opening sled and
    /// reading its state.
    OpeningStore,
    /// A model version restored: starting the engine and the servers.
    Restoring,
    /// "gRPC server listening" logged: start-up was over.
    Listening,
}

impl StartPhase {
    fn of(log: &str) -> Self {
        if log.contains("gRPC server listening") {
            Self::Listening
        } else if log.contains("Restored model version") {
            Self::Restoring
        } else if log.contains("Starting driftd") {
            Self::OpeningStore
        } else {
            Self::Launching
        }
    }
}

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
    // Kills during start-up, by the phase they hit, and how long the last
    // start took to listen.
    let mut phases = [0usize; 4];
    let mut last_start = Duration::ZERO;
    for iteration in 0..ITERATIONS {
        if iteration % 4 == 3 {
            // Killed while starting, at a random moment within the time the
            // previous start took to listen; its log says which phase the
            // kill hit.
            let mut child = daemon(&data, &env).spawn().unwrap();
            // Nine tenths of it: a start may be quicker than the last.
            let at = rng.random_range(0..(last_start.as_micros() as u64 * 9 / 10).max(1));
            tokio::time::sleep(Duration::from_micros(at)).await;
            child.kill().unwrap();
            child.wait().unwrap();
            let mut log = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut log)
                .unwrap();
            phases[StartPhase::of(&log) as usize] += 1;
            continue;
        }
        let started = Instant::now();
        let (mut child, grpc, _) = spawn_daemon_with(&data, &env);
        last_start = started.elapsed();
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
    // Most start-up kills hit a daemon not yet listening, and some of
    // those one that had begun opening or restoring the store.
    let startup_kills: usize = phases[..3].iter().sum();
    assert!(startup_kills >= 4, "start-up kills by phase: {phases:?}");
    assert!(
        phases[1] + phases[2] >= 1,
        "start-up kills by phase: {phases:?}"
    );

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
        "{ITERATIONS} kills ({startup_kills} during start-up: {} before the log began, {} while \
         binding and opening the store, {} while restoring; {} after listening), {total} batches \
         of {ROWS} rows, {duplicates} resent batches were already stored",
        phases[0], phases[1], phases[2], phases[3]
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
