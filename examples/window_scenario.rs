//! The sizing scenario of ARCHITECTURE.md, simulated: 10 models x 50
//! numeric features, the default windows (5m/10s and 1h/1m) and limits, at
//! 20,000 records/s for one hour of simulated time, through the real engine
//! and sled store (no gRPC). Prints the process's RSS, the store's size on
//! disk, and how long a restart on that store takes to restore everything.
//! Names are `driftd-loadgen`'s (`model-000`, `f000`) and the simulated
//! hour ends now, so the daemon and the loadgen can go on with the store
//! (BENCHMARKS.md, "Restart on a full store").
//! It uses the daemon's allocator (jemalloc, with the options built into it),
//! counting live heap bytes.
//!
//! ```sh
//! cargo run --release --example window_scenario -- [MINUTES] [DATA_DIR]
//! ```

use std::{
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::Instant,
};

use driftd::{
    config::{Clock, Config},
    domain::{Batch, Column, ModelKey, Role, Values},
    engine,
    metrics::Metrics,
    store::Store,
    webhook,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

const MODELS: usize = 10;
const FEATURES: usize = 50;
const RATE: u64 = 20_000;
const ROWS_PER_BATCH: usize = 1000;

/// The daemon's allocator, counting the bytes it hands out, so the
/// scenario can tell live heap from RSS (the rest is allocator retention
/// and fragmentation).
struct Counting;

static HEAP_BYTES: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call forwards to jemalloc with the caller's arguments; the
// counter has no effect on the memory handed out.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        HEAP_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { tikv_jemallocator::Jemalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        HEAP_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { tikv_jemallocator::Jemalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        HEAP_BYTES.fetch_add(new as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { tikv_jemallocator::Jemalloc.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn heap_mib() -> f64 {
    HEAP_BYTES.load(Ordering::Relaxed) as f64 / 1_048_576.0
}

fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// xorshift values, shaped roughly normal by summing four uniforms.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> f64 {
        let mut s = 0.0;
        for _ in 0..4 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            s += (self.0 >> 11) as f64 / (1u64 << 53) as f64;
        }
        s - 2.0
    }
}

fn batch(model: usize, g: &mut Gen) -> Batch {
    Batch {
        key: ModelKey {
            model: format!("model-{model:03}"),
            version: "v1".into(),
        },
        columns: (0..FEATURES)
            .map(|f| Column {
                name: format!("f{f:03}"),
                role: Role::Input,
                values: Values::Numeric((0..ROWS_PER_BATCH).map(|_| g.next()).collect()),
            })
            .collect(),
        n_rows: ROWS_PER_BATCH,
    }
}

async fn start(
    config: &Config,
) -> (
    engine::Handle,
    Store,
    TaskTracker,
    CancellationToken,
    std::time::Duration,
) {
    let t = Instant::now();
    let (store, loaded) = if std::env::var("SCENARIO_MEMORY_STORE").is_ok() {
        // The engine alone, without sled: isolates the windows' memory.
        let s = Store::with_backend(
            config.store.path.clone(),
            Arc::new(driftd::store::MemBackend::default()),
        );
        (s, Vec::new())
    } else {
        Store::open_and_load(&config.store).expect("open store")
    };
    let metrics = Metrics::new();
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let outbox = webhook::Outbox::start(
        config.webhook.clone(),
        store.clone(),
        metrics.clone(),
        &tracker,
        cancel.clone(),
    )
    .expect("outbox");
    let handle = engine::start(
        config.engine.clone(),
        config.queue_capacity,
        store.clone(),
        loaded,
        metrics,
        outbox,
        &tracker,
        cancel.clone(),
    )
    .expect("engine");
    (handle, store, tracker, cancel, t.elapsed())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let minutes: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(60);
    let dir = args
        .get(2)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("driftd-window-scenario"));
    let _ = std::fs::remove_dir_all(&dir);
    // The simulated time ends at the wall clock's present, so that a daemon
    // started on the store afterwards finds the windows current.
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let now = Arc::new(AtomicI64::new(wall_ms - minutes as i64 * 60_000));
    // DRIFTD_* variables apply, e.g. DRIFTD_WINDOW__SAMPLE_SIZE.
    let mut config: Config = driftd::config::load(None, std::env::vars())
        .expect("valid configuration")
        .1;
    config.store.path = dir.clone();
    config.engine.eval_interval = std::time::Duration::from_secs(3600);
    let clock_now = now.clone();
    config.engine.clock = Clock::from_fn(move || clock_now.load(Ordering::Relaxed));

    let (handle, store, tracker, cancel, _) = start(&config).await;
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let batches_per_second = RATE / ROWS_PER_BATCH as u64; // over all models
    let started = Instant::now();
    let mut sent = 0u64;
    println!("minute,rss_mib,heap_mib,store_mib");
    for second in 0..minutes * 60 {
        for b in 0..batches_per_second {
            let model = (second * batches_per_second + b) as usize % MODELS;
            handle
                .ingest_waiting(batch(model, &mut g), None)
                .await
                .expect("ingest");
            sent += ROWS_PER_BATCH as u64;
        }
        now.fetch_add(1000, Ordering::Relaxed);
        if (second + 1) % 60 == 0 {
            let (rss, _) = rss_kib();
            let size = store.size_on_disk().unwrap_or(0);
            println!(
                "{},{:.1},{:.1},{:.1}",
                (second + 1) / 60,
                rss as f64 / 1024.0,
                heap_mib(),
                size as f64 / 1048576.0
            );
        }
    }
    let (rss, hwm) = rss_kib();
    let size = store.size_on_disk().unwrap_or(0);
    println!(
        "simulated {minutes} min: {sent} records ({MODELS} models x {FEATURES} features) \
         in {:.1} s of wall time; RSS {:.1} MiB (peak {:.1} MiB, live heap {:.1} MiB); \
         store {:.1} MiB on disk",
        started.elapsed().as_secs_f64(),
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        heap_mib(),
        size as f64 / 1048576.0,
    );
    drop(handle);
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    drop(store);

    let (handle, _store, tracker, cancel, took) = start(&config).await;
    let status = handle
        .reader()
        .status("model-000", Some("v1"))
        .expect("restored");
    println!(
        "restart: store opened and every window restored in {:.2} s; model-000 windows: {}",
        took.as_secs_f64(),
        status[0]
            .windows
            .iter()
            .map(|w| format!("{} = {} records", w.name, w.records))
            .collect::<Vec<_>>()
            .join(", ")
    );
    drop(handle);
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
}
