//! What a load of the store leaves in memory, counted by this binary's
//! allocator (a test binary of its own, so that no other test allocates
//! meanwhile).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use driftd::config::{OnCorruption, StoreConfig};
use driftd::domain::{Batch, Column, ModelKey, Role, Values};
use driftd::store::{Backend, SledBackend, Store, Tree};

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The most `LIVE` has been since it was last reset.
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` with the same arguments;
// the counter has no say in what is returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: the caller's contract is `System::alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is `System::dealloc`'s.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        grew(new_size);
        // SAFETY: the caller's contract is `System::realloc`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: usize = 1024 * 1024;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / MIB as f64
}

/// sled 0.34 counts a page read against its cache only once 64 reads have
/// queued in the page's shard, so a scan of a store much larger than the
/// cache used to leave tens of MB resident that the cache never evicted.
/// While a scan runs, sled holds at most ~16-32 MiB beyond `cache_capacity`;
/// after a load, it holds what `cache_capacity` says.
#[test]
fn a_scan_and_a_load_keep_sleds_cache_near_its_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let cache = 4 * MIB;
    let cfg = StoreConfig {
        path: dir.path().join("data"),
        cache_capacity_bytes: cache as u64,
        flush_every_ms: 500,
        on_corruption: OnCorruption::Refuse,
        checkpoint_after_bytes: u64::MAX,
    };
    // 64 MB of warm-up batches, 4 KB each (the size of the store's chunks).
    let key = ModelKey {
        model: "m".into(),
        version: "v".into(),
    };
    let batches = 16_000u64;
    {
        let store = Store::open(&cfg).unwrap();
        for seq in 0..batches {
            let values = (0..500).map(|i| (seq * 500 + i) as f64).collect();
            let batch = Batch {
                key: key.clone(),
                columns: vec![Column {
                    name: "x".into(),
                    role: Role::Input,
                    values: Values::Numeric(values),
                }],
                n_rows: 500,
            };
            store.put_raw_batch(&key, seq, &batch).unwrap();
        }
        store.flush_blocking().unwrap();
    }
    // sled's threads let go of the closed database's buffers.
    std::thread::sleep(std::time::Duration::from_millis(500));

    // A scan bounds what sled keeps while it runs, not only after it.
    let before = LIVE.load(Ordering::Relaxed);
    let backend = SledBackend::open(&cfg).unwrap();
    let opened = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    PEAK.store(0, Ordering::Relaxed);
    let mut seen = 0u64;
    backend
        .scan(Tree::Batches, b"", &mut |_, _| {
            seen += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(seen, batches);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    println!(
        "scan: open {:.1} MiB, peak {:.1} MiB",
        mib(opened),
        mib(peak)
    );
    assert!(
        peak < opened + cache + 32 * MIB,
        "sled held {:.1} MiB during a scan of 64 MB with a {} MiB cache (open: {:.1} MiB)",
        mib(peak),
        cache / MIB,
        mib(opened)
    );
    drop(backend);
    std::thread::sleep(std::time::Duration::from_millis(500));

    let before = LIVE.load(Ordering::Relaxed);
    let store = Store::open(&cfg).unwrap();
    let opened = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    let loaded = store.load().unwrap();
    // No counters were stored, so none of the batches counts (the load
    // read them all).
    assert!(loaded.iter().all(|v| v.raw_batches.is_empty()));
    drop(loaded);
    let held = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    println!(
        "open: {:.1} MiB, after the load: {:.1} MiB (cache capacity {} MiB)",
        mib(opened),
        mib(held),
        cache / MIB
    );
    assert!(
        held < opened + cache + 8 * MIB,
        "sled holds {:.1} MiB after a load of 64 MB with a {} MiB cache (open: {:.1} MiB)",
        mib(held),
        cache / MIB,
        mib(opened)
    );
    drop(store);
}
