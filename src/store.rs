//! Durable state in sled: the batch log that rebuilds windows and warm-up
//! references, compiled references, and rule states. This is the only module
//! that imports sled; everything above it sees [`Store`] and domain types.
//!
//! Layout: a few trees by purpose (`meta`, `batches`, `references`,
//! `rules`), never one tree per model. Keys start with the model version as
//! `model \0 version \0` (names cannot contain NUL), followed by big-endian
//! integers so that sled's byte order is numeric order. Values use a small
//! hand-written binary encoding, versioned by [`SCHEMA_VERSION`].

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    config::StoreConfig,
    domain::{Batch, Column, ModelKey, Role, Values},
    reference::{RawFeature, Source},
    rules::Tracker,
};

/// On-disk format version, checked at open. Bump it whenever an encoding or
/// key layout below changes.
pub const SCHEMA_VERSION: u32 = 2;

const SCHEMA_KEY: &[u8] = b"schema_version";

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
    #[error("store {op} failed")]
    Io {
        /// The operation, e.g. "write batch" or "flush".
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
}

impl Error {
    /// True when the data on disk is unreadable, as opposed to locked by
    /// another process, written by another schema version or an I/O failure
    /// of the moment. Only these are worth quarantining.
    pub fn is_corruption(&self) -> bool {
        match self {
            Error::Corrupt { .. } | Error::Panicked { .. } => true,
            // At open, anything but an OS error (a lock held by another
            // process, a permission) means sled could not make sense of the
            // files: a damaged `conf` surfaces as `Unsupported`.
            Error::Open { source, .. } => !matches!(source, sled::Error::Io(_)),
            Error::Io { source, .. } => matches!(
                source,
                sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)
            ),
            Error::Schema { .. } => false,
        }
    }
}

/// One stored batch of the batch log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBatch {
    /// Per-version sequence number, from 0.
    pub seq: u64,
    /// Records ingested by the version up to and including this batch.
    pub cumulative_records: u64,
    /// The batch.
    pub batch: Batch,
}

/// The persisted raw parts of a reference.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReference {
    /// Where it came from.
    pub source: Source,
    /// Rows it was built from.
    pub records: u64,
    /// Per feature: role and raw values.
    pub features: BTreeMap<String, (Role, RawFeature)>,
}

/// Everything stored about one model version.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredVersion {
    /// The model version.
    pub key: ModelKey,
    /// Retained batches, in sequence order.
    pub batches: Vec<StoredBatch>,
    /// Its reference, once formed.
    pub reference: Option<StoredReference>,
    /// Its rule states by rule name.
    pub rules: BTreeMap<String, Tracker>,
}

/// The sled database and its trees.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    batches: sled::Tree,
    references: sled::Tree,
    rules: sled::Tree,
    outbox: sled::Tree,
    meta: sled::Tree,
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

impl Store {
    /// Opens (or creates) the store and checks its schema version.
    ///
    /// # Errors
    /// [`Error::Open`] when sled cannot open the directory, [`Error::Schema`]
    /// when it was written by an incompatible version.
    pub fn open(cfg: &StoreConfig) -> Result<Self, Error> {
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
        let meta = db.open_tree("meta").map_err(open_err)?;
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
        Ok(Self {
            batches: db.open_tree("batches").map_err(open_err)?,
            references: db.open_tree("references").map_err(open_err)?,
            rules: db.open_tree("rules").map_err(open_err)?,
            outbox: db.open_tree("outbox").map_err(open_err)?,
            meta,
            db,
            path,
        })
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

    /// Writes one batch of the log. Not durable until [`Store::flush`].
    ///
    /// # Errors
    /// [`Error::Io`] when sled refuses the write.
    pub fn put_batch(&self, stored: &StoredBatch) -> Result<(), Error> {
        let key = batch_key(&stored.batch.key, stored.seq);
        let value = encode_batch(stored);
        self.batches
            .insert(key, value)
            .map(|_| ())
            .map_err(|source| Error::Io {
                op: "write batch",
                source,
            })
    }

    /// Deletes batches of `key` with sequence numbers below `before`.
    ///
    /// # Errors
    /// [`Error::Io`] when sled refuses the write.
    pub fn delete_batches_before(&self, key: &ModelKey, before: u64) -> Result<(), Error> {
        let start = batch_key(key, 0);
        let end = batch_key(key, before);
        let mut b = sled::Batch::default();
        for item in self.batches.range(start..end) {
            let (k, _) = item.map_err(|source| Error::Io {
                op: "scan batches",
                source,
            })?;
            b.remove(k);
        }
        self.batches.apply_batch(b).map_err(|source| Error::Io {
            op: "delete batches",
            source,
        })
    }

    /// Replaces the reference of `key`. Not durable until [`Store::flush`].
    ///
    /// # Errors
    /// [`Error::Io`] when sled refuses the write.
    pub fn put_reference(&self, key: &ModelKey, r: &StoredReference) -> Result<(), Error> {
        self.references
            .insert(version_prefix(key), encode_reference(r))
            .map(|_| ())
            .map_err(|source| Error::Io {
                op: "write reference",
                source,
            })
    }

    /// Writes the state of rule `rule` of `key`. Not durable until
    /// [`Store::flush`].
    ///
    /// # Errors
    /// [`Error::Io`] when sled refuses the write.
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
        self.rules
            .insert(k, w)
            .map(|_| ())
            .map_err(|source| Error::Io {
                op: "write rule state",
                source,
            })
    }

    /// Adds or replaces an outbox entry of `target`. Not durable until
    /// [`Store::flush`].
    ///
    /// # Errors
    /// [`Error::Io`] when sled refuses the write.
    pub fn outbox_put(&self, target: &str, e: &OutboxEntry) -> Result<(), Error> {
        let mut w = Writer(Vec::with_capacity(32 + e.body.len()));
        w.u64(e.created_ms as u64);
        w.u32(e.attempts);
        w.u64(e.next_attempt_ms as u64);
        w.0.extend_from_slice(&e.body);
        self.outbox
            .insert(outbox_key(target, &e.id), w.0)
            .map(|_| ())
            .map_err(|source| Error::Io {
                op: "write outbox",
                source,
            })
    }

    /// Removes an outbox entry.
    ///
    /// # Errors
    /// [`Error::Io`] when sled refuses the write.
    pub fn outbox_delete(&self, target: &str, id: &str) -> Result<(), Error> {
        self.outbox
            .remove(outbox_key(target, id))
            .map(|_| ())
            .map_err(|source| Error::Io {
                op: "delete outbox entry",
                source,
            })
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
        for item in self.outbox.scan_prefix(prefix) {
            let (k, v) = item.map_err(|source| Error::Io {
                op: "read outbox",
                source,
            })?;
            let i = k
                .iter()
                .position(|&b| b == 0)
                .ok_or(Error::Corrupt { tree: "outbox" })?;
            let target =
                std::str::from_utf8(&k[..i]).map_err(|_| Error::Corrupt { tree: "outbox" })?;
            let id =
                std::str::from_utf8(&k[i + 1..]).map_err(|_| Error::Corrupt { tree: "outbox" })?;
            let mut r = Reader(&v);
            let (Some(created), Some(attempts), Some(next)) = (r.u64(), r.u32(), r.u64()) else {
                return Err(Error::Corrupt { tree: "outbox" });
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
        }
        Ok(out)
    }

    /// Reads a small metadata value.
    ///
    /// # Errors
    /// [`Error::Io`] on a read failure.
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.meta
            .get(format!("m/{key}"))
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|source| Error::Io {
                op: "read meta",
                source,
            })
    }

    /// Writes a small metadata value. Not durable until [`Store::flush`].
    ///
    /// # Errors
    /// [`Error::Io`] when sled refuses the write.
    pub fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        self.meta
            .insert(format!("m/{key}"), value)
            .map(|_| ())
            .map_err(|source| Error::Io {
                op: "write meta",
                source,
            })
    }

    /// Makes every earlier write durable against a process crash (sled's
    /// flush; see ARCHITECTURE.md for what it does not cover). Returns how
    /// long it took.
    ///
    /// # Errors
    /// [`Error::Io`] when the flush fails; sled then stays broken until
    /// reopened.
    pub async fn flush(&self) -> Result<Duration, Error> {
        let started = Instant::now();
        self.db.flush_async().await.map_err(|source| Error::Io {
            op: "flush",
            source,
        })?;
        Ok(started.elapsed())
    }

    /// Bytes on disk.
    ///
    /// # Errors
    /// [`Error::Io`] when the size cannot be read.
    pub fn size_on_disk(&self) -> Result<u64, Error> {
        self.db.size_on_disk().map_err(|source| Error::Io {
            op: "size on disk",
            source,
        })
    }

    /// Reads everything back, for the engine's restore at start-up.
    ///
    /// # Errors
    /// [`Error::Io`] on a read failure, [`Error::Corrupt`] on a value that
    /// does not decode.
    pub fn load(&self) -> Result<Vec<StoredVersion>, Error> {
        let mut versions: BTreeMap<ModelKey, StoredVersion> = BTreeMap::new();
        let io = |source| Error::Io { op: "load", source };
        for item in self.batches.iter() {
            let (k, v) = item.map_err(io)?;
            let (key, rest) =
                decode_version_prefix(&k).ok_or(Error::Corrupt { tree: "batches" })?;
            let seq = <[u8; 8]>::try_from(rest)
                .map(u64::from_be_bytes)
                .map_err(|_| Error::Corrupt { tree: "batches" })?;
            let stored =
                decode_batch(&v, key.clone(), seq).ok_or(Error::Corrupt { tree: "batches" })?;
            version_entry(&mut versions, key).batches.push(stored);
        }
        for item in self.references.iter() {
            let (k, v) = item.map_err(io)?;
            let (key, _) =
                decode_version_prefix(&k).ok_or(Error::Corrupt { tree: "references" })?;
            let r = decode_reference(&v).ok_or(Error::Corrupt { tree: "references" })?;
            version_entry(&mut versions, key).reference = Some(r);
        }
        for item in self.rules.iter() {
            let (k, v) = item.map_err(io)?;
            let (key, name) = decode_version_prefix(&k).ok_or(Error::Corrupt { tree: "rules" })?;
            let name = std::str::from_utf8(name)
                .map_err(|_| Error::Corrupt { tree: "rules" })?
                .to_string();
            let mut r = Reader(&v);
            let consecutive = r.u32().ok_or(Error::Corrupt { tree: "rules" })?;
            let clear = r.u32().ok_or(Error::Corrupt { tree: "rules" })?;
            let firing_since_ms = match r.u8() {
                Some(1) => Some(r.i64().ok_or(Error::Corrupt { tree: "rules" })?),
                Some(0) => None,
                _ => return Err(Error::Corrupt { tree: "rules" }),
            };
            version_entry(&mut versions, key).rules.insert(
                name,
                Tracker {
                    consecutive,
                    clear,
                    firing_since_ms,
                },
            );
        }
        Ok(versions.into_values().collect())
    }
}

fn version_entry(
    versions: &mut BTreeMap<ModelKey, StoredVersion>,
    key: ModelKey,
) -> &mut StoredVersion {
    versions
        .entry(key.clone())
        .or_insert_with(|| StoredVersion {
            key,
            batches: Vec::new(),
            reference: None,
            rules: BTreeMap::new(),
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

fn batch_key(key: &ModelKey, seq: u64) -> Vec<u8> {
    let mut k = version_prefix(key);
    k.extend_from_slice(&seq.to_be_bytes());
    k
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

fn encode_batch(s: &StoredBatch) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(
        64 + s.batch.n_rows * 8 * s.batch.columns.len(),
    ));
    w.u64(s.cumulative_records);
    w.u32(s.batch.n_rows as u32);
    w.u32(s.batch.columns.len() as u32);
    for c in &s.batch.columns {
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

fn decode_batch(v: &[u8], key: ModelKey, seq: u64) -> Option<StoredBatch> {
    let mut r = Reader(v);
    let cumulative_records = r.u64()?;
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
    r.0.is_empty().then_some(StoredBatch {
        seq,
        cumulative_records,
        batch: Batch {
            key,
            columns,
            n_rows,
        },
    })
}

fn encode_reference(s: &StoredReference) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    w.u8(match s.source {
        Source::Warmup => 0,
        Source::SetReference => 1,
    });
    w.u64(s.records);
    w.u32(s.features.len() as u32);
    for (name, (role, raw)) in &s.features {
        w.str(name);
        w.u8(role_code(*role));
        match raw {
            RawFeature::Numeric { sorted, missing } => {
                w.u8(0);
                w.u64(*missing);
                w.u32(sorted.len() as u32);
                for &x in sorted {
                    w.f64(x);
                }
            }
            RawFeature::Categorical { counts, missing } => {
                w.u8(1);
                w.u64(*missing);
                w.u32(counts.len() as u32);
                for (k, n) in counts {
                    w.str(k);
                    w.u64(*n);
                }
            }
        }
    }
    w.0
}

fn decode_reference(v: &[u8]) -> Option<StoredReference> {
    let mut r = Reader(v);
    let source = match r.u8()? {
        0 => Source::Warmup,
        1 => Source::SetReference,
        _ => return None,
    };
    let records = r.u64()?;
    let n = r.count(6)?;
    let mut features = BTreeMap::new();
    for _ in 0..n {
        let name = r.str()?;
        let role = role_from(r.u8()?)?;
        let raw = match r.u8()? {
            0 => {
                let missing = r.u64()?;
                let len = r.count(8)?;
                let sorted = (0..len).map(|_| r.f64()).collect::<Option<_>>()?;
                RawFeature::Numeric { sorted, missing }
            }
            1 => {
                let missing = r.u64()?;
                let len = r.count(12)?;
                let mut counts = BTreeMap::new();
                for _ in 0..len {
                    let k = r.str()?;
                    counts.insert(k, r.u64()?);
                }
                RawFeature::Categorical { counts, missing }
            }
            _ => return None,
        };
        features.insert(name, (role, raw));
    }
    r.0.is_empty().then_some(StoredReference {
        source,
        records,
        features,
    })
}

#[cfg(test)]
mod tests;
