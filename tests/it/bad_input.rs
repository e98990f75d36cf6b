//! Malformed requests get INVALID_ARGUMENT with a message naming the field,
//! are counted by reason, and leave the daemon serving. Non-finite numbers
//! are missing values, not errors.

use driftd::proto::{self as pb, ColumnRole};
use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_batches_are_rejected_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::start(test_config(dir.path(), &[])).await;
    let mut client = daemon.client().await;

    // Establish "age" as numeric.
    client
        .ingest_batch(batch(
            "m",
            "v",
            vec![numeric("age", ColumnRole::Input, vec![1.0, 2.0])],
        ))
        .await
        .expect("valid batch");

    let cases: Vec<(&str, pb::IngestRequest, &str, &str)> = vec![
        (
            "columns of unequal length",
            batch(
                "m",
                "v",
                vec![
                    numeric("a", ColumnRole::Input, vec![1.0, 2.0, 3.0]),
                    numeric("b", ColumnRole::Input, vec![1.0, 2.0]),
                ],
            ),
            "batch.columns[1]: has 2 values, batch.columns[0] has 3",
            "unequal_lengths",
        ),
        (
            "empty model name",
            batch("", "v", vec![numeric("a", ColumnRole::Input, vec![1.0])]),
            "batch.model: must not be empty",
            "invalid_name",
        ),
        (
            "string in a numeric column",
            batch("m", "v", vec![categorical("age", vec!["old".into()])]),
            "batch.columns[0]: feature \"age\" is numeric, got categorical values",
            "kind_mismatch",
        ),
        (
            "batch with no columns",
            batch("m", "v", vec![]),
            "batch.columns: must not be empty",
            "empty_batch",
        ),
        (
            "column without values",
            batch(
                "m",
                "v",
                vec![pb::Column {
                    name: "a".into(),
                    role: 0,
                    values: None,
                }],
            ),
            "batch.columns[0].values: must be set",
            "empty_batch",
        ),
        (
            "name with a space",
            batch("m", "v", vec![numeric("a b", ColumnRole::Input, vec![1.0])]),
            "batch.columns[0].name: character ' ' is not allowed",
            "invalid_name",
        ),
        (
            "duplicate column",
            batch(
                "m",
                "v",
                vec![
                    numeric("a", ColumnRole::Input, vec![1.0]),
                    numeric("a", ColumnRole::Input, vec![1.0]),
                ],
            ),
            "batch.columns[1].name: duplicate column \"a\"",
            "duplicate_column",
        ),
        (
            "missing batch",
            pb::IngestRequest { batch: None },
            "batch: required",
            "empty_batch",
        ),
    ];
    for (what, req, message, reason) in cases {
        let before = sample(
            &daemon.scrape().await,
            "driftd_ingest_rejected_total",
            &[("reason", reason)],
        )
        .unwrap_or(0.0);
        let status = client.ingest_batch(req.clone()).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status.message().contains(message),
            "{what}: {:?} does not contain {message:?}",
            status.message()
        );
        let after = sample(
            &daemon.scrape().await,
            "driftd_ingest_rejected_total",
            &[("reason", reason)],
        );
        assert_eq!(after, Some(before + 1.0), "{what}: counted as {reason}");

        // The same batch inside a stream names its position.
        let status = client
            .ingest(tokio_stream::iter(vec![
                batch("m", "v", vec![numeric("age", ColumnRole::Input, vec![3.0])]),
                req,
            ]))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with("batch 1: "),
            "{}",
            status.message()
        );
    }

    // NaN and infinities are missing values: accepted, counted, exported.
    let ack = client
        .ingest_batch(batch(
            "m",
            "v",
            vec![numeric(
                "age",
                ColumnRole::Input,
                vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 4.0],
            )],
        ))
        .await
        .expect("non-finite values are not errors")
        .into_inner();
    assert_eq!(ack.records, 4);
    assert_eq!(ack.missing_values, 3);
    let scrape = daemon.scrape().await;
    assert_eq!(
        sample(
            &scrape,
            "driftd_missing_values_total",
            &[("model", "m"), ("feature", "age")]
        ),
        Some(3.0)
    );

    // Still serving, and nothing rejected was counted as ingested: the two
    // valid unary batches and one valid first batch per stream.
    let status = client
        .get_status(pb::GetStatusRequest {
            model: "m".into(),
            version: "v".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.versions[0].records_ingested, 2 + 4 + 8);
    let age = &status.versions[0].features[0];
    assert_eq!(age.name, "age");
    assert_eq!(age.window_missing, 3);

    // Unknown model: NOT_FOUND over gRPC, 404 JSON over HTTP.
    let st = client
        .get_status(pb::GetStatusRequest {
            model: "nope".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound);
    let resp = reqwest::get(daemon.url("/api/v1/models/nope/status"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("nope"));
    daemon.stop().await.unwrap();
}
