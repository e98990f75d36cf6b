//! Durable state: per model version its counters, window buckets, compiled
//! reference, rule states and idempotent-producer positions, plus the
//! webhook outbox. [`Store`] is the typed layer the engine and the webhook
//! sender use; underneath it sits a [`Backend`], a small key-value
//! interface (named trees, ordered keys, atomic multi-key writes per tree,
//! flush) that sled implements here and any ordered store could implement.
//! This is the only module that imports sled.
//!
//! Layout: a few trees by purpose (`meta`, `batches`, `windows`,
//! `references`, `rules`, `outbox`), never one tree per model.
//! Keys start with the model version as `model \0 version \0` (names cannot
//! contain NUL), followed by names and big-endian integers so that byte
//! order is numeric order. Values are postcard (serde) or a small
//! hand-written encoding, versioned by [`SCHEMA_VERSION`].
//!
//! - `meta`: the schema version and small metadata.
//! - `batches`: `<version><seq>`: raw batches of a version still warming
//!   up (deleted once its reference forms).
//! - `windows`: four regions, each key led by its region byte:
//!   `1 <version><window>\0<bucket><u64::MAX><chunk>`: a bucket's whole
//!   state, written once it closes (or was pruned to half);
//!   `2 ...<bucket><u64::MAX-1>`: its
//!   sampling threshold after a pruning; `3 ...<bucket><part><chunk>`: its
//!   delta per batch (`part` = the batch's first record index); and
//!   `4 <version>`: the version's counters and idempotent producers'
//!   positions. Everything one batch changes is one atomic write, and at
//!   load only deltas below the stored record count are used.
//!
//! Whole states and deltas are cut into chunks of at most [`CHUNK_BYTES`]
//! under consecutive big-endian `u32` chunk numbers, so that no sled leaf
//! (up to ~20 keys) is larger than ~80 KiB. sled rewrites a whole leaf
//! when it consolidates, splits or merges it (a leaf left with fewer than
//! four keys by deletions is merged into its left neighbour, whatever that
//! holds), and writes a leaf over 128 KiB as a separate blob file that its
//! cache counts as a few bytes and so never evicts. With whole states of
//! several MiB in one value, every merge after a deletion rewrote
//! megabytes on the writer's thread (multi-second ingest stalls) and sled
//! kept every such leaf in memory. A value is removed by deleting its
//! first chunk (`load` drops a value whose first chunk is missing); the
//! rest is deleted a few keys per commit, like superseded deltas.
//! - `references`, `rules`, `outbox`: one entry per version, rule, event.
//!
//! Beside sled, `spill/` in the data directory holds a copy of each closed
//! bucket's whole state, one file per bucket
//! (`spill/<sha-256 of the version>/<window>/<bucket>`), which
//! [`Store::read_whole`] reads when the evaluator wants a closed bucket's
//! sampled values (windows keep them nowhere else). It is a cache, not
//! state: written after sled took the same whole state, deleted when the
//! bucket leaves, emptied and written again from sled at every load, and a
//! missing or unreadable file falls back to sled. Reading the values from
//! sled each evaluation would keep every page read in sled's cache: sled
//! 0.34 evicts a page only after 64 accesses to its shard of 256, whatever
//! `cache_capacity` says (in the sizing scenario its cache grew to over
//! 100 MB within two minutes).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::{
    config::StoreConfig,
    domain::{Batch, Column, ModelKey, Role, Values},
    reference::Reference,
    rules::Tracker,
    window::Bucket,
};

/// On-disk format version, checked at open. Bump it whenever an encoding or
/// key layout below changes.
pub const SCHEMA_VERSION: u32 = 6;

const SCHEMA_KEY: &[u8] = b"schema_version";

/// The `meta` key of the durable mark: a counter that
/// [`Backend::mark_durable`] advances once sled's log holds it on disk.
const MARK_KEY: &[u8] = b"durable_mark";

/// The file in the data directory that records the last durable mark, so
/// that a store whose log was truncated or replaced by an older one (which
/// sled opens as if it had crashed there, silently losing acknowledged
/// data) is recognised at open.
pub const MARK_FILE: &str = "durable-mark";

/// How often [`Store::keep_marking`] records the durable mark.
pub const MARK_EVERY: Duration = Duration::from_secs(1);

/// The `part` of a bucket's whole state in the `windows` tree.
const WHOLE: u64 = u64::MAX;

/// The `part` of a bucket's threshold after a pruning.
const TAU: u64 = u64::MAX - 1;

/// Regions of the `windows` tree (the first byte of every key).
const REGION_WHOLE: u8 = 1;
const REGION_TAU: u8 = 2;
const REGION_DELTA: u8 = 3;
const REGION_META: u8 = 4;

/// Largest chunk of a whole state or delta under one key (see the module
/// documentation).
const CHUNK_BYTES: usize = 4096;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// sled could not open the directory (locked by another process,
    /// unreadable, corrupt).
    #[error("cannot open store at {path}")]
    Open {
        /// The data directory.
        path: PathBuf,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// The directory holds data written in another on-disk format.
    #[error(
        "store at {path} has schema version {found}, this driftd reads version {SCHEMA_VERSION}"
    )]
    Schema {
        /// The data directory.
        path: PathBuf,
        /// The version found on disk.
        found: u32,
    },
    /// A read, write or flush failed.
    #[error("store {op} failed: {source}")]
    Io {
        /// The operation, e.g. "write" or "flush".
        op: &'static str,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// A stored value could not be decoded.
    #[error("corrupt value in tree {tree}")]
    Corrupt {
        /// The tree holding it.
        tree: &'static str,
    },
    /// sled panicked while opening or reading the store, which it does on
    /// some kinds of corrupt files.
    #[error("the store at {path} could not be read (sled panicked: {message})")]
    Panicked {
        /// The data directory.
        path: PathBuf,
        /// The panic message.
        message: String,
    },
    /// An earlier write or flush failed; nothing is written until the store
    /// has been reopened.
    #[error("store is unavailable after a failed write ({0}); retrying")]
    Failed(String),
    /// sled could not close its handle after an I/O error, and while that
    /// handle lives no sled database in the process can be written (sled
    /// holds a process-wide lock in it): only a restart helps.
    #[error(
        "store {} is stuck after an I/O error (sled could not close it); restart driftd",
        path.display()
    )]
    Wedged {
        /// The data directory.
        path: PathBuf,
    },
    /// The store holds less than it did when its durable mark was last
    /// recorded: its files were truncated, or replaced by older ones.
    #[error(
        "the store at {} holds less than it did: its content reaches durable mark {found}, \
         but {MARK_FILE} records mark {durable} as written to disk before; its files were \
         truncated or replaced by older ones",
        path.display()
    )]
    Shrunk {
        /// The data directory.
        path: PathBuf,
        /// The mark sled's content reaches.
        found: u64,
        /// The mark recorded in the mark file.
        durable: u64,
    },
    /// The store's log file was deleted or replaced under the running
    /// daemon. sled keeps writing to the open (unlinked) file without an
    /// error, so a flush checks the file is still the one it opened.
    #[error(
        "store file {} was deleted or replaced while driftd ran; reopening the store there",
        path.display()
    )]
    Gone {
        /// The file.
        path: PathBuf,
    },
}

impl Error {
    /// True when the store refused a write without attempting it: an
    /// earlier write or flush failed, or the store is stuck.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Failed(_) | Error::Wedged { .. })
    }

    /// True when the data on disk is unreadable, as opposed to locked by
    /// another process, written by another schema version or an I/O failure
    /// of the moment. Only these are worth quarantining.
    pub fn is_corruption(&self) -> bool {
        match self {
            Error::Corrupt { .. } | Error::Panicked { .. } | Error::Shrunk { .. } => true,
            // At open, anything but an OS error (a lock held by another
            // process, a permission) means sled could not make sense of the
            // files: a damaged `conf` surfaces as `Unsupported`.
            Error::Open { source, .. } => !matches!(source, sled::Error::Io(_)),
            Error::Io { source, .. } => matches!(
                source,
                sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)
            ),
            Error::Schema { .. } | Error::Failed(_) | Error::Wedged { .. } | Error::Gone { .. } => {
                false
            }
        }
    }
}

/// The trees of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tree {
    /// Schema version, per-version counters, small metadata.
    Meta,
    /// Raw batches of versions still warming up.
    Batches,
    /// Window buckets.
    Windows,
    /// Compiled references.
    References,
    /// Rule states.
    Rules,
    /// Undelivered webhook events.
    Outbox,
}

impl Tree {
    const ALL: [Tree; 6] = [
        Tree::Meta,
        Tree::Batches,
        Tree::Windows,
        Tree::References,
        Tree::Rules,
        Tree::Outbox,
    ];

    fn name(self) -> &'static str {
        match self {
            Tree::Meta => "meta",
            Tree::Batches => "batches",
            Tree::Windows => "windows",
            Tree::References => "references",
            Tree::Rules => "rules",
            Tree::Outbox => "outbox",
        }
    }
}

/// The visitor of [`Backend::scan`]: called with each key and value.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), Error> + 'a;

/// One tree of [`MemBackend`].
type MemTree = BTreeMap<Vec<u8>, Vec<u8>>;

/// One write of an atomic group: a value to store, or `None` to delete.
pub type Write = (Vec<u8>, Option<Vec<u8>>);

/// What driftd needs from a storage engine. Implementations must apply each
/// [`Backend::apply`] atomically, keep keys in byte order and make every
/// applied write survive a crash of the process once [`Backend::flush`]
/// returns.
pub trait Backend: Send + Sync + fmt::Debug {
    /// One value.
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;
    /// Calls `f` on every entry whose key starts with `prefix`, in order.
    fn scan(&self, tree: Tree, prefix: &[u8], f: &mut Visit<'_>) -> Result<(), Error>;
    /// The first `limit` keys that start with `prefix`, in order.
    fn keys(&self, tree: Tree, prefix: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, Error>;
    /// Applies the writes atomically.
    fn apply(&self, tree: Tree, writes: Vec<Write>) -> Result<(), Error>;
    /// Makes every applied write durable; blocks. Returns its duration.
    fn flush(&self) -> Result<Duration, Error>;
    /// Bytes on disk.
    fn size_on_disk(&self) -> Result<u64, Error>;
    /// Closes and opens the underlying files again: after a failed write
    /// (sled's I/O errors are sticky until then), and at a clean shutdown
    /// so that sled records a snapshot of its log ([`Store::checkpoint`]).
    fn reopen(&self) -> Result<(), Error>;
    /// Records how far the content reaches, durably: advances a counter in
    /// the `meta` tree, makes it durable and then writes it to
    /// [`MARK_FILE`]; opening checks the content still reaches the mark.
    /// Backends without files have nothing to check and do nothing.
    fn mark_durable(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// How many bytes a scan reads between two [`SledBackend::settle`]s, and
/// the least it reads to settle at its end.
const SETTLE_EVERY: usize = 16 * 1024 * 1024;
const SETTLE_MIN: usize = 4 * 1024 * 1024;

/// Keys spread over what a scan read since it last settled: one per
/// [`KeySample::STRIDE`] bytes (two or three per full sled leaf, see
/// [`CHUNK_BYTES`]).
#[derive(Debug, Default)]
struct KeySample {
    keys: Vec<sled::IVec>,
    bytes: usize,
    since: usize,
}

impl KeySample {
    const STRIDE: usize = 32 * 1024;

    fn note(&mut self, k: &sled::IVec, v: &[u8]) {
        let n = k.len() + v.len();
        self.bytes += n;
        self.since += n;
        if self.since >= Self::STRIDE {
            self.since = 0;
            self.keys.push(k.clone());
        }
    }
}

/// How long [`SledBackend::reopen`] waits for the failed handles to close.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// How long a flush may take before the store counts as failed: sled's
/// flush can wait forever after some I/O errors.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Hands what this thread's sled calls deferred through crossbeam-epoch on
/// to be freed. sled drops each sealed 512 KiB write buffer that way, and a
/// thread's deferred frees wait in a bag of 64 until it fills: under a
/// window's first fill that held ~35 MB of written buffers (heaptrack).
fn release_deferred() {
    crossbeam_epoch::pin().flush();
}

/// sled 0.34 behind [`Backend`].
#[derive(Debug)]
pub struct SledBackend {
    cfg: StoreConfig,
    inner: RwLock<Option<SledInner>>,
    /// Set when a failed handle did not close: see [`Error::Wedged`].
    wedged: AtomicBool,
}

#[derive(Debug)]
struct SledInner {
    db: sled::Db,
    trees: HashMap<Tree, sled::Tree>,
    /// sled's log file, and its identity (device, inode) when opened.
    db_file: PathBuf,
    db_file_id: Option<(u64, u64)>,
}

/// The durable mark sled's `meta` tree holds (0 before the first).
fn stored_mark(meta: &sled::Tree) -> Result<u64, Error> {
    match meta
        .get(MARK_KEY)
        .map_err(|source| Error::Io { op: "read", source })?
    {
        None => Ok(0),
        Some(v) => <[u8; 8]>::try_from(v.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| Error::Corrupt { tree: "meta" }),
    }
}

/// The mark recorded in `dir`'s [`MARK_FILE`]; `None` without one (a store
/// never marked, or written before marks existed).
fn read_mark(dir: &Path) -> Result<Option<u64>, Error> {
    match std::fs::read_to_string(dir.join(MARK_FILE)) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Error::Corrupt { tree: MARK_FILE }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io {
            op: "read",
            source: sled::Error::Io(e),
        }),
    }
}

/// Replaces `dir`'s [`MARK_FILE`] atomically and durably.
fn write_mark(dir: &Path, mark: u64) -> std::io::Result<()> {
    let tmp = dir.join(format!("{MARK_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut f, format!("{mark}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(MARK_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Device and inode of `path`, or `None` when it does not exist.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl SledBackend {
    /// Opens (or creates) the database and checks its schema version.
    ///
    /// # Errors
    /// [`Error::Open`] when sled cannot open the directory, [`Error::Schema`]
    /// when it was written by an incompatible version.
    pub fn open(cfg: &StoreConfig) -> Result<Self, Error> {
        Ok(Self {
            inner: RwLock::new(Some(Self::open_inner(cfg)?)),
            cfg: cfg.clone(),
            wedged: AtomicBool::new(false),
        })
    }

    fn open_inner(cfg: &StoreConfig) -> Result<SledInner, Error> {
        let path = cfg.path.clone();
        let open_err = |source| Error::Open {
            path: path.clone(),
            source,
        };
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(cfg.cache_capacity_bytes)
            .flush_every_ms(Some(cfg.flush_every_ms))
            .open()
            .map_err(open_err)?;
        let mut trees = HashMap::new();
        for t in Tree::ALL {
            trees.insert(t, db.open_tree(t.name()).map_err(open_err)?);
        }
        let meta = &trees[&Tree::Meta];
        match meta.get(SCHEMA_KEY).map_err(open_err)? {
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| Error::Corrupt { tree: "meta" })?;
                if found != SCHEMA_VERSION {
                    return Err(Error::Schema { path, found });
                }
            }
            None => {
                meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())
                    .map_err(open_err)?;
            }
        }
        if let Some(durable) = read_mark(&path)? {
            let found = stored_mark(meta)?;
            if found < durable {
                return Err(Error::Shrunk {
                    path,
                    found,
                    durable,
                });
            }
        }
        let db_file = path.join("db");
        let db_file_id = file_identity(&db_file);
        Ok(SledInner {
            db,
            trees,
            db_file,
            db_file_id,
        })
    }

    /// Lets sled's cache catch up with a long scan. sled 0.34 counts a page
    /// read against `cache_capacity` only once 64 reads have queued up in
    /// the page's shard (one of 256), so a scan keeps up to 63 pages per
    /// shard beyond the bound, uncounted and never evicted: at the start-up
    /// peak on an hour's windows, ~100 MB (heaptrack). Reading one key 64
    /// times in a row fills its shard's queue with one page; doing so for
    /// keys spread over what the scan just read does it in nearly every
    /// shard, and the pages the scan left there are evicted down to the
    /// bound.
    fn settle(tree: &sled::Tree, keys: &[sled::IVec]) {
        for key in keys {
            for _ in 0..64 {
                if tree.get(key).is_err() {
                    return;
                }
            }
        }
        release_deferred();
    }

    /// Runs `f` on the open handles, under the read lock (a reopen waits
    /// for it).
    fn with_inner<T>(&self, f: impl FnOnce(&SledInner) -> Result<T, Error>) -> Result<T, Error> {
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let inner = guard
            .as_ref()
            .ok_or_else(|| Error::Failed("the store is closed".into()))?;
        f(inner)
    }

    /// [`SledBackend::with_inner`] for a sled call, its error as `op`'s.
    fn with<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&SledInner) -> Result<T, sled::Error>,
    ) -> Result<T, Error> {
        self.with_inner(|i| f(i).map_err(|source| Error::Io { op, source }))
    }
}

impl SledInner {
    /// Flushes sled's log. Written to a file nobody can open again is not
    /// durable: [`Error::Gone`] when the file was deleted or replaced.
    fn flush(&self, op: &'static str) -> Result<(), Error> {
        self.db.flush().map_err(|source| Error::Io { op, source })?;
        release_deferred();
        if file_identity(&self.db_file) != self.db_file_id {
            return Err(Error::Gone {
                path: self.db_file.clone(),
            });
        }
        Ok(())
    }
}

impl Backend for SledBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.with("read", |i| Ok(i.trees[&tree].get(key)?.map(|v| v.to_vec())))
    }

    fn scan(&self, tree: Tree, prefix: &[u8], f: &mut Visit<'_>) -> Result<(), Error> {
        self.with_inner(|inner| {
            let t = &inner.trees[&tree];
            let mut read = KeySample::default();
            for item in t.scan_prefix(prefix) {
                let (k, v) = item.map_err(|source| Error::Io { op: "scan", source })?;
                read.note(&k, &v);
                f(&k, &v)?;
                if read.bytes >= SETTLE_EVERY {
                    Self::settle(t, &std::mem::take(&mut read).keys);
                }
            }
            if read.bytes >= SETTLE_MIN {
                Self::settle(t, &read.keys);
            }
            Ok(())
        })
    }

    fn keys(&self, tree: Tree, prefix: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, Error> {
        self.with("scan", |i| {
            i.trees[&tree]
                .scan_prefix(prefix)
                .keys()
                .take(limit)
                .map(|k| k.map(|k| k.to_vec()))
                .collect()
        })
    }

    fn apply(&self, tree: Tree, writes: Vec<Write>) -> Result<(), Error> {
        self.with("write", |i| {
            let t = &i.trees[&tree];
            if let [(k, v)] = &writes[..] {
                match v {
                    Some(v) => t.insert(&k[..], &v[..]).map(|_| ()),
                    None => t.remove(&k[..]).map(|_| ()),
                }
            } else {
                let mut b = sled::Batch::default();
                for (k, v) in writes {
                    match v {
                        Some(v) => b.insert(k, v),
                        None => b.remove(k),
                    }
                }
                t.apply_batch(b)
            }
        })
        .inspect(|()| release_deferred())
    }

    fn flush(&self) -> Result<Duration, Error> {
        let started = Instant::now();
        self.with_inner(|i| i.flush("flush"))?;
        Ok(started.elapsed())
    }

    fn size_on_disk(&self) -> Result<u64, Error> {
        self.with("size on disk", |i| i.db.size_on_disk())
    }

    fn mark_durable(&self) -> Result<(), Error> {
        // Under the read lock throughout, so that a reopen cannot slip in
        // between the mark's write to one sled log and the file's record.
        self.with_inner(|inner| {
            let meta = &inner.trees[&Tree::Meta];
            let mark = stored_mark(meta)? + 1;
            let sled_io = |source| Error::Io { op: "mark", source };
            meta.insert(MARK_KEY, &mark.to_be_bytes())
                .map_err(sled_io)?;
            inner.flush("mark")?;
            let io = |e: std::io::Error| sled_io(sled::Error::Io(e));
            // sled's flush is `sync_file_range`, which leaves the file's
            // metadata and the disk's cache: fsync the log before the mark
            // file says the mark is on disk.
            std::fs::File::open(&inner.db_file)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
            write_mark(&self.cfg.path, mark).map_err(io)
        })
    }

    fn reopen(&self) -> Result<(), Error> {
        let wedged = || Error::Wedged {
            path: self.cfg.path.clone(),
        };
        if self.wedged.load(Ordering::Acquire) {
            return Err(wedged());
        }
        // Take the old handles out first, so other callers fail at once
        // ("closed") instead of waiting on the lock, then drop them: sled
        // holds a lock on the directory until they are gone. Dropping
        // flushes, and after some I/O errors (its files deleted under it)
        // sled's flush never returns, holding sled's process-wide lock that
        // every later write waits for, in any database. So drop on a thread
        // of its own, and when that does not finish within `CLOSE_WAIT`,
        // give up: the store stays failed and says that driftd must restart.
        let old = self.inner.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(old) = old {
            let (done, closed) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("driftd-store-close".into())
                .spawn(move || {
                    drop(old);
                    let _ = done.send(());
                });
            if spawned.is_ok() && closed.recv_timeout(CLOSE_WAIT).is_err() {
                self.wedged.store(true, Ordering::Release);
                return Err(wedged());
            }
        }
        // sled's background threads can hold the directory's lock for a
        // moment after its handles are dropped.
        let deadline = Instant::now() + CLOSE_WAIT;
        let fresh = loop {
            match Self::open_inner(&self.cfg) {
                Err(Error::Open {
                    source: sled::Error::Io(e),
                    ..
                }) if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = Some(fresh);
        Ok(())
    }
}

/// An in-memory [`Backend`] (nothing survives the process), for tests and
/// as the smallest example of the interface.
#[derive(Debug, Default)]
pub struct MemBackend {
    trees: RwLock<HashMap<Tree, MemTree>>,
}

impl Backend for MemBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let t = self.trees.read().unwrap_or_else(|p| p.into_inner());
        Ok(t.get(&tree).and_then(|t| t.get(key)).cloned())
    }

    fn scan(&self, tree: Tree, prefix: &[u8], f: &mut Visit<'_>) -> Result<(), Error> {
        let t = self.trees.read().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = t.get(&tree) {
            for (k, v) in t.range(prefix.to_vec()..) {
                if !k.starts_with(prefix) {
                    break;
                }
                f(k, v)?;
            }
        }
        Ok(())
    }

    fn keys(&self, tree: Tree, prefix: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, Error> {
        let t = self.trees.read().unwrap_or_else(|p| p.into_inner());
        Ok(t.get(&tree)
            .map(|t| {
                t.range(prefix.to_vec()..)
                    .map(|(k, _)| k)
                    .take_while(|k| k.starts_with(prefix))
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    fn apply(&self, tree: Tree, writes: Vec<Write>) -> Result<(), Error> {
        let mut t = self.trees.write().unwrap_or_else(|p| p.into_inner());
        let t = t.entry(tree).or_default();
        for (k, v) in writes {
            match v {
                Some(v) => t.insert(k, v),
                None => t.remove(&k),
            };
        }
        Ok(())
    }

    fn flush(&self) -> Result<Duration, Error> {
        Ok(Duration::ZERO)
    }

    fn size_on_disk(&self) -> Result<u64, Error> {
        let t = self.trees.read().unwrap_or_else(|p| p.into_inner());
        Ok(t.values()
            .flat_map(|t| t.iter())
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum())
    }

    fn reopen(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// Counters of a model version, written with every batch: the commit
/// point of its window deltas.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMeta {
    /// Records accepted since the version was first seen.
    pub records_ingested: u64,
    /// Sequence number of the next raw (warm-up) batch.
    pub next_raw_seq: u64,
    /// Last sequence number applied per idempotent producer.
    pub producers: BTreeMap<String, u64>,
}

/// What one ingested batch changed, written atomically by
/// [`Store::commit`].
#[derive(Debug, Default)]
pub struct Commit {
    /// (window, bucket, first record index, delta).
    pub deltas: Vec<(String, u64, u64, Bucket)>,
    /// (window, bucket, whole state) of closed buckets.
    pub wholes: Vec<(String, u64, Bucket)>,
    /// (window, bucket, threshold) of pruned buckets.
    pub taus: Vec<(String, u64, u64)>,
    /// (window, bucket, threshold) of closed buckets to store again without
    /// their rows above the threshold (read back from the store).
    pub rewrites: Vec<(String, u64, u64)>,
    /// (window, bucket) that left their windows.
    pub removed: Vec<(String, u64)>,
    /// The version's counters after the batch.
    pub meta: VersionMeta,
}

/// Stored parts of one bucket.
#[derive(Debug, Clone, Default)]
pub struct StoredBucket {
    /// The last whole state; from [`Store::load`], without its sampled
    /// values unless the bucket is its window's newest.
    pub whole: Option<Bucket>,
    /// Deltas written after it, in order, with their first record index.
    pub deltas: Vec<(u64, Bucket)>,
    /// The last threshold written after a pruning.
    pub tau: Option<u64>,
}

/// Stored buckets of one window.
pub type StoredWindow = BTreeMap<u64, StoredBucket>;

/// Everything stored about one model version.
#[derive(Debug, Clone, Default)]
pub struct StoredVersion {
    /// The model version.
    pub key: ModelKey,
    /// Its counters.
    pub meta: VersionMeta,
    /// Raw batches kept while warming up, with their sequence numbers, in
    /// order.
    pub raw_batches: Vec<(u64, Batch)>,
    /// Window parts by window name.
    pub windows: BTreeMap<String, StoredWindow>,
    /// Its reference, once formed.
    pub reference: Option<Reference>,
    /// Its rule states by rule name.
    pub rules: BTreeMap<String, Tracker>,
}

/// One undelivered webhook event for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The event id; the same on every attempt.
    pub id: String,
    /// When the event was created, ms since the epoch.
    pub created_ms: i64,
    /// Attempts made so far.
    pub attempts: u32,
    /// Earliest time of the next attempt, ms since the epoch.
    pub next_attempt_ms: i64,
    /// The request body, rendered for the target's format.
    pub body: Vec<u8>,
}

/// The typed store: keys, encodings and failure tracking over a
/// [`Backend`]. Cheap to clone; clones share the backend.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
    backend: Arc<dyn Backend>,
    /// Set by a failed write or flush; cleared by [`Store::recover`].
    failed: Arc<AtomicBool>,
    /// Cancelled when [`Store::recover`] finds the backend stuck
    /// ([`Error::Wedged`]); never reset.
    wedged: CancellationToken,
    /// Key prefixes of superseded per-batch deltas (of buckets stored whole
    /// or removed), deleted a few at a time by later commits.
    purge: Arc<Mutex<VecDeque<Vec<u8>>>>,
    /// Files of closed buckets' whole states (see the module
    /// documentation); `None` reads them from the backend.
    spill: Option<Arc<SpillDir>>,
    /// Writes applied since the store was opened, and how many of them the
    /// last durable mark covers: an idle store records no new mark.
    writes: Arc<AtomicU64>,
    marked: Arc<AtomicU64>,
    /// Bytes of keys and values applied since sled last recorded a snapshot
    /// of its log (at opening): about what the next opening replays.
    unsnapshotted: Arc<AtomicU64>,
}

/// The `spill/` directory: a file per closed bucket's whole state.
#[derive(Debug)]
struct SpillDir {
    root: PathBuf,
    /// Bytes of the files written and not deleted since the last load.
    bytes: AtomicU64,
}

impl SpillDir {
    /// The directory of one window of one version (its names hashed: they
    /// may hold characters a file name cannot).
    fn window_dir(&self, key: &ModelKey, window: &str) -> PathBuf {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let hex: String = Sha256::digest(version_prefix(key))
            .iter()
            .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]])
            .map(char::from)
            .collect();
        self.root.join(hex).join(window)
    }

    /// Counts `added` bytes written and `removed` deleted.
    fn account(&self, added: u64, removed: u64) {
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(removed) + added)
            });
    }

    fn file(&self, key: &ModelKey, window: &str, bucket: u64) -> PathBuf {
        self.window_dir(key, window).join(bucket.to_string())
    }

    /// Writes one file, under a temporary name renamed over the old one
    /// so that the evaluator never reads half of it; on failure the file is
    /// gone and reads fall back to sled.
    fn write(&self, path: &Path, bytes: &[u8]) {
        let old = std::fs::metadata(path).map_or(0, |m| m.len());
        let tmp = path.with_extension("tmp");
        // The directories exist for all but a window's first file: create
        // them only when the write says so, not on every close.
        let written = match std::fs::write(&tmp, bytes) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&tmp, bytes)),
            other => other,
        }
        .and_then(|()| std::fs::rename(&tmp, path));
        match written {
            Ok(()) => self.account(bytes.len() as u64, old),
            Err(error) => {
                self.account(0, old);
                let _ = std::fs::remove_file(&tmp);
                let _ = std::fs::remove_file(path);
                tracing::debug!(path = %path.display(), error = %error, "Writing a spilled bucket failed; it is read from sled");
            }
        }
    }

    fn remove(&self, path: &Path) {
        if let Ok(m) = std::fs::metadata(path) {
            if std::fs::remove_file(path).is_ok() {
                self.account(0, m.len());
            }
        }
    }

    /// Deletes a directory of files (a window's, a version's, or all).
    fn remove_dir(&self, dir: &Path) {
        let size = dir_size(dir);
        if std::fs::remove_dir_all(dir).is_ok() {
            self.account(0, size);
        }
    }
}

/// Bytes of the files under `dir`.
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

impl Store {
    /// Opens (or creates) the sled store and checks its schema version.
    ///
    /// # Errors
    /// As [`SledBackend::open`].
    pub fn open(cfg: &StoreConfig) -> Result<Self, Error> {
        let mut store = Self::with_backend(cfg.path.clone(), Arc::new(SledBackend::open(cfg)?));
        store.spill = Some(Arc::new(SpillDir {
            root: cfg.path.join("spill"),
            bytes: AtomicU64::new(0),
        }));
        Ok(store)
    }

    /// A store over any backend, reading closed buckets back from it (no
    /// `spill/` directory).
    pub fn with_backend(path: PathBuf, backend: Arc<dyn Backend>) -> Self {
        Self {
            path,
            backend,
            failed: Arc::new(AtomicBool::new(false)),
            wedged: CancellationToken::new(),
            purge: Arc::default(),
            spill: None,
            writes: Arc::default(),
            marked: Arc::default(),
            unsnapshotted: Arc::default(),
        }
    }

    /// Opens the store and reads everything back, turning a panic inside
    /// sled (which some corrupt files cause) into [`Error::Panicked`].
    ///
    /// # Errors
    /// As [`Store::open`] and [`Store::load`].
    pub fn open_and_load(cfg: &StoreConfig) -> Result<(Self, Vec<StoredVersion>), Error> {
        let cfg2 = cfg.clone();
        let res = std::panic::catch_unwind(move || -> Result<_, Error> {
            let store = Self::open(&cfg2)?;
            let loaded = store.load()?;
            Ok((store, loaded))
        });
        match res {
            Ok(r) => r,
            Err(panic) => Err(Error::Panicked {
                path: cfg.path.clone(),
                message: panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into()),
            }),
        }
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True after a failed write or flush, until [`Store::recover`].
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// The error that keeps the store from ever being written again in this
    /// process ([`Error::Wedged`]), if any.
    pub fn wedged(&self) -> Option<Error> {
        self.wedged.is_cancelled().then(|| Error::Wedged {
            path: self.path.clone(),
        })
    }

    /// Resolves once the store is stuck ([`Store::wedged`]): the daemon
    /// then shuts down, so that its supervisor restarts it.
    pub fn until_wedged(&self) -> WaitForCancellationFutureOwned {
        self.wedged.clone().cancelled_owned()
    }

    /// Reopens the backend after a failure and reads everything back.
    ///
    /// # Errors
    /// The reopen's or the load's error; the store stays failed.
    pub fn recover(&self) -> Result<Vec<StoredVersion>, Error> {
        if let Err(error) = self.backend.reopen() {
            if matches!(error, Error::Wedged { .. }) {
                self.wedged.cancel();
            }
            return Err(error);
        }
        self.unsnapshotted.store(0, Ordering::Relaxed);
        let loaded = self.load()?;
        self.failed.store(false, Ordering::Release);
        Ok(loaded)
    }

    fn apply(&self, tree: Tree, writes: Vec<Write>) -> Result<(), Error> {
        if let Some(error) = self.wedged() {
            return Err(error);
        }
        if self.is_failed() {
            return Err(Error::Failed("an earlier write failed".into()));
        }
        let bytes: usize = writes
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        self.backend
            .apply(tree, writes)
            .inspect(|()| {
                self.writes.fetch_add(1, Ordering::AcqRel);
                self.unsnapshotted
                    .fetch_add(bytes as u64, Ordering::Relaxed);
            })
            .inspect_err(|_| {
                self.failed.store(true, Ordering::Release);
            })
    }

    /// Writes what one ingested batch changed, atomically: its window
    /// deltas, closed or pruned buckets, buckets that left their windows and
    /// the version's counters (the commit point). Not durable until
    /// [`Store::flush`].
    ///
    /// # Errors
    /// [`Error::Io`] when the write fails.
    pub fn commit(&self, key: &ModelKey, c: &Commit) -> Result<(), Error> {
        let mut writes: Vec<Write> = Vec::with_capacity(c.deltas.len() + 1);
        for (window, bucket, part, delta) in &c.deltas {
            let base = window_key(REGION_DELTA, key, window, *bucket, *part);
            push_chunks(&mut writes, &base, &postcard_bytes(delta));
        }
        // A closed bucket pruned to half is stored again without the rows
        // it dropped; when its whole state cannot be read, its threshold is
        // stored instead.
        let mut rewritten = Vec::new();
        let mut taus: Vec<(&String, u64, u64)> =
            c.taus.iter().map(|(w, b, t)| (w, *b, *t)).collect();
        for (window, bucket, tau) in &c.rewrites {
            match self.read_whole(key, window, *bucket) {
                Ok(Some(mut whole)) => {
                    whole.prune(*tau);
                    rewritten.push((window, *bucket, whole));
                }
                _ => taus.push((window, *bucket, *tau)),
            }
        }
        for (window, bucket, tau) in taus {
            writes.push((
                window_key(REGION_TAU, key, window, bucket, TAU),
                Some(tau.to_be_bytes().to_vec()),
            ));
        }
        // A whole state is the bucket's full content: its threshold goes,
        // and its deltas, which `load` then ignores, are deleted later, a
        // few per commit (a closing bucket of a busy window has thousands;
        // deleting them here stalled ingest for the better part of a
        // second). A removal deletes the whole state and threshold now, the
        // deltas later; `load` ignores deltas of any bucket but the newest.
        let mut purge = Vec::new();
        let mut spills = Vec::new();
        let wholes = c
            .wholes
            .iter()
            .map(|(w, b, whole)| (w, *b, whole))
            .chain(rewritten.iter().map(|(w, b, whole)| (*w, *b, whole)));
        for (window, bucket, whole) in wholes {
            forget_parts(key, window, bucket, &mut writes, &mut purge);
            let base = window_key(REGION_WHOLE, key, window, bucket, WHOLE);
            let bytes = postcard_bytes(whole);
            let n = push_chunks(&mut writes, &base, &bytes);
            // Chunks of an earlier whole state of this bucket (stored again
            // after the clock went back, or removed and not yet purged)
            // beyond the new one's would read as its continuation.
            lock(&self.purge).retain(|p| !base.starts_with(p));
            for k in self.backend.keys(Tree::Windows, &base, usize::MAX)? {
                if chunk_number(&k).is_none_or(|i| i >= n) {
                    writes.push((k, None));
                }
            }
            spills.push((window, bucket, bytes));
        }
        for (window, bucket) in &c.removed {
            forget_parts(key, window, *bucket, &mut writes, &mut purge);
            let base = window_key(REGION_WHOLE, key, window, *bucket, WHOLE);
            writes.push((chunk_key(&base, 0), None));
            purge.push(bucket_prefix(REGION_WHOLE, key, window, *bucket));
        }
        writes.push((meta_key(key), Some(postcard_bytes(&c.meta))));
        self.purge_some(&mut writes)?;
        self.apply(Tree::Windows, writes)?;
        lock(&self.purge).extend(purge);
        if let Some(spill) = &self.spill {
            for (window, bucket, bytes) in spills {
                spill.write(&spill.file(key, window, bucket), &bytes);
            }
            for (window, bucket) in &c.removed {
                spill.remove(&spill.file(key, window, *bucket));
            }
        }
        Ok(())
    }

    /// The whole state a closed bucket was stored with, for the evaluator
    /// (windows keep closed buckets' sampled values here only): from its
    /// file in `spill/`, else from sled. `None` when it is gone or going:
    /// deleted, or its chunks not consecutive from the first (a removal or
    /// a rewrite under way).
    ///
    /// # Errors
    /// [`Error::Io`] on a read failure, [`Error::Corrupt`] when the chunks
    /// do not decode.
    pub fn read_whole(
        &self,
        key: &ModelKey,
        window: &str,
        bucket: u64,
    ) -> Result<Option<Bucket>, Error> {
        if let Some(spill) = &self.spill {
            if let Ok(bytes) = std::fs::read(spill.file(key, window, bucket)) {
                if let Ok(b) = postcard::from_bytes(&bytes) {
                    return Ok(Some(b));
                }
            }
        }
        let base = window_key(REGION_WHOLE, key, window, bucket, WHOLE);
        let mut bytes = Vec::new();
        let mut next = 0u32;
        let mut whole = true;
        self.backend.scan(Tree::Windows, &base, &mut |k, v| {
            if whole && k.len() == base.len() + 4 && chunk_number(k) == Some(next) {
                next += 1;
                bytes.extend_from_slice(v);
            } else {
                whole = false;
            }
            Ok(())
        })?;
        if !whole || next == 0 {
            return Ok(None);
        }
        postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|_| Error::Corrupt { tree: "windows" })
    }

    /// Adds deletions of superseded deltas to `writes`, up to
    /// [`purge_budget`] of the keys it already holds.
    fn purge_some(&self, writes: &mut Vec<Write>) -> Result<(), Error> {
        let mut budget = purge_budget(writes.len());
        let mut queue = lock(&self.purge);
        while budget > 0 {
            let Some(prefix) = queue.front() else {
                break;
            };
            let keys = self.backend.keys(Tree::Windows, prefix, budget)?;
            if keys.len() < budget {
                queue.pop_front();
            }
            budget -= keys.len();
            writes.extend(keys.into_iter().map(|k| (k, None)));
        }
        Ok(())
    }

    /// Superseded deltas still waiting to be deleted, as key prefixes (one
    /// per bucket).
    #[cfg(test)]
    pub(crate) fn purge_pending(&self) -> usize {
        lock(&self.purge).len()
    }

    /// Stores a raw batch of a version still warming up.
    ///
    /// # Errors
    /// [`Error::Io`] when the write fails.
    pub fn put_raw_batch(&self, key: &ModelKey, seq: u64, batch: &Batch) -> Result<(), Error> {
        let mut k = version_prefix(key);
        k.extend_from_slice(&seq.to_be_bytes());
        self.apply(Tree::Batches, vec![(k, Some(encode_batch(batch)))])
    }

    /// Deletes every raw batch of `key`.
    ///
    /// # Errors
    /// [`Error::Io`] when the write fails.
    pub fn delete_raw_batches(&self, key: &ModelKey) -> Result<(), Error> {
        self.delete_prefixes(Tree::Batches, &[version_prefix(key)])
    }

    /// Deletes every key under any of `prefixes`, in one write.
    fn delete_prefixes(&self, tree: Tree, prefixes: &[Vec<u8>]) -> Result<(), Error> {
        let mut writes = Vec::new();
        for prefix in prefixes {
            self.backend.scan(tree, prefix, &mut |k, _| {
                writes.push((k.to_vec(), None));
                Ok(())
            })?;
        }
        if writes.is_empty() {
            return Ok(());
        }
        self.apply(tree, writes)
    }

    /// Deletes every bucket of `key`'s window `window`, or of all its
    /// windows when `None`.
    ///
    /// # Errors
    /// [`Error::Io`] when the write fails.
    pub fn delete_windows(&self, key: &ModelKey, window: Option<&str>) -> Result<(), Error> {
        let prefixes = [REGION_WHOLE, REGION_TAU, REGION_DELTA].map(|region| {
            let mut prefix = region_prefix(region, key);
            if let Some(w) = window {
                prefix.extend_from_slice(w.as_bytes());
                prefix.push(0);
            }
            prefix
        });
        self.delete_prefixes(Tree::Windows, &prefixes)?;
        // Deleted above; a queued prefix would otherwise delete a new
        // bucket of the same number later.
        lock(&self.purge).retain(|p| !prefixes.iter().any(|x| p.starts_with(x)));
        if let Some(spill) = &self.spill {
            let dir = spill.window_dir(key, window.unwrap_or(""));
            spill.remove_dir(&dir);
        }
        Ok(())
    }

    /// Deletes every stored part of buckets that left their windows while
    /// driftd was down (found at restore, so no commit reported them), and
    /// with them every superseded delta of the version still waiting to be
    /// deleted: `load` tells those from live data only because a newer
    /// bucket exists, which may be one of the buckets deleted here.
    ///
    /// # Errors
    /// [`Error::Io`] when the write fails.
    pub fn forget_buckets(&self, key: &ModelKey, buckets: &[(String, u64)]) -> Result<(), Error> {
        if buckets.is_empty() {
            return Ok(());
        }
        let mut prefixes: Vec<Vec<u8>> = buckets
            .iter()
            .flat_map(|(window, id)| {
                [REGION_WHOLE, REGION_TAU, REGION_DELTA]
                    .map(|region| bucket_prefix(region, key, window, *id))
            })
            .collect();
        let version = [REGION_WHOLE, REGION_DELTA].map(|region| region_prefix(region, key));
        lock(&self.purge).retain(|p| {
            let mine = version.iter().any(|v| p.starts_with(v));
            if mine {
                prefixes.push(p.clone());
            }
            !mine
        });
        self.delete_prefixes(Tree::Windows, &prefixes)?;
        if let Some(spill) = &self.spill {
            for (window, id) in buckets {
                spill.remove(&spill.file(key, window, *id));
            }
        }
        Ok(())
    }

    /// Replaces the reference of `key`. Not durable until [`Store::flush`].
    ///
    /// # Errors
    /// [`Error::Io`] when the write fails.
    pub fn put_reference(&self, key: &ModelKey, r: &Reference) -> Result<(), Error> {
        self.apply(
            Tree::References,
            vec![(version_prefix(key), Some(postcard_bytes(r)))],
        )
    }

    /// Writes the state of rule `rule` of `key`. Not durable until
    /// [`Store::flush`].
    ///
    /// # Errors
    /// [`Error::Io`] when the write fails.
    pub fn put_rule(&self, key: &ModelKey, rule: &str, t: &Tracker) -> Result<(), Error> {
        let mut w = Vec::with_capacity(20);
        w.extend_from_slice(&t.consecutive.to_be_bytes());
        w.extend_from_slice(&t.clear.to_be_bytes());
        match t.firing_since_ms {
            Some(ms) => {
                w.push(1);
                w.extend_from_slice(&ms.to_be_bytes());
            }
            None => w.push(0),
        }
        let mut k = version_prefix(key);
        k.extend_from_slice(rule.as_bytes());
        self.apply(Tree::Rules, vec![(k, Some(w))])
    }

    /// Adds or replaces an outbox entry of `target`. Not durable until
    /// [`Store::flush`].
    ///
    /// # Errors
    /// [`Error::Io`] when the write fails.
    pub fn outbox_put(&self, target: &str, e: &OutboxEntry) -> Result<(), Error> {
        let mut w = Writer(Vec::with_capacity(32 + e.body.len()));
        w.u64(e.created_ms as u64);
        w.u32(e.attempts);
        w.u64(e.next_attempt_ms as u64);
        w.0.extend_from_slice(&e.body);
        self.apply(Tree::Outbox, vec![(outbox_key(target, &e.id), Some(w.0))])
    }

    /// Removes an outbox entry.
    ///
    /// # Errors
    /// [`Error::Io`] when the write fails.
    pub fn outbox_delete(&self, target: &str, id: &str) -> Result<(), Error> {
        self.apply(Tree::Outbox, vec![(outbox_key(target, id), None)])
    }

    /// Every outbox entry of `target`, or of every target when `None`, as
    /// (target, entry).
    ///
    /// # Errors
    /// [`Error::Io`] on a read failure, [`Error::Corrupt`] on an entry that
    /// does not decode.
    pub fn outbox_list(&self, target: Option<&str>) -> Result<Vec<(String, OutboxEntry)>, Error> {
        let prefix = target.map(|t| outbox_key(t, "")).unwrap_or_default();
        let mut out = Vec::new();
        self.backend.scan(Tree::Outbox, &prefix, &mut |k, v| {
            let corrupt = || Error::Corrupt { tree: "outbox" };
            let i = k.iter().position(|&b| b == 0).ok_or_else(corrupt)?;
            let target = std::str::from_utf8(&k[..i]).map_err(|_| corrupt())?;
            let id = std::str::from_utf8(&k[i + 1..]).map_err(|_| corrupt())?;
            let mut r = Reader(v);
            let (Some(created), Some(attempts), Some(next)) = (r.u64(), r.u32(), r.u64()) else {
                return Err(corrupt());
            };
            out.push((
                target.to_string(),
                OutboxEntry {
                    id: id.to_string(),
                    created_ms: created as i64,
                    attempts,
                    next_attempt_ms: next as i64,
                    body: r.0.to_vec(),
                },
            ));
            Ok(())
        })?;
        Ok(out)
    }

    /// Reads a small metadata value.
    ///
    /// # Errors
    /// [`Error::Io`] on a read failure.
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.backend.get(Tree::Meta, format!("m/{key}").as_bytes())
    }

    /// Writes a small metadata value. Not durable until [`Store::flush`].
    ///
    /// # Errors
    /// [`Error::Io`] when the write fails.
    pub fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        self.apply(
            Tree::Meta,
            vec![(format!("m/{key}").into_bytes(), Some(value.to_vec()))],
        )
    }

    /// Makes every earlier write durable against a process crash (sled's
    /// flush; see ARCHITECTURE.md for what it does not cover). Returns how
    /// long it took.
    ///
    /// # Errors
    /// [`Error::Io`] when the flush fails; the store then refuses writes
    /// until [`Store::recover`].
    pub async fn flush(&self) -> Result<Duration, Error> {
        if let Some(error) = self.wedged() {
            return Err(error);
        }
        if self.is_failed() {
            return Err(Error::Failed("an earlier write failed".into()));
        }
        let backend = self.backend.clone();
        let flush = tokio::task::spawn_blocking(move || backend.flush());
        let res = match tokio::time::timeout(FLUSH_TIMEOUT, flush).await {
            Ok(done) => {
                done.unwrap_or_else(|e| Err(Error::Failed(format!("flush task failed: {e}"))))
            }
            Err(_) => Err(Error::Failed(format!(
                "the flush did not finish within {FLUSH_TIMEOUT:?}"
            ))),
        };
        if res.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        res
    }

    /// Records the durable mark (see [`Backend::mark_durable`]); does
    /// nothing while the store is failed, or when nothing was written since
    /// the last mark (whose record the content still reaches).
    ///
    /// # Errors
    /// The backend's, when the mark could not be written or made durable.
    pub fn mark_durable(&self) -> Result<(), Error> {
        if self.is_failed() || self.wedged().is_some() {
            return Ok(());
        }
        // The mark flushes everything written before it begins.
        let writes = self.writes.load(Ordering::Acquire);
        if writes == self.marked.load(Ordering::Acquire) {
            return Ok(());
        }
        self.backend.mark_durable()?;
        self.marked.store(writes, Ordering::Release);
        Ok(())
    }

    /// Closes and reopens the backend when anything, and at least
    /// `min_bytes`, was written since it was opened, so that sled records a
    /// snapshot of its log. sled 0.34 records one only while it opens, and
    /// otherwise replays at the next start everything written since this
    /// one (about 1.1 s after an hour of the sizing load, BENCHMARKS.md).
    /// For the end of a clean shutdown, after the last flush and durable
    /// mark; blocks for about that replay (0.5 s after that hour). Returns
    /// whether it reopened; a failed or wedged store is left as it is.
    ///
    /// # Errors
    /// The backend's, when closing or opening again failed.
    pub fn checkpoint(&self, min_bytes: u64) -> Result<bool, Error> {
        if self.is_failed() || self.wedged().is_some() {
            return Ok(false);
        }
        let written = self.unsnapshotted.load(Ordering::Relaxed);
        if written == 0 || written < min_bytes {
            return Ok(false);
        }
        self.backend.reopen()?;
        self.unsnapshotted.store(0, Ordering::Relaxed);
        Ok(true)
    }

    /// Records the durable mark every [`MARK_EVERY`] until `cancel`, on a
    /// blocking thread; a failure is logged and retried at the next tick.
    pub async fn keep_marking(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(MARK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let store = self.clone();
            if let Ok(Err(error)) = tokio::task::spawn_blocking(move || store.mark_durable()).await
            {
                tracing::warn!(error = %error, "Recording the store's durable mark failed");
            }
        }
    }

    /// [`Store::flush`] for callers outside the runtime (start-up).
    ///
    /// # Errors
    /// As [`Store::flush`].
    pub fn flush_blocking(&self) -> Result<Duration, Error> {
        self.backend.flush().inspect_err(|_| {
            self.failed.store(true, Ordering::Release);
        })
    }

    /// Bytes on disk.
    ///
    /// # Errors
    /// [`Error::Io`] when the size cannot be read.
    pub fn size_on_disk(&self) -> Result<u64, Error> {
        let spilled = self
            .spill
            .as_ref()
            .map_or(0, |s| s.bytes.load(Ordering::Relaxed));
        Ok(self.backend.size_on_disk()? + spilled)
    }

    /// Reads everything back, for the engine's restore at start-up. The
    /// whole states of a window's buckets other than its newest come back
    /// without their sampled values (what a restored window holds; see
    /// [`Store::read_whole`]), and `spill/` is written again from sled.
    ///
    /// # Errors
    /// [`Error::Io`] on a read failure, [`Error::Corrupt`] on a value that
    /// does not decode.
    pub fn load(&self) -> Result<Vec<StoredVersion>, Error> {
        let mut versions: BTreeMap<ModelKey, StoredVersion> = BTreeMap::new();
        self.backend.scan(Tree::Batches, b"", &mut |k, v| {
            let corrupt = || Error::Corrupt { tree: "batches" };
            let (key, seq) = decode_version_prefix(k).ok_or_else(corrupt)?;
            let seq = u64::from_be_bytes(seq.try_into().map_err(|_| corrupt())?);
            let b = decode_batch(v, key.clone()).ok_or_else(corrupt)?;
            version_entry(&mut versions, key).raw_batches.push((seq, b));
            Ok(())
        })?;
        // `spill/` is written again from what sled holds, as the scan
        // reads each whole state.
        if let Some(spill) = &self.spill {
            spill.remove_dir(&spill.root);
            spill.bytes.store(0, Ordering::Relaxed);
        }
        let mut chunks = Chunks {
            spill: self.spill.as_deref(),
            ..Chunks::default()
        };
        self.backend.scan(Tree::Windows, b"", &mut |k, v| {
            let corrupt = || Error::Corrupt { tree: "windows" };
            let (&region, rest) = k.split_first().ok_or_else(corrupt)?;
            let (key, rest) = decode_version_prefix(rest).ok_or_else(corrupt)?;
            if region == REGION_META {
                if !rest.is_empty() {
                    return Err(corrupt());
                }
                version_entry(&mut versions, key).meta =
                    postcard::from_bytes(v).map_err(|_| corrupt())?;
                return Ok(());
            }
            let i = rest.iter().position(|&b| b == 0).ok_or_else(corrupt)?;
            let window = std::str::from_utf8(&rest[..i]).map_err(|_| corrupt())?;
            let ints = &rest[i + 1..];
            let int = |at: usize| {
                ints.get(at..at + 8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(corrupt)
            };
            let (bucket, part) = (int(0)?, int(8)?);
            let id = PartId {
                key,
                window: window.to_string(),
                bucket,
                region,
            };
            match (region, part, ints.len()) {
                (REGION_TAU, TAU, 16) => {
                    id.entry(&mut versions).tau =
                        Some(u64::from_be_bytes(v.try_into().map_err(|_| corrupt())?));
                }
                (REGION_WHOLE, WHOLE, 20) | (REGION_DELTA, 0..TAU, 20) => {
                    let n = chunk_number(k).ok_or_else(corrupt)?;
                    chunks.add(&mut versions, &k[..k.len() - 4], n, v, id, part)?;
                }
                _ => return Err(corrupt()),
            }
            Ok(())
        })?;
        chunks.finish(&mut versions)?;
        self.backend.scan(Tree::References, b"", &mut |k, v| {
            let corrupt = || Error::Corrupt { tree: "references" };
            let (key, _) = decode_version_prefix(k).ok_or_else(corrupt)?;
            let r: Reference = postcard::from_bytes(v).map_err(|_| corrupt())?;
            version_entry(&mut versions, key).reference = Some(r);
            Ok(())
        })?;
        self.backend.scan(Tree::Rules, b"", &mut |k, v| {
            let corrupt = || Error::Corrupt { tree: "rules" };
            let (key, name) = decode_version_prefix(k).ok_or_else(corrupt)?;
            let name = std::str::from_utf8(name)
                .map_err(|_| corrupt())?
                .to_string();
            let mut r = Reader(v);
            let consecutive = r.u32().ok_or_else(corrupt)?;
            let clear = r.u32().ok_or_else(corrupt)?;
            let firing_since_ms = match r.u8() {
                Some(1) => Some(r.i64().ok_or_else(corrupt)?),
                Some(0) => None,
                _ => return Err(corrupt()),
            };
            version_entry(&mut versions, key).rules.insert(
                name,
                Tracker {
                    consecutive,
                    clear,
                    firing_since_ms,
                },
            );
            Ok(())
        })?;
        // Only what the commit point covers counts: a crash may leave
        // writes of a batch whose counters never landed.
        let mut out: Vec<StoredVersion> = versions.into_values().collect();
        let mut purge = lock(&self.purge);
        purge.clear();
        for v in &mut out {
            let done = v.meta.records_ingested;
            for (window, buckets) in &mut v.windows {
                for b in buckets.values_mut() {
                    b.deltas.retain(|(part, _)| *part < done);
                }
                // A whole state is the bucket's full content; deltas of a
                // bucket without one count only in the newest bucket (the
                // others were removed, their deltas not yet deleted).
                let newest = buckets.keys().next_back().copied();
                buckets.retain(|&id, b| {
                    let superseded = b.whole.is_some() || Some(id) != newest;
                    if superseded && !b.deltas.is_empty() {
                        b.deltas.clear();
                        purge.push_back(bucket_prefix(REGION_DELTA, &v.key, window, id));
                    }
                    if let Some(whole) = b.whole.as_mut().filter(|_| Some(id) != newest) {
                        whole.values = BTreeMap::new();
                    }
                    b.whole.is_some() || Some(id) == newest
                });
            }
            let next = v.meta.next_raw_seq;
            v.raw_batches.retain(|(seq, _)| *seq < next);
        }
        // A value whose first chunk is gone was being deleted (a removed
        // whole state, a superseded delta); its other chunks go the same
        // way. Deltas of a bucket still read as live stay (the bucket is
        // an expired one that the engine forgets after the load).
        for id in chunks.partial {
            let prefix = bucket_prefix(id.region, &id.key, &id.window, id.bucket);
            let live = id.region == REGION_DELTA
                && out.iter().any(|v| {
                    v.key == id.key
                        && v.windows
                            .get(&id.window)
                            .is_some_and(|w| w.get(&id.bucket).is_some_and(|b| b.whole.is_none()))
                });
            if !live && !purge.contains(&prefix) {
                purge.push_back(prefix);
            }
        }
        Ok(out)
    }
}

fn postcard_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising plain data into a Vec cannot fail.
    postcard::to_stdvec(v).unwrap_or_default()
}

fn version_entry(
    versions: &mut BTreeMap<ModelKey, StoredVersion>,
    key: ModelKey,
) -> &mut StoredVersion {
    versions
        .entry(key.clone())
        .or_insert_with(|| StoredVersion {
            key,
            ..StoredVersion::default()
        })
}

fn outbox_key(target: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(target.len() + id.len() + 1);
    k.extend_from_slice(target.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn version_prefix(key: &ModelKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.model.len() + key.version.len() + 10);
    k.extend_from_slice(key.model.as_bytes());
    k.push(0);
    k.extend_from_slice(key.version.as_bytes());
    k.push(0);
    k
}

/// How many superseded keys a commit of `keys` writes (insertions and
/// deletions) deletes besides: twice as many, at least 8 and at most 64.
/// Nearly every key a commit writes (its deltas, and a whole state's
/// chunks after the first) is deleted once, later, through the purge
/// queue, so deletions keep pace with the keys written. A flat 64
/// made one commit in ~30 take a millisecond more than the rest, the
/// largest part of the unary acknowledgement tail in steady state
/// (BENCHMARKS.md); the usual commit (a delta per window and the counters)
/// now deletes up to 8.
fn purge_budget(keys: usize) -> usize {
    (2 * keys).clamp(8, 64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Forgets what `writes` was about to write for a bucket, deletes its
/// threshold and queues its stored deltas in `purge`.
fn forget_parts(
    key: &ModelKey,
    window: &str,
    bucket: u64,
    writes: &mut Vec<Write>,
    purge: &mut Vec<Vec<u8>>,
) {
    let prefixes = [REGION_WHOLE, REGION_TAU, REGION_DELTA]
        .map(|region| bucket_prefix(region, key, window, bucket));
    writes.retain(|(k, _)| !prefixes.iter().any(|p| k.starts_with(p)));
    writes.push((window_key(REGION_TAU, key, window, bucket, TAU), None));
    let [_, _, deltas] = prefixes;
    purge.push(deltas);
}

/// The key prefix of one bucket's parts in `region`.
fn bucket_prefix(region: u8, key: &ModelKey, window: &str, bucket: u64) -> Vec<u8> {
    let mut k = window_key(region, key, window, bucket, 0);
    k.truncate(k.len() - 8);
    k
}

/// The first bytes of every key of `key` in one region of the `windows`
/// tree.
fn region_prefix(region: u8, key: &ModelKey) -> Vec<u8> {
    let mut k = vec![region];
    k.extend_from_slice(&version_prefix(key));
    k
}

fn window_key(region: u8, key: &ModelKey, window: &str, bucket: u64, part: u64) -> Vec<u8> {
    let mut k = region_prefix(region, key);
    k.extend_from_slice(window.as_bytes());
    k.push(0);
    k.extend_from_slice(&bucket.to_be_bytes());
    k.extend_from_slice(&part.to_be_bytes());
    k
}

fn meta_key(key: &ModelKey) -> Vec<u8> {
    region_prefix(REGION_META, key)
}

/// The key of chunk `n` of the value stored under `base`.
fn chunk_key(base: &[u8], n: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(base.len() + 4);
    k.extend_from_slice(base);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// The chunk number at the end of a chunked value's key.
fn chunk_number(k: &[u8]) -> Option<u32> {
    let at = k.len().checked_sub(4)?;
    k[at..].try_into().ok().map(u32::from_be_bytes)
}

/// Adds the writes that store `value` under `base` in chunks of at most
/// [`CHUNK_BYTES`]; returns how many.
fn push_chunks(writes: &mut Vec<Write>, base: &[u8], value: &[u8]) -> u32 {
    let mut n = 0;
    for piece in value.chunks(CHUNK_BYTES) {
        writes.push((chunk_key(base, n), Some(piece.to_vec())));
        n += 1;
    }
    if n == 0 {
        writes.push((chunk_key(base, 0), Some(Vec::new())));
        n = 1;
    }
    n
}

/// Which bucket part a chunked value belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PartId {
    key: ModelKey,
    window: String,
    bucket: u64,
    region: u8,
}

impl PartId {
    fn entry<'a>(
        &self,
        versions: &'a mut BTreeMap<ModelKey, StoredVersion>,
    ) -> &'a mut StoredBucket {
        version_entry(versions, self.key.clone())
            .windows
            .entry(self.window.clone())
            .or_default()
            .entry(self.bucket)
            .or_default()
    }
}

/// Reassembles chunked values during `load`'s scan, which visits a
/// value's chunks in order, one value after the other. Writes each whole
/// state to `spill/`, and keeps the sampled values of only the last whole
/// state of each window read so far: a restored window holds values only
/// for its newest bucket, and the load held every window's closed buckets
/// whole at once (~330 MiB RSS on an hour's store of 10 models).
#[derive(Default)]
struct Chunks<'a> {
    /// The value being read.
    current: Option<Reading>,
    /// Values found without their first chunk (being deleted).
    partial: std::collections::BTreeSet<PartId>,
    spill: Option<&'a SpillDir>,
    /// The last whole state read.
    last_whole: Option<PartId>,
}

/// A chunked value being read back.
struct Reading {
    /// Its key without the chunk number.
    base: Vec<u8>,
    id: PartId,
    part: u64,
    next: u32,
    bytes: Vec<u8>,
}

impl Chunks<'_> {
    fn add(
        &mut self,
        versions: &mut BTreeMap<ModelKey, StoredVersion>,
        base: &[u8],
        n: u32,
        bytes: &[u8],
        id: PartId,
        part: u64,
    ) -> Result<(), Error> {
        if let Some(r) = self.current.as_mut().filter(|r| r.base == base) {
            if n != r.next {
                return Err(Error::Corrupt { tree: "windows" });
            }
            r.next += 1;
            r.bytes.extend_from_slice(bytes);
            return Ok(());
        }
        self.finish(versions)?;
        if n == 0 {
            self.current = Some(Reading {
                base: base.to_vec(),
                id,
                part,
                next: 1,
                bytes: bytes.to_vec(),
            });
        } else {
            self.partial.insert(id);
        }
        Ok(())
    }

    /// Stores the value read so far.
    fn finish(&mut self, versions: &mut BTreeMap<ModelKey, StoredVersion>) -> Result<(), Error> {
        let Some(r) = self.current.take() else {
            return Ok(());
        };
        let bucket: Bucket =
            postcard::from_bytes(&r.bytes).map_err(|_| Error::Corrupt { tree: "windows" })?;
        if r.id.region != REGION_WHOLE {
            r.id.entry(versions).deltas.push((r.part, bucket));
            return Ok(());
        }
        let same_window = |p: &PartId| p.key == r.id.key && p.window == r.id.window;
        if let Some(previous) = self.last_whole.take().filter(same_window) {
            if let Some(whole) = previous.entry(versions).whole.as_mut() {
                whole.values = BTreeMap::new();
            }
        }
        if let Some(spill) = self.spill {
            spill.write(&spill.file(&r.id.key, &r.id.window, r.id.bucket), &r.bytes);
        }
        r.id.entry(versions).whole = Some(bucket);
        self.last_whole = Some(r.id);
        Ok(())
    }
}

fn decode_version_prefix(k: &[u8]) -> Option<(ModelKey, &[u8])> {
    let i = k.iter().position(|&b| b == 0)?;
    let j = i + 1 + k[i + 1..].iter().position(|&b| b == 0)?;
    let model = std::str::from_utf8(&k[..i]).ok()?.to_owned();
    let version = std::str::from_utf8(&k[i + 1..j]).ok()?.to_owned();
    Some((ModelKey { model, version }, &k[j + 1..]))
}

// === encoding ===

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_bits().to_be_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_be_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)?.try_into().ok().map(i64::from_be_bytes)
    }
    fn f64(&mut self) -> Option<f64> {
        self.u64().map(f64::from_bits)
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    /// A count that is about to drive an allocation: refuse counts larger
    /// than the bytes left, so a corrupt value cannot allocate gigabytes.
    fn count(&mut self, min_bytes_each: usize) -> Option<usize> {
        let n = self.u32()? as usize;
        (n.saturating_mul(min_bytes_each) <= self.0.len()).then_some(n)
    }
}

fn role_code(r: Role) -> u8 {
    match r {
        Role::Input => 0,
        Role::Output => 1,
    }
}

fn role_from(c: u8) -> Option<Role> {
    match c {
        0 => Some(Role::Input),
        1 => Some(Role::Output),
        _ => None,
    }
}

fn encode_batch(b: &Batch) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(64 + b.n_rows * 8 * b.columns.len()));
    w.u32(b.n_rows as u32);
    w.u32(b.columns.len() as u32);
    for c in &b.columns {
        w.str(&c.name);
        w.u8(role_code(c.role));
        match &c.values {
            Values::Numeric(v) => {
                w.u8(0);
                for &x in v {
                    w.f64(x);
                }
            }
            Values::Categorical(v) => {
                w.u8(1);
                for x in v {
                    w.str(x);
                }
            }
        }
    }
    w.0
}

fn decode_batch(v: &[u8], key: ModelKey) -> Option<Batch> {
    let mut r = Reader(v);
    let n_rows = r.u32()? as usize;
    let n_cols = r.count(6)?;
    let mut columns = Vec::with_capacity(n_cols);
    for _ in 0..n_cols {
        let name = r.str()?;
        let role = role_from(r.u8()?)?;
        let values = match r.u8()? {
            0 => {
                if n_rows.saturating_mul(8) > r.0.len() {
                    return None;
                }
                Values::Numeric((0..n_rows).map(|_| r.f64()).collect::<Option<_>>()?)
            }
            1 => {
                if n_rows.saturating_mul(4) > r.0.len() {
                    return None;
                }
                Values::Categorical((0..n_rows).map(|_| r.str()).collect::<Option<_>>()?)
            }
            _ => return None,
        };
        columns.push(Column { name, role, values });
    }
    r.0.is_empty().then_some(Batch {
        key,
        columns,
        n_rows,
    })
}

#[cfg(test)]
mod tests;
