use super::*;
use crate::config::Config;

fn cfg(dir: &Path) -> StoreConfig {
    StoreConfig {
        path: dir.to_path_buf(),
        ..Config::default().store
    }
}

fn key(m: &str, v: &str) -> ModelKey {
    ModelKey {
        model: m.into(),
        version: v.into(),
    }
}

fn batch(k: &ModelKey, xs: Vec<f64>) -> Batch {
    let n_rows = xs.len();
    Batch {
        key: k.clone(),
        columns: vec![
            Column {
                name: "x".into(),
                role: Role::Input,
                values: Values::Numeric(xs),
            },
            Column {
                name: "c".into(),
                role: Role::Output,
                values: Values::Categorical((0..n_rows).map(|i| format!("k{i}")).collect()),
            },
        ],
        n_rows,
    }
}

#[tokio::test]
async fn everything_written_and_flushed_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let a = key("a", "b");
    // "a\0bc" must not be mistaken for a batch of "a\0b".
    let a2 = key("a", "bc");
    let stored: Vec<StoredBatch> = (0..3)
        .map(|seq| StoredBatch {
            seq,
            cumulative_records: (seq + 1) * 2,
            batch: batch(&a, vec![seq as f64, f64::NAN]),
        })
        .collect();
    let reference = StoredReference {
        source: Source::SetReference,
        records: 3,
        features: BTreeMap::from([
            (
                "x".to_string(),
                (
                    Role::Input,
                    RawFeature::Numeric {
                        sorted: vec![1.0, 2.0],
                        missing: 1,
                    },
                ),
            ),
            (
                "c".to_string(),
                (
                    Role::Output,
                    RawFeature::Categorical {
                        counts: BTreeMap::from([("k".to_string(), 3)]),
                        missing: 0,
                    },
                ),
            ),
        ]),
    };
    let rule = Tracker {
        consecutive: 4,
        clear: 2,
        firing_since_ms: Some(-5),
    };
    {
        let s = Store::open(&cfg(dir.path())).unwrap();
        for b in &stored {
            s.put_batch(b).unwrap();
        }
        s.put_batch(&StoredBatch {
            seq: 0,
            cumulative_records: 1,
            batch: batch(&a2, vec![9.0]),
        })
        .unwrap();
        s.delete_batches_before(&a, 1).unwrap();
        s.put_reference(&a, &reference).unwrap();
        s.put_rule(&a, "psi", &rule).unwrap();
        s.put_rule(&a, "ks", &Tracker::default()).unwrap();
        s.outbox_put(
            "hook",
            &OutboxEntry {
                id: "e1".into(),
                created_ms: 7,
                attempts: 2,
                next_attempt_ms: 9,
                body: b"{}".to_vec(),
            },
        )
        .unwrap();
        s.outbox_put(
            "hook2",
            &OutboxEntry {
                id: "e2".into(),
                created_ms: 1,
                attempts: 0,
                next_attempt_ms: 1,
                body: vec![],
            },
        )
        .unwrap();
        s.outbox_delete("hook2", "e2").unwrap();
        s.flush().await.unwrap();
    }
    let s = Store::open(&cfg(dir.path())).unwrap();
    let loaded = s.load().unwrap();
    assert_eq!(loaded.len(), 2);
    let v = &loaded[0];
    assert_eq!(v.key, a);
    assert_eq!(v.batches.len(), 2);
    assert_eq!(v.batches[0].seq, 1);
    assert_eq!(v.batches[1].cumulative_records, 6);
    // NaN does not compare equal, so compare the bit patterns.
    let Values::Numeric(xs) = &v.batches[1].batch.columns[0].values else {
        panic!("numeric column expected")
    };
    assert_eq!(xs[0], 2.0);
    assert!(xs[1].is_nan());
    assert_eq!(v.reference.as_ref(), Some(&reference));
    assert_eq!(v.rules.get("psi"), Some(&rule));
    assert_eq!(v.rules.get("ks"), Some(&Tracker::default()));
    let outbox = s.outbox_list(None).unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].0, "hook");
    assert_eq!(outbox[0].1.attempts, 2);
    assert_eq!(outbox[0].1.body, b"{}");
    assert!(s.outbox_list(Some("hook2")).unwrap().is_empty());
    assert_eq!(loaded[1].key, a2);
    assert_eq!(loaded[1].batches.len(), 1);
}

#[tokio::test]
async fn other_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert(SCHEMA_KEY, &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(&cfg(dir.path())).unwrap_err();
    assert!(matches!(err, Error::Schema { found: 99, .. }), "{err}");
}

#[test]
fn truncated_values_do_not_decode() {
    let k = key("m", "v");
    let enc = encode_batch(&StoredBatch {
        seq: 0,
        cumulative_records: 2,
        batch: batch(&k, vec![1.0, 2.0]),
    });
    for cut in 0..enc.len() {
        assert!(
            decode_batch(&enc[..cut], k.clone(), 0).is_none(),
            "cut at {cut}"
        );
    }
    assert!(decode_batch(&enc, k, 0).is_some());
}
