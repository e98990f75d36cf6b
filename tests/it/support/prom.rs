//! Real Prometheus tooling for the tests: finding `prometheus` and
//! `promtool`, skipping loudly when they are missing (failing instead under
//! `DRIFTD_REQUIRE_E2E=1`), and a Prometheus server on an ephemeral
//! loopback port with its own storage directory, killed on drop.
//!
//! The Debian package may also run a system Prometheus on :9090; nothing
//! here talks to it.

use std::{
    io::Write,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `name` on PATH, or None after a loud message on stderr. Panics instead
/// when `DRIFTD_REQUIRE_E2E=1` (CI), so a missing binary fails the run.
pub fn require(name: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("DRIFTD_REQUIRE_E2E").as_deref() == Ok("1") {
            panic!("{test}: `{name}` is not on PATH and DRIFTD_REQUIRE_E2E=1 (install Debian's `prometheus` package)");
        }
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! SKIPPED {test}: `{name}` is not on PATH.\n\
             !!! Install Debian's `prometheus` package (server and promtool),\n\
             !!! or set DRIFTD_REQUIRE_E2E=1 to make this a failure.\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
    }
    found
}

/// Runs `promtool` with `args` in the repository root, feeding `stdin`,
/// with a time limit.
pub fn promtool(bin: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(bin)
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    let mut pipe = child.stdin.take().expect("stdin piped");
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes())
            .expect("write promtool stdin");
    }
    drop(pipe);
    let guard = KillOnDrop(Some(child));
    wait_output(guard, Duration::from_secs(60))
}

fn wait_output(mut guard: KillOnDrop, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        let child = guard.0.as_mut().expect("child present");
        if child.try_wait().expect("poll child").is_some() {
            let child = guard.0.take().expect("child present");
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() > deadline {
            panic!("promtool did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed (and reaped) when dropped.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A free port on 127.0.0.1: bind port 0, read it, release it.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A Prometheus server of our own, killed on drop.
pub struct Prometheus {
    pub url: String,
    child: KillOnDrop,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Prometheus {
    /// Starts `bin` with `config` (prometheus.yml text, with absolute
    /// rule file paths) and waits, at most 30 s, until it is ready. A port
    /// picked and released can be taken by someone else in between, so up to
    /// three attempts are made, each on a fresh port and directory.
    pub async fn start(bin: &Path, config: &str) -> Self {
        let mut logs = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let cfg = dir.path().join("prometheus.yml");
            std::fs::write(&cfg, config).expect("write prometheus.yml");
            let log = dir.path().join("prometheus.log");
            let port = free_port();
            let child = Command::new(bin)
                .arg(format!("--config.file={}", cfg.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .spawn()
                .expect("spawn prometheus");
            let p = Self {
                url: format!("http://127.0.0.1:{port}"),
                child: KillOnDrop(Some(child)),
                _dir: dir,
                log,
            };
            if p.wait_ready(Duration::from_secs(30)).await {
                return p;
            }
            logs.push_str(&p.log_text());
            // Dropping p kills the process.
        }
        panic!("prometheus did not become ready in three attempts:\n{logs}");
    }

    async fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let url = format!("{}/-/ready", self.url);
        while tokio::time::Instant::now() < deadline {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Prometheus's own log, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An instant query; Err carries Prometheus's error (a parse error, for
    /// example), Ok the `data.result` array.
    pub async fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let resp = reqwest::Client::new()
            .post(format!("{}/api/v1/query", self.url))
            .form(&[("query", expr)])
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Values of `label` on series matching `selector` (what Grafana's
    /// `label_values(selector, label)` asks for).
    pub async fn label_values(&self, selector: &str, label: &str) -> Result<Vec<String>, String> {
        let resp = reqwest::Client::new()
            .get(format!("{}/api/v1/label/{label}/values", self.url))
            .query(&[("match[]", selector)])
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The health of every scrape target, as (scrape URL, health).
    pub async fn targets(&self) -> Vec<(String, String)> {
        let Ok(resp) = reqwest::get(format!("{}/api/v1/targets", self.url)).await else {
            return vec![];
        };
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        body["data"]["activeTargets"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| {
                        (
                            t["scrapeUrl"].as_str().unwrap_or_default().to_string(),
                            t["health"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The value of the first sample of an instant-query result.
pub fn first_value(result: &[serde_json::Value]) -> Option<f64> {
    result.first()?.get("value")?.get(1)?.as_str()?.parse().ok()
}
