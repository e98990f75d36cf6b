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
    std::fs::write(&path, "[rule]\npsi_threshold = 0.25\n").unwrap();
    let out = driftd()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("DRIFTD_WINDOW__SIZE", "1234")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed: toml::Value = toml::from_str(&text).expect("prints TOML");
    assert_eq!(parsed["rule"]["psi_threshold"].as_float(), Some(0.25));
    assert_eq!(parsed["window"]["size"].as_integer(), Some(1234));
    assert_eq!(parsed["server"]["grpc_addr"].as_str(), Some("127.0.0.1:7700"));
}

/// Starts the binary on port 0 with JSON logs and returns the child and its
/// bound gRPC and HTTP addresses, read from the "listening" log lines.
fn spawn_daemon(data: &std::path::Path) -> (std::process::Child, String, String) {
    let mut child = driftd()
        .args(["--log-format", "json"])
        .env("DRIFTD_STORE__PATH", data)
        .env("DRIFTD_SERVER__GRPC_ADDR", "127.0.0.1:0")
        .env("DRIFTD_SERVER__HTTP_ADDR", "127.0.0.1:0")
        .env("DRIFTD_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
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
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    (child, grpc.unwrap(), http.unwrap())
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
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

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
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
