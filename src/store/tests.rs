use super::*;
use crate::{config::Config, reference::Source};

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

/// The in-memory backend and sled in `dir`: both keep the same contract.
fn both_backends(dir: &Path) -> [Arc<dyn Backend>; 2] {
    [
        Arc::new(MemBackend::default()),
        Arc::new(SledBackend::open(&cfg(dir)).unwrap()),
    ]
}

/// Version counters after `n` records.
fn meta(n: u64) -> VersionMeta {
    VersionMeta {
        records_ingested: n,
        ..VersionMeta::default()
    }
}

fn bucket(rows: u64, x: f64) -> Bucket {
    Bucket {
        rows,
        tau: u64::MAX,
        features: BTreeMap::new(),
        priorities: vec![7],
        values: [("x".to_string(), vec![x])].into(),
        spilled: false,
    }
}

fn reference() -> Reference {
    let mut b = crate::reference::Builder::default();
    b.push(&batch(&key("m", "v"), vec![1.0, 2.0, f64::NAN]), usize::MAX);
    b.build(
        Source::SetReference,
        crate::reference::Settings {
            bins: std::num::NonZeroUsize::new(10).unwrap(),
            sample_size: 100,
            max_categories: 10,
        },
    )
}

/// Runs the round trip against any backend.
async fn round_trip(s: &Store, reopen: impl Fn() -> Store) {
    let a = key("a", "b");
    // "a\0bc" must not be mistaken for an entry of "a\0b".
    let a2 = key("a", "bc");
    let rule = Tracker {
        consecutive: 4,
        clear: 2,
        firing_since_ms: Some(-5),
    };
    s.put_raw_batch(&a, 0, &batch(&a, vec![0.0, f64::NAN]))
        .unwrap();
    s.put_raw_batch(&a, 1, &batch(&a, vec![1.0])).unwrap();
    // Written but past the commit point: never read back.
    s.put_raw_batch(&a, 2, &batch(&a, vec![2.0])).unwrap();
    let meta = VersionMeta {
        records_ingested: 30,
        next_raw_seq: 2,
        producers: [("p1".to_string(), 9)].into(),
    };
    s.commit(
        &a,
        &Commit {
            deltas: vec![
                ("5m".into(), 3, 0, bucket(10, 1.0)),
                ("5m".into(), 3, 10, bucket(10, 2.0)),
                ("5m".into(), 4, 20, bucket(10, 3.0)),
                ("1h".into(), 1, 0, bucket(30, 4.0)),
            ],
            wholes: vec![],
            taus: vec![("5m".into(), 4, 99)],
            rewrites: vec![],
            removed: vec![],
            meta: meta.clone(),
        },
    )
    .unwrap();
    // Bucket 3 closes (its deltas give way to the whole state), bucket 4
    // gets a delta beyond the commit point (a crash before the counters
    // landed), and "1h" bucket 1 leaves its window.
    s.commit(
        &a2,
        &Commit {
            deltas: vec![("5m".into(), 1, 0, bucket(1, 9.0))],
            meta: VersionMeta {
                records_ingested: 1,
                ..VersionMeta::default()
            },
            ..Commit::default()
        },
    )
    .unwrap();
    s.commit(
        &a,
        &Commit {
            wholes: vec![("5m".into(), 3, bucket(20, 5.0))],
            removed: vec![("1h".into(), 1)],
            meta: meta.clone(),
            ..Commit::default()
        },
    )
    .unwrap();
    s.commit(
        &a,
        &Commit {
            deltas: vec![("5m".into(), 4, 30, bucket(10, 6.0))],
            meta: meta.clone(),
            ..Commit::default()
        },
    )
    .unwrap();
    s.put_reference(&a, &reference()).unwrap();
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

    let s = reopen();
    let loaded = s.load().unwrap();
    assert_eq!(loaded.len(), 2);
    let v = &loaded[0];
    assert_eq!(v.key, a);
    assert_eq!(v.meta, meta);
    assert_eq!(v.raw_batches.len(), 2);
    let Values::Numeric(xs) = &v.raw_batches[0].1.columns[0].values else {
        panic!("numeric column expected")
    };
    assert_eq!(xs[0], 0.0);
    assert!(xs[1].is_nan());
    let w = &v.windows["5m"];
    assert_eq!(w[&3].whole.as_ref().map(|b| b.rows), Some(20));
    assert!(w[&3].deltas.is_empty());
    assert_eq!(
        w[&4].deltas.len(),
        1,
        "the delta past the commit point is dropped"
    );
    assert_eq!(w[&4].deltas[0].0, 20);
    assert_eq!(w[&4].tau, Some(99));
    assert!(v.windows.get("1h").is_none_or(|w| w.is_empty()));
    assert_eq!(v.reference.as_ref(), Some(&reference()));
    assert_eq!(v.rules.get("psi"), Some(&rule));
    assert_eq!(v.rules.get("ks"), Some(&Tracker::default()));
    let outbox = s.outbox_list(None).unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].0, "hook");
    assert_eq!(outbox[0].1.attempts, 2);
    assert_eq!(outbox[0].1.body, b"{}");
    assert!(s.outbox_list(Some("hook2")).unwrap().is_empty());
    assert_eq!(loaded[1].key, a2);
    assert_eq!(loaded[1].windows["5m"][&1].deltas.len(), 1);

    s.delete_windows(&a, None).unwrap();
    s.delete_raw_batches(&a).unwrap();
    let loaded = s.load().unwrap();
    assert!(loaded[0].windows.is_empty());
    assert!(loaded[0].raw_batches.is_empty());
    assert_eq!(loaded[0].meta, meta, "counters survive a window reset");
}

#[tokio::test]
async fn everything_written_and_flushed_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let s = Store::open(&cfg(&path)).unwrap();
    let backend = s.backend.clone();
    round_trip(&s, move || {
        // Reopen the same sled directory in place.
        backend.reopen().unwrap();
        Store::with_backend(path.clone(), backend.clone())
    })
    .await;
}

#[tokio::test]
async fn the_in_memory_backend_keeps_the_same_contract() {
    let backend: Arc<dyn Backend> = Arc::new(MemBackend::default());
    let s = Store::with_backend(PathBuf::from("mem"), backend.clone());
    round_trip(&s, move || {
        Store::with_backend(PathBuf::from("mem"), backend.clone())
    })
    .await;
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
    // sled's background threads can hold the directory's lock for a
    // moment after the handle is dropped: wait for it (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let err = loop {
        match Store::open(&cfg(dir.path())) {
            Err(Error::Open { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => break e,
            Ok(_) => panic!("a store of schema version 99 was opened"),
        }
    };
    assert!(matches!(err, Error::Schema { found: 99, .. }), "{err:?}");
}

/// A store whose content reaches a lower durable mark than its mark file
/// records, or whose mark file is unreadable, is refused as corrupt.
#[test]
fn a_store_below_its_recorded_durable_mark_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = SledBackend::open(&cfg(dir.path())).unwrap();
    b.mark_durable().unwrap();
    b.mark_durable().unwrap();
    assert_eq!(read_mark(dir.path()).unwrap(), Some(2));
    b.reopen().expect("the content reaches the recorded mark");
    let file = dir.path().join(MARK_FILE);
    std::fs::write(&file, "3\n").unwrap();
    match b.reopen() {
        Err(
            e @ Error::Shrunk {
                found: 2,
                durable: 3,
                ..
            },
        ) => assert!(e.is_corruption()),
        other => panic!("{other:?}"),
    }
    std::fs::write(&file, "two").unwrap();
    match b.reopen() {
        Err(e @ Error::Corrupt { .. }) => assert!(e.is_corruption()),
        other => panic!("{other:?}"),
    }
    std::fs::write(&file, "2").unwrap();
    b.reopen().unwrap();
}

/// A store records a new durable mark only when something was written
/// since the last one: an idle daemon does no disk I/O for it.
#[test]
fn an_idle_store_records_no_new_durable_mark() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&cfg(dir.path())).unwrap();
    s.mark_durable().unwrap();
    assert_eq!(read_mark(dir.path()).unwrap(), None, "nothing written yet");
    s.meta_put("k", b"1").unwrap();
    s.mark_durable().unwrap();
    assert_eq!(read_mark(dir.path()).unwrap(), Some(1));
    s.mark_durable().unwrap();
    assert_eq!(read_mark(dir.path()).unwrap(), Some(1), "idle since");
    s.meta_put("k", b"2").unwrap();
    s.mark_durable().unwrap();
    assert_eq!(read_mark(dir.path()).unwrap(), Some(2));
}

#[test]
fn truncated_values_do_not_decode() {
    let k = key("m", "v");
    let enc = encode_batch(&batch(&k, vec![1.0, 2.0]));
    for cut in 0..enc.len() {
        assert!(
            decode_batch(&enc[..cut], k.clone()).is_none(),
            "cut at {cut}"
        );
    }
    assert!(decode_batch(&enc, k).is_some());
}

/// Deletions keep pace with what commits write: twice the keys, at least
/// 8 (the usual commit writes 2-3) and at most 64 (a bucket stored whole
/// writes a hundred chunks and should not also delete two hundred).
#[test]
fn a_commit_deletes_up_to_twice_the_keys_it_writes() {
    assert_eq!(purge_budget(2), 8);
    assert_eq!(purge_budget(4), 8);
    assert_eq!(purge_budget(23), 46);
    assert_eq!(purge_budget(133), 64);
}

/// A closing bucket's deltas are not deleted in the commit that stores it
/// whole (thousands of deletions there stalled ingest); `load` ignores them
/// at once and later commits delete them a few at a time (8 for a commit
/// writing a delta and the counters). A removed bucket's whole state goes
/// at once, its deltas later.
#[test]
fn superseded_deltas_are_ignored_at_once_and_deleted_a_few_per_commit() {
    let dir = tempfile::tempdir().unwrap();
    for backend in both_backends(dir.path()) {
        let s = Store::with_backend(PathBuf::from("test"), backend.clone());
        let a = key("a", "b");
        let delta = |b: u64, row: u64| Commit {
            deltas: vec![("5m".into(), b, row, bucket(1, 1.0))],
            meta: meta(row + 1),
            ..Commit::default()
        };
        let stored = |b: u64| {
            backend
                .keys(
                    Tree::Windows,
                    &bucket_prefix(REGION_DELTA, &a, "5m", b),
                    usize::MAX,
                )
                .unwrap()
                .len()
        };
        for row in 0..200 {
            s.commit(&a, &delta(1, row)).unwrap();
        }
        assert_eq!(stored(1), 200);
        // Bucket 1 closes as bucket 2 opens.
        s.commit(
            &a,
            &Commit {
                wholes: vec![("5m".into(), 1, bucket(200, 1.0))],
                ..delta(2, 200)
            },
        )
        .unwrap();
        assert_eq!(stored(1), 200, "nothing deleted by the closing commit");
        let loaded = s.load().unwrap();
        let w = &loaded[0].windows["5m"];
        assert_eq!(w[&1].whole.as_ref().map(|b| b.rows), Some(200));
        assert!(w[&1].deltas.is_empty(), "the whole state is the content");
        assert_eq!(w[&2].deltas.len(), 1);
        assert_eq!(s.purge_pending(), 1);

        let mut row = 201;
        let mut left = vec![stored(1)];
        while stored(1) > 0 && row < 240 {
            s.commit(&a, &delta(2, row)).unwrap();
            left.push(stored(1));
            row += 1;
        }
        assert_eq!(left, (0..=25).rev().map(|i| i * 8).collect::<Vec<_>>());
        s.commit(&a, &delta(2, row)).unwrap();
        assert_eq!(s.purge_pending(), 0);

        // Bucket 2 leaves the window as bucket 3 opens: its whole state and
        // threshold go now, its deltas are ignored, then deleted.
        s.commit(
            &a,
            &Commit {
                taus: vec![("5m".into(), 2, 7)],
                ..delta(2, row + 1)
            },
        )
        .unwrap();
        s.commit(
            &a,
            &Commit {
                removed: vec![("5m".into(), 2)],
                ..delta(3, row + 2)
            },
        )
        .unwrap();
        let loaded = s.load().unwrap();
        let w = &loaded[0].windows["5m"];
        assert_eq!(w.keys().copied().collect::<Vec<_>>(), [1, 3]);
        // Each later commit deletes 8 of them (the assertion bounds the
        // loop: every turn deletes some).
        let mut left = stored(2);
        assert!(left > 8, "{left} deltas of bucket 2");
        let mut row = row + 3;
        while left > 0 {
            s.commit(&a, &delta(3, row)).unwrap();
            row += 1;
            let now = stored(2);
            assert_eq!(now, left.saturating_sub(8));
            left = now;
        }
    }
}

/// A bucket of `rows` sampled rows of one feature: `rows` x 8 bytes and
/// more once encoded.
fn big_bucket(rows: usize, x: f64) -> Bucket {
    Bucket {
        rows: rows as u64,
        tau: u64::MAX,
        features: BTreeMap::new(),
        priorities: (0..rows as u64).collect(),
        values: [("x".to_string(), (0..rows).map(|i| x + i as f64).collect())].into(),
        spilled: false,
    }
}

/// A reopen (after every start-up's load, and after a failure) waits,
/// bounded, while sled's lock on the directory is still held by handles
/// that have not finished closing.
#[test]
fn a_reopen_waits_for_the_directory_lock() {
    let dir = tempfile::tempdir().unwrap();
    let b = SledBackend::open(&cfg(dir.path())).unwrap();
    // Another handle to the same database keeps its files, and the lock,
    // for 300 ms after the reopen drops its own.
    let held = b
        .inner
        .read()
        .unwrap()
        .as_ref()
        .map(|i| i.db.clone())
        .unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(held);
    });
    b.reopen().unwrap();
    release.join().unwrap();
    b.apply(Tree::Meta, vec![(b"k".to_vec(), Some(b"v".to_vec()))])
        .unwrap();
    assert_eq!(b.get(Tree::Meta, b"k").unwrap(), Some(b"v".to_vec()));
}

/// `b` as `load` gives back a closed bucket: without its sampled values.
fn closed(b: &Bucket) -> Bucket {
    Bucket {
        values: BTreeMap::new(),
        ..b.clone()
    }
}

/// `load` keeps the sampled values of each window's newest bucket only
/// (what a restored window holds in memory), in every window of every
/// version; the others are read back whole from their files.
#[test]
fn a_load_keeps_sampled_values_only_for_each_windows_newest_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&cfg(&dir.path().join("data"))).unwrap();
    let (a, b) = (key("a", "1"), key("b", "1"));
    let whole = |i: u64| big_bucket(100 + i as usize, i as f64);
    let wholes = |w: &str, ids: &[u64]| -> Vec<(String, u64, Bucket)> {
        ids.iter().map(|&i| (w.to_string(), i, whole(i))).collect()
    };
    let mut in_a = wholes("5m", &[1, 2, 3]);
    in_a.extend(wholes("1h", &[1, 2]));
    s.commit(
        &a,
        &Commit {
            wholes: in_a,
            deltas: vec![("1h".into(), 3, 0, bucket(1, 1.0))],
            meta: meta(1),
            ..Commit::default()
        },
    )
    .unwrap();
    s.commit(
        &b,
        &Commit {
            wholes: wholes("5m", &[1]),
            meta: meta(1),
            ..Commit::default()
        },
    )
    .unwrap();
    let loaded = s.load().unwrap();
    let held = |v: usize, w: &str, id: u64| loaded[v].windows[w][&id].whole.clone();
    assert_eq!(loaded[0].key, a);
    assert_eq!(held(0, "5m", 1), Some(closed(&whole(1))));
    assert_eq!(held(0, "5m", 2), Some(closed(&whole(2))));
    assert_eq!(
        held(0, "5m", 3),
        Some(whole(3)),
        "the newest keeps its values"
    );
    assert_eq!(held(0, "1h", 1), Some(closed(&whole(1))));
    assert_eq!(
        held(0, "1h", 2),
        Some(closed(&whole(2))),
        "bucket 3 is newer"
    );
    assert_eq!(held(1, "5m", 1), Some(whole(1)), "another version's window");
    for (k, w, id) in [(&a, "5m", 1), (&a, "5m", 2), (&a, "1h", 2), (&b, "5m", 1)] {
        assert_eq!(s.read_whole(k, w, id).unwrap(), Some(whole(id)), "{w} {id}");
    }
}

/// Whole states and deltas larger than a chunk are stored as several keys
/// of at most `CHUNK_BYTES` and read back equal; a whole state stored again
/// smaller leaves none of the old chunks; a removed one is gone at once
/// (its first chunk) and its other chunks are deleted later, also after a
/// restart; a chunk missing inside a value is corruption. `read_whole`
/// (what the evaluator reads closed buckets back with) gives the last whole
/// state, and nothing once it is removed or for a bucket never stored whole;
/// `load` gives it without its sampled values unless the bucket is its
/// window's newest.
#[test]
fn large_values_are_stored_in_chunks_and_removed_by_their_first_chunk() {
    let dir = tempfile::tempdir().unwrap();
    for backend in both_backends(dir.path()) {
        let s = Store::with_backend(PathBuf::from("test"), backend.clone());
        let a = key("a", "b");
        let whole_keys = |b: u64| {
            let mut sizes = Vec::new();
            backend
                .scan(
                    Tree::Windows,
                    &bucket_prefix(REGION_WHOLE, &a, "5m", b),
                    &mut |_, v| {
                        sizes.push(v.len());
                        Ok(())
                    },
                )
                .unwrap();
            sizes
        };
        let n_chunks = |b: &Bucket| postcard_bytes(b).len().div_ceil(CHUNK_BYTES);

        // A delta and a whole state of ~80 KB each read back equal, from
        // keys of at most CHUNK_BYTES each.
        let delta = big_bucket(5000, 1.0);
        s.commit(
            &a,
            &Commit {
                deltas: vec![("5m".into(), 1, 0, delta.clone())],
                meta: meta(5000),
                ..Commit::default()
            },
        )
        .unwrap();
        assert_eq!(s.load().unwrap()[0].windows["5m"][&1].deltas, [(0, delta)]);
        let whole = big_bucket(10_000, 2.0);
        s.commit(
            &a,
            &Commit {
                wholes: vec![("5m".into(), 1, whole.clone())],
                deltas: vec![("5m".into(), 2, 5000, bucket(1, 3.0))],
                meta: meta(5001),
                ..Commit::default()
            },
        )
        .unwrap();
        let sizes = whole_keys(1);
        assert!(n_chunks(&whole) > 10);
        assert_eq!(sizes.len(), n_chunks(&whole));
        assert!(sizes.iter().all(|&n| n <= CHUNK_BYTES), "{sizes:?}");
        let w = &s.load().unwrap()[0].windows["5m"];
        assert_eq!(w[&1].whole.as_ref(), Some(&closed(&whole)));
        assert_eq!(s.read_whole(&a, "5m", 1).unwrap(), Some(whole.clone()));
        assert_eq!(s.read_whole(&a, "5m", 2).unwrap(), None, "deltas only");
        assert_eq!(s.read_whole(&a, "1h", 1).unwrap(), None, "another window");

        // Stored again, smaller: the old state's extra chunks go with it.
        let smaller = big_bucket(3000, 4.0);
        s.commit(
            &a,
            &Commit {
                wholes: vec![("5m".into(), 1, smaller.clone())],
                meta: meta(5001),
                ..Commit::default()
            },
        )
        .unwrap();
        assert_eq!(whole_keys(1).len(), n_chunks(&smaller));
        let w = &s.load().unwrap()[0].windows["5m"];
        assert_eq!(w[&1].whole.as_ref(), Some(&closed(&smaller)));
        assert_eq!(s.read_whole(&a, "5m", 1).unwrap(), Some(smaller.clone()));

        // Removed: only its first chunk goes with the commit, and the rest
        // is no longer read; a restart finds the rest and deletes it too.
        s.commit(
            &a,
            &Commit {
                removed: vec![("5m".into(), 1)],
                meta: meta(5001),
                ..Commit::default()
            },
        )
        .unwrap();
        assert_eq!(whole_keys(1).len(), n_chunks(&smaller) - 1);
        assert_eq!(s.read_whole(&a, "5m", 1).unwrap(), None, "removed");
        let restarted = Store::with_backend(PathBuf::from("test"), backend.clone());
        let w = &restarted.load().unwrap()[0].windows["5m"];
        assert_eq!(w.keys().copied().collect::<Vec<_>>(), [2]);
        assert_eq!(restarted.purge_pending(), 1);
        restarted
            .commit(
                &a,
                &Commit {
                    meta: meta(5001),
                    ..Commit::default()
                },
            )
            .unwrap();
        assert_eq!(whole_keys(1).len(), 0);
        assert_eq!(restarted.purge_pending(), 0);

        // A chunk missing in the middle of a value is corruption.
        let base = window_key(REGION_WHOLE, &a, "5m", 3, WHOLE);
        let mut writes = Vec::new();
        push_chunks(&mut writes, &base, &postcard_bytes(&whole));
        writes.remove(3);
        backend.apply(Tree::Windows, writes).unwrap();
        assert!(matches!(
            restarted.load(),
            Err(Error::Corrupt { tree: "windows" })
        ));
        backend
            .apply(Tree::Windows, vec![(chunk_key(&base, 0), None)])
            .unwrap();
        assert!(
            restarted.load().is_ok(),
            "without its first chunk it is skipped"
        );
    }
}

/// Closed buckets' whole states are also written to `spill/`, one file
/// each, and `read_whole` reads them from there; a missing or unreadable
/// file falls back to sled. Removing a bucket or a window deletes its
/// files; a load rewrites the directory from sled; the store's size on
/// disk counts the files.
#[test]
fn closed_buckets_are_read_back_from_their_spill_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&cfg(dir.path())).unwrap();
    let a = key("a", "b");
    let spill = dir.path().join("spill");
    let files = || -> Vec<PathBuf> {
        fn walk(d: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                if e.file_type().unwrap().is_dir() {
                    walk(&e.path(), out);
                } else {
                    out.push(e.path());
                }
            }
        }
        let mut out = Vec::new();
        walk(&spill, &mut out);
        out.sort();
        out
    };
    let size_before = s.size_on_disk().unwrap();
    let one = big_bucket(2000, 1.0);
    let two = big_bucket(1000, 2.0);
    s.commit(
        &a,
        &Commit {
            wholes: vec![("5m".into(), 1, one.clone()), ("1h".into(), 1, two.clone())],
            meta: meta(3000),
            ..Commit::default()
        },
    )
    .unwrap();
    let written = files();
    assert_eq!(written.len(), 2, "{written:?}");
    let spilled: u64 = written
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert_eq!(
        spilled,
        (postcard_bytes(&one).len() + postcard_bytes(&two).len()) as u64
    );
    assert!(s.size_on_disk().unwrap() >= size_before + spilled);
    let file_of_one = written
        .iter()
        .find(|f| std::fs::read(f).unwrap() == postcard_bytes(&one))
        .unwrap()
        .clone();
    assert_eq!(s.read_whole(&a, "5m", 1).unwrap(), Some(one.clone()));
    assert_eq!(s.read_whole(&a, "1h", 1).unwrap(), Some(two.clone()));

    // The file is what is read: one that says otherwise wins...
    std::fs::write(&file_of_one, postcard_bytes(&two)).unwrap();
    assert_eq!(s.read_whole(&a, "5m", 1).unwrap(), Some(two.clone()));
    // ...and a file that does not decode, or no file, falls back to sled.
    std::fs::write(&file_of_one, b"not a bucket").unwrap();
    assert_eq!(s.read_whole(&a, "5m", 1).unwrap(), Some(one.clone()));
    std::fs::remove_file(&file_of_one).unwrap();
    assert_eq!(s.read_whole(&a, "5m", 1).unwrap(), Some(one.clone()));

    // A load writes the directory again from sled, dropping strays.
    std::fs::write(spill.join("stray"), b"x").unwrap();
    s.load().unwrap();
    assert_eq!(files().len(), 2);
    assert_eq!(std::fs::read(&file_of_one).unwrap(), postcard_bytes(&one));

    // A bucket that leaves its window takes its file along.
    s.commit(
        &a,
        &Commit {
            removed: vec![("5m".into(), 1)],
            meta: meta(3000),
            ..Commit::default()
        },
    )
    .unwrap();
    assert!(!file_of_one.exists());
    assert_eq!(s.read_whole(&a, "5m", 1).unwrap(), None);
    assert_eq!(files().len(), 1);
    // So does a window reset.
    s.delete_windows(&a, None).unwrap();
    assert!(files().is_empty());
    assert_eq!(s.read_whole(&a, "1h", 1).unwrap(), None);
}

/// A rewrite stores a closed bucket's whole state again without its rows
/// above the new threshold (read back from its spill file or sled); a
/// bucket with no whole state to read gets the threshold instead.
#[test]
fn a_rewrite_stores_a_closed_bucket_again_without_the_rows_it_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Store::open(&cfg(dir.path())).unwrap();
    let mem = Store::with_backend(PathBuf::from("test"), Arc::new(MemBackend::default()));
    for s in [disk, mem] {
        let a = key("a", "b");
        s.commit(
            &a,
            &Commit {
                wholes: vec![("5m".into(), 1, big_bucket(2000, 1.0))],
                meta: meta(2000),
                ..Commit::default()
            },
        )
        .unwrap();
        s.commit(
            &a,
            &Commit {
                rewrites: vec![("5m".into(), 1, 999), ("5m".into(), 7, 5)],
                meta: meta(2000),
                ..Commit::default()
            },
        )
        .unwrap();
        // Records stay; sampled rows above the threshold go.
        let mut expected = big_bucket(1000, 1.0);
        expected.rows = 2000;
        expected.tau = 999;
        assert_eq!(s.read_whole(&a, "5m", 1).unwrap(), Some(expected.clone()));
        let loaded = s.load().unwrap();
        let w = &loaded[0].windows["5m"];
        assert_eq!(w[&1].whole.as_ref(), Some(&closed(&expected)));
        assert_eq!(w[&1].tau, None);
        assert_eq!((w[&7].whole.as_ref(), w[&7].tau), (None, Some(5)));
    }
}
