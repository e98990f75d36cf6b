//! One test per row of README.md's "What happens on bad input" table (the
//! test's name is in the row). Malformed requests get INVALID_ARGUMENT with
//! a message naming the field, limits RESOURCE_EXHAUSTED naming the limit's
//! key; every refusal is counted by reason, what was acknowledged before
//! stays counted, and the daemon keeps serving. Non-finite numbers are
//! missing values, not errors.

use std::{
    io::{Read, Write},
    time::Duration,
};

use driftd::proto::{self as pb, driftd_client::DriftdClient, ColumnRole};
use prost::bytes::{Buf, BufMut};
use tonic::{
    codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http,
    transport::Channel,
    Code, Status,
};

use crate::support::*;

/// The count of `driftd_ingest_rejected_total{reason}`.
fn rejected(scrape: &str, reason: &str) -> f64 {
    sample(
        scrape,
        "driftd_ingest_rejected_total",
        &[("reason", reason)],
    )
    .unwrap_or_else(|| panic!("reason {reason} is exported"))
}

/// Records acknowledged for `model`@`version`, read through GetStatus.
async fn records(client: &mut DriftdClient<Channel>, model: &str, version: &str) -> u64 {
    client
        .get_status(pb::GetStatusRequest {
            model: model.into(),
            version: version.into(),
        })
        .await
        .expect("status of a known model")
        .into_inner()
        .versions[0]
        .records_ingested
}

fn one(model: &str, version: &str, n: usize) -> pb::IngestRequest {
    batch(
        model,
        version,
        vec![numeric("x", ColumnRole::Input, vec![1.0; n])],
    )
}

/// Asserts that `status` has `code`, that its message contains every one
/// of `parts`, and that `reason` was counted once more than `before`.
async fn assert_refused(
    d: &TestDaemon,
    status: &Status,
    code: Code,
    parts: &[&str],
    reason: &str,
    before: f64,
) {
    assert_eq!(status.code(), code, "{status:?}");
    for p in parts {
        assert!(
            status.message().contains(p),
            "{:?} does not contain {p:?}",
            status.message()
        );
    }
    assert_eq!(
        rejected(&d.scrape().await, reason),
        before + 1.0,
        "counted once as {reason}"
    );
}

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

/// Sends raw bytes as the message of a driftd RPC: what a broken client or
/// a fuzzer would send.
#[derive(Clone, Copy)]
struct RawCodec;

struct RawEncoder;
struct ResponseDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = pb::IngestResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let n = src.remaining();
        let bytes = src.copy_to_bytes(n);
        prost::Message::decode(bytes)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = pb::IngestResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

async fn raw_ingest_batch(d: &TestDaemon, bytes: Vec<u8>) -> Result<pb::IngestResponse, Status> {
    let channel = Channel::from_shared(format!("http://{}", d.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(bytes),
        http::uri::PathAndQuery::from_static("/driftd.v1.Driftd/IngestBatch"),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// Row "malformed protobuf" and "invalid UTF-8 in a name".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_invalid_argument_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(test_config(dir.path(), &[])).await;
    let mut client = d.client().await;
    client.ingest_batch(one("m", "v", 5)).await.unwrap();

    let cases: [(&str, Vec<u8>); 3] = [
        // Field 1, length-delimited, claiming 100 bytes of which 2 follow.
        ("truncated", vec![0x0a, 100, 0x0a, 0x00]),
        // Field 1 with wire type 7, which does not exist.
        ("bad wire type", vec![0x0f, 0xff, 0xff, 0xff]),
        // batch.model = bytes that are not UTF-8.
        ("invalid UTF-8", vec![0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe]),
    ];
    for (what, bytes) in cases {
        let before = rejected(&d.scrape().await, "malformed");
        let status = raw_ingest_batch(&d, bytes).await.expect_err(what);
        assert_refused(
            &d,
            &status,
            Code::InvalidArgument,
            &["request: not a valid message"],
            "malformed",
            before,
        )
        .await;
    }
    // Still serving; what was acknowledged is still counted.
    client.ingest_batch(one("m", "v", 5)).await.unwrap();
    assert_eq!(records(&mut client, "m", "v").await, 10);
    d.stop().await.unwrap();
}

/// Row "oversized message".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_resource_exhausted_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(test_config(
        dir.path(),
        &[("DRIFTD_SERVER__MAX_MESSAGE_BYTES", "65536".into())],
    ))
    .await;
    let mut client = d.client().await;
    client.ingest_batch(one("m", "v", 100)).await.unwrap();
    // 20,000 doubles: about 160 kB.
    let before = rejected(&d.scrape().await, "message_too_large");
    let status = client
        .ingest_batch(one("m", "v", 20_000))
        .await
        .unwrap_err();
    assert_refused(
        &d,
        &status,
        Code::ResourceExhausted,
        &["server.max_message_bytes = 65536"],
        "message_too_large",
        before,
    )
    .await;
    // Inside a stream: the batches before it are kept.
    let before = rejected(&d.scrape().await, "message_too_large");
    let status = client
        .ingest(tokio_stream::iter(vec![
            one("m", "v", 100),
            one("m", "v", 20_000),
        ]))
        .await
        .unwrap_err();
    assert_refused(
        &d,
        &status,
        Code::ResourceExhausted,
        &["server.max_message_bytes"],
        "message_too_large",
        before,
    )
    .await;
    let mut client = d.client().await;
    wait_records(&d, "m", "v", 200).await;
    assert_eq!(records(&mut client, "m", "v").await, 200);
    d.stop().await.unwrap();
}

/// Row "gzip bomb": compressed requests are accepted, and the decompressed
/// size is bounded by the same limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bomb_is_refused_once_decompressed_past_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(test_config(
        dir.path(),
        &[("DRIFTD_SERVER__MAX_MESSAGE_BYTES", "1048576".into())],
    ))
    .await;
    let mut gzip = d.client().await.send_compressed(CompressionEncoding::Gzip);
    // A small compressed batch is fine.
    let ack = gzip.ingest_batch(one("m", "v", 1000)).await.unwrap();
    assert_eq!(ack.into_inner().records, 1000);
    // 8 MB of zeros compress to a few kB, far below the limit on the wire.
    let before = rejected(&d.scrape().await, "message_too_large");
    let status = gzip
        .ingest_batch(one("m", "v", 1_000_000))
        .await
        .unwrap_err();
    assert_refused(
        &d,
        &status,
        Code::ResourceExhausted,
        &["decompressed message", "server.max_message_bytes = 1048576"],
        "message_too_large",
        before,
    )
    .await;
    let mut client = d.client().await;
    assert_eq!(records(&mut client, "m", "v").await, 1000);
    d.stop().await.unwrap();
}

/// Row "unknown model when auto-registration is off".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_is_not_found_when_auto_registration_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(test_config(
        dir.path(),
        &[
            ("DRIFTD_LIMITS__AUTO_REGISTER", "false".into()),
            ("DRIFTD_LIMITS__MODELS", "fraud-*,churn".into()),
        ],
    ))
    .await;
    let mut client = d.client().await;
    client.ingest_batch(one("fraud-eu", "v", 3)).await.unwrap();
    client.ingest_batch(one("churn", "v", 3)).await.unwrap();
    let before = rejected(&d.scrape().await, "unknown_model");
    let status = client.ingest_batch(one("spam", "v", 3)).await.unwrap_err();
    assert_refused(
        &d,
        &status,
        Code::NotFound,
        &["batch.model", "\"spam\"", "limits.auto_register"],
        "unknown_model",
        before,
    )
    .await;
    // Nothing was registered for it.
    let st = client
        .get_status(pb::GetStatusRequest {
            model: "spam".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound);
    assert_eq!(records(&mut client, "fraud-eu", "v").await, 3);
    d.stop().await.unwrap();
}

/// Row "too many models or features" (and versions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_models_versions_or_features_are_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(test_config(
        dir.path(),
        &[
            ("DRIFTD_LIMITS__MAX_MODELS", "2".into()),
            ("DRIFTD_LIMITS__MAX_VERSIONS_PER_MODEL", "2".into()),
            ("DRIFTD_LIMITS__MAX_FEATURES_PER_MODEL", "3".into()),
            ("DRIFTD_LIMITS__MAX_COLUMNS_PER_BATCH", "3".into()),
        ],
    ))
    .await;
    let mut client = d.client().await;
    for (m, v) in [("a", "v1"), ("b", "v1"), ("a", "v2")] {
        client.ingest_batch(one(m, v, 2)).await.unwrap();
    }
    let before = rejected(&d.scrape().await, "too_many_models");
    let status = client.ingest_batch(one("c", "v1", 2)).await.unwrap_err();
    assert_refused(
        &d,
        &status,
        Code::ResourceExhausted,
        &["batch.model", "limits.max_models = 2"],
        "too_many_models",
        before,
    )
    .await;
    let before = rejected(&d.scrape().await, "too_many_versions");
    let status = client.ingest_batch(one("a", "v3", 2)).await.unwrap_err();
    assert_refused(
        &d,
        &status,
        Code::ResourceExhausted,
        &["batch.version", "limits.max_versions_per_model = 2"],
        "too_many_versions",
        before,
    )
    .await;
    // Features: x is known; y and z make three; w would be the fourth.
    let cols = |names: &[&str]| {
        names
            .iter()
            .map(|n| numeric(n, ColumnRole::Input, vec![1.0, 2.0]))
            .collect::<Vec<_>>()
    };
    client
        .ingest_batch(batch("a", "v1", cols(&["x", "y", "z"])))
        .await
        .unwrap();
    let before = rejected(&d.scrape().await, "too_many_features");
    let status = client
        .ingest_batch(batch("a", "v1", cols(&["x", "w"])))
        .await
        .unwrap_err();
    assert_refused(
        &d,
        &status,
        Code::ResourceExhausted,
        &[
            "batch.columns[1]",
            "\"w\"",
            "limits.max_features_per_model = 3",
        ],
        "too_many_features",
        before,
    )
    .await;
    // Known features still pass; nothing refused was counted.
    client
        .ingest_batch(batch("a", "v1", cols(&["z", "x"])))
        .await
        .unwrap();
    assert_eq!(records(&mut client, "a", "v1").await, 2 + 2 + 2);
    d.stop().await.unwrap();
}

/// Rows "too many rows or columns in a batch" and "a categorical value
/// longer than the limit".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_rows_or_columns_or_long_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(test_config(
        dir.path(),
        &[
            ("DRIFTD_LIMITS__MAX_ROWS_PER_BATCH", "1000".into()),
            ("DRIFTD_LIMITS__MAX_COLUMNS_PER_BATCH", "4".into()),
            ("DRIFTD_LIMITS__MAX_CATEGORY_BYTES", "16".into()),
        ],
    ))
    .await;
    let mut client = d.client().await;
    client.ingest_batch(one("m", "v", 1000)).await.unwrap();
    let before = rejected(&d.scrape().await, "too_many_rows");
    let status = client.ingest_batch(one("m", "v", 1001)).await.unwrap_err();
    assert_refused(
        &d,
        &status,
        Code::ResourceExhausted,
        &[
            "batch.columns",
            "1001 rows",
            "limits.max_rows_per_batch = 1000",
        ],
        "too_many_rows",
        before,
    )
    .await;
    let wide: Vec<pb::Column> = (0..5)
        .map(|i| numeric(&format!("f{i}"), ColumnRole::Input, vec![1.0]))
        .collect();
    let before = rejected(&d.scrape().await, "too_many_columns");
    let status = client
        .ingest_batch(batch("m", "v", wide))
        .await
        .unwrap_err();
    assert_refused(
        &d,
        &status,
        Code::ResourceExhausted,
        &["5 columns", "limits.max_columns_per_batch = 4"],
        "too_many_columns",
        before,
    )
    .await;
    let before = rejected(&d.scrape().await, "value_too_long");
    let status = client
        .ingest_batch(batch(
            "m",
            "v",
            vec![categorical("c", vec!["short".into(), "x".repeat(17)])],
        ))
        .await
        .unwrap_err();
    assert_refused(
        &d,
        &status,
        Code::InvalidArgument,
        &[
            "batch.columns[0].values[1]",
            "limits.max_category_bytes = 16",
        ],
        "value_too_long",
        before,
    )
    .await;
    // In a stream, the refused batch ends it and names its index.
    let status = client
        .ingest(tokio_stream::iter(vec![
            one("m", "v", 10),
            one("m", "v", 1001),
        ]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().starts_with("batch 1: "), "{status:?}");
    assert_eq!(records(&mut client, "m", "v").await, 1010);
    d.stop().await.unwrap();
}

/// Row "very long or non-printable names"; the alphabet and length are
/// configurable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_or_non_printable_names_are_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(test_config(dir.path(), &[])).await;
    let mut client = d.client().await;
    client.ingest_batch(one("m", "v", 1)).await.unwrap();
    let long = "n".repeat(129);
    let cases = [
        (
            batch(&long, "v", vec![numeric("x", ColumnRole::Input, vec![1.0])]),
            vec!["batch.model", "129 bytes", "limits.max_name_bytes"],
            "name_too_long",
        ),
        (
            batch("m", "v", vec![numeric(&long, ColumnRole::Input, vec![1.0])]),
            vec!["batch.columns[0].name", "limits.max_name_bytes"],
            "name_too_long",
        ),
        (
            batch(
                "m",
                "v\u{7}",
                vec![numeric("x", ColumnRole::Input, vec![1.0])],
            ),
            vec!["batch.version", "'\\u{7}' is not allowed"],
            "invalid_name",
        ),
        (
            batch("m", "v", vec![numeric("é", ColumnRole::Input, vec![1.0])]),
            vec!["batch.columns[0].name", "'é' is not allowed"],
            "invalid_name",
        ),
    ];
    for (req, parts, reason) in cases {
        let before = rejected(&d.scrape().await, reason);
        let status = client.ingest_batch(req).await.unwrap_err();
        assert_refused(&d, &status, Code::InvalidArgument, &parts, reason, before).await;
    }
    assert_eq!(records(&mut client, "m", "v").await, 1);
    d.stop().await.unwrap();

    // Another alphabet and length.
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(test_config(
        dir.path(),
        &[
            ("DRIFTD_LIMITS__MAX_NAME_BYTES", "12".into()),
            ("DRIFTD_LIMITS__NAME_PUNCTUATION", "_/".into()),
        ],
    ))
    .await;
    let mut client = d.client().await;
    client
        .ingest_batch(one("team/model", "v_1", 1))
        .await
        .unwrap();
    assert_eq!(records(&mut client, "team/model", "v_1").await, 1);
    // The HTTP API takes the same names.
    let resp = reqwest::get(d.url("/api/v1/models/team%2Fmodel/status"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let status = client.ingest_batch(one("a.b", "v", 1)).await.unwrap_err();
    assert!(status.message().contains("\"_/\""), "{status:?}");
    let status = client
        .ingest_batch(one("thirteen-long", "v", 1))
        .await
        .unwrap_err();
    assert!(status.message().contains("limit of 12"), "{status:?}");
    d.stop().await.unwrap();
}

/// Sends 1,001,000 categorical values of one length, `distinct` of them
/// different, and returns the store's size on disk afterwards.
async fn store_size_after_categories(distinct: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(test_config(
        dir.path(),
        &[("DRIFTD_REFERENCE__WARMUP_SAMPLES", "1000".into())],
    ))
    .await;
    let mut client = d.client().await;
    let cat = |from: usize, n: usize| {
        batch(
            "m",
            "v",
            vec![categorical(
                "user",
                (from..from + n)
                    .map(|i| format!("user-{:09}", i % distinct))
                    .collect(),
            )],
        )
    };
    client.ingest_batch(cat(0, 1000)).await.unwrap();
    let mut sent = 1000u64;
    for i in 0..10 {
        let ack = client
            .ingest_batch(cat(1000 + i * 100_000, 100_000))
            .await
            .unwrap();
        sent += ack.into_inner().records;
    }
    assert_eq!(records(&mut client, "m", "v").await, sent);
    let size = sample(&d.scrape().await, "driftd_store_size_bytes", &[]).unwrap();
    d.stop().await.unwrap();
    size
}

/// Row "a categorical feature with a million distinct values": accepted,
/// in the space that 50 distinct values take: windows and references count
/// at most `window.max_categories` categories, the rest as `__other__`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_distinct_categories_are_accepted_in_bounded_space() {
    let few = store_size_after_categories(50).await;
    let million = store_size_after_categories(usize::MAX).await;
    eprintln!("store size: {few} bytes for 50 categories, {million} for a million");
    // Counting every category would add over 15 MB (the names alone).
    assert!(million < few + 4e6, "{million} bytes against {few}");
}

/// Row "invalid UTF-8 and ragged rows in a reference CSV".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_csv_with_invalid_utf8_or_ragged_rows_is_refused() {
    for (what, bytes, needle) in [
        (
            "ragged",
            &b"x,segment\n1,a\n2\n"[..],
            "line 3: 1 fields, the header has 2",
        ),
        (
            "invalid UTF-8",
            &b"x,segment\n1,a\n2,\xff\n"[..],
            "line 3: not valid UTF-8",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("ref.csv");
        std::fs::write(&csv, bytes).unwrap();
        // A file reference: the daemon does not start, naming file and line.
        let toml = format!(
            "[[reference.sources]]\nmodel = \"m\"\nversion = \"v\"\nreference = \"file:{}\"\n",
            csv.display()
        );
        let config = test_config_with_file(dir.path(), &toml, &[]);
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let res = tokio::time::timeout(
            Duration::from_secs(20),
            driftd::app::run(
                config,
                driftd::app::Listeners { grpc, http },
                std::future::pending(),
            ),
        )
        .await
        .expect("start-up fails rather than hangs");
        let err = format!("{:#}", res.expect_err(what));
        assert!(
            err.contains("ref.csv") && err.contains(needle),
            "{what}: {err}"
        );

        // The import command: exit 65 naming the line, nothing sent.
        let d = TestDaemon::start(test_config(&dir.path().join("d"), &[])).await;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_driftd"))
            .args(["reference", "import", "--model", "m", "--version", "v"])
            .args(["--addr", &format!("http://{}", d.grpc_addr)])
            .arg(&csv)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(65), "{what}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{what}: {stderr}");
        assert!(status_json(&d, "m").await.is_none(), "nothing registered");
        d.stop().await.unwrap();
    }
}

fn driftd_bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_driftd"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DRIFTD_")) {
        c.env_remove(k);
    }
    c
}

/// Row "invalid configuration" for the limits (the general case is
/// `binary::invalid_config_file_exits_64_naming_the_key`).
#[test]
fn invalid_limits_exit_64_naming_the_key() {
    for (key, value, name) in [
        (
            "DRIFTD_LIMITS__MAX_ROWS_PER_BATCH",
            "0",
            "limits.max_rows_per_batch",
        ),
        (
            "DRIFTD_LIMITS__MAX_NAME_BYTES",
            "3",
            "limits.max_name_bytes",
        ),
        (
            "DRIFTD_LIMITS__NAME_PUNCTUATION",
            "_ ",
            "limits.name_punctuation",
        ),
        ("DRIFTD_LIMITS__AUTO_REGISTER", "false", "limits.models"),
        (
            "DRIFTD_LIMITS__STREAM_IDLE_TIMEOUT",
            "soon",
            "limits.stream_idle_timeout",
        ),
        ("DRIFTD_LIMITS__MAX_CONNECTIONS", "many", "max_connections"),
    ] {
        let out = driftd_bin()
            .arg("check-config")
            .env(key, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{key}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(name), "{key}={value}: {stderr}");
    }
}

/// Row "unwritable data directory": the daemon does not start, exit 1,
/// and the message names the directory.
#[test]
fn unwritable_data_directory_fails_start_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    // A path below a regular file cannot be created, even by root.
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, "").unwrap();
    let data = file.join("data");
    let out = driftd_bin()
        .env("DRIFTD_STORE__PATH", &data)
        .env("DRIFTD_SERVER__GRPC_ADDR", "127.0.0.1:0")
        .env("DRIFTD_SERVER__HTTP_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("opening store") && stderr.contains(&data.display().to_string()),
        "{stderr}"
    );
}

/// Row "SIGTERM in the middle of a stream": the open stream may finish;
/// its batches, before and after the signal, are acknowledged and kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_open_at_shutdown_is_finished_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = TestDaemon::start(test_config(dir.path(), &[])).await;
    let mut client = d.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let stream = tokio::spawn(async move {
        client
            .ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(one("m", "v", 7)).await.unwrap();
    wait_records(&d, "m", "v", 7).await;
    d.signal();
    tx.send(one("m", "v", 5)).await.unwrap();
    drop(tx);
    let summary = stream
        .await
        .unwrap()
        .expect("the stream ends well")
        .into_inner();
    assert_eq!((summary.batches, summary.records), (2, 12));
    d.stop().await.expect("drained in time");

    let d = TestDaemon::start(test_config(dir.path(), &[])).await;
    let mut client = d.client().await;
    assert_eq!(records(&mut client, "m", "v").await, 12);
    d.stop().await.unwrap();
}

/// Row "a client that opens streams and never sends": the call ends with
/// DEADLINE_EXCEEDED after `limits.stream_idle_timeout`, batches it sent
/// before are kept; a connection that never sends is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_sends_is_cut_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(test_config(
        dir.path(),
        &[("DRIFTD_LIMITS__STREAM_IDLE_TIMEOUT", "300ms".into())],
    ))
    .await;
    for sent in [0u64, 4] {
        let mut client = d.client().await;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        if sent > 0 {
            tx.send(one("m", "v", sent as usize)).await.unwrap();
        }
        let before = rejected(&d.scrape().await, "idle_timeout");
        let status = tokio::time::timeout(
            Duration::from_secs(20),
            client.ingest(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        .expect("the server ends the silent stream")
        .unwrap_err();
        assert_refused(
            &d,
            &status,
            Code::DeadlineExceeded,
            &["limits.stream_idle_timeout"],
            "idle_timeout",
            before,
        )
        .await;
        drop(tx);
    }
    let mut client = d.client().await;
    assert_eq!(records(&mut client, "m", "v").await, 4);

    // A TCP connection that never sends a byte is closed.
    let before = rejected(&d.scrape().await, "idle_timeout");
    let addr = d.grpc_addr;
    tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 1024];
        // The server may send its SETTINGS first; then it closes.
        loop {
            match tcp.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("the silent connection stays open: {e}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(rejected(&d.scrape().await, "idle_timeout"), before + 1.0);
    client.ingest_batch(one("m", "v", 1)).await.unwrap();
    d.stop().await.unwrap();
}

/// Row "ingest queue full": unary ingest is shed with RESOURCE_EXHAUSTED
/// and counted; every acknowledged batch is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_sheds_unary_ingest_with_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(test_config(
        dir.path(),
        &[("DRIFTD_INGEST__QUEUE_CAPACITY", "1".into())],
    ))
    .await;
    let client = d.client().await;
    let before = rejected(&d.scrape().await, "queue_full");
    let (mut acked, mut shed) = (0u64, 0u64);
    // Concurrent calls against a queue of one: some find it full. Bounded.
    for _ in 0..50 {
        let calls = (0..64).map(|_| {
            let mut c = client.clone();
            tokio::spawn(async move { c.ingest_batch(one("m", "v", 10)).await })
        });
        for call in calls.collect::<Vec<_>>() {
            match call.await.unwrap() {
                Ok(r) => acked += r.into_inner().records,
                Err(status) => {
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                    assert!(
                        status.message().contains("ingest queue is full"),
                        "{status:?}"
                    );
                    shed += 1;
                }
            }
        }
        if shed > 0 {
            break;
        }
    }
    assert!(shed > 0, "a queue of one sheds some of 64 concurrent calls");
    assert_eq!(
        rejected(&d.scrape().await, "queue_full"),
        before + shed as f64
    );
    let mut client = d.client().await;
    assert_eq!(records(&mut client, "m", "v").await, acked);
    d.stop().await.unwrap();
}

/// Row "too many connections": one beyond `limits.max_connections` is
/// closed at once and counted; once a slot frees, clients get in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(test_config(
        dir.path(),
        &[("DRIFTD_LIMITS__MAX_CONNECTIONS", "1".into())],
    ))
    .await;
    let mut first = d.client().await;
    first.ingest_batch(one("m", "v", 3)).await.unwrap();
    let before = rejected(&d.scrape().await, "too_many_connections");
    let second = async {
        let mut c = DriftdClient::connect(format!("http://{}", d.grpc_addr))
            .await
            .map_err(|e| e.to_string())?;
        c.ingest_batch(one("m", "v", 3))
            .await
            .map_err(|e| format!("{:?}: {}", e.code(), e.message()))
    };
    let err = second.await.expect_err("a second connection is refused");
    eprintln!("second connection: {err}");
    // The client may try to connect again once: at least one is counted.
    assert!(rejected(&d.scrape().await, "too_many_connections") >= before + 1.0);
    drop(first);
    // The server notices the closed connection and frees its slot.
    let mut again = None;
    for _ in 0..100 {
        if let Ok(mut c) = DriftdClient::connect(format!("http://{}", d.grpc_addr)).await {
            if c.ingest_batch(one("m", "v", 3)).await.is_ok() {
                again = Some(c);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = again.expect("a freed slot takes a new connection");
    assert_eq!(records(&mut c, "m", "v").await, 6);
    d.stop().await.unwrap();
}

/// Row "too many concurrent streams": the per-connection limit is
/// advertised in HTTP/2 SETTINGS, so clients queue further calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_limit_is_advertised_to_clients() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(test_config(
        dir.path(),
        &[("DRIFTD_LIMITS__MAX_STREAMS_PER_CONNECTION", "7".into())],
    ))
    .await;
    let addr = d.grpc_addr;
    let advertised = tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        // An empty SETTINGS frame.
        tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
        let mut header = [0u8; 9];
        tcp.read_exact(&mut header).unwrap();
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        assert_eq!(header[3], 4, "the server's first frame is SETTINGS");
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).unwrap();
        payload
            .chunks(6)
            .find(|e| u16::from_be_bytes([e[0], e[1]]) == 3)
            .map(|e| u32::from_be_bytes([e[2], e[3], e[4], e[5]]))
    })
    .await
    .unwrap();
    assert_eq!(advertised, Some(7), "SETTINGS_MAX_CONCURRENT_STREAMS");
    // Once the client has the server's SETTINGS (after a first call), it
    // queues calls beyond the limit: twenty concurrent calls on one
    // connection all complete. (Streams a client opens beyond the limit
    // before SETTINGS arrive are refused by HTTP/2 with REFUSED_STREAM,
    // UNAVAILABLE at the client, unprocessed and safe to retry.)
    let mut client = d.client().await;
    client.ingest_batch(one("m", "v", 1)).await.unwrap();
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let mut c = client.clone();
            tokio::spawn(async move { c.ingest_batch(one("m", "v", 1)).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let mut client = d.client().await;
    assert_eq!(records(&mut client, "m", "v").await, 21);
    d.stop().await.unwrap();
}

/// Missing values are counted over the whole batch, also when the batch
/// completes the warm-up reference and only its later rows enter the
/// windows (their aggregation then sees only those rows), and for both
/// kinds; the counter and the acknowledgement agree.
#[tokio::test]
async fn missing_values_are_counted_over_every_row_of_a_batch_that_ends_the_warm_up() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(test_config(
        dir.path(),
        &[("DRIFTD_REFERENCE__WARMUP_SAMPLES", "3".into())],
    ))
    .await;
    let mut client = d.client().await;
    let send = |x: Vec<f64>, c: Vec<&str>| {
        batch(
            "m",
            "v",
            vec![
                numeric("x", ColumnRole::Input, x),
                categorical("c", c.into_iter().map(String::from).collect()),
            ],
        )
    };
    // Rows 0-2 form the reference, rows 3-4 enter the windows: the NaN of
    // row 0 and the empty category of row 1 are in the first part.
    let ack = client
        .ingest_batch(send(
            vec![f64::NAN, 1.0, 2.0, 3.0, f64::INFINITY],
            vec!["a", "", "b", "a", "b"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.missing_values, 3);
    // A batch wholly in the windows.
    let ack = client
        .ingest_batch(send(vec![f64::NAN, 5.0], vec!["", ""]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.missing_values, 3);
    let scrape = d.scrape().await;
    let missing = |feature: &str| {
        sample(
            &scrape,
            "driftd_missing_values_total",
            &[("model", "m"), ("version", "v"), ("feature", feature)],
        )
    };
    assert_eq!(missing("x"), Some(3.0));
    assert_eq!(missing("c"), Some(3.0));
    assert_eq!(
        sample(&scrape, "driftd_ingest_records_total", &[("model", "m")]),
        Some(7.0)
    );
    assert_eq!(
        sample(&scrape, "driftd_ingest_batches_total", &[("model", "m")]),
        Some(2.0)
    );
    d.stop().await.unwrap();
}
