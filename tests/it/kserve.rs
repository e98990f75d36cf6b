//! KServe InferenceService logger traffic (CloudEvents, binary and
//! structured mode, v1 and v2 bodies) and Open Inference Protocol mirrors
//! over gRPC, replayed against a real daemon.

use std::time::Duration;

use driftd::proto::{
    self as pb,
    inference::{
        model_infer_request::InferInputTensor, model_infer_response::InferOutputTensor,
        InferTensorContents, ModelInferRequest, ModelInferResponse,
    },
};
use serde_json::{json, Value};

use crate::support::*;

const CONFIG: &str = r#"
[inference]
join_ttl = "1s"
max_body_bytes = 4096

[[inference.models]]
name = "sklearn-iris"
input_names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
"#;

/// Headers exactly as KServe's logger agent sends them (binary mode).
fn logger_headers(
    id: &str,
    kind: &str,
    service: &str,
    endpoint: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("ce-specversion", "1.0".into()),
        ("ce-id", id.into()),
        ("ce-type", format!("org.kubeflow.serving.inference.{kind}")),
        (
            "ce-source",
            format!("http://localhost:9081/{service}-predictor"),
        ),
        ("ce-time", "2026-11-27T10:00:00.000000000Z".into()),
        ("ce-inferenceservicename", service.into()),
        ("ce-namespace", "ml".into()),
        ("ce-component", "predictor".into()),
        ("ce-endpoint", endpoint.into()),
        ("ce-metadata", "{}".into()),
        ("content-type", "application/json".into()),
    ]
}

async fn post(
    d: &TestDaemon,
    headers: &[(&str, String)],
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(d.url("/v1/cloudevents"))
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn feature<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no feature {name} in {v}"))
}

fn outcome(scrape: &str, o: &str) -> f64 {
    sample(scrape, "driftd_cloudevents_total", &[("outcome", o)]).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_logger_traffic_lands_in_the_right_model_version_and_columns() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::start(test_config_with_file(dir.path(), CONFIG, &[])).await;

    // v1: sklearn iris, array rows with configured names; request first.
    let req = json!({"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]});
    let resp = json!({"predictions": [1, 1]});
    let (code, body) = post(
        &daemon,
        &logger_headers("a1", "request", "sklearn-iris", "default"),
        req.to_string(),
    )
    .await;
    assert_eq!((code, body["outcome"].as_str()), (200, Some("buffered")));
    let (code, body) = post(
        &daemon,
        &logger_headers("a1", "response", "sklearn-iris", "default"),
        resp.to_string(),
    )
    .await;
    assert_eq!((code, body["outcome"].as_str()), (200, Some("joined")));
    let v = wait_records(&daemon, "sklearn-iris", "default", 2).await;
    for name in ["sepal_length", "sepal_width", "petal_length", "petal_width"] {
        let f = feature(&v, name);
        assert_eq!(
            (f["role"].as_str(), f["kind"].as_str()),
            (Some("input"), Some("numeric")),
            "{name}"
        );
        assert_eq!(f["window_samples"], 2);
    }
    let p = feature(&v, "predictions");
    assert_eq!(
        (p["role"].as_str(), p["kind"].as_str()),
        (Some("output"), Some("numeric"))
    );

    // v2 (Open Inference Protocol JSON) on the canary endpoint, response
    // first: out of order still joins.
    let req = json!({"id": "x", "inputs": [
        {"name": "input-0", "shape": [3, 2], "datatype": "FP32", "data": [[1, 2], [3, 4], [5, 6]]},
        {"name": "country", "shape": [3], "datatype": "BYTES", "data": ["DE", "FR", "DE"]}]});
    let resp = json!({"model_name": "fraud", "id": "x", "outputs": [
        {"name": "output-0", "shape": [3], "datatype": "INT64", "data": [0, 1, 0]}]});
    let (code, _) = post(
        &daemon,
        &logger_headers("b7", "response", "fraud", "canary"),
        resp.to_string(),
    )
    .await;
    assert_eq!(code, 200);
    let (code, body) = post(
        &daemon,
        &logger_headers("b7", "request", "fraud", "canary"),
        req.to_string(),
    )
    .await;
    assert_eq!((code, body["outcome"].as_str()), (200, Some("joined")));
    let v = wait_records(&daemon, "fraud", "canary", 3).await;
    assert_eq!(feature(&v, "input-0_0")["kind"], "numeric");
    assert_eq!(feature(&v, "input-0_1")["window_samples"], 3);
    assert_eq!(feature(&v, "country")["kind"], "categorical");
    assert_eq!(feature(&v, "output-0")["role"], "output");

    // Structured mode, object rows.
    let event = |kind: &str, data: Value| {
        json!({"specversion": "1.0", "id": "c3", "source": "test", "type": format!("org.kubeflow.serving.inference.{kind}"),
               "inferenceservicename": "fraud", "endpoint": "default", "datacontenttype": "application/json", "data": data})
        .to_string()
    };
    let structured = [("content-type", "application/cloudevents+json".to_string())];
    let (code, _) = post(
        &daemon,
        &structured,
        event(
            "request",
            json!({"instances": [{"amount": 10.5, "country": "DE"}]}),
        ),
    )
    .await;
    assert_eq!(code, 200);
    let (code, body) = post(
        &daemon,
        &structured,
        event("response", json!({"predictions": [0.7]})),
    )
    .await;
    assert_eq!((code, body["outcome"].as_str()), (200, Some("joined")));
    let v = wait_records(&daemon, "fraud", "default", 1).await;
    assert_eq!(feature(&v, "amount")["kind"], "numeric");
    assert_eq!(feature(&v, "predictions")["role"], "output");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_duplicate_and_malformed_events_get_their_documented_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::start(test_config_with_file(dir.path(), CONFIG, &[])).await;
    let req = json!({"instances": [{"a": 1.0}, {"a": 2.0}]}).to_string();

    // Duplicate ce-id: the second request is ignored, the pair joins once.
    assert_eq!(
        post(
            &daemon,
            &logger_headers("d1", "request", "m", "default"),
            req.clone()
        )
        .await
        .0,
        200
    );
    let (code, body) = post(
        &daemon,
        &logger_headers("d1", "request", "m", "default"),
        req.clone(),
    )
    .await;
    assert_eq!((code, body["outcome"].as_str()), (200, Some("duplicate")));
    post(
        &daemon,
        &logger_headers("d1", "response", "m", "default"),
        json!({"predictions": [0, 1]}).to_string(),
    )
    .await;
    wait_records(&daemon, "m", "default", 2).await;

    // A response that never arrives: the request is ingested alone after the TTL.
    let (code, body) = post(
        &daemon,
        &logger_headers("e1", "request", "m", "default"),
        req.clone(),
    )
    .await;
    assert_eq!((code, body["outcome"].as_str()), (200, Some("buffered")));
    let v = wait_records(&daemon, "m", "default", 4).await;
    assert_eq!(feature(&v, "a")["window_samples"], 4);
    assert_eq!(feature(&v, "predictions")["window_samples"], 2);

    // Malformed events: status, JSON reason, counted.
    let too_big = json!({"instances": vec![1.0; 2000]}).to_string();
    let shape =
        json!({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]})
            .to_string();
    let mut text = logger_headers("f1", "request", "m", "default");
    text.retain(|(k, _)| *k != "content-type");
    text.push(("content-type", "text/plain".into()));
    let mut no_id = logger_headers("f2", "request", "m", "default");
    no_id.retain(|(k, _)| *k != "ce-id");
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, String)>,
        String,
        u16,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "oversized body",
            logger_headers("f3", "request", "m", "default"),
            too_big,
            413,
            "too_large",
            "max_body_bytes",
        ),
        (
            "wrong content type",
            text,
            req.clone(),
            415,
            "unsupported_media_type",
            "content-type",
        ),
        (
            "invalid JSON",
            logger_headers("f4", "request", "m", "default"),
            "{nope".into(),
            400,
            "malformed",
            "invalid JSON",
        ),
        (
            "shape mismatch",
            logger_headers("f5", "request", "m", "default"),
            shape,
            400,
            "malformed",
            "shape [2, 2] needs 4 elements",
        ),
        (
            "missing ce-id",
            no_id,
            req.clone(),
            400,
            "malformed",
            "ce-id",
        ),
    ];
    for (what, headers, body, code, reason, msg) in cases {
        let before = outcome(&daemon.scrape().await, reason);
        let (got, json) = post(&daemon, &headers, body).await;
        assert_eq!(got, code, "{what}: {json}");
        assert!(
            json["error"].as_str().unwrap_or("").contains(msg),
            "{what}: {json}"
        );
        assert_eq!(
            outcome(&daemon.scrape().await, reason),
            before + 1.0,
            "{what} counted as {reason}"
        );
    }
    let scrape = daemon.scrape().await;
    assert_eq!(outcome(&scrape, "duplicate"), 1.0);
    assert_eq!(outcome(&scrape, "expired"), 1.0);
    assert_eq!(outcome(&scrape, "joined"), 1.0);
    // Nothing malformed reached the window.
    assert_eq!(
        wait_records(&daemon, "m", "default", 4).await["records_ingested"],
        4
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oip_mirror_over_grpc_joins_inputs_and_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::start(test_config(dir.path(), &[])).await;
    let mut client = daemon.client().await;
    let fp32: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let ack = client
        .mirror_inference(pb::MirrorInferenceRequest {
            request: Some(ModelInferRequest {
                model_name: "triton-model".into(),
                model_version: "3".into(),
                inputs: vec![InferInputTensor {
                    name: "INPUT0".into(),
                    datatype: "FP32".into(),
                    shape: vec![2, 2],
                    ..Default::default()
                }],
                raw_input_contents: vec![fp32],
                ..Default::default()
            }),
            response: Some(ModelInferResponse {
                outputs: vec![InferOutputTensor {
                    name: "OUTPUT0".into(),
                    datatype: "BYTES".into(),
                    shape: vec![2, 1],
                    contents: Some(InferTensorContents {
                        bytes_contents: vec![b"cat".to_vec(), b"dog".to_vec()],
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("mirror accepted")
        .into_inner();
    assert_eq!(ack.records, 2);
    let v = wait_records(&daemon, "triton-model", "3", 2).await;
    assert_eq!(feature(&v, "INPUT0_1")["role"], "input");
    let out = feature(&v, "OUTPUT0");
    assert_eq!(
        (out["role"].as_str(), out["kind"].as_str()),
        (Some("output"), Some("categorical"))
    );

    let err = client
        .mirror_inference(pb::MirrorInferenceRequest {
            request: Some(ModelInferRequest {
                model_name: "triton-model".into(),
                inputs: vec![InferInputTensor {
                    name: "INPUT0".into(),
                    datatype: "FP32".into(),
                    shape: vec![2, 2],
                    ..Default::default()
                }],
                raw_input_contents: vec![vec![0u8; 12]],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .contains("request.inputs[0] (INPUT0): shape [2, 2] needs 4 elements, data has 3"),
        "{}",
        err.message()
    );
    daemon.stop().await.unwrap();
}
