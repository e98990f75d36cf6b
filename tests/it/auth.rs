//! Bearer-token authentication against the real daemon: gRPC calls through
//! a tonic client, HTTP requests through reqwest; missing and wrong tokens
//! are refused, each of two rotated tokens passes, /metrics and health are
//! open unless protected, and a rewritten token file takes effect.

use std::time::Duration;

use driftd::proto::{self as pb, driftd_client::DriftdClient, ColumnRole};
use reqwest::StatusCode;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::Channel,
    Code, Request, Status,
};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::support::*;

const OLD: &str = "old-token-5f0c2a9e8b7d4c31";
const NEW: &str = "new-token-9a8b7c6d5e4f3a2b";
const WRONG: &str = "not-a-token-00000000000000";

/// A daemon accepting `OLD` and `NEW` from the environment variable, with
/// extra overrides.
async fn daemon(dir: &std::path::Path, extra: &[(&str, String)]) -> TestDaemon {
    let mut env = vec![("DRIFTD_TOKENS", format!("{OLD},{NEW}"))];
    env.extend(extra.iter().cloned());
    TestDaemon::start_with(
        test_config(dir, &env),
        Access {
            token: Some(NEW.into()),
            ..Access::default()
        },
    )
    .await
}

async fn channel(d: &TestDaemon) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", d.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Sends a bearer token on every call (none if None).
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

fn client(
    channel: Channel,
    token: Option<&str>,
) -> DriftdClient<InterceptedService<Channel, Bearer>> {
    let value = token.map(|t| format!("Bearer {t}").parse().unwrap());
    DriftdClient::with_interceptor(channel, Bearer(value))
}

fn one_row() -> pb::IngestRequest {
    batch(
        "m",
        "v",
        vec![numeric("x", ColumnRole::Input, vec![1.0, 2.0])],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_need_one_of_the_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), &[]).await;
    let ch = channel(&d).await;

    let err = client(ch.clone(), None)
        .ingest_batch(one_row())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("missing bearer token"), "{err:?}");

    let err = client(ch.clone(), Some(WRONG))
        .ingest_batch(one_row())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "invalid bearer token");

    // A client streaming call is refused too, before any message.
    let err = client(ch.clone(), None)
        .ingest(tokio_stream::iter(vec![one_row()]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    for token in [OLD, NEW] {
        let ack = client(ch.clone(), Some(token))
            .ingest_batch(one_row())
            .await
            .unwrap_or_else(|e| panic!("{token}: {e:?}"))
            .into_inner();
        assert_eq!(ack.records, 2);
    }
    let status = client(ch.clone(), Some(OLD))
        .get_status(pb::GetStatusRequest {
            model: "m".into(),
            version: "v".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.versions[0].records_ingested, 4);

    // Health and reflection stay open by default, for probes.
    let health = HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: "driftd.v1.Driftd".into(),
        })
        .await;
    assert!(health.is_ok(), "{health:?}");

    let scrape = d.scrape().await;
    assert_eq!(
        sample(
            &scrape,
            "driftd_ingest_rejected_total",
            &[("reason", "unauthenticated")]
        ),
        Some(3.0),
        "{scrape}"
    );
    d.stop().await.unwrap();
}

/// The check runs on the call's metadata, before its message is decoded:
/// an oversized message without a token is refused as unauthenticated, not
/// as too large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_refuses_before_decoding_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(
        dir.path(),
        &[("DRIFTD_SERVER__MAX_MESSAGE_BYTES", "2048".into())],
    )
    .await;
    let ch = channel(&d).await;
    let big = || {
        batch(
            "m",
            "v",
            vec![numeric("x", ColumnRole::Input, vec![0.5; 4096])],
        )
    };
    let err = client(ch.clone(), None)
        .ingest_batch(big())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = client(ch, Some(OLD)).ingest_batch(big()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("server.max_message_bytes"),
        "{err:?}"
    );
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_needs_one_of_the_tokens_and_metrics_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), &[]).await;
    let http = reqwest::Client::new();
    let status_url = d.url("/api/v1/models/m/status");

    let r = http.get(&status_url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("missing bearer token"),
        "{body}"
    );

    let r = http
        .get(&status_url)
        .bearer_auth(WRONG)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid bearer token");

    let r = http
        .get(&status_url)
        .header("authorization", format!("Basic {OLD}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Each token passes; the model is unknown, so the answer is the API's 404.
    for token in [OLD, NEW] {
        let r = http
            .get(&status_url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{token}");
    }

    // Gates, the KServe sink and unknown paths are protected too.
    for (method, path) in [
        ("GET", "/api/v1/models/m/verdict"),
        ("POST", "/api/v1/flagger/gate"),
        ("POST", "/api/v1/flagger/rollback"),
        ("POST", "/v1/cloudevents"),
        ("GET", "/no/such/path"),
    ] {
        let req = http.request(method.parse().unwrap(), d.url(path));
        let r = req.try_clone().unwrap().send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        let r = req.bearer_auth(OLD).send().await.unwrap();
        assert_ne!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
    }

    // Open by default: metrics, liveness and readiness.
    for path in ["/metrics", "/healthz", "/readyz"] {
        let r = http.get(d.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_metrics_and_health_need_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(
        dir.path(),
        &[
            ("DRIFTD_AUTH__PROTECT_METRICS", "true".into()),
            ("DRIFTD_AUTH__PROTECT_HEALTH", "true".into()),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    for path in ["/metrics", "/healthz", "/readyz"] {
        let r = http.get(d.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        let r = http.get(d.url(path)).bearer_auth(OLD).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let request = || HealthCheckRequest {
        service: "driftd.v1.Driftd".into(),
    };
    let ch = channel(&d).await;
    let err = HealthClient::new(ch.clone())
        .check(request())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let token = format!("Bearer {NEW}").parse().unwrap();
    let ok = HealthClient::with_interceptor(ch, Bearer(Some(token)))
        .check(request())
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    d.stop().await.unwrap();
}

/// Rotation through the token file: replacing it swaps the accepted tokens
/// without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_token_file_takes_effect() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, format!("# driftd tokens\n{OLD}\n")).unwrap();
    let d = TestDaemon::start_with(
        test_config(
            &dir.path().join("data"),
            &[
                ("DRIFTD_AUTH__TOKENS_FILE", file.display().to_string()),
                ("DRIFTD_AUTH__RELOAD_INTERVAL", "50ms".into()),
            ],
        ),
        Access::default(),
    )
    .await;
    let ch = channel(&d).await;
    let accepted = |token: &'static str| {
        let ch = ch.clone();
        async move {
            client(ch, Some(token))
                .get_status(pb::GetStatusRequest {
                    model: "m".into(),
                    version: String::new(),
                })
                .await
                .map_err(|e| e.code())
                // An unknown model gets past authentication.
                .map_or_else(|c| c != Code::Unauthenticated, |_| true)
        }
    };
    assert!(accepted(OLD).await);
    assert!(!accepted(NEW).await);

    // Both during the rotation, then only the new one.
    replace_file(&file, &format!("{OLD}\n{NEW}\n"));
    wait_until("the new token is accepted", Duration::from_secs(10), || {
        accepted(NEW)
    })
    .await;
    assert!(accepted(OLD).await);
    replace_file(&file, &format!("{NEW}\n"));
    wait_until("the old token is refused", Duration::from_secs(10), || {
        let old = accepted(OLD);
        async move { !old.await }
    })
    .await;
    assert!(accepted(NEW).await);

    // A broken file keeps the tokens in force.
    replace_file(&file, "too-short\n");
    let daemon = &d;
    wait_until(
        "the failed reload is counted",
        Duration::from_secs(10),
        move || async move {
            let scrape = daemon.scrape().await;
            sample(
                &scrape,
                "driftd_reloads_total",
                &[("source", "tokens"), ("outcome", "failed")],
            ) == Some(1.0)
        },
    )
    .await;
    assert!(accepted(NEW).await);
    d.stop().await.unwrap();
}
