use super::*;

fn names(d: &Decoded) -> Vec<(&str, Role)> {
    d.columns
        .iter()
        .map(|c| (c.name.as_str(), c.role))
        .collect()
}

#[test]
fn v1_object_rows_become_one_column_per_key() {
    let body = br#"{"instances": [{"age": 30, "city": "Paris", "ok": true}, {"age": null, "city": "Lyon"}]}"#;
    let d = decode_json(body, Side::Request, None).unwrap();
    assert_eq!(d.n_rows, 2);
    assert_eq!(
        names(&d),
        vec![
            ("age", Role::Input),
            ("city", Role::Input),
            ("ok", Role::Input)
        ]
    );
    let Values::Numeric(age) = &d.columns[0].values else {
        panic!()
    };
    assert_eq!(age[0], 30.0);
    assert!(age[1].is_nan());
    assert_eq!(
        d.columns[1].values,
        Values::Categorical(vec!["Paris".into(), "Lyon".into()])
    );
    let Values::Numeric(ok) = &d.columns[2].values else {
        panic!()
    };
    assert_eq!(ok[0], 1.0);
    assert!(ok[1].is_nan(), "a key absent from a row is missing");
}

#[test]
fn v1_array_rows_use_index_names_or_configured_names() {
    let body = br#"{"instances": [[1, 2.5], [3, 4]]}"#;
    let d = decode_json(body, Side::Request, None).unwrap();
    assert_eq!(
        names(&d),
        vec![("instances_0", Role::Input), ("instances_1", Role::Input)]
    );
    assert_eq!(d.columns[1].values, Values::Numeric(vec![2.5, 4.0]));
    let configured = vec!["a".to_string(), "b".to_string()];
    let d = decode_json(body, Side::Request, Some(&configured)).unwrap();
    assert_eq!(names(&d), vec![("a", Role::Input), ("b", Role::Input)]);
    let d = decode_json(br#"{"predictions": [0.1, 0.9, 0.4]}"#, Side::Response, None).unwrap();
    assert_eq!(names(&d), vec![("predictions", Role::Output)]);
    assert_eq!(d.n_rows, 3);
}

#[test]
fn v2_tensors_split_along_the_last_dimension() {
    let body = br#"{"inputs": [
        {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, 6]]},
        {"name": "tag", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}"#;
    let d = decode_json(body, Side::Request, None).unwrap();
    assert_eq!(d.n_rows, 2);
    assert_eq!(
        names(&d),
        vec![
            ("x_0", Role::Input),
            ("x_1", Role::Input),
            ("x_2", Role::Input),
            ("tag", Role::Input)
        ]
    );
    assert_eq!(d.columns[2].values, Values::Numeric(vec![3.0, 6.0]));
    assert_eq!(
        d.columns[3].values,
        Values::Categorical(vec!["a".into(), "b".into()])
    );
    // Flat data with the same shape decodes the same.
    let flat = br#"{"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}"#;
    let f = decode_json(flat, Side::Request, None).unwrap();
    assert_eq!(f.columns, d.columns[..3].to_vec());
}

#[test]
fn inconsistent_or_malformed_bodies_are_errors_naming_the_field() {
    let cases: &[(&[u8], &str)] = &[
        (br#"{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]}"#, "inputs[0] (x): shape [2, 2] needs 4 elements, data has 3"),
        (br#"{"inputs": [{"name": "x", "shape": [2], "datatype": "FP16", "data": [1, 2]}]}"#, "inputs[0].datatype"),
        (br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}]}"#, "inputs[0].data"),
        (br#"{"inputs": [{"name": "a", "shape": [2], "datatype": "FP64", "data": [1, 2]}, {"name": "b", "shape": [3], "datatype": "FP64", "data": [1, 2, 3]}]}"#, "batch size 3 differs from 2"),
        (br#"{"instances": []}"#, "instances: has no rows"),
        // Found by tests/fuzz (corpus/mirror/crash-zero-rows-huge-width.bin):
        // a zero batch size left the width unbounded, and 2^40 column names
        // aborted the process.
        (br#"{"inputs": [{"name": "x", "shape": [0, 1099511627776], "datatype": "FP32", "data": []}]}"#, "inputs[0].shape: [0, 1099511627776] has no rows"),
        // Found by tests/fuzz (corpus/mirror/crash-width-zero.bin): a
        // tensor of width 0 was accepted as a batch without columns.
        (br#"{"inputs": [{"name": "x", "shape": [1, 0], "datatype": "FP32", "data": []}]}"#, "inputs[0].shape: [1, 0] has no columns"),
        (br#"{"inputs": [{"name": "a b", "shape": [1], "datatype": "FP64", "data": [1]}, {"name": "a_b", "shape": [1], "datatype": "FP64", "data": [2]}]}"#, "inputs: names give column \"a_b\" twice once sanitised"),
        (br#"{"instances": [{"a b": 1, "a_b": 2}]}"#, "instances[0]: names give column \"a_b\" twice once sanitised"),
        (br#"{"something": 1}"#, "\"instances\""),
        (b"{not json", "body: invalid JSON"),
        (br#"{"instances": [{"a": {"b": 1}}]}"#, "instances[0].a"),
    ];
    for (body, msg) in cases {
        let e = decode_json(body, Side::Request, None).unwrap_err();
        assert!(
            e.0.contains(msg),
            "{:?}: {e}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn raw_contents_decode_like_typed_values() {
    let fp32: Vec<u8> = [1.5f32, -2.0, 3.25]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(
        decode_raw("FP32", &fp32, "f").unwrap(),
        Data::Numeric(vec![1.5, -2.0, 3.25])
    );
    let i64s: Vec<u8> = [-7i64, 1 << 40]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(
        decode_raw("INT64", &i64s, "f").unwrap(),
        Data::Numeric(vec![-7.0, (1u64 << 40) as f64])
    );
    assert_eq!(
        decode_raw("INT8", &[0xff, 1], "f").unwrap(),
        Data::Numeric(vec![-1.0, 1.0])
    );
    assert_eq!(
        decode_raw("BOOL", &[0, 2], "f").unwrap(),
        Data::Numeric(vec![0.0, 1.0])
    );
    let mut bytes = Vec::new();
    for s in ["ab", "", "ç"] {
        bytes.extend((s.len() as u32).to_le_bytes());
        bytes.extend(s.as_bytes());
    }
    assert_eq!(
        decode_raw("BYTES", &bytes, "f").unwrap(),
        Data::Bytes(vec!["ab".into(), "".into(), "ç".into()])
    );
    assert!(decode_raw("FP32", &[0, 0, 0], "f")
        .unwrap_err()
        .0
        .contains("3 bytes"));
    assert!(decode_raw("BYTES", &[5, 0, 0, 0, b'a'], "f").is_err());
    assert!(decode_raw("BYTES", &[1, 0, 0, 0, 0xff], "f")
        .unwrap_err()
        .0
        .contains("UTF-8"));
}

#[test]
fn names_are_sanitized() {
    assert_eq!(
        sanitize("serving_default/input 1"),
        "serving_default_input_1"
    );
    assert_eq!(sanitize(""), "_");
    assert_eq!(sanitize(&"x".repeat(300)).len(), domain::MAX_NAME_LEN);
}

#[test]
fn join_renames_only_a_later_sides_collisions_and_keeps_names_unique() {
    let col = |name: &str, role| Column {
        name: name.to_string(),
        role,
        values: Values::Numeric(vec![1.0]),
    };
    let side = |names: &[&str], role| Decoded {
        columns: names.iter().map(|n| col(n, role)).collect(),
        n_rows: 1,
    };
    let names_of = |cols: &[Column]| cols.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    // An output named like an input is renamed; `x_output` is an input
    // already, so the next free suffix is taken.
    let joined = join_columns(vec![
        side(&["x", "x_output", "y"], Role::Input),
        side(&["x", "z"], Role::Output),
    ]);
    assert_eq!(names_of(&joined), ["x", "x_output", "y", "x_output_2", "z"]);
    assert_eq!(duplicate_column(&joined), None);
    // A name at the length limit is cut to make room for the suffix.
    let long = "a".repeat(domain::MAX_NAME_LEN);
    let joined = join_columns(vec![
        side(&[&long], Role::Input),
        side(&[&long], Role::Output),
    ]);
    assert_eq!(joined[1].name.len(), domain::MAX_NAME_LEN);
    assert!(joined[1].name.ends_with("_output"), "{}", joined[1].name);
    // Two columns of one side with one name are left for the caller.
    let joined = join_columns(vec![side(&["a_b", "a_b"], Role::Input)]);
    assert_eq!(duplicate_column(&joined), Some("a_b"));
}
