//! Rollback webhooks from the durable outbox against real HTTP receivers on
//! 127.0.0.1, and the Argo Rollouts and Flagger gate endpoints.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Bytes,
    http::{HeaderMap, StatusCode},
};
use base64::Engine as _;
use driftd::proto::ColumnRole;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::support::*;

const SECRET_B64: &str = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// How the receiver answers.
#[derive(Clone, Copy)]
enum Mode {
    /// The first `n` attempts get `status`, later ones 200.
    FailFirst(usize, u16),
    /// Every attempt gets `status`.
    Always(u16),
    /// Never answers (until the client gives up).
    Hang,
}

#[derive(Clone)]
struct Receiver {
    url: String,
    mode: Arc<Mutex<Mode>>,
    got: Arc<Mutex<Vec<(HeaderMap, Bytes, std::time::Instant)>>>,
}

impl Receiver {
    async fn start(mode: Mode) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let r = Self {
            url,
            mode: Arc::new(Mutex::new(mode)),
            got: Arc::default(),
        };
        let rr = r.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let rr = rr.clone();
                async move {
                    let n = {
                        let mut g = rr.got.lock().unwrap();
                        g.push((headers, body, std::time::Instant::now()));
                        g.len()
                    };
                    let mode = *rr.mode.lock().unwrap();
                    let code = match mode {
                        Mode::FailFirst(k, status) if n <= k => status,
                        Mode::FailFirst(..) => 200,
                        Mode::Always(status) => status,
                        Mode::Hang => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            200
                        }
                    };
                    let mut resp = axum::response::IntoResponse::into_response(
                        StatusCode::from_u16(code).unwrap(),
                    );
                    if code == 429 {
                        resp.headers_mut()
                            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
                    }
                    resp
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        r
    }

    fn attempts(&self) -> Vec<(HeaderMap, Value)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(h, b, _)| (h.clone(), serde_json::from_slice(b).unwrap_or(Value::Null)))
            .collect()
    }

    /// Verifies the Standard Webhooks signature with an independent HMAC.
    fn signature_ok(&self, i: usize) -> bool {
        let g = self.got.lock().unwrap();
        let (h, body, _) = &g[i];
        let id = h["webhook-id"].to_str().unwrap();
        let ts = h["webhook-timestamp"].to_str().unwrap();
        let key = base64::engine::general_purpose::STANDARD
            .decode(SECRET_B64)
            .unwrap();
        let mut mac = <Hmac<Sha256>>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        let expected = format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
        h["webhook-signature"]
            .to_str()
            .unwrap()
            .split(' ')
            .any(|s| s == expected)
    }
}

/// One PSI rule firing after one evaluation, fast retries.
fn config(dir: &std::path::Path, targets: &str) -> driftd::config::Config {
    let toml = format!(
        r#"
[evaluation]
min_samples = 200
[reference]
warmup_samples = 500
[window]
windows = ["count:500"]
[webhook]
backoff_base = "50ms"
backoff_cap = "200ms"
timeout = "1s"
{targets}
[[rules.list]]
name = "psi"
statistic = "psi"
threshold = 0.2
for_evaluations = 1
"#
    );
    test_config_with_file(dir, &toml, &[])
}

fn target(name: &str, url: &str, extra: &str) -> String {
    format!("[[webhook.targets]]\nname = \"{name}\"\nurl = \"{url}\"\nsecrets = [\"whsec_{SECRET_B64}\"]\n{extra}\n")
}

/// Reference-like rows, then rows shifted by three standard deviations.
async fn drift(d: &TestDaemon, model: &str) {
    let mut client = d.client().await;
    let mut g = rng(3);
    for shift in [0.0, 3.0] {
        client
            .ingest_batch(batch(
                model,
                "canary",
                vec![numeric(
                    "x",
                    ColumnRole::Input,
                    normal(&mut g, 500, shift, 1.0),
                )],
            ))
            .await
            .unwrap();
    }
}

async fn until<F: Fn() -> bool>(what: &str, secs: u64, f: F) {
    wait_until(what, Duration::from_secs(secs), || {
        let ok = f();
        async move { ok }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_keep_the_id_and_sign_every_attempt_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start(Mode::FailFirst(2, 503)).await;
    let down = Receiver::start(Mode::Always(500)).await;
    let targets = target("hook", &hook.url, "") + &target("later", &down.url, "");
    let d = TestDaemon::start(config(dir.path(), &targets)).await;
    drift(&d, "m").await;

    until("three attempts at the flaky receiver", 15, || {
        hook.attempts().len() >= 3
    })
    .await;
    let attempts = hook.attempts();
    let ids: Vec<&str> = attempts
        .iter()
        .map(|(h, _)| h["webhook-id"].to_str().unwrap())
        .collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one id on every attempt: {ids:?}"
    );
    assert_eq!(attempts[2].1["event"], "firing");
    assert_eq!(attempts[2].1["id"], ids[0]);
    for i in 0..3 {
        assert!(
            hook.signature_ok(i),
            "attempt {i} carries a valid signature"
        );
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(hook.attempts().len(), 3, "delivered: no more attempts");

    // The second receiver is down; the event waits in the outbox across a
    // restart and is delivered once the receiver is back.
    until("attempts at the dead receiver", 15, || {
        !down.attempts().is_empty()
    })
    .await;
    let scrape = d.scrape().await;
    assert_eq!(sample(&scrape, "driftd_outbox_pending", &[]), Some(1.0));
    d.stop().await.unwrap();
    let before = down.attempts().len();
    *down.mode.lock().unwrap() = Mode::Always(200);
    let d = TestDaemon::start(config(dir.path(), &targets)).await;
    until("delivery after restart", 15, || {
        down.attempts().len() > before
    })
    .await;
    let after = down.attempts();
    assert_eq!(
        after.last().unwrap().0["webhook-id"],
        after[0].0["webhook-id"]
    );
    wait_until("outbox empty", Duration::from_secs(10), || {
        let d = &d;
        async move { sample(&d.scrape().await, "driftd_outbox_pending", &[]) == Some(0.0) }
    })
    .await;
    // The flaky receiver got nothing new: the restart did not re-fire.
    assert_eq!(hook.attempts().len(), 3);
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_a_target_and_a_hanging_one_delays_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let gone = Receiver::start(Mode::Always(410)).await;
    let hang = Receiver::start(Mode::Hang).await;
    let fast = Receiver::start(Mode::Always(200)).await;
    let am = Receiver::start(Mode::Always(200)).await;
    let targets = target("gone", &gone.url, "")
        + &target("hang", &hang.url, "")
        + &target("fast", &fast.url, "")
        + &target("am", &am.url, "format = \"alertmanager\"");
    let d = TestDaemon::start(config(dir.path(), &targets)).await;
    drift(&d, "m").await;

    // The hanging receiver holds its worker for the 1 s timeout, again and
    // again; the fast one is served at once.
    until("fast receiver served", 5, || !fast.attempts().is_empty()).await;
    assert!(!hang.attempts().is_empty() || fast.attempts().len() == 1);
    until("410 seen", 5, || !gone.attempts().is_empty()).await;

    // Alertmanager's payload, version 4.
    until("alertmanager receiver served", 5, || {
        !am.attempts().is_empty()
    })
    .await;
    let body = &am.attempts()[0].1;
    assert_eq!(body["version"], "4");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["receiver"], "am");
    assert_eq!(body["alerts"][0]["labels"]["model"], "m");
    assert_eq!(body["alerts"][0]["labels"]["rule"], "psi");
    assert!(body["alerts"][0]["fingerprint"].is_string());

    // Resolve: the 410 target gets nothing more.
    let mut client = d.client().await;
    let mut g = rng(4);
    client
        .ingest_batch(batch(
            "m",
            "canary",
            vec![numeric(
                "x",
                ColumnRole::Input,
                normal(&mut g, 500, 0.0, 1.0),
            )],
        ))
        .await
        .unwrap();
    until("resolved at the fast receiver", 10, || {
        fast.attempts().len() >= 2
    })
    .await;
    assert_eq!(fast.attempts()[1].1["event"], "resolved");
    assert_eq!(gone.attempts().len(), 1, "a 410 disables the target");
    let scrape = d.scrape().await;
    assert_eq!(
        sample(
            &scrape,
            "driftd_webhook_deliveries_total",
            &[("outcome", "disabled")]
        ),
        Some(1.0)
    );
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_and_flagger_gates_answer_for_ok_drift_and_insufficient_data() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(config(dir.path(), "")).await;
    let http = reqwest::Client::new();
    let verdict = |model: &str| {
        let url = d.url(&format!("/api/v1/models/{model}/verdict?version=canary"));
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let flagger = |path: &str, model: &str| {
        let url = d.url(path);
        let http = http.clone();
        let body = json!({"name": "web", "namespace": "prod", "phase": "Progressing", "checksum": "x", "metadata": {"model": model}});
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };

    // Insufficient data: unknown model, and a model still warming up.
    let (code, v) = verdict("nobody").await;
    assert_eq!(
        (code, v["verdict"].as_str(), v["ok"].as_bool()),
        (200, Some("insufficient_data"), Some(false))
    );
    let (code, v) = flagger("/api/v1/flagger/gate", "nobody").await;
    assert_eq!(
        (code, v["verdict"].as_str()),
        (409, Some("insufficient_data"))
    );
    assert!(v["error"].is_string());

    // Ok: reference-like traffic only.
    let mut client = d.client().await;
    let mut g = rng(5);
    for _ in 0..2 {
        client
            .ingest_batch(batch(
                "calm",
                "canary",
                vec![numeric(
                    "x",
                    ColumnRole::Input,
                    normal(&mut g, 500, 0.0, 1.0),
                )],
            ))
            .await
            .unwrap();
    }
    wait_until("calm evaluated ok", Duration::from_secs(10), || {
        let v = verdict("calm");
        async move { v.await.1["verdict"] == "ok" }
    })
    .await;
    let (code, v) = verdict("calm").await;
    assert_eq!(
        (code, v["ok"].as_bool(), v["samples"].as_u64()),
        (200, Some(true), Some(500))
    );
    assert!(v["max_score"].as_f64().unwrap() < 0.2);
    assert_eq!(flagger("/api/v1/flagger/gate", "calm").await.0, 200);
    assert_eq!(flagger("/api/v1/flagger/rollback", "calm").await.0, 409);

    // Drift: still 200 for Argo (a measurement, not an error); 409 at the
    // Flagger gate; 200 (roll back) at the rollback hook once firing.
    drift(&d, "hot").await;
    wait_until("hot firing", Duration::from_secs(10), || {
        let v = verdict("hot");
        async move { v.await.1["firing"] == true }
    })
    .await;
    let (code, v) = verdict("hot").await;
    assert_eq!(
        (code, v["verdict"].as_str(), v["ok"].as_bool()),
        (200, Some("drift"), Some(false))
    );
    assert!(v["max_score"].as_f64().unwrap() > 0.2);
    assert_eq!(v["rules"][0]["name"], "psi");
    assert_eq!(v["rules"][0]["state"], "firing");
    assert_eq!(flagger("/api/v1/flagger/gate", "hot").await.0, 409);
    let (code, v) = flagger("/api/v1/flagger/rollback", "hot").await;
    assert_eq!((code, v["rollback"].as_bool()), (200, Some(true)));

    // A window the model does not have is a template error: 400.
    let r = http
        .get(d.url("/api/v1/models/hot/verdict?version=canary&window=5m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_4xx_gives_up_and_old_events_are_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    // 429 with Retry-After: 1 for the first attempt, then accepted.
    let busy = Receiver::start(Mode::FailFirst(1, 429)).await;
    let bad = Receiver::start(Mode::Always(400)).await;
    let down = Receiver::start(Mode::Always(500)).await;
    let targets = target("busy", &busy.url, "")
        + &target("bad", &bad.url, "")
        + &target("down", &down.url, "");
    let mut cfg = config(dir.path(), &targets);
    cfg.webhook.max_age = Duration::from_millis(700);
    let d = TestDaemon::start(cfg).await;
    drift(&d, "m").await;

    // Retry-After: 1 overrides the 50-200 ms backoff (the cap is 200 ms,
    // which also caps Retry-After): the second attempt comes no sooner than
    // the cap.
    until("busy receiver accepted", 10, || busy.attempts().len() >= 2).await;
    let a = busy.attempts();
    assert_eq!(a[0].0["webhook-id"], a[1].0["webhook-id"]);
    let gap = {
        let g = busy.got.lock().unwrap();
        g[1].2 - g[0].2
    };
    // Without Retry-After the first retry would come within 50 ms.
    assert!(
        gap >= Duration::from_millis(190),
        "retry came after {gap:?}"
    );

    until("400 seen", 10, || !bad.attempts().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bad.attempts().len(), 1, "a 4xx gives the event up");

    // The counter moves when the attempt ends, the pending gauge once the
    // entry is gone from the outbox: wait for both.
    wait_until("dead letter", Duration::from_secs(10), || {
        let d = &d;
        async move {
            let scrape = d.scrape().await;
            sample(&scrape, "driftd_outbox_dead_lettered_total", &[]) == Some(1.0)
                && sample(&scrape, "driftd_outbox_pending", &[]) == Some(0.0)
        }
    })
    .await;
    let scrape = d.scrape().await;
    assert_eq!(
        sample(
            &scrape,
            "driftd_webhook_deliveries_total",
            &[("outcome", "gave_up")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "driftd_webhook_deliveries_total",
            &[("outcome", "dead_lettered")]
        ),
        Some(1.0)
    );
    assert!(down.attempts().len() >= 2, "retried until dead-lettered");
    assert_eq!(sample(&scrape, "driftd_outbox_pending", &[]), Some(0.0));
    d.stop().await.unwrap();
}

/// The daemon binary is SIGKILLed while the receiver is down; after a
/// restart on the same directory the events still arrive, with the ids they
/// had before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_a_kill_9_while_the_receiver_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let recv = Receiver::start(Mode::Always(503)).await;
    let env = [
        ("DRIFTD_WEBHOOK__URLS", recv.url.as_str()),
        ("DRIFTD_WEBHOOK__BACKOFF_BASE", "50ms"),
        ("DRIFTD_WEBHOOK__BACKOFF_CAP", "200ms"),
        ("DRIFTD_EVALUATION__INTERVAL", "100ms"),
        ("DRIFTD_EVALUATION__MIN_SAMPLES", "200"),
        ("DRIFTD_REFERENCE__WARMUP_SAMPLES", "500"),
        ("DRIFTD_WINDOW__WINDOWS", "count:500"),
        ("DRIFTD_RULES__FOR_EVALUATIONS", "1"),
    ];
    let (mut child, grpc, _) = crate::binary::spawn_daemon_with(dir.path(), &env);
    let mut client = driftd::proto::driftd_client::DriftdClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let mut g = rng(11);
    for shift in [0.0, 3.0] {
        client
            .ingest_batch(batch(
                "m",
                "v",
                vec![numeric(
                    "x",
                    ColumnRole::Input,
                    normal(&mut g, 500, shift, 1.0),
                )],
            ))
            .await
            .unwrap();
    }
    // Both default rules fire; wait until both events were attempted.
    until("attempts of both events", 15, || {
        let ids: std::collections::BTreeSet<String> = recv
            .attempts()
            .iter()
            .map(|(h, _)| h["webhook-id"].to_str().unwrap().to_string())
            .collect();
        ids.len() == 2
    })
    .await;
    let before: std::collections::BTreeSet<String> = recv
        .attempts()
        .iter()
        .map(|(h, _)| h["webhook-id"].to_str().unwrap().to_string())
        .collect();
    let kill = std::process::Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let _ = tokio::task::spawn_blocking(move || {
        crate::binary::wait_exit(&mut child, Duration::from_secs(10))
    })
    .await
    .unwrap();

    *recv.mode.lock().unwrap() = Mode::Always(200);
    let n = recv.attempts().len();
    let (mut child, _, http) = crate::binary::spawn_daemon_with(dir.path(), &env);
    until("deliveries after the restart", 15, || {
        let after: std::collections::BTreeSet<String> = recv.attempts()[n..]
            .iter()
            .map(|(h, _)| h["webhook-id"].to_str().unwrap().to_string())
            .collect();
        after == before
    })
    .await;
    let scrape = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let delivered = sample(
        &scrape,
        "driftd_webhook_deliveries_total",
        &[("outcome", "delivered")],
    );
    assert_eq!(delivered, Some(2.0));
    let _ = child.kill();
    let _ = child.wait();
}
