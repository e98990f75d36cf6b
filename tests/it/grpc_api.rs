//! The gRPC surface beyond ingest: the standard health and reflection
//! services, SetReference, and group commit of concurrent batches.

use std::time::Duration;

use driftd::proto::{self as pb, ColumnRole};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use tonic_reflection::pb::v1::{
    server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse, ServerReflectionRequest,
};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(test_config(dir.path(), &[])).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", d.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "driftd.v1.Driftd".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status, ServingStatus::Serving as i32);

    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer: {resp:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"driftd.v1.Driftd".to_string()), "{names:?}");
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_reference_replaces_the_warmup_reference_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        test_config(
            dir.path(),
            &[("DRIFTD_REFERENCE__WARMUP_SAMPLES", "100".to_string())],
        )
    };
    let d = TestDaemon::start(cfg()).await;
    let mut client = d.client().await;
    let mut g = rng(9);
    client
        .ingest_batch(batch(
            "m",
            "v",
            vec![numeric(
                "x",
                ColumnRole::Input,
                normal(&mut g, 150, 0.0, 1.0),
            )],
        ))
        .await
        .unwrap();
    let reqs: Vec<pb::SetReferenceRequest> = (0..3)
        .map(|_| pb::SetReferenceRequest {
            batch: batch(
                "m",
                "v",
                vec![numeric(
                    "x",
                    ColumnRole::Input,
                    normal(&mut g, 1000, 5.0, 1.0),
                )],
            )
            .batch,
        })
        .collect();
    let ack = client
        .set_reference(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ack.records, ack.features, ack.version.as_str()),
        (3000, 1, "v")
    );

    // A stream naming two model versions is refused, naming the batch.
    let mixed = vec![
        pb::SetReferenceRequest {
            batch: batch("m", "v", vec![numeric("x", ColumnRole::Input, vec![1.0])]).batch,
        },
        pb::SetReferenceRequest {
            batch: batch("m", "w", vec![numeric("x", ColumnRole::Input, vec![1.0])]).batch,
        },
    ];
    let err = client
        .set_reference(tokio_stream::iter(mixed))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("batch 1: "), "{}", err.message());
    d.stop().await.unwrap();

    let d = TestDaemon::start(cfg()).await;
    let s = d
        .client()
        .await
        .get_status(pb::GetStatusRequest {
            model: "m".into(),
            version: "v".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let v = &s.versions[0];
    assert_eq!(
        (v.reference_records, v.reference_source.as_str()),
        (3000, "set_reference")
    );
    assert_eq!(v.records_ingested, 150);
    d.stop().await.unwrap();
}

/// Batches that wait together share one flush: far fewer flushes than
/// batches when 200 requests arrive at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(test_config(dir.path(), &[])).await;
    let client = d.client().await;
    let before = sample(
        &d.scrape().await,
        "driftd_store_flush_duration_seconds_count",
        &[],
    )
    .unwrap_or(0.0);
    let calls = (0..200).map(|i| {
        let mut c = client.clone();
        async move {
            c.ingest_batch(batch(
                "m",
                "v",
                vec![numeric("x", ColumnRole::Input, vec![i as f64; 10])],
            ))
            .await
            .unwrap()
        }
    });
    let acks = futures_join_all(calls).await;
    assert_eq!(acks.len(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let scrape = d.scrape().await;
    let flushes =
        sample(&scrape, "driftd_store_flush_duration_seconds_count", &[]).unwrap() - before;
    let batches = sample(&scrape, "driftd_ingest_batches_total", &[("model", "m")]).unwrap();
    assert_eq!(batches, 200.0);
    assert!(
        flushes < batches / 2.0,
        "{flushes} flushes for {batches} concurrent batches"
    );
    println!("group commit: {flushes} flushes for {batches} concurrent batches");
    d.stop().await.unwrap();
}

async fn futures_join_all<F>(fs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// The series budget: features beyond `metrics.max_features_per_model` get
/// no per-feature series, and each is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_series_budget_caps_per_feature_series() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(test_config(
        dir.path(),
        &[
            ("DRIFTD_METRICS__MAX_FEATURES_PER_MODEL", "2".to_string()),
            ("DRIFTD_REFERENCE__WARMUP_SAMPLES", "100".to_string()),
            ("DRIFTD_EVALUATION__MIN_SAMPLES", "50".to_string()),
        ],
    ))
    .await;
    let mut g = rng(12);
    let cols = |g: &mut rand::rngs::StdRng| {
        (0..4)
            .map(|i| {
                numeric(
                    &format!("f{i}"),
                    ColumnRole::Input,
                    normal(g, 100, 0.0, 1.0),
                )
            })
            .collect::<Vec<_>>()
    };
    let mut client = d.client().await;
    client
        .ingest_batch(batch("m", "v", cols(&mut g)))
        .await
        .unwrap();
    client
        .ingest_batch(batch("m", "v", cols(&mut g)))
        .await
        .unwrap();
    wait_until("two evaluations", Duration::from_secs(10), || {
        let d = &d;
        async move {
            let s = d.scrape().await;
            sample(&s, "driftd_evaluations_total", &[("model", "m")]).unwrap_or(0.0) >= 1.0
                && sample(&s, "driftd_psi", &[("feature", "f0")]).is_some()
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = d.scrape().await;
    for f in ["f0", "f1"] {
        assert!(
            sample(&s, "driftd_window_samples", &[("feature", f)]).is_some(),
            "{f} exported"
        );
    }
    for f in ["f2", "f3"] {
        assert!(
            !s.lines().any(|l| !l.starts_with('#')
                && l.contains(&format!("feature=\"{f}\""))
                && !l.starts_with("driftd_missing_values_total")),
            "{f} has per-feature series"
        );
    }
    assert_eq!(
        sample(&s, "driftd_series_dropped_total", &[("model", "m")]),
        Some(2.0)
    );
    d.stop().await.unwrap();
}
