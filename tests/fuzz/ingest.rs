//! Decode and validate of the ingest messages, exactly as the gRPC service
//! does them: `prost` decodes the bytes, then `server::grpc::ingest_request`
//! (`Ingest`, `IngestBatch`; `SetReferenceRequest` has the same wire form)
//! or `server::grpc::mirror_to_batch` (`MirrorInference`) validates. The
//! outcome must be a decode error, a well-formed batch, or a rejection whose
//! message starts with the field at fault and does not echo unbounded input.

use driftd::{
    domain::{self, Batch, NameRules},
    proto::{
        self as pb,
        inference::{
            model_infer_request::InferInputTensor, model_infer_response::InferOutputTensor,
            InferTensorContents, ModelInferRequest, ModelInferResponse,
        },
    },
    server::grpc,
};
use proptest::prelude::*;
use prost::Message;

use crate::{arbitrary_bytes, config, corpus, guarded, mutate, mutated};

/// Longest rejection message: it travels in the `grpc-message` header, so
/// it must name the field without echoing what the client sent at length.
const MAX_MESSAGE: usize = 1024;

/// Decodes `bytes` as each ingest message type and validates what decodes.
pub fn check_bytes(bytes: &[u8]) {
    if let Ok(msg) = pb::IngestRequest::decode(bytes) {
        check_ingest(msg);
    }
    if let Ok(msg) = pb::MirrorInferenceRequest::decode(bytes) {
        check_mirror(msg);
    }
}

fn check_ingest(msg: pb::IngestRequest) {
    match grpc::ingest_request(msg, &NameRules::default()) {
        Ok((batch, producer)) => {
            check_batch(&batch);
            if let Some(p) = producer {
                assert_eq!(domain::validate_name(&p.id), Ok(()));
            }
        }
        Err((_, message)) => check_rejection(&message, &["batch"]),
    }
}

fn check_mirror(msg: pb::MirrorInferenceRequest) {
    match grpc::mirror_to_batch(msg, &NameRules::default()) {
        Ok(batch) => check_batch(&batch),
        Err((_, message)) => {
            check_rejection(&message, &["request", "response", "model", "version"])
        }
    }
}

/// What the engine relies on: valid unique names, at least one row and one
/// column, every column with one value per row.
fn check_batch(b: &Batch) {
    assert_eq!(domain::validate_name(&b.key.model), Ok(()));
    assert_eq!(domain::validate_name(&b.key.version), Ok(()));
    assert!(b.n_rows > 0, "a batch without rows was accepted");
    assert!(
        !b.columns.is_empty(),
        "a batch without columns was accepted"
    );
    let mut names = std::collections::HashSet::new();
    for c in &b.columns {
        assert_eq!(domain::validate_name(&c.name), Ok(()), "{:?}", c.name);
        assert!(names.insert(&c.name), "duplicate column {:?}", c.name);
        assert_eq!(c.values.len(), b.n_rows, "column {:?}", c.name);
    }
}

fn check_rejection(message: &str, fields: &[&str]) {
    let names_field = fields.iter().any(|f| {
        message
            .strip_prefix(f)
            .and_then(|rest| rest.chars().next())
            .is_some_and(|c| matches!(c, '.' | ':' | '[' | ' ' | '/'))
    });
    let shown: String = message.chars().take(200).collect();
    assert!(
        names_field,
        "rejection does not start with a field: {shown}"
    );
    assert!(
        message.len() <= MAX_MESSAGE,
        "rejection message of {} bytes: {shown}...",
        message.len()
    );
}

#[test]
fn corpus_regressions() {
    for target in ["ingest", "mirror"] {
        for (path, bytes) in corpus(target) {
            eprintln!("{}", path.display());
            check_bytes(&bytes);
        }
    }
}

/// The seeds decode to what they should: a valid batch or mirror, so the
/// mutations start from inputs that reach the whole validation.
#[test]
fn seeds_are_valid_requests() {
    for (path, bytes) in corpus("ingest") {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("valid-") {
            let msg = pb::IngestRequest::decode(&bytes[..]).expect(&name);
            assert!(
                grpc::ingest_request(msg, &NameRules::default()).is_ok(),
                "{name}"
            );
        }
    }
    for (path, bytes) in corpus("mirror") {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("valid-") {
            let msg = pb::MirrorInferenceRequest::decode(&bytes[..]).expect(&name);
            assert!(
                grpc::mirror_to_batch(msg, &NameRules::default()).is_ok(),
                "{name}"
            );
        }
    }
}

/// Writes the generated seeds (valid ones and reproducers) when `DRIFTD_FUZZ_WRITE_SEEDS=1` (after a
/// protocol change); otherwise checks that the committed ones are current.
#[test]
fn seeds_match_their_generators() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
    let write = std::env::var("DRIFTD_FUZZ_WRITE_SEEDS").as_deref() == Ok("1");
    let mut seeds: Vec<(String, Vec<u8>)> = seed_batches()
        .into_iter()
        .map(|(n, m)| (format!("ingest/{n}.bin"), m.encode_to_vec()))
        .collect();
    seeds.extend(
        seed_mirrors()
            .into_iter()
            .map(|(n, m)| (format!("mirror/{n}.bin"), m.encode_to_vec())),
    );
    for (name, bytes) in seeds {
        let path = dir.join(&name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let committed = std::fs::read(&path).unwrap_or_default();
            assert!(
                committed == bytes,
                "{name} differs from its generator; rerun with DRIFTD_FUZZ_WRITE_SEEDS=1"
            );
        }
    }
}

fn numeric(name: &str, role: pb::ColumnRole, values: Vec<f64>) -> pb::Column {
    pb::Column {
        name: name.into(),
        role: role as i32,
        values: Some(pb::column::Values::Numeric(pb::NumericValues { values })),
    }
}

fn categorical(name: &str, values: &[&str]) -> pb::Column {
    pb::Column {
        name: name.into(),
        role: pb::ColumnRole::Input as i32,
        values: Some(pb::column::Values::Categorical(pb::CategoricalValues {
            values: values.iter().map(|s| s.to_string()).collect(),
        })),
    }
}

fn seed_batches() -> Vec<(&'static str, pb::IngestRequest)> {
    let batch = |b: pb::RecordBatch| pb::IngestRequest { batch: Some(b) };
    vec![
        (
            "valid-numeric",
            batch(pb::RecordBatch {
                model: "fraud".into(),
                version: "v1".into(),
                columns: vec![
                    numeric("age", pb::ColumnRole::Input, vec![31.0, 45.5, f64::NAN]),
                    numeric("score", pb::ColumnRole::Output, vec![0.1, 0.9, 0.5]),
                ],
                ..Default::default()
            }),
        ),
        (
            "valid-mixed-rows",
            batch(pb::RecordBatch {
                model: "churn-model_v2.1:a".into(),
                version: String::new(),
                columns: vec![
                    categorical("country", &["de", "fr", ""]),
                    numeric(
                        "amount",
                        pb::ColumnRole::Unspecified,
                        vec![1e300, -0.0, 7.0],
                    ),
                ],
                timestamps_unix_ms: vec![1_700_000_000_000, 1_700_000_000_001, 0],
                request_ids: vec!["a".into(), "b".into(), "c".into()],
                ..Default::default()
            }),
        ),
        (
            "valid-producer",
            batch(pb::RecordBatch {
                model: "m".into(),
                version: "canary".into(),
                columns: vec![numeric("x", pb::ColumnRole::Input, vec![1.0])],
                producer_id: "pod-7".into(),
                sequence: 42,
                ..Default::default()
            }),
        ),
    ]
}

fn seed_mirrors() -> Vec<(&'static str, pb::MirrorInferenceRequest)> {
    let input =
        |name: &str, datatype: &str, shape: Vec<i64>, c: InferTensorContents| InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            contents: Some(c),
            ..Default::default()
        };
    vec![
        (
            "valid-typed",
            pb::MirrorInferenceRequest {
                request: Some(ModelInferRequest {
                    model_name: "iris".into(),
                    model_version: "v1".into(),
                    inputs: vec![input(
                        "input-0",
                        "FP32",
                        vec![2, 2],
                        InferTensorContents {
                            fp32_contents: vec![5.1, 3.5, 6.2, 2.9],
                            ..Default::default()
                        },
                    )],
                    ..Default::default()
                }),
                response: Some(ModelInferResponse {
                    model_name: "iris".into(),
                    outputs: vec![InferOutputTensor {
                        name: "output-0".into(),
                        datatype: "INT64".into(),
                        shape: vec![2],
                        contents: Some(InferTensorContents {
                            int64_contents: vec![0, 2],
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            // A zero batch size with a huge second dimension: 2^40 column
            // names, a process abort (fixed in inference::tensors_to_columns).
            "crash-zero-rows-huge-width",
            pb::MirrorInferenceRequest {
                request: Some(ModelInferRequest {
                    model_name: "m".into(),
                    inputs: vec![input(
                        "x",
                        "FP32",
                        vec![0, 1 << 40],
                        InferTensorContents::default(),
                    )],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            "valid-raw",
            pb::MirrorInferenceRequest {
                model: "m".into(),
                request: Some(ModelInferRequest {
                    inputs: vec![
                        input("x", "FP64", vec![2], InferTensorContents::default()),
                        input("s", "BYTES", vec![2, 1], InferTensorContents::default()),
                    ],
                    raw_input_contents: vec![
                        [1.5f64.to_le_bytes(), (-2.0f64).to_le_bytes()].concat(),
                        [
                            &2u32.to_le_bytes()[..],
                            &b"ab"[..],
                            &1u32.to_le_bytes()[..],
                            &b"c"[..],
                        ]
                        .concat(),
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
    ]
}

// === structured generators ===

/// Names: mostly valid, else empty, too long, non-printable, arbitrary
/// Unicode, or huge.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z][a-z0-9_.:-]{0,12}",
        1 => Just(String::new()),
        1 => Just("a".repeat(129)),
        1 => "[\\x00-\\x1f\\x7f]{1,4}",
        1 => any::<String>(),
        1 => Just("n".repeat(100_000)),
    ]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -1e3f64..1e3,
        2 => any::<f64>(),
        1 => prop::sample::select(vec![
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            -0.0,
            5e-324,
        ]),
    ]
}

fn category() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z]{0,3}",
        1 => any::<String>(),
        1 => Just("c".repeat(70_000)),
    ]
}

fn values(n: usize) -> impl Strategy<Value = Option<pb::column::Values>> {
    // Mostly `n` values, so that many batches pass validation.
    let len = prop_oneof![6 => Just(n), 1 => 0usize..40];
    len.prop_flat_map(|len| {
        prop_oneof![
            1 => Just(None),
            4 => prop::collection::vec(float(), len)
                .prop_map(|values| Some(pb::column::Values::Numeric(pb::NumericValues { values }))),
            2 => prop::collection::vec(category(), len).prop_map(|values| {
                Some(pb::column::Values::Categorical(pb::CategoricalValues { values }))
            }),
        ]
    })
}

fn column(n: usize) -> impl Strategy<Value = pb::Column> {
    let role = prop_oneof![8 => 0i32..3, 1 => any::<i32>()];
    (name(), role, values(n)).prop_map(|(name, role, values)| pb::Column { name, role, values })
}

fn record_batch() -> impl Strategy<Value = pb::RecordBatch> {
    (0usize..40).prop_flat_map(|n| {
        let per_row = prop_oneof![3 => Just(0usize), 3 => Just(n), 1 => 0usize..50];
        (
            name(),
            prop_oneof![Just(String::new()), name()],
            prop::collection::vec(column(n), 0..6),
            per_row.clone(),
            per_row,
            prop_oneof![3 => Just(String::new()), 1 => name()],
            any::<u64>(),
        )
            .prop_map(
                |(model, version, columns, n_ts, n_ids, producer_id, sequence)| pb::RecordBatch {
                    model,
                    version,
                    columns,
                    timestamps_unix_ms: (0..n_ts as i64).collect(),
                    request_ids: (0..n_ids).map(|i| i.to_string()).collect(),
                    producer_id,
                    sequence,
                },
            )
    })
}

fn dimension() -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => 0i64..5,
        1 => prop::sample::select(vec![-1i64, 1 << 31, 1 << 40, i64::MAX, i64::MIN]),
        1 => any::<i64>(),
    ]
}

fn datatype() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec![
            "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
            "FP16", "FP32", "FP64", "BYTES",
        ])
        .prop_map(str::to_string),
        1 => any::<String>(),
        1 => Just("D".repeat(100_000)),
    ]
}

fn contents() -> impl Strategy<Value = Option<InferTensorContents>> {
    let n = 0usize..9;
    prop_oneof![
        1 => Just(None),
        4 => (
            prop::collection::vec(any::<bool>(), n.clone()),
            prop::collection::vec(any::<i32>(), n.clone()),
            prop::collection::vec(any::<i64>(), n.clone()),
            prop::collection::vec(any::<u64>(), n.clone()),
            prop::collection::vec(any::<f32>(), n.clone()),
            prop::collection::vec(float(), n.clone()),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6), n),
        )
            .prop_map(|(b, i, i64s, u64s, f32s, f64s, bytes)| {
                Some(InferTensorContents {
                    bool_contents: b,
                    int_contents: i,
                    int64_contents: i64s,
                    uint_contents: vec![7, 8],
                    uint64_contents: u64s,
                    fp32_contents: f32s,
                    fp64_contents: f64s,
                    bytes_contents: bytes,
                })
            }),
    ]
}

/// (name, datatype, shape, contents) of one tensor.
type TensorParts = (String, String, Vec<i64>, Option<InferTensorContents>);

fn tensor() -> impl Strategy<Value = TensorParts> {
    (
        name(),
        datatype(),
        prop::collection::vec(dimension(), 0..4),
        contents(),
    )
}

fn raw_blobs() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop_oneof![
        3 => Just(Vec::new()),
        1 => prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..4),
    ]
}

fn mirror_request() -> impl Strategy<Value = pb::MirrorInferenceRequest> {
    let request = (
        name(),
        name(),
        prop::collection::vec(tensor(), 0..4),
        raw_blobs(),
    )
        .prop_map(
            |(model_name, model_version, inputs, raw)| ModelInferRequest {
                model_name,
                model_version,
                inputs: inputs
                    .into_iter()
                    .map(|(name, datatype, shape, contents)| InferInputTensor {
                        name,
                        datatype,
                        shape,
                        contents,
                        ..Default::default()
                    })
                    .collect(),
                raw_input_contents: raw,
                ..Default::default()
            },
        );
    let response =
        (prop::collection::vec(tensor(), 0..3), raw_blobs()).prop_map(|(outputs, raw)| {
            ModelInferResponse {
                outputs: outputs
                    .into_iter()
                    .map(|(name, datatype, shape, contents)| InferOutputTensor {
                        name,
                        datatype,
                        shape,
                        contents,
                        ..Default::default()
                    })
                    .collect(),
                raw_output_contents: raw,
                ..Default::default()
            }
        });
    (
        prop::option::weighted(0.8, request),
        prop::option::weighted(0.5, response),
        prop_oneof![Just(String::new()), name()],
        prop_oneof![Just(String::new()), name()],
    )
        .prop_map(
            |(request, response, model, version)| pb::MirrorInferenceRequest {
                request,
                response,
                model,
                version,
            },
        )
}

/// The ingest and mirror corpora, read once.
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        corpus("ingest")
            .into_iter()
            .chain(corpus("mirror"))
            .map(|(_, b)| b)
            .collect()
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_decode_and_validate(bytes in arbitrary_bytes()) {
        guarded("ingest-bytes", &[("bin", &bytes[..])], || check_bytes(&bytes));
    }

    #[test]
    fn mutated_seeds_decode_and_validate((seed, edits) in mutated(64)) {
        let seeds = seeds();
        let bytes = mutate(&seeds[seed % seeds.len()], &edits, seeds);
        guarded("ingest-mutated", &[("bin", &bytes[..])], || check_bytes(&bytes));
    }

    #[test]
    fn structured_batches_validate(b in record_batch()) {
        let msg = pb::IngestRequest { batch: Some(b) };
        let bytes = msg.encode_to_vec();
        guarded("ingest-structured", &[("bin", &bytes[..])], || {
            // Compared encoded: NaN values make the messages unequal.
            let back = pb::IngestRequest::decode(&bytes[..]).expect("decodes its encoding");
            assert_eq!(back.encode_to_vec(), bytes);
            check_ingest(msg.clone());
        });
    }

    #[test]
    fn structured_mirrors_validate(m in mirror_request()) {
        let bytes = m.encode_to_vec();
        guarded("mirror-structured", &[("bin", &bytes[..])], || check_mirror(m.clone()));
    }
}
