//! The `driftd` binary as users run it: configuration errors exit 64 naming
//! the key, `check-config` prints the effective configuration, SIGTERM
//! drains and exits 0 with acknowledged data on disk.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use driftd::proto::{self as pb, ColumnRole};

use crate::support::*;

fn driftd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_driftd"));
    // The test environment may carry DRIFTD_* variables of its own.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DRIFTD_")) {
        c.env_remove(k);
    }
    c
}

#[test]
fn invalid_config_file_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("driftd.toml");
    std::fs::write(&path, "[evaluation]\nmin_samples = \"lots\"\n").unwrap();
    for sub in [&["check-config"][..], &[][..]] {
        let out = driftd()
            .args(sub)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{sub:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("min_samples"), "{stderr}");
    }
    let out = driftd()
        .args(["check-config", "--config"])
        .arg(dir.path().join("absent.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = driftd()
        .arg("check-config")
        .env("DRIFTD_SERVER__GRPC_ADDR", "localhost")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.grpc_addr"));
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("driftd.toml");
    std::fs::write(&path, "[rules]\npsi_threshold = 0.25\n").unwrap();
    let out = driftd()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("DRIFTD_WINDOW__WINDOWS", "count:1234")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed: toml::Value = toml::from_str(&text).expect("prints TOML");
    assert_eq!(parsed["rules"]["psi_threshold"].as_float(), Some(0.25));
    assert_eq!(parsed["window"]["windows"][0].as_str(), Some("count:1234"));
    assert_eq!(
        parsed["server"]["grpc_addr"].as_str(),
        Some("127.0.0.1:7700")
    );
}

/// The allocator runs with the options the README documents (jemalloc's
/// background thread, freed pages returned after a second), and
/// `_RJEM_MALLOC_CONF` overrides them. jemalloc prints its options at exit
/// when asked to (`stats_print`).
#[test]
fn the_allocator_returns_freed_pages_after_a_second_unless_told_otherwise() {
    let options = |conf: &str| {
        let out = driftd()
            .arg("check-config")
            .env("_RJEM_MALLOC_CONF", conf)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let built_in = options("stats_print:true");
    for line in [
        "opt.background_thread: true",
        "opt.dirty_decay_ms: 1000",
        "opt.muzzy_decay_ms: 0",
    ] {
        assert!(
            built_in.contains(line),
            "{line:?} not in jemalloc's statistics"
        );
    }
    let overridden = options("stats_print:true,dirty_decay_ms:5000");
    assert!(
        overridden.contains("opt.dirty_decay_ms: 5000"),
        "the environment overrides the built-in options"
    );
}

/// Starts the binary on port 0 with JSON logs and returns the child and its
/// bound gRPC and HTTP addresses, read from the "listening" log lines.
fn spawn_daemon(data: &std::path::Path) -> (std::process::Child, String, String) {
    spawn_daemon_with(data, &[])
}

pub(crate) fn spawn_daemon_with(
    data: &std::path::Path,
    env: &[(&str, &str)],
) -> (std::process::Child, String, String) {
    let (child, grpc, http, logs) = spawn_daemon_logged(data, env);
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || while logs.recv().is_ok() {});
    (child, grpc, http)
}

/// The daemon on `data` with `env`, on ephemeral loopback ports, logging
/// JSON at info level to a piped stderr.
pub(crate) fn daemon(data: &std::path::Path, env: &[(&str, &str)]) -> Command {
    let mut c = driftd();
    c.envs(env.iter().copied())
        .args(["--log-format", "json"])
        .env("DRIFTD_STORE__PATH", data)
        .env("DRIFTD_SERVER__GRPC_ADDR", "127.0.0.1:0")
        .env("DRIFTD_SERVER__HTTP_ADDR", "127.0.0.1:0")
        .env("DRIFTD_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    c
}

/// [`spawn_daemon_with`], also returning the daemon's later log lines (JSON),
/// which the caller must keep reading or drop.
fn spawn_daemon_logged(
    data: &std::path::Path,
    env: &[(&str, &str)],
) -> (std::process::Child, String, String, mpsc::Receiver<String>) {
    let mut child = daemon(data, env).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut grpc, mut http) = (None, None);
    while grpc.is_none() || http.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("daemon logs its listening addresses within 20 s");
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let addr = v["addr"].as_str().map(str::to_string);
        match v["message"].as_str() {
            Some("gRPC server listening") => grpc = addr,
            Some("HTTP server listening") => http = addr,
            _ => {}
        }
    }
    (child, grpc.unwrap(), http.unwrap(), rx)
}

pub(crate) fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("daemon did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero_keeping_acknowledged_data() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, grpc, http) = spawn_daemon(dir.path());
    let mut client = pb::driftd_client::DriftdClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let mut acked = 0;
    for i in 0..20 {
        let ack = client
            .ingest_batch(batch(
                "m",
                "v",
                vec![numeric("x", ColumnRole::Input, vec![i as f64; 100])],
            ))
            .await
            .unwrap()
            .into_inner();
        acked += ack.records;
    }
    let ready = reqwest::get(format!("http://{http}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);

    sigterm(&child);
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "graceful shutdown exits 0");

    // Every acknowledged record is on disk.
    let daemon = TestDaemon::start(test_config(dir.path(), &[])).await;
    let status = daemon
        .client()
        .await
        .get_status(pb::GetStatusRequest {
            model: "m".into(),
            version: "v".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.versions[0].records_ingested, acked);
    daemon.stop().await.unwrap();
}

/// The shipped example configuration is valid and lists exactly the
/// embedded defaults, and the README documents every key it prints.
#[test]
fn example_config_and_readme_match_the_defaults() {
    let root = env!("CARGO_MANIFEST_DIR");
    let defaults = driftd().arg("check-config").output().unwrap();
    assert!(defaults.status.success());
    let example = driftd()
        .args(["check-config", "--config"])
        .arg(format!("{root}/deploy/driftd.example.toml"))
        .output()
        .unwrap();
    assert!(
        example.status.success(),
        "{}",
        String::from_utf8_lossy(&example.stderr)
    );
    assert_eq!(defaults.stdout, example.stdout);

    let effective: toml::Table =
        toml::from_str(&String::from_utf8(defaults.stdout).unwrap()).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    for (key, value) in &effective {
        let mut keys = Vec::new();
        match value.as_table() {
            Some(section) => keys.extend(section.keys().map(|k| format!("{key}.{k}"))),
            None => keys.push(key.clone()),
        }
        for k in keys {
            let env = format!("DRIFTD_{}", k.replace('.', "__").to_uppercase());
            assert!(
                readme.contains(&format!("| `{k}` | `{env}` |"))
                    || readme.contains(&format!("| `{k}` | (file only) |")),
                "README configuration reference lacks {k} ({env})"
            );
        }
    }
}

fn sigterm(child: &std::process::Child) {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}

/// Opens an Ingest stream, sends one batch and keeps the stream open, so a
/// graceful shutdown has an in-flight RPC to wait for.
async fn hold_open_stream(grpc: &str) -> tokio::sync::mpsc::Sender<pb::IngestRequest> {
    let mut client = pb::driftd_client::DriftdClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(batch(
        "m",
        "v",
        vec![numeric("x", ColumnRole::Input, vec![1.0])],
    ))
    .await
    .unwrap();
    tokio::spawn(async move {
        let _ = client
            .ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
    });
    // Let the stream reach the server before the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, grpc, _) =
        spawn_daemon_with(dir.path(), &[("DRIFTD_SERVER__GRACE_PERIOD", "60s")]);
    let _stream = hold_open_stream(&grpc).await;
    sigterm(&child);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "first signal waits for the open stream"
    );
    sigterm(&child);
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(130));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_longer_than_the_grace_period_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, grpc, _) =
        spawn_daemon_with(dir.path(), &[("DRIFTD_SERVER__GRACE_PERIOD", "1s")]);
    let _stream = hold_open_stream(&grpc).await;
    sigterm(&child);
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(code, Some(1));
}

/// The data directory deleted under a running daemon (an operator's
/// mistake, a volume gone). sled keeps writing to its open, now unlinked
/// log file without an error, so the flush behind every acknowledgement
/// checks that the file is still there: ingest answers UNAVAILABLE (never
/// acknowledged into a file nobody can read again), metrics keep
/// answering, the store opens again in a new directory and ingest works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_data_directory_is_noticed_at_the_next_flush_and_the_store_reopened() {
    let outcome = delete_the_data_directory(false).await;
    assert_eq!(outcome, Outcome::Reopened);
}

/// The same, but a write that sled must put in a file of its own (a large
/// reference goes to a blob file) fails in the deleted directory. sled then
/// cannot close its failed handle (its final flush waits forever, holding a
/// lock every sled write in the process needs): driftd says so, drains and
/// exits with status 1 for its supervisor to restart it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_sled_cannot_close_ends_driftd_with_status_1() {
    let outcome = delete_the_data_directory(true).await;
    assert_eq!(outcome, Outcome::Exited);
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Reopened,
    Exited,
    Neither,
}

async fn delete_the_data_directory(large_reference: bool) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (child, grpc, http, logs) = spawn_daemon_logged(&data, &[]);
    let mut child = KillOnDrop(child);
    let mut client = pb::driftd_client::DriftdClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let send = |i: u64| {
        batch(
            "m",
            "v",
            vec![numeric("x", ColumnRole::Input, vec![i as f64; 1000])],
        )
    };
    for i in 0..20 {
        client.ingest_batch(send(i)).await.unwrap();
    }
    std::fs::remove_dir_all(&data).unwrap();
    let limit = Duration::from_secs(10);
    if large_reference {
        // 40,000 values: the compiled reference is over sled's 128 KiB
        // inline limit.
        let values = (0..40_000).map(f64::from).collect();
        let req = pb::SetReferenceRequest {
            batch: batch("m", "v", vec![numeric("x", ColumnRole::Input, values)]).batch,
        };
        let answer = tokio::time::timeout(limit, client.set_reference(tokio_stream::iter([req])))
            .await
            .expect("set-reference answers within 10 s after the directory is gone");
        eprintln!("set-reference after the deletion: {:?}", answer.map(|_| ()));
    }
    // Keep sending until the loss shows, then until the store is back, or
    // driftd declares it stuck and exits.
    let mut refused = None;
    let mut outcome = Outcome::Neither;
    for i in 0..2000 {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert_eq!(
                status.code(),
                Some(1),
                "a stuck store ends driftd with status 1"
            );
            outcome = Outcome::Exited;
            break;
        }
        let answer = tokio::time::timeout(limit, client.ingest_batch(send(i)))
            .await
            .expect("ingest answers within 10 s after the directory is gone");
        match answer {
            Err(status) => {
                refused.get_or_insert(status);
            }
            Ok(_) if refused.is_some() || large_reference => {
                outcome = Outcome::Reopened;
                break;
            }
            Ok(_) => {}
        }
        // Metrics keep answering while the process runs; a refused
        // connection means it is exiting, which the next round sees.
        let metrics = tokio::time::timeout(limit, reqwest::get(format!("http://{http}/metrics")))
            .await
            .expect("HTTP answers within 10 s after the directory is gone");
        if let Ok(response) = metrics {
            assert_eq!(response.status(), 200);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("deleted data directory: {outcome:?}, first refusal {refused:?}");
    if !large_reference {
        let status = refused.expect("ingest is refused once the deletion shows");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("deleted or replaced"),
            "says what happened: {status:?}"
        );
    }
    match outcome {
        Outcome::Reopened => {
            assert!(
                data.join("db").exists(),
                "a new store at {}",
                data.display()
            );
            sigterm(&child.0);
            let code = tokio::task::spawn_blocking(move || {
                wait_exit(&mut child.0, Duration::from_secs(40))
            })
            .await
            .unwrap();
            assert_eq!(code, Some(0), "exits on SIGTERM");
        }
        Outcome::Exited => {
            // The reader thread ends at the closed pipe, after the exit.
            let why = logs
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
                .find(|v| v["message"] == "Shutting down after a fatal error")
                .map(|v| v["error"].as_str().unwrap_or_default().to_string())
                .expect("driftd logs why it shuts down");
            assert!(
                why.contains(&data.display().to_string()) && why.contains("restart"),
                "names the store and the way out: {why}"
            );
        }
        Outcome::Neither => {}
    }
    outcome
}

/// Kills the child when a test fails before it exits.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
