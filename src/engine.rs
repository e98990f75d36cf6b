//! The stateful heart of driftd: owns every model version's window,
//! reference and rule state; writes them to the store; evaluates them on a
//! schedule; updates metrics and hands rule transitions to the webhook
//! sender.
//!
//! Two tasks share the state behind one mutex. The *writer* is the only
//! mutator of windows and the only store writer for ingest: it takes a group
//! of queued commands, applies and writes them, flushes the store once for
//! the whole group (group commit) and only then acknowledges them; while a
//! group's flush runs it goes on with the next group (at most two flushes in
//! flight). The
//! *evaluator* shares the live buckets under the lock, computes statistics
//! without the lock on a thread of its own, at a lower priority than
//! everything else (`evaluation.nice`, so a costly evaluation takes only the
//! CPU that ingest leaves), then records results and rule transitions. The
//! engine knows tokio but not tonic, HTTP or sled.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, UNIX_EPOCH},
};

use prometheus::IntCounter;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::{EngineConfig, SourceKind},
    detector::{self, Report},
    domain::{Batch, Kind, Limits, ModelKey, Role, Values, Verdict},
    metrics::{Metrics, RejectReason},
    reference::{self, FeatureReference, RefData, Reference},
    rules::{self, Outcome, Tracker, Transition},
    store::{self, Commit, Store, VersionMeta},
    webhook,
    window::{self, Binning, Changes, Snapshot, Window},
};

/// Most idempotent producers remembered per version; beyond it the one
/// with the lowest sequence number is forgotten.
const MAX_PRODUCERS: usize = 1024;

/// Most commands written under one flush. Bounds the latency of the first
/// command of a group when the queue is deep.
const MAX_GROUP: usize = 256;

/// Group flushes in flight at once. The writer applies and writes the next
/// group while the previous group's flush runs, and starts the next flush
/// without waiting for it: a flush makes durable everything written
/// before it was called, so each group's own flush covers its writes
/// whichever returns first, and a batch that arrives during a flush no
/// longer waits for it to end before it is even written.
const FLUSHES_IN_FLIGHT: u32 = 2;

/// Why the engine refused a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ingest queue is full; the client should back off and retry.
    #[error("ingest queue is full")]
    QueueFull,
    /// The engine is shutting down.
    #[error("driftd is shutting down")]
    Draining,
    /// A column's kind differs from the kind the feature already has.
    #[error("feature {feature:?} is {expected}, got {got} values")]
    KindMismatch {
        /// Index of the column in the batch.
        column: usize,
        /// Feature name.
        feature: String,
        /// The established kind.
        expected: &'static str,
        /// The kind of the offending column.
        got: &'static str,
    },
    /// The store failed; nothing of the command was acknowledged.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The group commit's flush failed (the store's error, as text: one
    /// failure answers every command of the group); the command is not
    /// durable.
    #[error("store flush failed: {0}")]
    Flush(String),
    /// A batch over a limit of `[limits]`, or for a model that may not be
    /// registered; nothing of it was applied.
    #[error("{field}: {message}")]
    Limit {
        /// The reason it is counted under.
        reason: RejectReason,
        /// The field at fault, e.g. `batch.columns[3].name`.
        field: String,
        /// What is wrong, naming the limit's key and value.
        message: String,
    },
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Restoring or cleaning the stored state failed.
    #[error("restoring state from the store: {0}")]
    Store(#[from] store::Error),
    /// The evaluation thread could not be started.
    #[error("cannot start the evaluation thread: {0}")]
    Thread(#[from] std::io::Error),
}

impl Error {
    /// The reason a refusal is counted under in
    /// `driftd_ingest_rejected_total`.
    pub fn reason(&self) -> RejectReason {
        match self {
            Error::QueueFull => RejectReason::QueueFull,
            Error::Draining => RejectReason::Draining,
            Error::KindMismatch { .. } => RejectReason::KindMismatch,
            Error::Store(_) | Error::Flush(_) => RejectReason::StoreError,
            Error::Limit { reason, .. } => *reason,
        }
    }

    fn limit(reason: RejectReason, field: impl Into<String>, message: String) -> Self {
        Error::Limit {
            reason,
            field: field.into(),
            message,
        }
    }
}

/// What an acknowledged batch contained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestAck {
    /// Rows accepted.
    pub records: u64,
    /// Missing values counted.
    pub missing_values: u64,
    /// The producer had already delivered this sequence number; nothing
    /// was applied again.
    pub duplicate: bool,
}

/// An idempotent producer's identity and the batch's sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    /// Stable id of the producing process.
    pub id: String,
    /// Increases with every batch of the producer.
    pub sequence: u64,
}

/// What an accepted reference contained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReferenceAck {
    /// Rows in the new reference.
    pub records: u64,
    /// Features in it.
    pub features: u32,
}

enum Command {
    Ingest {
        batch: Batch,
        producer: Option<Producer>,
        enqueued: Instant,
        ack: oneshot::Sender<Result<IngestAck, Error>>,
    },
    SetReference {
        key: ModelKey,
        batches: Vec<Batch>,
        source: reference::Source,
        ack: oneshot::Sender<Result<ReferenceAck, Error>>,
    },
}

/// Sends commands to the engine and reads its state. Cheap to clone; the
/// writer stops once every `Handle` is dropped and the queue is empty.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    reader: Reader,
}

/// Read-only access to the engine's state, for status endpoints. Holding
/// one does not keep the writer alive.
#[derive(Clone)]
pub struct Reader {
    shared: Arc<Shared>,
    store: Store,
}

struct Shared {
    state: Mutex<BTreeMap<ModelKey, VersionState>>,
    cfg: EngineConfig,
}

struct VersionState {
    /// Kind of every feature seen so far, in batches or the reference.
    schema: BTreeMap<String, Kind>,
    /// Counters and producers, as stored with every batch.
    meta: VersionMeta,
    /// Seed of the record priorities that drive window sampling.
    seed: u64,
    /// The version's windows, in configuration order.
    windows: Vec<Window>,
    /// Collects the warm-up reference while there is none.
    warmup: Option<reference::Builder>,
    reference: Option<Arc<Reference>>,
    /// The version whose windows serve as this one's live reference.
    live: Option<String>,
    /// Last report per window name.
    reports: BTreeMap<String, Report>,
    /// Live reference hash per window at the last evaluation.
    live_hashes: BTreeMap<String, String>,
    /// (source, hash) last exported on `driftd_reference_info`.
    exported_reference: Option<(String, String)>,
    last_eval_ms: Option<i64>,
    /// State of every rule, by rule name.
    rules: BTreeMap<String, Tracker>,
    /// Rule outcomes of the last evaluation.
    last_outcomes: Vec<Outcome>,
    /// The version's ingest counters, looked up by label once.
    counters: Option<IngestCounters>,
}

/// One version's series of the ingest counters, kept so that a batch does
/// not look every feature's series up by its labels again.
struct IngestCounters {
    records: IntCounter,
    batches: IntCounter,
    missing: HashMap<String, IntCounter>,
}

/// What an acknowledged batch adds to the ingest counters.
struct Counts {
    records: IntCounter,
    batches: IntCounter,
    rows: u64,
    /// Per column: its series and its missing values.
    missing: Vec<(IntCounter, u64)>,
}

impl Counts {
    /// Adds the batch, once it is acknowledged.
    fn add(self) {
        self.records.inc_by(self.rows);
        self.batches.inc();
        for (c, n) in self.missing {
            if n > 0 {
                c.inc_by(n);
            }
        }
    }
}

/// The status of one model version, as the status RPC and JSON API show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionStatus {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Records accepted since the version was first seen.
    pub records_ingested: u64,
    /// Rows in the reference; 0 while warming up.
    pub reference_records: u64,
    /// "warmup", "set_reference", "file" or "live"; None without a
    /// reference.
    pub reference_source: Option<&'static str>,
    /// Content hash of the reference in force (for a live reference, of
    /// the first window's at the last evaluation).
    pub reference_hash: Option<String>,
    /// The first window's label.
    pub window: String,
    /// Rows in the first window now.
    pub window_records: u64,
    /// Time of the last evaluation, ms since the epoch.
    pub last_evaluation_unix_ms: Option<i64>,
    /// Verdict of the last evaluation.
    pub verdict: Verdict,
    /// Per feature of the first window, sorted by name.
    pub features: Vec<FeatureStatus>,
    /// Every window.
    pub windows: Vec<WindowStatus>,
    /// Rule states.
    pub rules: Vec<RuleStatus>,
}

/// One window of a version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowStatus {
    /// The `window` label.
    pub name: String,
    /// Rows in the window now.
    pub records: u64,
    /// Rows in its sample at the last evaluation.
    pub sample_rows: u64,
    /// Per feature, sorted by name.
    pub features: Vec<FeatureStatus>,
}

/// One feature's status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureStatus {
    /// Feature name.
    pub name: String,
    /// Input or output.
    pub role: Role,
    /// Numeric or categorical.
    pub kind: Kind,
    /// Non-missing values in the window now.
    pub window_samples: u64,
    /// Missing values in the window now.
    pub window_missing: u64,
    /// Values of the window's sample that KS, CvM and Wasserstein used at
    /// the last evaluation.
    pub window_sample_size: u64,
    /// Non-missing values in the reference.
    pub reference_samples: u64,
    /// PSI at the last evaluation.
    pub psi: Option<f64>,
    /// KS statistic at the last evaluation.
    pub ks_statistic: Option<f64>,
    /// KS p-value at the last evaluation.
    pub ks_pvalue: Option<f64>,
    /// Chi-square statistic at the last evaluation.
    pub chi2_statistic: Option<f64>,
    /// Chi-square p-value at the last evaluation.
    pub chi2_pvalue: Option<f64>,
    /// Verdict at the last evaluation.
    pub verdict: Verdict,
}

/// One rule's status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleStatus {
    /// Rule name.
    pub name: String,
    /// The rule's statistic.
    pub statistic: &'static str,
    /// Comparison operator.
    pub op: &'static str,
    /// The configured threshold.
    pub threshold: f64,
    /// Severity.
    pub severity: String,
    /// Verdict at the last evaluation.
    pub verdict: Verdict,
    /// inactive, pending or firing.
    pub state: rules::State,
    /// Consecutive evaluations in which the condition held.
    pub consecutive: u32,
    /// Since when it fires, ms since the epoch.
    pub firing_since_unix_ms: Option<i64>,
    /// Features that tripped the rule at the last evaluation.
    pub tripped_features: Vec<String>,
    /// Largest value of the statistic at the last evaluation.
    pub max_value: Option<f64>,
    /// The window it judges.
    pub window: String,
}

/// Restores state from `store` and starts the writer and evaluator tasks on
/// `tracker`. The evaluator stops when `cancel` fires; the writer stops when
/// every [`Handle`] is gone and the queue is drained.
///
/// # Errors
/// Fails when stale stored state cannot be deleted, or the evaluation
/// thread cannot be started.
// Each argument is a distinct collaborator wired once by `app`; a struct
// would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn start(
    cfg: EngineConfig,
    queue_capacity: usize,
    store: Store,
    loaded: Vec<store::StoredVersion>,
    metrics: Metrics,
    webhooks: webhook::Outbox,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Result<Handle, StartError> {
    let versions = restore_all(loaded, &cfg, &store)?;
    store.flush_blocking()?;
    let shared = Arc::new(Shared {
        state: Mutex::new(versions),
        cfg,
    });
    let reader = Reader {
        shared: shared.clone(),
        store: store.clone(),
    };
    let thread = EvalThread::start(shared.cfg.eval_nice)?;
    let (tx, rx) = mpsc::channel(queue_capacity);
    tracker.spawn(run_writer(
        shared.clone(),
        store.clone(),
        metrics.clone(),
        rx,
    ));
    tracker.spawn(run_evaluator(
        shared.clone(),
        store,
        metrics,
        webhooks,
        thread,
        cancel,
    ));
    Ok(Handle { tx, reader })
}

/// Rebuilds every version from what the store holds, deleting stored
/// windows that are no longer configured.
fn restore_all(
    loaded: Vec<store::StoredVersion>,
    cfg: &EngineConfig,
    store: &Store,
) -> Result<BTreeMap<ModelKey, VersionState>, store::Error> {
    let now = cfg.clock.now_ms();
    let mut versions = BTreeMap::new();
    for stored in loaded {
        let key = stored.key.clone();
        let configured: BTreeSet<&str> = cfg
            .windows_for(&key.model)
            .iter()
            .map(|w| w.name.as_str())
            .collect();
        for name in stored.windows.keys() {
            if !configured.contains(name.as_str()) {
                store.delete_windows(&key, Some(name))?;
            }
        }
        let (v, expired) = VersionState::restore(stored, cfg, now);
        store.forget_buckets(&key, &expired)?;
        tracing::info!(model = %key.model, version = %key.version, n_records = v.meta.records_ingested, "Restored model version");
        versions.insert(key, v);
    }
    Ok(versions)
}

impl Handle {
    /// Queues a batch and waits for its acknowledgement: written to the
    /// store and flushed.
    ///
    /// # Errors
    /// [`Error::QueueFull`] at once when the queue is full; otherwise the
    /// writer's verdict.
    pub async fn ingest(&self, batch: Batch) -> Result<IngestAck, Error> {
        self.ingest_from(batch, None).await
    }

    /// Like [`Handle::ingest`], for an idempotent producer: a sequence
    /// number at or below the producer's last applied one is acknowledged
    /// as a duplicate without being applied again.
    ///
    /// # Errors
    /// As [`Handle::ingest`].
    pub async fn ingest_from(
        &self,
        batch: Batch,
        producer: Option<Producer>,
    ) -> Result<IngestAck, Error> {
        admit(&self.reader.shared.cfg.limits, &batch, true)?;
        let (ack, rx) = oneshot::channel();
        self.tx
            .try_send(Command::Ingest {
                batch,
                producer,
                enqueued: Instant::now(),
                ack,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::QueueFull,
                mpsc::error::TrySendError::Closed(_) => Error::Draining,
            })?;
        rx.await.map_err(|_| Error::Draining)?
    }

    /// Like [`Handle::ingest_from`], but waits for room in the queue
    /// instead of failing: streams apply backpressure through HTTP/2 flow
    /// control.
    ///
    /// # Errors
    /// The writer's verdict, or [`Error::Draining`].
    pub async fn ingest_waiting(
        &self,
        batch: Batch,
        producer: Option<Producer>,
    ) -> Result<IngestAck, Error> {
        admit(&self.reader.shared.cfg.limits, &batch, true)?;
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Command::Ingest {
                batch,
                producer,
                enqueued: Instant::now(),
                ack,
            })
            .await
            .map_err(|_| Error::Draining)?;
        rx.await.map_err(|_| Error::Draining)?
    }

    /// Replaces the reference of `key` with the rows of `batches`. A
    /// reference identical to the one in force (same content hash) changes
    /// nothing; any other resets the version's windows, which were binned
    /// against the old one.
    ///
    /// # Errors
    /// As [`Handle::ingest`].
    pub async fn set_reference(
        &self,
        key: ModelKey,
        batches: Vec<Batch>,
        source: reference::Source,
    ) -> Result<ReferenceAck, Error> {
        for b in &batches {
            // Reference files are read in batches of their own size; the
            // reference's total is bounded by ingest.max_reference_records.
            admit(&self.reader.shared.cfg.limits, b, false)?;
        }
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Command::SetReference {
                key,
                batches,
                source,
                ack,
            })
            .await
            .map_err(|_| Error::Draining)?;
        rx.await.map_err(|_| Error::Draining)?
    }

    /// Read access, for status.
    pub fn reader(&self) -> Reader {
        self.reader.clone()
    }
}

/// Checks what a batch alone may break, before it takes a place in the
/// queue: its shape, names and values against `limits`, and whether its
/// model may be registered.
fn admit(limits: &Limits, batch: &Batch, check_rows: bool) -> Result<(), Error> {
    let name = |field: String, n: &str| {
        limits
            .names
            .check(n)
            .map_err(|e| Error::limit(RejectReason::of_name(&e), field, e.to_string()))
    };
    name("batch.model".into(), &batch.key.model)?;
    name("batch.version".into(), &batch.key.version)?;
    if !limits.auto_register
        && !limits
            .models
            .iter()
            .any(|g| crate::rules::glob_match(g, &batch.key.model))
    {
        return Err(Error::limit(
            RejectReason::UnknownModel,
            "batch.model",
            format!(
                "model {:?} is not registered (limits.auto_register = false and it matches no glob of limits.models)",
                batch.key.model
            ),
        ));
    }
    if check_rows && batch.n_rows > limits.max_rows_per_batch {
        return Err(Error::limit(
            RejectReason::TooManyRows,
            "batch.columns",
            format!(
                "{} rows, more than limits.max_rows_per_batch = {}",
                batch.n_rows, limits.max_rows_per_batch
            ),
        ));
    }
    if batch.columns.len() > limits.max_columns_per_batch {
        return Err(Error::limit(
            RejectReason::TooManyColumns,
            "batch.columns",
            format!(
                "{} columns, more than limits.max_columns_per_batch = {}",
                batch.columns.len(),
                limits.max_columns_per_batch
            ),
        ));
    }
    for (i, col) in batch.columns.iter().enumerate() {
        name(format!("batch.columns[{i}].name"), &col.name)?;
        if let Values::Categorical(values) = &col.values {
            if let Some((row, v)) = values
                .iter()
                .enumerate()
                .find(|(_, v)| v.len() > limits.max_category_bytes)
            {
                return Err(Error::limit(
                    RejectReason::ValueTooLong,
                    format!("batch.columns[{i}].values[{row}]"),
                    format!(
                        "a categorical value of {} bytes, longer than limits.max_category_bytes = {}",
                        v.len(),
                        limits.max_category_bytes
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Checks that `key` may hold state: a new model within
/// `limits.max_models`, a new version within
/// `limits.max_versions_per_model`. Versions already known always pass,
/// even after a limit was lowered.
fn check_room(
    state: &BTreeMap<ModelKey, VersionState>,
    limits: &Limits,
    key: &ModelKey,
) -> Result<(), Error> {
    if state.contains_key(key) {
        return Ok(());
    }
    let versions = state.keys().filter(|k| k.model == key.model).count();
    if versions == 0 {
        let mut models: Vec<&str> = state.keys().map(|k| k.model.as_str()).collect();
        models.dedup();
        if models.len() >= limits.max_models {
            return Err(Error::limit(
                RejectReason::TooManyModels,
                "batch.model",
                format!(
                    "model {:?} would be model {}, more than limits.max_models = {}",
                    key.model,
                    models.len() + 1,
                    limits.max_models
                ),
            ));
        }
    } else if versions >= limits.max_versions_per_model {
        return Err(Error::limit(
            RejectReason::TooManyVersions,
            "batch.version",
            format!(
                "version {:?} would be version {} of model {:?}, more than limits.max_versions_per_model = {}",
                key.version,
                versions + 1,
                key.model,
                limits.max_versions_per_model
            ),
        ));
    }
    Ok(())
}

/// Checks that a version holding the features `known` may take the
/// columns `names` within `limits.max_features_per_model`.
fn check_features<'a>(
    known: &BTreeMap<String, Kind>,
    names: impl Iterator<Item = (usize, &'a str)>,
    limits: &Limits,
    key: &ModelKey,
) -> Result<(), Error> {
    let mut n = known.len();
    for (i, name) in names {
        if !known.contains_key(name) {
            n += 1;
            if n > limits.max_features_per_model {
                return Err(Error::limit(
                    RejectReason::TooManyFeatures,
                    format!("batch.columns[{i}]"),
                    format!(
                        "feature {name:?} would be feature {n} of {key}, more than limits.max_features_per_model = {}",
                        limits.max_features_per_model
                    ),
                ));
            }
        }
    }
    Ok(())
}

impl Reader {
    /// Why the daemon cannot work on without a restart, if it cannot: the
    /// store is stuck ([`store::Error::Wedged`]).
    pub fn fatal(&self) -> Option<String> {
        self.store.wedged().map(|e| e.to_string())
    }

    /// What model, version and feature names may be.
    pub fn names(&self) -> &crate::domain::NameRules {
        &self.shared.cfg.limits.names
    }

    /// Status of `model` (all versions, or only `version`); None when the
    /// model is unknown.
    pub fn status(&self, model: &str, version: Option<&str>) -> Option<Vec<VersionStatus>> {
        let now = self.shared.cfg.clock.now_ms();
        let state = lock(&self.shared.state);
        let out: Vec<VersionStatus> = state
            .iter()
            .filter(|(k, _)| k.model == model && version.is_none_or(|v| k.version == v))
            .map(|(k, v)| v.status(k, &self.shared.cfg, now))
            .collect();
        (!out.is_empty()).then_some(out)
    }

    /// Per version: (key, reference source, reference hash), for the
    /// reference info metric.
    pub fn references(&self) -> Vec<(ModelKey, &'static str, String)> {
        let state = lock(&self.shared.state);
        state
            .iter()
            .filter_map(|(k, v)| {
                let (source, hash) = v.reference_info()?;
                Some((k.clone(), source, hash))
            })
            .collect()
    }
}

/// Locks the state. A panic while holding the lock would leave it poisoned;
/// the state is still consistent at every await-free step, so recover it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// === impl VersionState ===

impl VersionState {
    fn new(key: &ModelKey, cfg: &EngineConfig) -> Self {
        let source = cfg.source_for(&key.model, &key.version);
        // A live source whose pattern also matches the version it names
        // (`version = "*"` with `live:stable`) does not apply to that
        // version: it warms up a reference of its own.
        let live = match source {
            Some(SourceKind::Live { version }) if *version != key.version => Some(version.clone()),
            _ => None,
        };
        let seed = window::seed_of(&key.model, &key.version);
        let windows = cfg
            .windows_for(&key.model)
            .iter()
            .map(|spec| {
                Window::new(
                    spec.clone(),
                    cfg.window_limits,
                    Arc::new(Binning::default()),
                    seed,
                )
            })
            .collect();
        Self {
            schema: BTreeMap::new(),
            meta: VersionMeta::default(),
            seed,
            windows,
            // A live or file reference never warms up.
            warmup: match source {
                Some(SourceKind::File { .. }) => None,
                _ if live.is_some() => None,
                _ => Some(reference::Builder::default()),
            },
            reference: None,
            live,
            reports: BTreeMap::new(),
            live_hashes: BTreeMap::new(),
            exported_reference: None,
            last_eval_ms: None,
            rules: BTreeMap::new(),
            last_outcomes: Vec::new(),
            counters: None,
        }
    }

    /// A version from what the store holds, and the (window, bucket) that
    /// left their windows while driftd was down.
    fn restore(
        stored: store::StoredVersion,
        cfg: &EngineConfig,
        now: i64,
    ) -> (Self, Vec<(String, u64)>) {
        let mut v = Self::new(&stored.key, cfg);
        v.meta = stored.meta;
        v.rules = stored.rules;
        let binning = Arc::new(match &stored.reference {
            Some(r) => r.binning(),
            None => Binning::default(),
        });
        if let Some(r) = stored.reference {
            v.adopt(r);
        } else if let Some(builder) = v.warmup.as_mut() {
            for (_, b) in &stored.raw_batches {
                let need = cfg.warmup_samples.get() as u64 - builder.records();
                builder.push(b, need as usize);
                note_kinds(&mut v.schema, b);
            }
        }
        let total = v.meta.records_ingested;
        let mut stored_windows = stored.windows;
        let mut expired = Vec::new();
        for w in &mut v.windows {
            let spec = w.spec().clone();
            let buckets = stored_windows
                .remove(&spec.name)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(id, b)| {
                    window::Bucket::rebuild(b.whole, b.deltas.into_iter().map(|(_, d)| d), b.tau)
                        .map(|b| (id, b))
                })
                .collect::<BTreeMap<_, _>>();
            for b in buckets.values() {
                for (name, a) in &b.features {
                    let kind = match a.data {
                        window::AggData::Numeric { .. } => Kind::Numeric,
                        window::AggData::Categorical { .. } => Kind::Categorical,
                    };
                    v.schema.entry(name.clone()).or_insert(kind);
                }
            }
            *w = Window::restore(spec, cfg.window_limits, binning.clone(), v.seed, buckets);
            expired.extend(
                w.expire(now, total)
                    .into_iter()
                    .map(|id| (w.spec().name.clone(), id)),
            );
        }
        (v, expired)
    }

    /// Makes `r` the reference in force (windows are the caller's
    /// business).
    fn adopt(&mut self, r: Reference) {
        for (name, f) in &r.features {
            self.schema.insert(name.clone(), f.kind());
        }
        self.reference = Some(Arc::new(r));
        self.warmup = None;
    }

    /// Empties every window and bins from now on against the reference in
    /// force.
    fn reset_windows(&mut self, cfg: &EngineConfig) {
        let binning = Arc::new(
            self.reference
                .as_ref()
                .map(|r| r.binning())
                .unwrap_or_default(),
        );
        for w in &mut self.windows {
            *w = Window::new(
                w.spec().clone(),
                cfg.window_limits,
                binning.clone(),
                self.seed,
            );
        }
        self.reports.clear();
    }

    fn reference_info(&self) -> Option<(&'static str, String)> {
        if self.live.is_some() {
            let first = self.windows.first()?.spec().name.as_str();
            return Some(("live", self.live_hashes.get(first)?.clone()));
        }
        self.reference
            .as_ref()
            .map(|r| (r.source.as_str(), r.hash.clone()))
    }

    /// Checks the batch against the established feature kinds.
    fn check(&self, batch: &Batch) -> Result<(), Error> {
        for (i, col) in batch.columns.iter().enumerate() {
            if let Some(&kind) = self.schema.get(&col.name) {
                if kind != col.values.kind() {
                    return Err(Error::KindMismatch {
                        column: i,
                        feature: col.name.clone(),
                        expected: kind.as_str(),
                        got: col.values.kind().as_str(),
                    });
                }
            }
        }
        Ok(())
    }

    fn status(&self, key: &ModelKey, cfg: &EngineConfig, now: i64) -> VersionStatus {
        let total = self.meta.records_ingested;
        let windows: Vec<WindowStatus> = self
            .windows
            .iter()
            .map(|w| {
                let report = self.reports.get(&w.spec().name);
                WindowStatus {
                    name: w.spec().name.clone(),
                    records: w.records(now, total),
                    sample_rows: report.map(|r| r.sample_rows).unwrap_or(0),
                    features: self.feature_status(&w.counts(now, total), report),
                }
            })
            .collect();
        let first = windows.first();
        let (source, hash) = match self.reference_info() {
            Some((s, h)) => (Some(s), Some(h)),
            None => (self.live.as_ref().map(|_| "live"), None),
        };
        VersionStatus {
            model: key.model.clone(),
            version: key.version.clone(),
            records_ingested: total,
            reference_records: self.reference.as_ref().map(|r| r.records).unwrap_or(0),
            reference_source: source,
            reference_hash: hash,
            window: first.map(|w| w.name.clone()).unwrap_or_default(),
            window_records: first.map(|w| w.records).unwrap_or(0),
            last_evaluation_unix_ms: self.last_eval_ms,
            verdict: combine_verdicts(&self.last_outcomes),
            features: first.map(|w| w.features.clone()).unwrap_or_default(),
            rules: cfg
                .rules
                .iter()
                .filter(|r| r.applies_to(&key.model))
                .map(|r| {
                    let t = self.rules.get(&r.name).copied().unwrap_or_default();
                    let o = self.last_outcomes.iter().find(|o| o.rule == r.name);
                    RuleStatus {
                        name: r.name.clone(),
                        statistic: r.statistic.as_str(),
                        op: r.op.as_str(),
                        threshold: r.threshold,
                        severity: r.severity.clone(),
                        verdict: o.map(|o| o.verdict).unwrap_or(Verdict::InsufficientData),
                        state: t.state(),
                        consecutive: t.consecutive,
                        firing_since_unix_ms: t.firing_since_ms,
                        tripped_features: o
                            .map(|o| o.tripped().map(|v| v.feature.clone()).collect())
                            .unwrap_or_default(),
                        max_value: o
                            .and_then(|o| o.values.iter().map(|v| v.value).reduce(f64::max)),
                        window: rule_window(r, &self.windows).to_string(),
                    }
                })
                .collect(),
            windows,
        }
    }

    fn feature_status(
        &self,
        counts: &BTreeMap<String, (u64, u64, Role)>,
        report: Option<&Report>,
    ) -> Vec<FeatureStatus> {
        let reports: BTreeMap<&str, &detector::FeatureReport> = report
            .iter()
            .flat_map(|r| r.features.iter().map(|f| (f.name.as_str(), f)))
            .collect();
        self.schema
            .iter()
            .map(|(name, kind)| {
                let rf = self.reference.as_ref().and_then(|r| r.features.get(name));
                let rep = reports.get(name.as_str());
                let (window_samples, window_missing, role) = match counts.get(name) {
                    Some(&(n, m, role)) => (n, m, Some(role)),
                    None => (0, 0, None),
                };
                FeatureStatus {
                    name: name.clone(),
                    role: role
                        .or(rep.map(|r| r.role))
                        .or(rf.map(|f| f.role))
                        .unwrap_or(Role::Input),
                    kind: *kind,
                    window_samples,
                    window_missing,
                    window_sample_size: rep.map(|r| r.window_sample_size).unwrap_or(0),
                    reference_samples: rep
                        .map(|r| r.reference_samples)
                        .or(rf.map(|f| f.n()))
                        .unwrap_or(0),
                    psi: rep.and_then(|r| r.psi),
                    ks_statistic: rep.and_then(|r| r.ks.map(|k| k.statistic)),
                    ks_pvalue: rep.and_then(|r| r.ks.map(|k| k.pvalue)),
                    chi2_statistic: rep.and_then(|r| r.chi2.map(|c| c.statistic)),
                    chi2_pvalue: rep.and_then(|r| r.chi2.map(|c| c.pvalue)),
                    verdict: rep.map(|r| r.verdict).unwrap_or(Verdict::InsufficientData),
                }
            })
            .collect()
    }
}

fn note_kinds(schema: &mut BTreeMap<String, Kind>, batch: &Batch) {
    for col in &batch.columns {
        schema.entry(col.name.clone()).or_insert(col.values.kind());
    }
}

/// The window a rule judges: its own, or the version's first.
fn rule_window<'a>(rule: &'a rules::Rule, windows: &'a [Window]) -> &'a str {
    rule.window
        .as_deref()
        .or(windows.first().map(|w| w.spec().name.as_str()))
        .unwrap_or("")
}

// === writer ===

async fn run_writer(
    shared: Arc<Shared>,
    store: Store,
    metrics: Metrics,
    mut rx: mpsc::Receiver<Command>,
) {
    let mut last_recovery: Option<Instant> = None;
    let mut last_size: Option<Instant> = None;
    let flushes = Arc::new(Semaphore::new(FLUSHES_IN_FLIGHT as usize));
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        metrics.ingest_queue_depth.set(rx.len() as i64);
        if store.is_failed() {
            // Every group written before the failure has had its answer
            // before the state is read back from disk.
            let _all = flushes.acquire_many(FLUSHES_IN_FLIGHT).await;
            recover(&shared, &store, &metrics, &mut last_recovery).await;
        }
        let mut ingest_acks = Vec::new();
        let mut reference_acks = Vec::new();
        {
            let mut state = lock(&shared.state);
            for cmd in group {
                match cmd {
                    Command::Ingest {
                        batch,
                        producer,
                        enqueued,
                        ack,
                    } => match write_batch(
                        &mut state,
                        &shared.cfg,
                        &store,
                        &metrics,
                        &batch,
                        producer.as_ref(),
                    ) {
                        Ok((answer, counts)) => ingest_acks.push(IngestAnswer {
                            ack,
                            answer,
                            enqueued,
                            counts,
                        }),
                        Err(e) => {
                            count_store_failure(&metrics, &e);
                            let _ = ack.send(Err(e));
                        }
                    },
                    Command::SetReference {
                        key,
                        batches,
                        source,
                        ack,
                    } => {
                        match write_reference(
                            &mut state,
                            &shared.cfg,
                            &store,
                            key,
                            &batches,
                            source,
                        ) {
                            Ok(a) => reference_acks.push((ack, a)),
                            Err(e) => {
                                count_store_failure(&metrics, &e);
                                let _ = ack.send(Err(e));
                            }
                        }
                    }
                }
            }
        }
        if ingest_acks.is_empty() && reference_acks.is_empty() {
            continue;
        }
        // One flush makes every write of the group durable: group commit.
        // It runs beside the next group's writes (`FLUSHES_IN_FLIGHT`).
        let Ok(permit) = flushes.clone().acquire_owned().await else {
            break;
        };
        tokio::spawn(acknowledge(
            store.clone(),
            metrics.clone(),
            Acks {
                ingest: ingest_acks,
                reference: reference_acks,
            },
            permit,
        ));
        // sled sizes its blob directory file by file: at most once a
        // second, not once per group.
        if last_size.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            last_size = Some(Instant::now());
            if let Ok(size) = store.size_on_disk() {
                metrics.store_size.set(size as f64);
            }
        }
    }
    // The last groups' flushes answer before the final one.
    let _all = flushes.acquire_many(FLUSHES_IN_FLIGHT).await;
    if let Err(error) = store.flush().await {
        tracing::error!(error = %error, "Final store flush failed");
    }
    tracing::info!("Ingest writer stopped");
}

/// Counts a write the store attempted and failed in
/// `driftd_store_errors_total` (a write refused because an earlier one
/// failed was counted then).
fn count_store_failure(metrics: &Metrics, error: &Error) {
    if let Error::Store(e) = error {
        if !e.is_refusal() {
            metrics.store_errors.inc();
            tracing::error!(error = %e, "Store write failed; batch not acknowledged");
        }
    }
}

/// The answers one group's commands wait for: sent once its flush returns.
struct Acks {
    ingest: Vec<IngestAnswer>,
    reference: Vec<(oneshot::Sender<Result<ReferenceAck, Error>>, ReferenceAck)>,
}

/// An ingested batch's answer, waiting for its group's flush.
struct IngestAnswer {
    ack: oneshot::Sender<Result<IngestAck, Error>>,
    answer: IngestAck,
    /// When the batch was queued (for `driftd_ingest_ack_duration_seconds`).
    enqueued: Instant,
    /// The ingest counters to add to once it is acknowledged.
    counts: Option<Counts>,
}

/// Flushes the store for one group written before this call, then answers
/// its commands: acknowledged (counted in the ingest counters) when the
/// flush succeeded, refused when it failed. Holds `permit`, one of the
/// writer's [`FLUSHES_IN_FLIGHT`], until then.
async fn acknowledge(store: Store, metrics: Metrics, acks: Acks, permit: OwnedSemaphorePermit) {
    let _permit = permit;
    match store.flush().await {
        Ok(elapsed) => {
            metrics.store_flush_duration.observe(elapsed.as_secs_f64());
            for w in acks.ingest {
                if let Some(c) = w.counts {
                    c.add();
                }
                metrics
                    .ingest_ack_duration
                    .observe(w.enqueued.elapsed().as_secs_f64());
                // A client that went away no longer wants the answer.
                let _ = w.ack.send(Ok(w.answer));
            }
            for (ack, a) in acks.reference {
                let _ = ack.send(Ok(a));
            }
        }
        Err(error) => {
            metrics.store_errors.inc();
            tracing::error!(error = %error, "Store flush failed; batches not acknowledged");
            let error = error.to_string();
            for w in acks.ingest {
                let _ = w.ack.send(Err(Error::Flush(error.clone())));
            }
            for (ack, _) in acks.reference {
                let _ = ack.send(Err(Error::Flush(error.clone())));
            }
        }
    }
}

/// After a failed write or flush: reopens the store (at most once a second)
/// and replaces the in-memory state by what is durable, so that batches
/// applied in memory but never acknowledged are forgotten. Reopening runs
/// on a blocking thread: it can wait for sled's old handle to close.
async fn recover(shared: &Shared, store: &Store, metrics: &Metrics, last: &mut Option<Instant>) {
    if store.wedged().is_some() || last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
        return;
    }
    *last = Some(Instant::now());
    let reopening = store.clone();
    let recovered = tokio::task::spawn_blocking(move || reopening.recover())
        .await
        .unwrap_or_else(|e| Err(store::Error::Failed(format!("reopening failed: {e}"))));
    match recovered {
        Ok(loaded) => match restore_all(loaded, &shared.cfg, store) {
            Ok(versions) => {
                *lock(&shared.state) = versions;
                metrics.store_recoveries.inc();
                tracing::warn!(path = %store.path().display(), "Store reopened after a failure; state reloaded from disk");
            }
            Err(error) => {
                tracing::error!(error = %error, "Reloading the reopened store failed");
            }
        },
        Err(error @ store::Error::Wedged { .. }) => {
            tracing::error!(error = %error, "Store stuck; ingest is refused and driftd shuts down to be restarted");
        }
        Err(error) => {
            tracing::warn!(error = %error, "Store still unavailable");
        }
    }
}

fn write_batch(
    state: &mut BTreeMap<ModelKey, VersionState>,
    cfg: &EngineConfig,
    store: &Store,
    metrics: &Metrics,
    batch: &Batch,
    producer: Option<&Producer>,
) -> Result<(IngestAck, Option<Counts>), Error> {
    check_room(state, &cfg.limits, &batch.key)?;
    // Checked before the version is created, so a refused batch registers
    // nothing.
    let no_features = BTreeMap::new();
    check_features(
        state.get(&batch.key).map_or(&no_features, |v| &v.schema),
        batch
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.name.as_str())),
        &cfg.limits,
        &batch.key,
    )?;
    let v = state
        .entry(batch.key.clone())
        .or_insert_with(|| VersionState::new(&batch.key, cfg));
    if let Some(p) = producer {
        if v.meta
            .producers
            .get(&p.id)
            .is_some_and(|&last| p.sequence <= last)
        {
            return Ok((
                IngestAck {
                    records: batch.n_rows as u64,
                    missing_values: batch.n_missing(),
                    duplicate: true,
                },
                None,
            ));
        }
    }
    v.check(batch)?;
    let now = cfg.clock.now_ms();
    let first_row = v.meta.records_ingested;
    // Rows already in the warm-up reference do not enter the windows that
    // will be compared with it.
    let mut skip = 0;
    let mut reset = false;
    let stored_raw = v.warmup.is_some();
    if let Some(builder) = v.warmup.as_mut() {
        let need = cfg.warmup_samples.get() - builder.records() as usize;
        store.put_raw_batch(&batch.key, v.meta.next_raw_seq, batch)?;
        builder.push(batch, need);
        if builder.records() >= cfg.warmup_samples.get() as u64 {
            if let Some(b) = v.warmup.take() {
                let r = b.build(reference::Source::Warmup, cfg.reference);
                // The reference lands before the raw batches it was built
                // from are deleted.
                store.put_reference(&batch.key, &r)?;
                store.delete_raw_batches(&batch.key)?;
                store.delete_windows(&batch.key, None)?;
                tracing::info!(model = %batch.key.model, version = %batch.key.version, n_records = r.records, hash = %r.hash, "Warm-up reference formed");
                v.adopt(r);
                reset = true;
                skip = need.min(batch.n_rows);
            }
        }
    }
    if reset {
        v.reset_windows(cfg);
    }
    note_kinds(&mut v.schema, batch);
    let mut meta = v.meta.clone();
    meta.records_ingested += batch.n_rows as u64;
    if stored_raw {
        meta.next_raw_seq += 1;
    }
    if let Some(p) = producer {
        meta.producers.insert(p.id.clone(), p.sequence);
        while meta.producers.len() > MAX_PRODUCERS {
            let oldest = meta
                .producers
                .iter()
                .min_by_key(|(_, &s)| s)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                meta.producers.remove(&k);
            }
        }
    }
    let mut commit = Commit::default();
    // The windows bin against the same reference: bin every value once.
    let prepared = v.windows.first().map(|w| w.prepare(batch, skip));
    for w in &mut v.windows {
        let mut ch = Changes::default();
        w.apply_prepared(
            batch,
            skip,
            now,
            first_row + skip as u64,
            prepared.as_ref(),
            &mut ch,
        );
        let name = &w.spec().name;
        commit.deltas.extend(
            ch.deltas
                .into_iter()
                .map(|(b, part, d)| (name.clone(), b, part, d)),
        );
        commit
            .taus
            .extend(ch.pruned.into_iter().map(|(b, t)| (name.clone(), b, t)));
        commit
            .rewrites
            .extend(ch.rewrite.into_iter().map(|(b, t)| (name.clone(), b, t)));
        commit.wholes.extend(
            ch.closed
                .into_iter()
                .map(|(id, whole)| (name.clone(), id, whole)),
        );
        commit
            .removed
            .extend(ch.removed.into_iter().map(|b| (name.clone(), b)));
    }
    commit.meta = meta.clone();
    store.commit(&batch.key, &commit)?;
    v.meta = meta;
    let counters = v.counters.get_or_insert_with(|| {
        let labels = [batch.key.model.as_str(), batch.key.version.as_str()];
        IngestCounters {
            records: metrics.ingest_records.with_label_values(&labels),
            batches: metrics.ingest_batches.with_label_values(&labels),
            missing: HashMap::new(),
        }
    });
    // Missing values per column: the windows' aggregation counted them
    // where it covered the whole column; only other columns take a pass of
    // their own (before, every column took two).
    let missing: Vec<(IntCounter, u64)> = batch
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let n = prepared
                .as_ref()
                .and_then(|p| p.missing(i))
                .unwrap_or_else(|| c.values.n_missing());
            let series = match counters.missing.get(&c.name) {
                Some(s) => s.clone(),
                None => {
                    let s = metrics.missing_values.with_label_values(&[
                        batch.key.model.as_str(),
                        batch.key.version.as_str(),
                        c.name.as_str(),
                    ]);
                    counters.missing.insert(c.name.clone(), s.clone());
                    s
                }
            };
            (series, n)
        })
        .collect();
    let ack = IngestAck {
        records: batch.n_rows as u64,
        missing_values: missing.iter().map(|(_, n)| n).sum(),
        duplicate: false,
    };
    let counts = Counts {
        records: counters.records.clone(),
        batches: counters.batches.clone(),
        rows: batch.n_rows as u64,
        missing,
    };
    Ok((ack, Some(counts)))
}

fn write_reference(
    state: &mut BTreeMap<ModelKey, VersionState>,
    cfg: &EngineConfig,
    store: &Store,
    key: ModelKey,
    batches: &[Batch],
    source: reference::Source,
) -> Result<ReferenceAck, Error> {
    check_room(state, &cfg.limits, &key)?;
    // The reference must agree with itself; against the live schema it may
    // differ, because a new reference can legitimately change a feature.
    let mut kinds: BTreeMap<&str, Kind> = BTreeMap::new();
    for b in batches {
        for (i, col) in b.columns.iter().enumerate() {
            let k = *kinds.entry(col.name.as_str()).or_insert(col.values.kind());
            if k != col.values.kind() {
                return Err(Error::KindMismatch {
                    column: i,
                    feature: col.name.clone(),
                    expected: k.as_str(),
                    got: col.values.kind().as_str(),
                });
            }
        }
    }
    // A reference replaces the version's features.
    let mut seen = BTreeSet::new();
    check_features(
        &BTreeMap::new(),
        batches
            .iter()
            .flat_map(|b| b.columns.iter().enumerate())
            .filter(|(_, c)| seen.insert(c.name.as_str()))
            .map(|(i, c)| (i, c.name.as_str())),
        &cfg.limits,
        &key,
    )?;
    let v = state
        .entry(key.clone())
        .or_insert_with(|| VersionState::new(&key, cfg));
    let mut builder = reference::Builder::default();
    for b in batches {
        builder.push(b, b.n_rows);
    }
    let r = builder.build(source, cfg.reference);
    let ack = ReferenceAck {
        records: r.records,
        features: r.features.len() as u32,
    };
    if v.reference.as_ref().is_some_and(|old| old.hash == r.hash) {
        // The same content again (a file reference at every start): keep
        // the windows.
        return Ok(ack);
    }
    store.put_reference(&key, &r)?;
    store.delete_raw_batches(&key)?;
    store.delete_windows(&key, None)?;
    tracing::info!(model = %key.model, version = %key.version, n_records = ack.records, source = r.source.as_str(), hash = %r.hash, "Reference replaced");
    v.schema.clear();
    v.adopt(r);
    v.reset_windows(cfg);
    Ok(ack)
}

/// drift if any rule's verdict is drift; ok if any is ok; otherwise
/// insufficient_data.
fn combine_verdicts(outcomes: &[Outcome]) -> Verdict {
    if outcomes.iter().any(|o| o.verdict == Verdict::Drift) {
        Verdict::Drift
    } else if outcomes.iter().any(|o| o.verdict == Verdict::Ok) {
        Verdict::Ok
    } else {
        Verdict::InsufficientData
    }
}

// === evaluator ===

/// A job for the evaluation thread.
type Job = Box<dyn FnOnce() + Send>;

/// The thread the statistics run on: one thread (an evaluation uses one
/// core), started with the nice value `evaluation.nice`, so that when
/// ingest and an evaluation both want the CPU, ingest gets it. tokio's
/// blocking pool would not do: its threads also run the store's flushes,
/// and a thread's nice value cannot be lowered back without privileges.
struct EvalThread {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl EvalThread {
    /// Starts the thread; it ends when this is dropped.
    fn start(nice: i32) -> std::io::Result<Self> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("driftd-eval".into())
            .spawn(move || {
                if let Err(error) = lower_priority(nice) {
                    tracing::warn!(%error, nice, "Cannot lower the evaluation thread's priority");
                }
                for job in rx {
                    // A panicking job drops its answer channel: the caller
                    // sees the failure; the thread serves the next one.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the thread; `None` when it panicked.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .ok()?;
        rx.await.ok()
    }
}

/// Sets the calling thread's nice value (Linux: a per-thread attribute).
#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) -> std::io::Result<()> {
    if nice == 0 {
        return Ok(());
    }
    rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice)
        .map_err(std::io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) -> std::io::Result<()> {
    Ok(())
}

async fn run_evaluator(
    shared: Arc<Shared>,
    store: Store,
    metrics: Metrics,
    webhooks: webhook::Outbox,
    thread: EvalThread,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(shared.cfg.eval_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; skip it so the first evaluation comes one
    // interval after start, like every later one.
    tick.tick().await;
    loop {
        // Cancellation first: after an abandoned round the next tick is
        // already due, and an unbiased select would start another round,
        // whose job would wait behind the abandoned statistics holding a
        // store handle.
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        evaluate_all(&shared, &store, &metrics, &webhooks, &thread, &cancel).await;
    }
    tracing::info!("Evaluator stopped");
}

/// Evaluates every model version once: statistics off the lock, then rules,
/// rule states, metrics and webhook events under it.
async fn evaluate_all(
    shared: &Arc<Shared>,
    store: &Store,
    metrics: &Metrics,
    webhooks: &webhook::Outbox,
    thread: &EvalThread,
    cancel: &CancellationToken,
) {
    let started = Instant::now();
    let now = shared.cfg.clock.now_ms();
    // One version at a time: under the lock, shared references to its live
    // buckets only; everything costly (merging samples, sorting,
    // statistics) runs on the evaluation thread. While a copy is held, the
    // writer copies each bucket it changes, so holding one version's copies
    // at a time (not every version's, for the whole round) bounds that
    // extra memory to one version's windows.
    let keys: Vec<ModelKey> = lock(&shared.state).keys().cloned().collect();
    let mut reports = Vec::with_capacity(keys.len());
    for key in keys {
        let Some(work) = work_of(&lock(&shared.state), &key, now) else {
            continue;
        };
        let shared = shared.clone();
        let store = store.clone();
        // Shutdown does not wait for the statistics (with drift, the exact
        // KS p-values of 10,000-value samples take seconds per version):
        // nothing of the round has been written yet, and the thread's
        // result is dropped.
        let stats = thread.run(move || evaluate_version(work, &shared.cfg, store, now));
        let done = tokio::select! {
            // Cancellation first, so that no job is sent once it is set.
            biased;
            () = cancel.cancelled() => {
                tracing::info!("Evaluation round abandoned: shutting down");
                return;
            }
            done = stats => done,
        };
        match done {
            Some(report) => reports.push(report),
            None => {
                tracing::error!("Evaluation failed (the evaluation thread panicked)");
                return;
            }
        }
    }
    let mut events = Vec::new();
    let mut rules_changed = false;
    {
        let mut state = lock(&shared.state);
        for done in reports {
            let Evaluated {
                key,
                windows,
                outcomes,
            } = done;
            let Some(v) = state.get_mut(&key) else {
                continue;
            };
            let records: BTreeMap<&str, u64> = v
                .windows
                .iter()
                .map(|w| {
                    (
                        w.spec().name.as_str(),
                        w.records(now, v.meta.records_ingested),
                    )
                })
                .collect();
            for (name, n) in records {
                metrics
                    .window_records
                    .with_label_values(&[&key.model, &key.version, name])
                    .set(n as i64);
            }
            for (name, report, reference) in &windows {
                export(
                    metrics,
                    &key,
                    name,
                    report,
                    reference.as_deref(),
                    shared.cfg.max_features_per_model,
                );
            }
            let window_of = |rule: &rules::Rule| rule_window(rule, &v.windows).to_string();
            let verdict = combine_verdicts(&outcomes);
            metrics
                .evaluations
                .with_label_values(&[&key.model, &key.version, verdict.as_str()])
                .inc();
            let judged: Vec<(&rules::Rule, String)> = shared
                .cfg
                .rules
                .iter()
                .filter(|r| r.applies_to(&key.model))
                .map(|r| (r, window_of(r)))
                .collect();
            for ((rule, wname), outcome) in judged.iter().zip(&outcomes) {
                let report = windows.iter().find(|(n, ..)| n == wname).map(|w| &w.1);
                let t = v.rules.entry(rule.name.clone()).or_default();
                let before = *t;
                let transition = t.observe(
                    outcome.verdict,
                    now,
                    rule.for_evaluations,
                    rule.keep_firing_for,
                );
                let after = *t;
                if after != before {
                    rules_changed = true;
                    if let Err(error) = store.put_rule(&key, &rule.name, &after) {
                        metrics.store_errors.inc();
                        tracing::error!(model = %key.model, rule = %rule.name, error = %error, "Writing rule state failed");
                    }
                }
                metrics
                    .rule_firing
                    .with_label_values(&[&key.model, &key.version, &rule.name])
                    .set(i64::from(after.state() == rules::State::Firing));
                for st in [
                    rules::State::Inactive,
                    rules::State::Pending,
                    rules::State::Firing,
                ] {
                    metrics
                        .rule_state
                        .with_label_values(&[&key.model, &key.version, &rule.name, st.as_str()])
                        .set(i64::from(after.state() == st));
                }
                if let Some(mut event) =
                    make_event(&key, wname, rule, outcome, transition, before, after, now)
                {
                    for f in &mut event.features {
                        f.window_samples = report
                            .and_then(|r| r.features.iter().find(|r| r.name == f.feature))
                            .map(|r| r.window_samples)
                            .unwrap_or(0);
                    }
                    tracing::info!(model = %key.model, version = %key.version, rule = %rule.name, event = event.event.as_str(), "Rule state changed");
                    events.push(event);
                }
            }
            v.live_hashes.clear();
            v.reports.clear();
            for (name, report, reference) in windows {
                if let (Some(r), true) = (reference, v.live.is_some()) {
                    v.live_hashes.insert(name.clone(), r.hash.clone());
                }
                v.reports.insert(name, report);
            }
            v.last_outcomes = outcomes;
            v.last_eval_ms = Some(now);
            let info = v.reference_info().map(|(s, h)| (s.to_string(), h));
            if info != v.exported_reference {
                if let Some((s, h)) = v.exported_reference.take() {
                    let _ = metrics.reference_info.remove_label_values(&[
                        &key.model,
                        &key.version,
                        &s,
                        &h,
                    ]);
                }
                if let Some((s, h)) = &info {
                    metrics
                        .reference_info
                        .with_label_values(&[&key.model, &key.version, s, h])
                        .set(1);
                }
                v.exported_reference = info;
            }
        }
    }
    // Events enter the durable outbox together with the rule states that
    // produced them, in one flush: a restart neither re-fires nor forgets.
    for e in &events {
        if let Err(error) = webhooks.enqueue(e) {
            metrics.store_errors.inc();
            tracing::error!(model = %e.model, rule = %e.rule, error = %error, "Queueing a webhook event failed");
        }
    }
    if rules_changed || !events.is_empty() {
        if let Err(error) = store.flush().await {
            metrics.store_errors.inc();
            tracing::error!(error = %error, "Flushing rule state failed");
        }
    }
    if !events.is_empty() {
        webhooks.wake();
    }
    if let Ok(size) = store.size_on_disk() {
        metrics.store_size.set(size as f64);
    }
    metrics
        .evaluation_duration
        .observe(started.elapsed().as_secs_f64());
}

/// `key`'s windows as the evaluator needs them: shared references to the
/// live buckets, and what each window is compared with. `None` when the
/// version is gone.
fn work_of(state: &BTreeMap<ModelKey, VersionState>, key: &ModelKey, now: i64) -> Option<Work> {
    let v = state.get(key)?;
    let total = v.meta.records_ingested;
    let windows = v
        .windows
        .iter()
        .map(|w| {
            let name = w.spec().name.clone();
            let reference = match &v.live {
                None => RefSrc::Fixed(v.reference.clone()),
                Some(lv) => {
                    let okey = ModelKey {
                        model: key.model.clone(),
                        version: lv.clone(),
                    };
                    RefSrc::Live(state.get(&okey).and_then(|o| {
                        let t = o.meta.records_ingested;
                        o.windows
                            .iter()
                            .find(|ow| ow.spec().name == name)
                            .map(|ow| (okey.clone(), ow.live_copy(now, t), t))
                    }))
                }
            };
            (name, w.live_copy(now, total), reference)
        })
        .collect();
    Some(Work {
        key: key.clone(),
        total,
        windows,
    })
}

/// Copies of one version's windows and references, taken under the lock.
struct Work {
    key: ModelKey,
    total: u64,
    /// (window name, live buckets, reference).
    windows: Vec<(String, Window, RefSrc)>,
}

/// What a window is compared with.
enum RefSrc {
    /// The version's own reference, if formed.
    Fixed(Option<Arc<Reference>>),
    /// The same window of another version: that version, the window and
    /// the version's record count.
    Live(Option<(ModelKey, Window, u64)>),
}

/// One version's evaluation.
struct Evaluated {
    key: ModelKey,
    /// (window name, report, the reference it was compared with).
    windows: Vec<(String, Report, Option<Arc<Reference>>)>,
    /// Per applicable rule, in configuration order.
    outcomes: Vec<Outcome>,
}

/// Statistics of every window, then every rule on the window it judges;
/// runs off the lock.
/// Takes the store by value and lets go of it once the snapshots are
/// read: a round abandoned at shutdown then holds no store handle while
/// its statistics finish.
fn evaluate_version(w: Work, cfg: &EngineConfig, store: Store, now: i64) -> Evaluated {
    // Closed buckets' sampled values come back from the store. One that
    // cannot be read (it left the window since the copy, or the store
    // failed) is left out of the snapshot.
    let stored = |key: &ModelKey, window: &str, id: u64| match store.read_whole(key, window, id) {
        Ok(b) => b,
        Err(error) => {
            tracing::debug!(model = %key.model, version = %key.version, window, bucket = id, error = %error, "Reading a closed bucket back failed");
            None
        }
    };
    // Every window's snapshot first, so the live copies (and the buckets
    // the writer must copy while they are held) go before the statistics.
    let snaps: Vec<(String, Snapshot, Option<Arc<Reference>>)> = w
        .windows
        .into_iter()
        .map(|(name, win, src)| {
            let reference = match src {
                RefSrc::Fixed(r) => r,
                RefSrc::Live(other) => other.map(|(okey, ow, total)| {
                    Arc::new(Reference::from_snapshot(
                        &ow.snapshot(now, total, &|id| stored(&okey, &name, id)),
                        cfg.reference,
                    ))
                }),
            };
            let snap = win.snapshot(now, w.total, &|id| stored(&w.key, &name, id));
            (name, snap, reference)
        })
        .collect();
    drop(store);
    let mut windows: Vec<(String, Report, Option<Arc<Reference>>)> = snaps
        .into_iter()
        .map(|(name, snap, reference)| {
            let report = detector::evaluate(reference.as_deref(), &snap, cfg);
            (name, report, reference)
        })
        .collect();
    let first = windows.first().map(|x| x.0.clone()).unwrap_or_default();
    let empty = Report {
        features: Vec::new(),
        sample_rows: 0,
    };
    let judged: Vec<(&rules::Rule, String)> = cfg
        .rules
        .iter()
        .filter(|rule| rule.applies_to(&w.key.model))
        .map(|rule| (rule, rule.window.clone().unwrap_or_else(|| first.clone())))
        .collect();
    let outcomes: Vec<Outcome> = judged
        .iter()
        .map(|(rule, wname)| {
            let report = windows
                .iter()
                .find(|(n, ..)| n == wname)
                .map_or(&empty, |x| &x.1);
            rule.evaluate(report)
        })
        .collect();
    for (name, report, _) in &mut windows {
        for f in &mut report.features {
            let tripped = judged
                .iter()
                .zip(&outcomes)
                .any(|((_, wname), o)| wname == name && o.tripped().any(|v| v.feature == f.name));
            f.verdict = if tripped {
                Verdict::Drift
            } else if f.sufficient {
                Verdict::Ok
            } else {
                Verdict::InsufficientData
            };
        }
    }
    Evaluated {
        key: w.key,
        windows,
        outcomes,
    }
}

fn export(
    metrics: &Metrics,
    key: &ModelKey,
    window: &str,
    report: &Report,
    reference: Option<&Reference>,
    budget: usize,
) {
    // Features are sorted by name, so the budget keeps the same features on
    // every evaluation.
    for f in &report.features[report.features.len().min(budget)..] {
        metrics.drop_feature(key, &f.name);
    }
    for f in report.features.iter().take(budget) {
        let labels = [
            key.model.as_str(),
            key.version.as_str(),
            f.name.as_str(),
            window,
        ];
        metrics
            .window_samples
            .with_label_values(&labels)
            .set(f.window_samples as i64);
        metrics
            .feature_drifting
            .with_label_values(&labels)
            .set(i64::from(f.verdict == Verdict::Drift));
        if let Some(rf) = reference.and_then(|r| r.features.get(&f.name)) {
            metrics
                .reference_samples
                .with_label_values(&labels[..3])
                .set(rf.n() as i64);
        }
        // Counts over the reference bins for the fleet-wide recording rules;
        // without them (categorical, no reference) the bin series go away.
        let (edges, ref_bins) = match reference.and_then(|r| r.features.get(&f.name)) {
            Some(FeatureReference {
                data: RefData::Numeric {
                    edges, bin_counts, ..
                },
                ..
            }) => (&edges[..], &bin_counts[..]),
            _ => (&[][..], &[][..]),
        };
        metrics.export_bins(
            key,
            &f.name,
            window,
            crate::metrics::BinCounts {
                edges,
                reference: ref_bins,
                window: &f.cur_bin_counts,
                window_sum: f.cur_sum,
            },
        );
        metrics
            .window_sample_size
            .with_label_values(&labels)
            .set(f.window_sample_size as i64);
        // Statistics of an insufficient window are not exported at all:
        // a stale or NaN value must not keep an alert firing.
        metrics.clear_feature_stats(key, &f.name, window);
        if let Some(psi) = f.psi {
            metrics.psi.with_label_values(&labels).set(psi);
        }
        if let Some(ks) = f.ks {
            metrics
                .ks_statistic
                .with_label_values(&labels)
                .set(ks.statistic);
            metrics.ks_p_value.with_label_values(&labels).set(ks.pvalue);
        }
        if let Some(c) = f.chi2 {
            metrics
                .chi2_statistic
                .with_label_values(&labels)
                .set(c.statistic);
            metrics
                .chi2_p_value
                .with_label_values(&labels)
                .set(c.pvalue);
        }
    }
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[allow(clippy::too_many_arguments)] // One call site; a struct would only rename the arguments.
fn make_event(
    key: &ModelKey,
    window: &str,
    rule: &rules::Rule,
    outcome: &Outcome,
    transition: Transition,
    before: Tracker,
    after: Tracker,
    now: i64,
) -> Option<webhook::Event> {
    let (kind, started_ms) = match transition {
        Transition::None => return None,
        Transition::Fired => (webhook::EventKind::Firing, after.firing_since_ms?),
        Transition::Resolved => (webhook::EventKind::Resolved, before.firing_since_ms?),
    };
    let features: Vec<webhook::FeatureStats> = outcome
        .values
        .iter()
        .filter(|v| kind == webhook::EventKind::Resolved || v.tripped)
        .map(|v| webhook::FeatureStats {
            feature: v.feature.clone(),
            value: v.value,
            threshold: v.threshold,
            window_samples: 0,
        })
        .collect();
    let summary = match kind {
        webhook::EventKind::Firing => {
            let names: Vec<&str> = features.iter().map(|f| f.feature.as_str()).collect();
            format!(
                "{key}: {} {} {} for {} evaluations on {}",
                rule.statistic.as_str(),
                rule.op.as_str(),
                rule.threshold,
                rule.for_evaluations,
                names.join(", ")
            )
        }
        webhook::EventKind::Resolved => format!("{key}: rule {} resolved", rule.name),
    };
    Some(webhook::Event {
        id: format!(
            "{}/{}/{}/{}/{}",
            key.model,
            key.version,
            rule.name,
            started_ms,
            kind.as_str()
        ),
        event: kind,
        model: key.model.clone(),
        version: key.version.clone(),
        rule: rule.name.clone(),
        statistic: rule.statistic.as_str().to_string(),
        op: rule.op.as_str().to_string(),
        threshold: rule.threshold,
        severity: rule.severity.clone(),
        verdict: outcome.verdict.as_str().to_string(),
        summary,
        window: window.to_string(),
        features,
        started_at: rfc3339(started_ms),
        resolved_at: (kind == webhook::EventKind::Resolved).then(|| rfc3339(now)),
        timestamp: rfc3339(now),
        targets: rule.webhooks.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::{Error, EvalThread};
    use crate::domain::{Batch, Column, ModelKey, Role, Values};
    use crate::metrics::Metrics;
    use crate::store::{self, Backend, MemBackend, Store, Tree, Visit, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    /// A [`MemBackend`] whose writes fail while `full` is set, as sled's
    /// do on a full disk (a reopen succeeds), and whose flushes wait while
    /// the gate is closed (at most 20 s), counting the flushes begun.
    #[derive(Debug, Default)]
    struct TestDisk {
        mem: MemBackend,
        full: AtomicBool,
        begun: std::sync::atomic::AtomicUsize,
        closed: std::sync::Mutex<bool>,
        opened: std::sync::Condvar,
    }

    impl TestDisk {
        fn set_closed(&self, closed: bool) {
            *self.closed.lock().unwrap() = closed;
            self.opened.notify_all();
        }

        fn begun(&self) -> usize {
            self.begun.load(Ordering::Acquire)
        }
    }

    impl Backend for TestDisk {
        fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, store::Error> {
            self.mem.get(tree, key)
        }
        fn scan(&self, tree: Tree, prefix: &[u8], f: &mut Visit<'_>) -> Result<(), store::Error> {
            self.mem.scan(tree, prefix, f)
        }
        fn keys(
            &self,
            tree: Tree,
            prefix: &[u8],
            limit: usize,
        ) -> Result<Vec<Vec<u8>>, store::Error> {
            self.mem.keys(tree, prefix, limit)
        }
        fn apply(&self, tree: Tree, writes: Vec<Write>) -> Result<(), store::Error> {
            if self.full.load(Ordering::Acquire) {
                return Err(store::Error::Io {
                    op: "write",
                    source: sled::Error::Io(std::io::Error::from(std::io::ErrorKind::StorageFull)),
                });
            }
            self.mem.apply(tree, writes)
        }
        fn flush(&self) -> Result<Duration, store::Error> {
            self.begun.fetch_add(1, Ordering::AcqRel);
            let closed = self.closed.lock().unwrap();
            let _open = self
                .opened
                .wait_timeout_while(closed, Duration::from_secs(20), |closed| *closed)
                .unwrap();
            self.mem.flush()
        }
        fn size_on_disk(&self) -> Result<u64, store::Error> {
            self.mem.size_on_disk()
        }
        fn reopen(&self) -> Result<(), store::Error> {
            self.mem.reopen()
        }
    }

    /// A started engine and what a test needs to watch and stop it.
    struct Running {
        engine: super::Handle,
        metrics: Metrics,
        tracker: TaskTracker,
        cancel: CancellationToken,
    }

    /// Drops the last engine handle and waits for the engine's tasks.
    async fn stop(engine: super::Handle, cancel: &CancellationToken, tracker: TaskTracker) {
        drop(engine);
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
    }

    /// The engine on `backend`, configured by `DRIFTD_*` pairs.
    fn start_engine(env: &[(&str, &str)], backend: Arc<dyn Backend>) -> Running {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let config = crate::config::load(None, env).unwrap().1;
        let store = Store::with_backend("test".into(), backend);
        let metrics = Metrics::new();
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let outbox = crate::webhook::Outbox::start(
            config.webhook.clone(),
            store.clone(),
            metrics.clone(),
            &tracker,
            cancel.clone(),
        )
        .unwrap();
        let engine = super::start(
            config.engine.clone(),
            16,
            store,
            Vec::new(),
            metrics.clone(),
            outbox,
            &tracker,
            cancel.clone(),
        )
        .unwrap();
        Running {
            engine,
            metrics,
            tracker,
            cancel,
        }
    }

    /// A write that fails (not only a flush) is counted in
    /// `driftd_store_errors_total`, once: the writes refused after it
    /// until the store is reopened are not failures of their own.
    #[tokio::test]
    async fn a_failed_write_is_counted_and_the_refusals_after_it_are_not() {
        let backend = Arc::new(TestDisk::default());
        let Running {
            engine,
            metrics,
            tracker,
            cancel,
        } = start_engine(&[], backend.clone());
        let mut seed = 1;
        assert_eq!(
            engine
                .ingest(uniform_batch(10, 1, 0.0, &mut seed))
                .await
                .unwrap()
                .records,
            10
        );

        backend.full.store(true, Ordering::Release);
        let refused = engine
            .ingest(uniform_batch(5, 1, 0.0, &mut seed))
            .await
            .unwrap_err();
        assert!(
            matches!(refused, Error::Store(store::Error::Io { .. })),
            "{refused:?}"
        );
        assert_eq!(metrics.store_errors.get(), 1);
        // The next group finds the store failed and reopens it (at most
        // once a second); its write fails again and is counted again.
        let again = engine
            .ingest(uniform_batch(5, 1, 0.0, &mut seed))
            .await
            .unwrap_err();
        assert!(matches!(again, Error::Store(_)), "{again:?}");
        let counted = metrics.store_errors.get();
        // Within the second after that reopen, writes are refused unseen.
        let refused = engine
            .ingest(uniform_batch(5, 1, 0.0, &mut seed))
            .await
            .unwrap_err();
        assert!(
            matches!(refused, Error::Store(store::Error::Failed(_))),
            "{refused:?}"
        );
        assert_eq!(metrics.store_errors.get(), counted);

        backend.full.store(false, Ordering::Release);
        let mut acked = None;
        for _ in 0..40 {
            if let Ok(a) = engine.ingest(uniform_batch(7, 1, 0.0, &mut seed)).await {
                acked = Some(a);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(acked.expect("ingest works after a reopen").records, 7);
        assert!(metrics.store_recoveries.get() >= 1);
        stop(engine, &cancel, tracker).await;
    }

    /// Waits up to `limit` for `done`, looking every 50 ms; its last answer.
    async fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !done() {
            if tokio::time::Instant::now() >= deadline {
                return done();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// The writer writes the next group and begins its flush while the
    /// previous group's flush is still running, and answers each group
    /// only once its own flush has returned.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_group_is_written_and_flushed_while_a_flush_runs() {
        let backend = Arc::new(TestDisk::default());
        let Running {
            engine,
            metrics,
            tracker,
            cancel,
        } = start_engine(
            // No evaluation round (it could flush rule states) in this test.
            &[("DRIFTD_EVALUATION__INTERVAL", "1h")],
            backend.clone(),
        );
        let mut seed = 7u64;
        backend.set_closed(true);
        let before = backend.begun();
        let first = tokio::spawn({
            let (engine, batch) = (engine.clone(), uniform_batch(3, 1, 0.0, &mut seed));
            async move { engine.ingest(batch).await }
        });
        assert!(
            wait_for(Duration::from_secs(10), || backend.begun() == before + 1).await,
            "the first group's flush did not begin"
        );
        let second = tokio::spawn({
            let (engine, batch) = (engine.clone(), uniform_batch(4, 1, 0.0, &mut seed));
            async move { engine.ingest(batch).await }
        });
        assert!(
            wait_for(Duration::from_secs(10), || backend.begun() == before + 2).await,
            "the second group was not flushed while the first flush ran"
        );
        // Neither is answered before its flush returns.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!first.is_finished() && !second.is_finished());
        assert_eq!(metrics.ingest_ack_duration.get_sample_count(), 0);
        backend.set_closed(false);
        assert_eq!(first.await.unwrap().unwrap().records, 3);
        assert_eq!(second.await.unwrap().unwrap().records, 4);
        assert_eq!(metrics.ingest_ack_duration.get_sample_count(), 2);
        stop(engine, &cancel, tracker).await;
    }

    /// `features` columns of `rows` values `shift + u`, `u` uniform in
    /// [0, 1) (a fixed xorshift sequence).
    fn uniform_batch(rows: usize, features: usize, shift: f64, seed: &mut u64) -> Batch {
        let mut next = || {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            shift + (*seed >> 11) as f64 / (1u64 << 53) as f64
        };
        Batch {
            key: ModelKey {
                model: "m".into(),
                version: "v".into(),
            },
            columns: (0..features)
                .map(|f| Column {
                    name: format!("f{f}"),
                    role: Role::Input,
                    values: Values::Numeric((0..rows).map(|_| next()).collect()),
                })
                .collect(),
            n_rows: rows,
        }
    }

    /// Shutdown does not wait for an evaluation round: with strong drift
    /// the exact KS p-values of 10,000-value windows against a 5,000-value
    /// reference take ~0.4 s per feature and window, ~40 s for this
    /// version, and the engine stops within seconds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_does_not_wait_for_an_evaluation_round() {
        let backend = Arc::new(MemBackend::default());
        let Running {
            engine,
            metrics,
            tracker,
            cancel,
        } = start_engine(
            &[
                ("DRIFTD_REFERENCE__WARMUP_SAMPLES", "5000"),
                ("DRIFTD_EVALUATION__INTERVAL", "100ms"),
                // At the default nice value (19), two busy threads of other
                // tests leave the round ~1% of a core, and reading its
                // snapshots outlasts the wait below.
                ("DRIFTD_EVALUATION__NICE", "0"),
            ],
            backend.clone(),
        );
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5 {
            engine
                .ingest_waiting(uniform_batch(1000, 50, 0.0, &mut seed), None)
                .await
                .unwrap();
        }
        for _ in 0..10 {
            engine
                .ingest_waiting(uniform_batch(1000, 50, 0.5, &mut seed), None)
                .await
                .unwrap();
        }
        // Rounds start every 100 ms; let one start on the drifted windows.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rounds = metrics.evaluation_duration.get_sample_count();
        let stopping = std::time::Instant::now();
        drop(engine);
        cancel.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(30), tracker.wait())
            .await
            .expect("the engine stops without finishing the round");
        let took = stopping.elapsed();
        assert!(took < Duration::from_secs(5), "stopping took {took:?}");
        assert_eq!(
            metrics.evaluation_duration.get_sample_count(),
            rounds,
            "the abandoned round is not counted"
        );
        // The statistics still running hold no store handle (an in-process
        // restart could not open a sled store held open). The round may
        // still be reading its snapshots: wait for that, well short of the
        // ~40 s its statistics take.
        wait_for(Duration::from_secs(20), || Arc::strong_count(&backend) == 1).await;
        assert_eq!(Arc::strong_count(&backend), 1);
    }

    /// The nice value of the calling thread, from /proc (field 19 of
    /// `stat`, after the parenthesised command name).
    #[cfg(target_os = "linux")]
    fn own_nice() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        // Fields after the name start at field 3 (state).
        fields[19 - 3].parse().unwrap()
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn evaluations_run_at_the_configured_nice_value_and_survive_a_panic() {
        let thread = EvalThread::start(7).unwrap();
        assert_eq!(thread.run(own_nice).await, Some(7));
        assert_ne!(own_nice(), 7, "the caller's priority is untouched");
        let panicked = thread
            .run(|| -> u8 { panic!("a failing evaluation") })
            .await;
        assert_eq!(panicked, None);
        assert_eq!(thread.run(|| 1 + 1).await, Some(2), "the thread serves on");
        let plain = EvalThread::start(0).unwrap();
        assert_eq!(plain.run(own_nice).await, Some(own_nice()));
    }
}
